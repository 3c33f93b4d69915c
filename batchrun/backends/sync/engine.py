"""One job run: take the checked input, admit each request through its model's limiter, send,
decide, write its result line. Progress and the summary are events; nothing here knows about
terminals, and why a run stopped early is returned as data (`stop.Stop`) for the runner to word.

    reader ──► lane per model (bounded FIFO queue)
           ──► route per (endpoint, model), each with its own dispatcher: daily budget, then
               limiter (Route.admit) ──► attempt task (HTTP) ──► Route.settle ──► decide
           ──► output line | retry (any route of the model) | route out | stop the job

Without --endpoints a lane has one route and its dispatcher is the lane's dispatcher of before.
With several, each route takes the model's next job when its own limiter could admit it now, so
a request goes to the route that admits it soonest and a slow endpoint only holds its own slots;
routes that are spent, refusing or failing are taken out (batchrun.routing.rules's rules).

Pacing, retries, cooldowns, the drain and the daily budget's checks all take time from one clock
(the running loop's, unless one is injected with its sleep), and the UTC day from `now_utc`, so
tests run the engine on virtual time. (The output writer's check for a deleted or truncated file
and the manifest's periodic save are housekeeping on the process's own monotonic clock.)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

from batchrun.backends.cacheflow import CacheFlow, Hit, cached_line, from_cache, server_name
from batchrun.backends.costcap import CostCap
from batchrun.backends.stop import Stop
from batchrun.backends.sync.failover import Failover, too_large
from batchrun.backends.sync.lanes import Client, Job, Lane, Route, Upstream
from batchrun.backends.sync.stamp import with_endpoint
from batchrun.errors import BadLine, BatchrunError, InputChanged, StateError
from batchrun.events import (
    AttemptEnded,
    BudgetUsed,
    JobStarted,
    Listener,
    RequestFinished,
    RequestSent,
    StateChanged,
    Throttled,
)
from batchrun.files.checkpoint import OutputWriteFailed, OutputWriter, result_line
from batchrun.files.jobs import InputReport, Reading, read_jobs
from batchrun.files.ledger import DailyBudget, fmt_wait, until_midnight, utc_now
from batchrun.http.client import ApiClient
from batchrun.http.endpoint import proxy_for
from batchrun.pacing.backoff import MAX_BACKOFF_S, backoff_s
from batchrun.pacing.limiter import Ticket
from batchrun.policy.cachekey import key_digest
from batchrun.policy.classify import TOO_LARGE_CODE, Kind, Outcome
from batchrun.policy.decide import (
    MAX_RATE_LIMITED,
    Action,
    Policy,
    decide,
    flex_delay,
    outcome_usage,
)
from batchrun.policy.flex import FLEX, with_service_tier
from batchrun.policy.prices import Via
from batchrun.policy.sizing import size_of
from batchrun.policy.stopkind import StopKind
from batchrun.policy.tiers import Limits
from batchrun.routing.rules import FOR_THE_RUN, Out, combined
from batchrun.routing.spec import JobSpec
from batchrun.state import SharedBudget, SharedStateError, open_gate, servers_yesterday

__all__ = ["Client", "Engine", "JobSpec", "Upstream"]

QUEUE_PER_LANE = 1024
FIRST_RETRY_S = 0.5  # a request's first wait before it is sent again


# What an attempt's decision writes a line for.
_LINES = (Action.WRITE, Action.FAIL, Action.TOO_LARGE)


def _cannot_write(exc: StateError) -> str:
    """A failed write, worded for the stop's message (which says what to run next)."""
    if isinstance(exc, OutputWriteFailed):
        return (f"Cannot write to {exc.path}: {exc.reason}, so nothing more was sent. Free "
                "space on its disk or fix its permissions.")
    return exc.message


class Engine:
    def __init__(
        self,
        spec: JobSpec,
        report: InputReport,
        done: set[str],
        api_key: str,
        listener: Listener,
        budget_for: Callable[[str, Limits], DailyBudget | SharedBudget],
        *,
        client: Client | None = None,
        clock: Callable[[], float] | None = None,
        now_utc: Callable[[], dt.datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        upstreams: list[Upstream] | None = None,
        cost: CostCap | None = None,
        cache: CacheFlow | None = None,
    ) -> None:
        """`report`: the checking pass (the engine sends only what it saw); `done`: ids that
        already have a line in the output. `clock` defaults to the running loop's.
        `upstreams`: the endpoints of --endpoints; without, the spec's one endpoint through
        `client` (or an ApiClient with `api_key`) and `budget_for`. `cache`: the response
        cache (#25) in the job's mode; None: --no-cache."""
        self.spec = spec
        self._report = report
        self._done_ids = done
        self._emit = listener
        if not upstreams:
            only: Client = client or ApiClient(
                spec.endpoint, api_key, spec.timeout_s, max(512, spec.concurrency or 0),
                max_response_bytes=int(spec.max_response_mb * 2**20))
            upstreams = [Upstream("", only, spec.endpoint.host, spec.limits_for, budget_for,
                                  key_digest=key_digest(api_key),
                                  server=server_name(spec.endpoint))]
        self._upstreams = upstreams
        self._cache = cache
        if cache is not None:
            cache.serve([cache.asker(u.server or u.host, u.key_digest) for u in upstreams])
        # Identical lines wait for the one sent ("leader"): its key -> the copies' ids. Only
        # leaders not yet answered are held (at most the queues and what is in flight).
        self._copies: dict[bytes, list[str]] = {}
        self._cost = cost
        self._clock_given = clock
        self._clock: Callable[[], float] = clock or (lambda: 0.0)
        self._sleep = sleep
        self._now_utc = now_utc
        self._rng = rng or random.Random()
        self._policy = Policy(spec.max_retries, spec.wait, flex_wait_s=spec.flex_wait_s)
        self._lanes: dict[str, Lane] = {}
        self._stop: Stop | None = None
        self._stop_lane: Lane | None = None
        self._interrupts = 0
        self._abandoned = 0  # requests in flight given up at a stop (Stop.abandoned)
        self._unwritten = 0  # answers whose lines the output refused (Stop.unwritten)
        self._input_done = False
        self._attempts: set[asyncio.Task[None]] = set()
        self._dispatchers: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._done = report.already_done
        self._total = report.total
        self._accounted = 0  # lines of the input with a result line, counted as the reader goes
        # Read through lambdas: run() sets the clock (the running loop's), the reader the end.
        self._failover = Failover(
            wait=spec.wait, clock=lambda: self._clock(), now_utc=now_utc, sleep=sleep,
            emit=listener, halt=self._halt, later=self._later,
            wait_for_reset=self._wait_for_reset, input_done=lambda: self._input_done)

    # -- public ---------------------------------------------------------------------------------

    async def run(self) -> Stop | None:
        """Run the job to its end; return why it stopped early (None: every request has a line)."""
        self._clock = self._clock_given or asyncio.get_running_loop().time
        report = self._report
        self._writer = OutputWriter(self.spec.output)
        self._emit(JobStarted(
            input=str(self.spec.input), output=str(self.spec.output), total=report.total,
            already_done=report.already_done, bad_lines=report.bad_total,
            limits={m: self._limits(m) for m in report.models},
            base_url=self.spec.endpoint.base_url, models=dict(report.models),
            proxy=proxy_for(self.spec.endpoint.base_url),
            endpoints={u.name: u.host for u in self._upstreams if u.name},
            via=self._via,
        ))
        self._emit(StateChanged("running"))
        try:
            async with contextlib.AsyncExitStack() as clients, asyncio.TaskGroup() as tg:
                for upstream in self._upstreams:
                    await clients.enter_async_context(upstream.client)
                self._tg = tg
                tg.create_task(self._read())
        except* BatchrunError as group:
            # e.g. the disk filled up under a worker: report it as itself, not as a task group.
            raise group.exceptions[0] from None
        finally:
            for timer in self._timers:
                timer.cancel()
            self._writer.close()
        for route in self._routes():
            route.record_accounting()  # what the next run, or `estimate`, starts from
            # The last word on today's budget, after every settlement: the display's final
            # "today" is then what `status` and the stop message say.
            route.budget.release()
            route.budget_reported = -math.inf
            self._report_budget(route)
            self._pace(self._lanes[route.model], route, last=True)
        if self._stop is None and self._accounted < self._total:
            # Nothing stopped it, yet some lines the check counted have no result: never "done".
            self._stop = Stop(StopKind.INCOMPLETE, input=str(self.spec.input))
        self._emit(StateChanged("stopped" if self._stop else "done"))
        return self._final_stop()

    @property
    def _via(self) -> Via:
        return Via.FLEX if self.spec.service_tier == FLEX else Via.SYNC

    def interrupt(self) -> None:
        """Ctrl-C: the first stops admitting and drains for `drain_s`; the second abandons
        in-flight requests. While the job is already stopping for another reason (the daily
        limit, a refused key), which waits up to the request timeout, the first shortens that
        wait to `drain_s` and the second abandons: the stop keeps its own reason."""
        self._interrupts += 1
        if self._stop is None:
            self._halt(Stop(StopKind.INTERRUPTED), "interrupted: finishing requests in flight")
        elif self._interrupts >= 2:
            self._cancel_attempts()
        else:
            self._emit(StateChanged("draining", f"finishing requests in flight for up to "
                                    f"{self.spec.drain_s:g}s; press Ctrl-C again to abandon "
                                    "them"))
            self._later(self._drain_deadline(self.spec.drain_s))

    # -- reader ---------------------------------------------------------------------------------

    async def _read(self) -> None:
        """Queue every line of the input the check passed. If the file changes under it, stop
        admitting: what was read before the change was checked; nothing read after it is sent."""
        try:
            await self._queue_input()
        except InputChanged as exc:
            self._halt(Stop(StopKind.INPUT_CHANGED, input=exc.path, change=exc.change),
                       "the input changed: finishing requests in flight")
            return
        except StateError as exc:  # the response cache could not be read
            self._cache_failed(exc)
            return
        self._input_done = True
        for lane in self._lanes.values():
            lane.changed.set()

    async def _queue_input(self) -> None:
        report, done = self._report, self._done_ids
        items = read_jobs(self.spec.input, self.spec.model, report.ids.replay(), end=report.size,
                          reading=Reading(report.stamp))
        for n, item in enumerate(items):
            if self._stop:
                return
            if n % 256 == 0:
                await asyncio.sleep(0)  # let answers in while a long file is read
            if isinstance(item, BadLine):
                if item.output_id in done:
                    self._accounted += 1
                else:
                    self._record(item.output_id, "?", None, ("invalid_request_line", item.reason))
                continue
            if item.custom_id in done:
                self._accounted += 1
                continue
            key = None
            if self._cache is not None and self._cache.looks:
                key = self._cache.key(item)
                if key in self._copies:
                    self._copies[key].append(item.custom_id)
                    continue
                if (hit := await self._cache.lookup(item, key)) is not None:
                    self._answered(item.custom_id, item.model, hit)
                    continue
            lane = self._lane(item.model)
            if not lane.routes:  # the endpoints file was checked against the input: a guard
                self._record(item.custom_id, item.model, None,
                             ("no_endpoint", f"no endpoint serves model {item.model}"))
                continue
            job = Job(item, size_of(item, lane.mean_output))
            if self._never_fits(lane, job):
                continue
            if key is not None:
                self._copies[key] = []
                job.key = key
            while len(lane.pending) >= QUEUE_PER_LANE and not self._stop:
                lane.space.clear()
                await lane.space.wait()
            lane.pending.append(job)
            lane.outstanding += 1
            lane.changed.set()

    def _lane(self, model: str) -> Lane:
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lanes[model] = Lane(model)
            for upstream in self._upstreams:
                limits = upstream.limits_for(model)
                if limits is None:
                    continue
                gate = open_gate(upstream.budget_for(model, limits), limits,
                                 self.spec.concurrency, self._clock, self._sleep)
                lane.routes.append(Route(upstream, model, limits, gate))
            for route in lane.routes:
                self._dispatchers.add(self._tg.create_task(self._dispatch(lane, route)))
        return lane

    def _limits(self, model: str) -> Limits:
        """The model's limits: its one endpoint's, or every serving endpoint's together."""
        if len(self._upstreams) == 1:
            return self._upstreams[0].limits_for(model) or Limits()
        return combined([x for u in self._upstreams if (x := u.limits_for(model)) is not None])

    def _routes(self) -> list[Route]:
        return [route for lane in self._lanes.values() for route in lane.routes]

    def _never_fits(self, lane: Lane, job: Job) -> bool:
        """Record a request that can never run on any route of its model (over the TPM, perhaps
        one the server's headers taught since it was queued; over the daily budget; over the
        context window)."""
        reasons = [too_large(route, job) for route in lane.routes
                   if route.out not in FOR_THE_RUN] or [None]
        reason = None if None in reasons else reasons[0]
        if reason is not None:
            self._record(job.request.custom_id, lane.model, None, (TOO_LARGE_CODE, reason),
                         copies=job.key)
        return reason is not None

    # -- dispatchers ----------------------------------------------------------------------------

    async def _dispatch(self, lane: Lane, route: Route) -> None:
        shared = len(lane.routes) > 1
        while not self._stop:
            job = await self._failover.turn(lane, route) if shared else lane.next_job()
            if job is None:
                if self._input_done and lane.outstanding == 0:
                    return
                if shared:
                    continue  # turn returns None only to look again
                lane.changed.clear()
                await lane.changed.wait()
                continue
            if self._never_fits(lane, job):  # the server may have taught a lower limit
                self._ended(lane)
                continue
            if (full := self._writer.room_left()) is not None:
                lane.retries.appendleft(job)  # never sent: it goes on resume
                self._halt(Stop(StopKind.OUTPUT, server_message=full),
                           "the output's disk is full: finishing requests in flight")
                return
            afford = await self._afford(lane, route, job)
            if afford is None:
                continue
            if not afford:
                return
            try:
                ticket = await route.admit(job, self._clock())
            except SharedStateError as exc:  # never sent: it goes again on resume
                self._unspend(job)
                lane.retries.appendleft(job)
                self._halt(Stop(StopKind.STATE, server_message=exc.message),
                           "the shared state is unavailable: finishing requests in flight")
                return
            except asyncio.CancelledError:  # a stop while it waited for the limiter
                self._unspend(job)
                raise
            if ticket is None:
                self._unspend(job)
                lane.retries.appendleft(job)
                if route.limiter.in_flight:
                    # In-flight reservations settle to real usage, usually far below their
                    # max-output charge: see what is left once they have.
                    route.settled.clear()
                    await route.settled.wait()
                    continue
                if await self._failover.take_out(lane, route, Out.DAILY, route.budget.describe()):
                    continue
                return
            if self._cost is not None and job.spend is not None:
                self._cost.sent(job.spend)
            self._emit(RequestSent(lane.model, job.cost, route.name))
            task = self._tg.create_task(self._attempt(lane, route, job, ticket))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    async def _afford(self, lane: Lane, route: Route, job: Job) -> bool | None:
        """--max-cost: hold the job's worst case on the spend cap (True; always without a
        cap). When it does not fit, the job goes back to the head of its queue and, with
        requests in flight, this waits for one to settle and says look again (None); with
        none in flight nothing can give room back: the job stops (False)."""
        cost = self._cost
        if cost is None:
            return True
        job.spend = cost.reserve(lane.model, job.size, route.name, job.request.body)
        if job.spend is not None:
            return True
        lane.retries.appendleft(job)
        if cost.in_flight:
            # Answers settle at their real cost, usually far below the worst case they held.
            cost.settled.clear()
            await cost.settled.wait()
            return None
        assert cost.cap is not None  # reserve refuses only under a cap
        need = cost.worst(lane.model, job.size, route.name, job.request.body)
        self._halt(Stop(StopKind.COST, spent_usd=cost.spent, cap_usd=cost.cap, need_usd=need),
                   "the spend cap is reached: finishing requests in flight")
        return False

    def _unspend(self, job: Job) -> None:
        if self._cost is not None and job.spend is not None:
            self._cost.release(job.spend)
        job.spend = None

    def _settle_spend(self, job: Job, outcome: Outcome | None) -> None:
        if self._cost is not None and job.spend is not None:
            self._cost.settle(job.spend, outcome)
        job.spend = None

    async def _attempt(self, lane: Lane, route: Route, job: Job, ticket: Ticket) -> None:
        request = with_service_tier(route.request_for(job.request), self.spec.service_tier)
        try:
            outcome = await route.upstream.client.send(request)
        except asyncio.CancelledError:  # abandoned: the server may have billed it whole
            self._settle_spend(job, None)
            raise
        self._settle_spend(job, outcome)  # before its line: see files.spend
        stopping = self._stop is not None  # the job stopped while this request was out
        job.last = outcome
        kind = outcome.kind
        job.tries.rate_limited += kind is Kind.RATE_MINUTE
        job.tries.failures += kind is Kind.RETRY
        job.tries.flex_unavailable += kind is Kind.FLEX_UNAVAILABLE
        route.connected = route.connected or outcome.status is not None
        route.streak = route.streak + 1 if kind is Kind.RETRY else 0
        await route.settle(job, ticket, outcome)
        self._report_budget(route)
        self._emit(AttemptEnded(lane.model, kind.value, route.name, outcome.status, outcome.code))
        self._pace(lane, route)
        action = decide(outcome, job.tries, self._policy, route.connected)
        if action in (Action.WAIT_DAY, Action.STOP_DAILY) and job.day is not None and \
                servers_yesterday(job.day, self._now_utc(), outcome.hint_s):
            action = Action.BACKOFF  # the server's day, behind ours, ends in moments: not ours
        if stopping and action not in _LINES and not outcome.usage_known:
            # No line and no answer, maybe billed: the stop's message must not call it written.
            self._abandoned += 1
        if len(lane.routes) > 1 and await self._failover.fail_over(lane, route, job, action):
            return
        if action is Action.WRITE:
            lane.learn_output((outcome_usage(outcome) or (0, 0))[1])
            if self._cache is not None and outcome.raw_body is not None:
                # Stored before its line is written: a kill -9 between the two costs nothing
                # on resume, where the line comes from the cache.
                await self._store(self._cache, route, job, outcome.raw_body)
            self._finish(lane, route, job, ok=True)
        elif action in (Action.FAIL, Action.TOO_LARGE):
            self._finish(lane, route, job, ok=False)
        elif action is Action.THROTTLE:
            pause = route.rate_limited(ticket, outcome.hint_s)
            self._emit(Throttled(lane.model, pause, route.name))
            self._requeue(lane, job)
        elif action is Action.BACKOFF:
            self._retry_later(lane, job, outcome.hint_s)
        elif action is Action.FLEX_WAIT:
            self._flex_later(lane, job, outcome.hint_s)
        elif action in (Action.WAIT_DAY, Action.STOP_DAILY):
            route.exhaust(job, outcome.message)
            if action is Action.WAIT_DAY:
                lane.retries.appendleft(job)  # sent again after 00:00 UTC
                lane.changed.set()
            else:
                self._halt(Stop(StopKind.DAILY, server_message=outcome.message),
                           "the API's daily limit is reached: finishing requests in flight", lane)
        elif action is Action.STOP_REFUSED:
            self._halt(Stop(StopKind.REFUSED, server_message=outcome.message, code=outcome.code,
                            status=outcome.status), "the API refused the key or account")
        else:
            assert action is Action.STOP_NO_NETWORK
            self._halt(Stop(StopKind.NO_NETWORK, server_message=outcome.message,
                            host=route.upstream.host), "cannot reach the API")

    async def _store(self, cache: CacheFlow, route: Route, job: Job, body: bytes) -> None:
        up = route.upstream
        try:
            asker = cache.asker(up.server or up.host, up.key_digest)
            await cache.store(job.request, asker, body, job.key)
        except StateError as exc:
            # The answer is paid for: its line is written all the same, and the job stops as
            # when the shared state stops answering.
            self._cache_failed(exc)

    def _cache_failed(self, exc: StateError) -> None:
        self._halt(Stop(StopKind.STATE, server_message=exc.message),
                   "the response cache cannot be used: finishing requests in flight")

    def _requeue(self, lane: Lane, job: Job) -> None:
        lane.retries.append(job)
        lane.changed.set()

    def _retry_later(self, lane: Lane, job: Job, hint_s: float | None,
                     delay: float | None = None) -> None:
        if delay is None:
            delay = max(backoff_s(job.tries.failures, first_s=FIRST_RETRY_S, rng=self._rng),
                        min(hint_s or 0.0, MAX_BACKOFF_S))

        async def requeue() -> None:
            await self._sleep(delay)
            self._requeue(lane, job)

        self._later(requeue())

    def _flex_later(self, lane: Lane, job: Job, hint_s: float | None) -> None:
        """Flex had no capacity: the one backoff, counted against --flex-wait alone (no
        cooldown for the lane, no slower limiter, no --max-retries)."""
        delay = flex_delay(job.tries, self._policy.flex_wait_s, hint_s, self._rng)
        job.tries.flex_waited_s += delay
        self._retry_later(lane, job, None, delay)

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the task group: a pending retry or the drain deadline must not keep
        a finished run open, and both are cancelled when it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    def _report_budget(self, route: Route) -> None:
        now = self._clock()
        if not route.budget.limited or now - route.budget_reported < 1.0:
            return
        route.budget_reported = now
        tokens, requests = route.budget.used_today()
        self._emit(BudgetUsed(route.model, tokens, route.budget.tpd, requests, route.budget.rpd,
                              route.name))

    def _pace(self, lane: Lane, route: Route, last: bool = False) -> None:
        """The route's limiter for the timeline and the metrics: at most once a second, on the
        answers that move it (no timer of its own), and always when asked for the `last` word."""
        now = self._clock()
        if not last and now - route.paced_reported < 1.0:
            return
        route.paced_reported = now
        self._emit(route.pacing(len(lane.pending) + len(lane.retries)))

    # -- results --------------------------------------------------------------------------------

    def _finish(self, lane: Lane, route: Route, job: Job, ok: bool) -> None:
        out = job.last
        assert out is not None
        error = None
        if not ok:
            reason = out.message or out.code
            if out.kind is Kind.RETRY:
                reason = f"gave up after {job.tries.attempts} attempts; last: {reason}"
            elif out.kind is Kind.FLEX_UNAVAILABLE:
                reason = (f"flex processing had no capacity for it: {job.tries.flex_unavailable} "
                          f"answers over {job.tries.flex_waited_s:.0f}s of waiting reached "
                          f"--flex-wait ({self._policy.flex_wait_s:g}s). Resume with "
                          f"--retry-failed later, or without --service-tier flex. "
                          f"Last: {reason}")
            elif out.kind is Kind.RATE_MINUTE:
                reason = (f"gave up after {job.tries.rate_limited} per-minute rate limits (429): "
                          f"the server never admitted it. Per-minute 429s do not count toward "
                          f"--max-retries; {MAX_RATE_LIMITED} is the separate ceiling for a "
                          f"server that only answers 429. Last: {reason}")
            error = (out.code or "request_failed", reason)
        # tries counts the retryable outcomes; the last one is among them only if it was one
        sent = job.tries.attempts + (out.kind not in (Kind.RETRY, Kind.RATE_MINUTE,
                                                      Kind.FLEX_UNAVAILABLE))
        self._record(job.request.custom_id, lane.model, out, error, sent, route.name,
                     copies=job.key)
        self._ended(lane)

    def _ended(self, lane: Lane) -> None:
        lane.outstanding -= 1
        if lane.outstanding == 0:
            lane.changed.set()

    def _record(
        self, custom_id: str, model: str, out: Outcome | None, error: tuple[str, str] | None,
        attempts: int = 0, endpoint: str = "", copies: bytes | None = None,
    ) -> None:
        """Write a request's line; `copies`: its key, whose waiting copies (identical lines)
        get their own lines with its answer or its failure."""
        body = out.body if out is not None and out.status is not None else None
        line = result_line(
            custom_id, out.status if out else None, out.request_id if out else "", body, error,
            out.raw_body if out is not None else None,
        )
        if not self._write(line, endpoint, out is not None and out.status is not None):
            return
        tokens_in, tokens_out = (outcome_usage(out) if out else None) or (0, 0)
        self._emit(RequestFinished(
            custom_id, model, error is None, tokens_in, tokens_out, attempts,
            "" if error is None else error[1], endpoint, cached_in=out.cached_in if out else 0,
        ))
        if copies is None:
            return
        waiting = self._copies.pop(copies, [])
        hit = None
        if error is None and out is not None and out.raw_body is not None:
            hit = Hit(out.raw_body, out.body if isinstance(out.body, dict) else {})
        for copy_id in waiting:
            if hit is not None:
                self._answered(copy_id, model, hit, endpoint)
            elif not self._write(result_line(copy_id, out.status if out else None,
                                             out.request_id if out else "", body, error),
                                 endpoint, False):
                return
            else:
                self._emit(RequestFinished(copy_id, model, False, 0, 0, 0,
                                           "" if error is None else error[1], endpoint))

    def _answered(self, custom_id: str, model: str, hit: Hit, endpoint: str = "") -> None:
        """A line answered without sending: from the cache, or its leader's answer."""
        if self._write(cached_line(custom_id, hit), endpoint, False):
            self._emit(from_cache(custom_id, model, hit, self._via, endpoint))

    def _write(self, line: bytes, endpoint: str, answered: bool) -> bool:
        """One line into the output; False when it refused (the job stops)."""
        try:
            self._writer.write(with_endpoint(line, endpoint) if self.spec.record_endpoint
                               else line)
        except StateError as exc:
            self._unwritten += answered
            self._halt(Stop(StopKind.OUTPUT, server_message=_cannot_write(exc)),
                       "cannot write the output: finishing requests in flight")
            return False
        self._done += 1
        self._accounted += 1
        return True

    # -- stopping -------------------------------------------------------------------------------

    def _final_stop(self) -> Stop | None:
        stop = self._stop
        if stop is None:
            return None
        stop = replace(stop, done=self._done, total=self._total, abandoned=self._abandoned,
                       interrupted=self._interrupts > 0, unwritten=self._unwritten)
        lane = self._stop_lane
        if stop.kind is StopKind.DAILY and lane is not None:
            budgets = [r.budget.describe(stop.server_message) for r in lane.routes]
            if len(lane.routes) > 1:
                budgets = [f"{r.name}: {text}" for r, text in zip(lane.routes, budgets,
                                                                   strict=True)]
            stop = replace(stop, budget="; ".join(budgets),
                           until_reset=until_midnight(self._now_utc()))
        return stop

    async def _wait_for_reset(self, lane: Lane) -> None:
        """--wait: sleep until the UTC day turns, then carry on. Checks the clock every minute
        so a suspended laptop or a changed clock wakes it at the right time."""
        day = self._now_utc().date()
        while self._now_utc().date() == day and not self._stop:
            left = until_midnight(self._now_utc())
            spent = "; ".join(r.budget.describe() for r in lane.routes)
            self._emit(StateChanged("paused-daily",
                                    f"{spent}; resuming at 00:00 UTC, in {fmt_wait(left)}"))
            for route in lane.routes:  # a quiet job's timeline still records its wait
                self._pace(lane, route, last=True)
            await self._sleep(min(60.0, left.total_seconds() + 0.5))
        self._emit(StateChanged("running"))

    def _halt(self, stop: Stop, detail: str, lane: Lane | None = None) -> None:
        """Stop admitting. The requests in flight were sent, so the API bills them whether or
        not we wait: every stop but Ctrl-C waits for their answers, up to the request timeout
        (by when the client gives each up), and writes them, so neither a resume nor --via
        auto's Batch API sends them again. Ctrl-C waits only `drain_s` (the user wants out)."""
        if self._stop is not None:
            return
        self._stop, self._stop_lane = stop, lane
        if stop.kind is StopKind.INTERRUPTED:
            wait_s = self.spec.drain_s
        else:
            wait_s = self.spec.timeout_s
            detail += f" (waiting up to {wait_s:g}s, the request timeout, for their answers)"
        self._emit(StateChanged("draining", detail))
        for each in self._lanes.values():
            each.space.set()
        for task in self._dispatchers:
            # A dispatcher may be waiting out a cooldown in the limiter; it must not send again.
            task.cancel()
        if self._attempts - {asyncio.current_task()}:  # not only the attempt that stops it
            self._later(self._drain_deadline(wait_s))

    async def _drain_deadline(self, wait_s: float) -> None:
        await self._sleep(wait_s)
        self._cancel_attempts()

    def _cancel_attempts(self) -> None:
        for task in list(self._attempts):
            if not task.cancelling():  # a second Ctrl-C after the deadline counts none twice
                self._abandoned += task.cancel()
