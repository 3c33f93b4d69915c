"""The engine's part for a model served by several endpoints: which route takes the next
request, and what takes a route out of rotation. `Failover` is a collaborator the engine owns
and calls; it is handed the clocks, the listener and the engine's own ways to stop, to run work
beside the job and to sleep to the next UTC day, and keeps no state of its own (the routes and
lanes hold it), so the engine reads as the one-endpoint flow it was.

    turn       a route's dispatcher waits until it may take the model's next job and its
               limiter would admit it now (routing.may_take), then takes it
    take_out   a route is out (spent, refused, unreachable, failing): one RouteChanged event;
               when the model has none left (routing.verdict), the job stops or --wait sleeps
    fail_over  an answer that takes its route out sends the request back for another route
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from batchrun.backends.stop import Stop
from batchrun.backends.sync.lanes import Job, Lane, Route
from batchrun.events import Listener, RouteChanged
from batchrun.files.ledger import fmt_wait
from batchrun.policy.classify import Outcome, is_redirect
from batchrun.policy.decide import NO_NETWORK_TRIES, Action, never_connected
from batchrun.policy.sizing import never_fits
from batchrun.policy.stopkind import StopKind
from batchrun.routing.rules import BACK, FAIL_STREAK, Out, cool_off_s, may_take, verdict


def _fmt_pause(seconds: float) -> str:
    """A cool-off as it is: fmt_wait counts whole minutes, and the first is 30 s."""
    return f"{seconds:.0f}s" if seconds < 60 else fmt_wait(dt.timedelta(seconds=seconds))


def _not_served(outcome: Outcome) -> bool:
    """The endpoint's answer for any request of the model: no such deployment, model or path."""
    return outcome.status == 404 or (outcome.status is not None and is_redirect(outcome.status))


def too_large(route: Route, job: Job) -> str | None:
    """Why `job` can never run on `route` (over its TPM, its daily budget, the context
    window), or None."""
    return never_fits(job.size, route.model, route.limiter.pacer.tpm, route.budget.tpd)


class Failover:
    def __init__(
        self,
        *,
        wait: bool,
        clock: Callable[[], float],
        now_utc: Callable[[], dt.datetime],
        sleep: Callable[[float], Awaitable[None]],
        emit: Listener,
        halt: Callable[[Stop, str, Lane | None], None],
        later: Callable[[Coroutine[Any, Any, None]], None],
        wait_for_reset: Callable[[Lane], Awaitable[None]],
        input_done: Callable[[], bool],
    ) -> None:
        """`wait`: --wait (sleep to the next UTC day when every route is spent); `halt`,
        `later`, `wait_for_reset`: the engine's; `input_done`: whether the reader is done."""
        self._wait = wait
        self._clock, self._now_utc, self._sleep, self._emit = clock, now_utc, sleep, emit
        self._halt, self._later, self._wait_for_reset = halt, later, wait_for_reset
        self._input_done = input_done

    async def turn(self, lane: Lane, route: Route) -> Job | None:
        """With several routes: wait until this route may take the model's next job (it is in,
        of the best priority in among the routes big enough for the job, big enough itself)
        and its limiter would admit it now, then take it. None: nothing to take now (the
        caller sees whether the lane is done)."""
        now = self._clock()
        today = self._now_utc().date()
        job = lane.peek()
        if job is None:
            if self._input_done() and lane.outstanding == 0:
                return None
            await self._idle(lane)
            return None
        # A route too small for the job is not in rotation for it: priority and the verdict
        # are among the routes that could send it.
        fit = [r.standing(today, now) for r in lane.routes if too_large(r, job) is None]
        mine = route.standing(today, now)
        if too_large(route, job) is not None:
            kind = verdict(fit) if mine.out is None else None
            if kind is StopKind.DAILY:  # only spent routes could send it: as when all are out
                await self._none_left(lane, route, kind)
                return None
            if kind is not None:  # none left for the run: the dispatcher records it too large
                return lane.next_job()
            await self._idle(lane)
            return None
        if not may_take(mine, fit):
            await self._idle(lane)
            return None
        wait = route.ready_in(job.cost, now)
        if wait <= 0:
            return lane.next_job()
        if math.isinf(wait):
            route.settled.clear()
            await route.settled.wait()
        else:
            await self._sleep(wait)
        return None

    @staticmethod
    async def _idle(lane: Lane) -> None:
        lane.changed.clear()
        await lane.changed.wait()

    async def take_out(self, lane: Lane, route: Route, why: Out, detail: str) -> bool:
        """Take `route` out of rotation; stop the job, or (--wait) sleep to the next UTC day,
        when its model has no route left. True: the dispatcher goes on."""
        route.out = why
        if why is Out.DAILY:
            route.out_day = self._now_utc().date()
        if route.name:
            self._emit(RouteChanged(route.name, lane.model, why.value, detail))
        lane.changed.set()
        now, today = self._clock(), self._now_utc().date()
        kind = verdict([r.standing(today, now) for r in lane.routes])
        if kind is None:
            return True
        return await self._none_left(lane, route, kind)

    async def _none_left(self, lane: Lane, route: Route, kind: StopKind) -> bool:
        """The model's requests can go nowhere (`kind`, routing.verdict): stop the job, or with
        --wait and spent routes, sleep to the next UTC day. True: the dispatcher goes on."""
        if kind is StopKind.DAILY:
            if self._wait:
                await self._wait_for_reset(lane)
                for each in lane.routes:
                    if each.out is Out.DAILY:
                        self._back_in(lane, each)
                return True
            self._halt(Stop(StopKind.DAILY), "daily budget reached: finishing requests in flight",
                       lane)
        elif kind is StopKind.REFUSED:
            # The words of a refusing endpoint, even if the last one out was unreachable.
            last = next(r.refusal for r in lane.routes if r.out is Out.REFUSED)
            assert last is not None
            self._halt(Stop(StopKind.REFUSED, server_message=last.message, code=last.code,
                            status=last.status), "the API refused the key or account", None)
        else:
            self._halt(Stop(StopKind.NO_NETWORK, server_message=route.refusal.message
                            if route.refusal else "",
                            host=", ".join(r.upstream.host for r in lane.routes)),
                       "cannot reach the API", None)
        return False

    async def fail_over(self, lane: Lane, route: Route, job: Job, action: Action) -> bool:
        """With several routes: what takes this route out sends the job back to the model's
        queue for another route, with a fresh count of failures. True: handled here."""
        outcome = job.last
        assert outcome is not None and job.day is not None
        if (action is Action.BACKOFF and not route.connected and never_connected(outcome)
                and route.streak >= NO_NETWORK_TRIES):
            # Nothing through this endpoint ever connected: its own "no network" (each request
            # moves on to other routes, so no one request counts this route's failures).
            action = Action.STOP_NO_NETWORK
        if action in (Action.WAIT_DAY, Action.STOP_DAILY):
            # Its dispatcher finds the budget spent at its next admission and takes it out.
            route.exhaust(job)
            self._move(lane, job)
            return True
        if action in (Action.STOP_REFUSED, Action.STOP_NO_NETWORK):
            route.refusal = outcome
            self._move(lane, job)
            if route.out is None:
                why = Out.REFUSED if action is Action.STOP_REFUSED else Out.UNREACHABLE
                await self.take_out(lane, route, why, outcome.message)
            return True
        if action is Action.FAIL and _not_served(outcome):
            return await self._not_served(lane, route, job)
        if action is Action.BACKOFF and route.streak >= FAIL_STREAK and route.out is None:
            route.cool_offs += 1
            pause = cool_off_s(route.cool_offs)
            route.back_at = self._clock() + pause
            # Its failures still count: when every route keeps failing, the request fails
            # after --max-retries, as with one endpoint.
            self._move(lane, job, fresh=False)

            async def back_in() -> None:
                await self._sleep(pause)
                self._back_in(lane, route)

            self._later(back_in())
            await self.take_out(lane, route, Out.FAILING,
                                 f"{route.streak} failures in a row (last: {outcome.message}); "
                                 f"back in {_fmt_pause(pause)}")
            return True
        return False

    async def _not_served(self, lane: Lane, route: Route, job: Job) -> bool:
        """A 404 or a redirect says the endpoint has no such model or path (a mistyped Azure
        deployment or base_url), not that the request is bad: out for the run while another
        route is in. The last one in keeps its answers, recorded as without --endpoints."""
        outcome = job.last
        assert outcome is not None
        if route.out is None and any(r.out is None for r in lane.routes if r is not route):
            # The classifier's words for a redirect speak of --base-url, not of this file.
            said = ("a redirect, which batchrun never follows" if outcome.code == "redirected"
                    else outcome.message.rstrip("."))
            self._move(lane, job)
            await self.take_out(
                lane, route, Out.NOT_SERVED,
                f"HTTP {outcome.status}: {said}. Check its base_url or azure_endpoint and its "
                "[endpoint.models] entry for the model")
            return True
        if route.out is Out.NOT_SERVED:  # sent before it was taken out
            self._move(lane, job)
            return True
        return False

    def _back_in(self, lane: Lane, route: Route) -> None:
        """A new UTC day or the end of a cool-off: the route takes work again."""
        route.out, route.streak = None, 0
        if route.name:
            self._emit(RouteChanged(route.name, lane.model, BACK))
        lane.changed.set()

    def _move(self, lane: Lane, job: Job, fresh: bool = True) -> None:
        """Back to the front of the model's queue for another route; `fresh`: the failures
        it met belong to the endpoint just taken out, not to the request."""
        if fresh:
            job.tries.failures = 0
        lane.retries.appendleft(job)
        lane.changed.set()

