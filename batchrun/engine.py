"""One job run: read the input, admit each request through its model's limiter, send, classify,
write its result line. Progress and the summary are events; nothing here knows about terminals.

    reader ──► lane per model (bounded queue, FIFO dispatcher: daily budget, then limiter)
           ──► attempt task (HTTP) ──► classify ──► output line | retry | stop the job
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.checkpoint import OutputWriter, result_line, scan_output
from batchrun.client import ApiClient, Endpoint, Kind, Outcome
from batchrun.errors import (
    ApiRefused,
    BadLine,
    BadLinesError,
    BatchrunError,
    DailyLimitReached,
    Interrupted,
)
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
from batchrun.jobs import InputReport, Request, check_input, read_jobs
from batchrun.ledger import DailyBudget, fmt_wait, until_midnight, utc_now
from batchrun.limiter import Limiter, Ticket
from batchrun.tiers import Limits, preset
from batchrun.tokens import char_estimate, max_output_tokens, prompt_tokens

QUEUE_PER_LANE = 1024
# Until we have seen real answers, a request that sets no max_tokens is charged this much output.
INITIAL_OUTPUT_GUESS = 256
MAX_BACKOFF_S = 60.0


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that shapes a run. Holds the key's env var name (in endpoint), never the key."""

    input: Path
    output: Path
    endpoint: Endpoint
    model: str = "gpt-4o-mini"
    tier: str = "tier1"
    overrides: dict[str, int | None] = field(default_factory=dict)
    concurrency: int | None = None
    max_retries: int = 8
    timeout_s: float = 600.0
    on_bad_line: str = "fail"
    drain_s: float = 10.0
    wait: bool = False  # at the daily limit: sleep until 00:00 UTC instead of stopping
    resume_hint: str = "the same command"  # how the user continues, for messages

    def limits_for(self, model: str) -> Limits:
        return (preset(model, self.tier) or Limits()).override(**self.overrides)


@dataclass(slots=True)
class _Job:
    request: Request
    cost: int
    attempts: int = 0
    last: Outcome | None = None
    day: dt.date | None = None  # the UTC day its budget reservation was made on


class _Lane:
    """The queue, limiter and budget of one model."""

    def __init__(self, model: str, limits: Limits, limiter: Limiter, budget: DailyBudget) -> None:
        self.model = model
        self.limits = limits
        self.limiter = limiter
        self.budget = budget
        self.pending: deque[_Job] = deque()
        self.retries: deque[_Job] = deque()
        self.outstanding = 0  # accepted from the reader, not yet written
        self.changed = asyncio.Event()
        self.space = asyncio.Event()
        self.settled = asyncio.Event()  # an attempt came back and its reservation settled
        self.budget_reported = -math.inf
        self.mean_output = float(INITIAL_OUTPUT_GUESS)
        self.seen_output = False

    def next_job(self) -> _Job | None:
        if self.retries:
            return self.retries.popleft()
        if self.pending:
            self.space.set()
            return self.pending.popleft()
        return None

    def learn_output(self, tokens_out: int) -> None:
        if not self.seen_output:
            self.mean_output, self.seen_output = float(tokens_out), True
        else:
            self.mean_output = 0.95 * self.mean_output + 0.05 * tokens_out


class Engine:
    def __init__(
        self,
        spec: JobSpec,
        api_key: str,
        listener: Listener,
        budget_for: Callable[[str, Limits], DailyBudget],
        clock: Callable[[], float] = time.monotonic,
        now_utc: Callable[[], dt.datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        checked: dict[str, Any] | None = None,
        on_checked: Callable[[InputReport], None] = lambda report: None,
    ) -> None:
        self.spec = spec
        self._checked = checked  # the checking pass of an earlier run of the same input
        self._on_checked = on_checked
        self._budget_for = budget_for
        self._key = api_key
        self._emit = listener
        self._clock = clock
        self._sleep = sleep
        self._now_utc = now_utc
        self._rng = rng or random.Random()
        self._lanes: dict[str, _Lane] = {}
        # Why the run is stopping: the error is built when the run ends, so its counts are final.
        self._stop: Callable[[], BatchrunError] | None = None
        self._stop_kind: type[BatchrunError] | None = None
        self._input_done = False
        self._attempts: set[asyncio.Task[None]] = set()
        self._dispatchers: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._done = 0
        self._total = 0

    # -- public ---------------------------------------------------------------------------------

    async def run(self) -> BatchrunError | None:
        """Run the job to its end; return why it stopped early (None: every request has a line)."""
        done = scan_output(self.spec.output)
        if self._checked is not None:
            report = InputReport.from_dict(self._checked, done)
        else:
            report = check_input(self.spec.input, self.spec.model, done)
            self._on_checked(report)
        if report.bad_total and self.spec.on_bad_line == "fail":
            raise BadLinesError(str(self.spec.input), report.bad, report.bad_total)
        self._total, self._done = report.total, report.already_done
        self._ids = report.ids.replay()
        self._writer = OutputWriter(self.spec.output)
        self._emit(JobStarted(
            input=str(self.spec.input), output=str(self.spec.output), total=report.total,
            already_done=report.already_done, bad_lines=report.bad_total,
            limits={m: self.spec.limits_for(m) for m in report.models},
            base_url=self.spec.endpoint.base_url,
        ))
        self._emit(StateChanged("running"))
        max_conn = max(512, self.spec.concurrency or 0)
        try:
            async with (
                ApiClient(self.spec.endpoint, self._key, self.spec.timeout_s, max_conn) as client,
                asyncio.TaskGroup() as tg,
            ):
                self._client = client
                self._tg = tg
                tg.create_task(self._read(done))
        except* BatchrunError as group:
            # e.g. the disk filled up under a worker: report it as itself, not as a task group.
            raise group.exceptions[0] from None
        finally:
            for timer in self._timers:
                timer.cancel()
            self._writer.close()
        self._emit(StateChanged("stopped" if self._stop else "done"))
        return self._stop() if self._stop else None

    def interrupt(self) -> None:
        """Ctrl-C: the first stops admitting and drains; the second abandons in-flight requests."""
        if self._stop_kind is Interrupted:
            self._cancel_attempts()
            return
        self._halt(Interrupted, "interrupted: finishing requests in flight", lambda: Interrupted(
            f"Interrupted. {self._done:,} of {self._total:,} requests are done and kept in "
            f"{self.spec.output}. Continue with: {self.spec.resume_hint}"
        ))

    # -- reader ---------------------------------------------------------------------------------

    async def _read(self, done: set[str]) -> None:
        for n, item in enumerate(read_jobs(self.spec.input, self.spec.model, self._ids)):
            if self._stop:
                break
            if n % 256 == 0:
                await asyncio.sleep(0)  # let answers in while a long file is read
            if isinstance(item, BadLine):
                if item.output_id not in done:
                    self._record(item.output_id, "?", None, ("invalid_request_line", item.reason))
                continue
            if item.custom_id in done:
                continue
            lane = self._lane(item.model)
            job = self._job(lane, item)
            if lane.limiter.pacer.too_big(job.cost):
                self._record(job.request.custom_id, lane.model, None, (
                    "request_too_large",
                    f"this request needs about {job.cost:,} tokens, more than the "
                    f"{lane.limits.tpm:,} tokens/min limit of {lane.model}; shorten it or lower "
                    "max_tokens",
                ))
                continue
            while len(lane.pending) >= QUEUE_PER_LANE and not self._stop:
                lane.space.clear()
                await lane.space.wait()
            lane.pending.append(job)
            lane.outstanding += 1
            lane.changed.set()
        self._input_done = True
        for lane in self._lanes.values():
            lane.changed.set()

    def _lane(self, model: str) -> _Lane:
        lane = self._lanes.get(model)
        if lane is None:
            limits = self.spec.limits_for(model)
            limiter = Limiter(limits.rpm, limits.tpm, self.spec.concurrency, self._clock)
            budget = self._budget_for(model, limits)
            lane = self._lanes[model] = _Lane(model, limits, limiter, budget)
            self._dispatchers.add(self._tg.create_task(self._dispatch(lane)))
        return lane

    def _job(self, lane: _Lane, request: Request) -> _Job:
        prompt = max(prompt_tokens(request.url, request.body), char_estimate(request.body))
        out = max_output_tokens(request.body)
        if out is None and request.url.endswith("/chat/completions"):
            out = round(lane.mean_output * int(request.body.get("n", 1)))
        return _Job(request, prompt + (out or 0))

    # -- dispatcher -----------------------------------------------------------------------------

    async def _dispatch(self, lane: _Lane) -> None:
        while not self._stop:
            job = lane.next_job()
            if job is None:
                if self._input_done and lane.outstanding == 0:
                    return
                lane.changed.clear()
                await lane.changed.wait()
                continue
            job.day = lane.budget.reserve(job.cost)
            if job.day is None:
                lane.retries.appendleft(job)
                if lane.limiter.in_flight:
                    # In-flight reservations settle to real usage, usually far below their
                    # max-output charge: see what is left once they have.
                    lane.settled.clear()
                    await lane.settled.wait()
                    continue
                if self.spec.wait:
                    await self._wait_for_reset(lane)
                    continue
                self._halt(DailyLimitReached, "daily budget reached: finishing requests in "
                           "flight", lambda: self._daily_error(lane))
                return
            ticket = await lane.limiter.acquire(job.cost)
            if self._stop:
                lane.limiter.release(ticket, None)
                lane.budget.settle(job.day, job.cost, 0)
                return
            self._emit(RequestSent(lane.model))
            task = self._tg.create_task(self._attempt(lane, job, ticket))
            self._attempts.add(task)
            task.add_done_callback(self._attempts.discard)

    async def _attempt(self, lane: _Lane, job: _Job, ticket: Ticket) -> None:
        outcome = await self._client.send(job.request)
        job.attempts += 1
        job.last = outcome
        kind = outcome.kind
        lane.limiter.release(ticket, None if kind is Kind.RATE_MINUTE else outcome.server,
                             ok=kind is Kind.OK)
        tokens_in, tokens_out = outcome.usage
        assert job.day is not None
        lane.budget.settle(job.day, job.cost, tokens_in + tokens_out)
        lane.settled.set()
        self._report_budget(lane)
        self._emit(AttemptEnded(lane.model, kind.value))
        if kind is Kind.OK:
            lane.learn_output(tokens_out)
            self._finish(lane, job, ok=True)
        elif kind is Kind.FAIL:
            self._finish(lane, job, ok=False)
        elif kind is Kind.RATE_DAY:
            lane.budget.exhaust()
            if self.spec.wait:
                lane.retries.appendleft(job)  # sent again after 00:00 UTC
                lane.changed.set()
            else:
                message = outcome.message
                self._halt(DailyLimitReached, "the API's daily limit is reached: finishing "
                           "requests in flight", lambda: self._daily_error(lane, message))
        elif kind is Kind.REFUSED:
            self._halt(ApiRefused, "the API refused the key or account", lambda: ApiRefused(
                f"The API refused the request: {outcome.message} ({outcome.code}, HTTP "
                f"{outcome.status}). Check ${self.spec.endpoint.key_env}, the account's billing "
                f"and quota, then continue with: {self.spec.resume_hint} (the {self._done:,} "
                f"finished results in {self.spec.output} are kept)."
            ))
        elif job.attempts > self.spec.max_retries:
            self._finish(lane, job, ok=False)
        elif kind is Kind.RATE_MINUTE:
            pause = lane.limiter.rate_limited(ticket, outcome.hint_s)
            self._emit(Throttled(lane.model, pause))
            lane.retries.append(job)
            lane.changed.set()
        else:
            self._retry_later(lane, job, outcome.hint_s)

    def _retry_later(self, lane: _Lane, job: _Job, hint_s: float | None) -> None:
        backoff = min(MAX_BACKOFF_S, 0.5 * 2 ** (job.attempts - 1)) * self._rng.uniform(0.5, 1.5)
        delay = max(backoff, min(hint_s or 0.0, MAX_BACKOFF_S))

        def requeue() -> None:
            self._timers.discard(handle)
            lane.retries.append(job)
            lane.changed.set()

        handle = asyncio.get_running_loop().call_later(delay, requeue)
        self._timers.add(handle)

    def _report_budget(self, lane: _Lane) -> None:
        now = self._clock()
        if not lane.budget.limited or now - lane.budget_reported < 1.0:
            return
        lane.budget_reported = now
        tokens, requests = lane.budget.used_today()
        self._emit(BudgetUsed(lane.model, tokens, lane.budget.tpd, requests, lane.budget.rpd))

    # -- results --------------------------------------------------------------------------------

    def _finish(self, lane: _Lane, job: _Job, ok: bool) -> None:
        out = job.last
        assert out is not None
        error = None
        if not ok:
            reason = out.message or out.code
            if out.kind in (Kind.RETRY, Kind.RATE_MINUTE):
                reason = f"gave up after {job.attempts} attempts; last: {reason}"
            error = (out.code or "request_failed", reason)
        self._record(job.request.custom_id, lane.model, out, error)
        lane.outstanding -= 1
        if lane.outstanding == 0:
            lane.changed.set()

    def _record(
        self, custom_id: str, model: str, out: Outcome | None, error: tuple[str, str] | None
    ) -> None:
        body = out.body if out is not None and out.status is not None else None
        self._writer.write(result_line(
            custom_id, out.status if out else None, out.request_id if out else "", body, error
        ))
        self._done += 1
        tokens_in, tokens_out = out.usage if out else (0, 0)
        self._emit(RequestFinished(
            custom_id, model, error is None, tokens_in, tokens_out,
            0 if out is None else 1, "" if error is None else error[1],
        ))

    # -- stopping -------------------------------------------------------------------------------

    def _daily_error(self, lane: _Lane, server_message: str = "") -> DailyLimitReached:
        said = f" (The server said: {server_message})" if server_message else ""
        wait = fmt_wait(until_midnight(self._now_utc()))
        return DailyLimitReached(
            f"{lane.budget.describe(server_message)}. {self._done:,} of {self._total:,} "
            f"requests done.{said} "
            f"Resume after 00:00 UTC (in {wait}) with: {self.spec.resume_hint}"
        )

    async def _wait_for_reset(self, lane: _Lane) -> None:
        """--wait: sleep until the UTC day turns, then carry on. Checks the clock every minute
        so a suspended laptop or a changed clock wakes it at the right time."""
        day = self._now_utc().date()
        while self._now_utc().date() == day and not self._stop:
            left = until_midnight(self._now_utc())
            self._emit(StateChanged("paused-daily",
                                    f"{lane.budget.describe()}; resuming at 00:00 UTC, in "
                                    f"{fmt_wait(left)}"))
            await self._sleep(min(60.0, left.total_seconds() + 0.5))
        self._emit(StateChanged("running"))

    def _halt(
        self, kind: type[BatchrunError], detail: str, make: Callable[[], BatchrunError]
    ) -> None:
        if self._stop is not None:
            return
        self._stop, self._stop_kind = make, kind
        self._emit(StateChanged("draining", detail))
        for lane in self._lanes.values():
            lane.space.set()
        for task in self._dispatchers:
            # A dispatcher may be waiting out a cooldown in the limiter; it must not send again.
            task.cancel()
        loop = asyncio.get_running_loop()
        self._timers.add(loop.call_later(self.spec.drain_s, self._cancel_attempts))

    def _cancel_attempts(self) -> None:
        for task in list(self._attempts):
            task.cancel()
