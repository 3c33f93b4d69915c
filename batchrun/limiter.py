"""Admission control for one (endpoint, model): requests/min, tokens/min and in-flight slots.

Why not aiolimiter: admission must take a request slot, its tokens and a concurrency slot in one
FIFO step; a bucket's capacity must change while it runs (slow start, fallback) and its level must
be corrected from the server's headers; and a request larger than the bucket must go when the
bucket is full instead of raising. aiolimiter's AsyncLimiter does none of these (it raises
ValueError above capacity and lets small amounts overtake large ones), so the arithmetic lives in
`Pacer`, a pure class driven by explicit timestamps that tests step through without sleeping.

How the burst adapts. Servers differ: OpenAI's buckets hold a minute's budget, others quantize it
to 1-10 s windows, where a burst of a minute's budget is a 429 storm. We start with a bucket of
about one second's budget (less a small reserve that absorbs network jitter), double it each round
trip while responses show the server has at least twice that much room (TCP's slow start), and at
the first per-minute 429 fall back to even pacing for the rest of the run.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

START_BURST_S = 1.0
MAX_BURST_S = 60.0
# Even pacing after a 429: a fifth of a second's budget at a time (half of it the reserve).
PACED_BURST_S = 0.2
# Budget held back from the server's bucket so that requests arriving a little out of step
# (network jitter) never find it empty.
RESERVE_S = 0.1
MAX_COOLDOWN_S = 60.0
DEFAULT_MAX_IN_FLIGHT = 512
MIN_IN_FLIGHT = 8


class _Bucket:
    """A continuously refilling bucket that may go into debt for an oversized request.

    It never fills past `capacity - reserve`: the reserve stays in the server's bucket.
    """

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, per_minute: int, burst_s: float, now: float) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = self.rate * burst_s
        self.level = self.full
        self.updated = now

    @property
    def reserve(self) -> float:
        return self.rate * RESERVE_S

    @property
    def full(self) -> float:
        return max(self.capacity - self.reserve, min(1.0, self.capacity))

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.full, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, amount: float) -> float:
        # An amount above a full bucket waits for a full bucket, then goes into debt.
        need = min(amount, self.full)
        # The tolerance keeps float rounding from producing waits too small to advance a clock.
        return 0.0 if self.level >= need - 1e-6 else (need - self.level) / self.rate


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admission: what it cost and where the counters stood just after it."""

    cost: int
    at: float
    tokens_after: float
    requests_after: int
    # Did this admission use up most of the burst? Only then does the answer say anything about
    # whether a bigger burst would fit (an idle client learns nothing from a full server).
    constrained: bool = False


@dataclass(frozen=True, slots=True)
class ServerState:
    """What a response's x-ratelimit-* headers say; None where a header was absent."""

    limit_requests: int | None = None
    limit_tokens: int | None = None
    remaining_requests: float | None = None
    remaining_tokens: float | None = None


class Pacer:
    """The arithmetic of admission, with time passed in. RPM/TPM of 0 mean unlimited."""

    def __init__(self, rpm: int, tpm: int, now: float) -> None:
        self.burst_s = START_BURST_S
        self.growth_frozen = False
        self.cooldown_until = now
        self._cooldown_started = -math.inf
        self.consecutive_429 = 0
        self._last_growth = now
        self._requests = _Bucket(rpm, self.burst_s, now) if rpm else None
        self._tokens = _Bucket(tpm, self.burst_s, now) if tpm else None
        self.admitted_tokens = 0.0
        self.admitted_requests = 0

    @property
    def tpm(self) -> int:
        return self._tokens.limit if self._tokens else 0

    @property
    def rpm(self) -> int:
        return self._requests.limit if self._requests else 0

    def _buckets(self) -> list[_Bucket]:
        return [b for b in (self._requests, self._tokens) if b is not None]

    def too_big(self, cost: int) -> bool:
        """A request above the per-minute token limit can never be admitted."""
        return self._tokens is not None and cost > self._tokens.limit

    def delay(self, cost: int, now: float) -> float:
        """Seconds until a request of this cost may go; 0 means now."""
        wait = max(0.0, self.cooldown_until - now)
        for bucket, amount in ((self._requests, 1), (self._tokens, cost)):
            if bucket is not None:
                bucket.refill(now)
                wait = max(wait, bucket.wait(amount))
        return wait

    def admit(self, cost: int, now: float) -> Ticket:
        if self._requests is not None:
            self._requests.refill(now)
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.refill(now)
            self._tokens.level -= cost
        self.admitted_tokens += cost
        self.admitted_requests += 1
        constrained = any(b.level < b.full / 2 for b in self._buckets())
        return Ticket(cost, now, self.admitted_tokens, self.admitted_requests, constrained)

    def observe(self, ticket: Ticket, state: ServerState, now: float) -> None:
        """Correct the buckets from a response's headers; grow the burst if there is room."""
        self.consecutive_429 = 0
        if state.limit_requests and self._requests and state.limit_requests < self._requests.limit:
            self._set_limit(self._requests, state.limit_requests, now)
        if state.limit_tokens and self._tokens and state.limit_tokens < self._tokens.limit:
            self._set_limit(self._tokens, state.limit_tokens, now)
        room: list[float] = []
        self._estimates: list[float] = []
        for bucket, remaining, since in (
            (self._requests, state.remaining_requests,
             self.admitted_requests - ticket.requests_after),
            (self._tokens, state.remaining_tokens, self.admitted_tokens - ticket.tokens_after),
        ):
            if bucket is None:
                continue
            if remaining is None:
                room.append(0.0)
                self._estimates.append(bucket.level)
                continue
            # The server's level now: what it reported, plus refill since, minus what we have
            # admitted since that request (which the server has not counted yet).
            est = remaining + bucket.rate * (now - ticket.at) - since
            bucket.refill(now)
            bucket.level = min(bucket.level, est - bucket.reserve)
            self._estimates.append(est)
            # Room: how much more than the reserve the server holds, in bursts of ours.
            room.append((est - bucket.reserve) / bucket.capacity)
        if (
            room
            and not self.growth_frozen
            and self.burst_s < MAX_BURST_S
            and ticket.constrained
            and ticket.at >= self._last_growth
            and min(room) >= 0.5
        ):
            self._grow(now)

    def _grow(self, now: float) -> None:
        """Double the burst. `observe` has just capped each level at the server's estimated
        level, so the added budget is only what the server is known to hold."""
        old = self.burst_s
        self.burst_s = min(MAX_BURST_S, old * 2)
        self._last_growth = now
        for bucket, est in zip(self._buckets(), self._estimates, strict=True):
            added = bucket.rate * (self.burst_s - old)
            bucket.capacity += added
            bucket.level = min(bucket.level + added, est - bucket.reserve)

    def _set_limit(self, bucket: _Bucket, per_minute: int, now: float) -> None:
        bucket.refill(now)
        bucket.limit = per_minute
        bucket.rate = per_minute / 60.0
        bucket.capacity = bucket.rate * self.burst_s
        bucket.level = min(bucket.level, bucket.full)

    def rate_limited(self, ticket: Ticket, hint_s: float | None, now: float) -> float:
        """A per-minute 429: one shared cooldown, even pacing from now on. Returns the pause.

        Requests admitted before the current cooldown began are echoes of the same overload:
        they may lengthen the pause to the server's hint but do not count as a new 429.
        """
        if ticket.at < self._cooldown_started:
            self.cooldown_until = max(self.cooldown_until, now + min(hint_s or 0, MAX_COOLDOWN_S))
            return max(0.0, self.cooldown_until - now)
        self.consecutive_429 += 1
        self._cooldown_started = now
        # Server hints are optimistic during a storm: each 429 in a row doubles the pause.
        backoff = min(MAX_COOLDOWN_S, 0.5 * 2.0 ** (self.consecutive_429 - 1))
        pause = min(MAX_COOLDOWN_S, max(hint_s or 0.0, backoff))
        self.cooldown_until = max(self.cooldown_until, now + pause)
        self.growth_frozen = True
        self.burst_s = PACED_BURST_S
        for bucket in self._buckets():
            bucket.refill(now)
            bucket.capacity = bucket.rate * PACED_BURST_S
            # The server says its bucket is empty; start ours below zero to rebuild the reserve.
            bucket.level = -bucket.reserve
            bucket.updated = now
        return pause

    def burst_requests(self, mean_cost: float) -> float:
        """How many requests of the mean cost the current burst lets go at once."""
        sizes: list[float] = []
        if self._requests:
            sizes.append(self._requests.capacity)
        if self._tokens and mean_cost > 0:
            sizes.append(self._tokens.capacity / mean_cost)
        return min(sizes, default=math.inf)

    def requests_per_second(self, mean_cost: float) -> float:
        """The steady admission rate the limits allow, for sizing concurrency."""
        rates: list[float] = []
        if self._requests:
            rates.append(self._requests.rate)
        if self._tokens and mean_cost > 0:
            rates.append(self._tokens.rate / mean_cost)
        return min(rates, default=math.inf)


class Limiter:
    """Async FIFO admission over a Pacer, plus in-flight slots sized by Little's law.

    Create it inside the running loop; one per (endpoint, model).
    """

    def __init__(
        self,
        rpm: int,
        tpm: int,
        concurrency: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.pacer = Pacer(rpm, tpm, clock())
        self._fixed_concurrency = concurrency
        self._lock = asyncio.Lock()
        self._slot_freed = asyncio.Event()
        self.in_flight = 0
        self._latency = 1.0
        self._mean_cost = 0.0

    @property
    def max_in_flight(self) -> int:
        if self._fixed_concurrency:
            return self._fixed_concurrency
        # Little's law: in flight = rate x latency; twice that, so latency spikes never starve
        # us, plus the current burst, which is meant to go out at once.
        rps = self.pacer.requests_per_second(self._mean_cost)
        burst = self.pacer.burst_requests(self._mean_cost)
        if math.isinf(rps) or math.isinf(burst):
            return DEFAULT_MAX_IN_FLIGHT
        want = math.ceil(rps * self._latency * 2 + burst) + MIN_IN_FLIGHT
        return max(MIN_IN_FLIGHT, min(DEFAULT_MAX_IN_FLIGHT, want))

    async def acquire(self, cost: int) -> Ticket:
        """Wait (FIFO) until a request of this cost may go; take its slot and budget."""
        async with self._lock:
            while True:
                if self.in_flight >= self.max_in_flight:
                    self._slot_freed.clear()
                    await self._slot_freed.wait()
                    continue
                now = self._clock()
                wait = self.pacer.delay(cost, now)
                if wait <= 0:
                    break
                await self._sleep(wait)
            self.in_flight += 1
            self._mean_cost = cost if not self._mean_cost else 0.95 * self._mean_cost + 0.05 * cost
            return self.pacer.admit(cost, now)

    def release(self, ticket: Ticket, state: ServerState | None) -> None:
        """A request finished (any outcome): free its slot, learn latency and server state."""
        now = self._clock()
        self.in_flight -= 1
        self._slot_freed.set()
        self._latency = 0.9 * self._latency + 0.1 * max(0.0, now - ticket.at)
        if state is not None:
            self.pacer.observe(ticket, state, now)

    def rate_limited(self, ticket: Ticket, hint_s: float | None) -> float:
        return self.pacer.rate_limited(ticket, hint_s, self._clock())
