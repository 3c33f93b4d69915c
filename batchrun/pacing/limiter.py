"""Admission control for one (endpoint, model): requests/min, tokens/min and in-flight slots.

Why not aiolimiter: admission must take a request slot, its tokens and a concurrency slot in one
FIFO step; a bucket's capacity must change while it runs (slow start, fallback) and its level must
be corrected from the server's headers; and a request larger than the bucket must go when the
bucket is full instead of raising. aiolimiter's AsyncLimiter does none of these (it raises
ValueError above capacity and lets small amounts overtake large ones), so the arithmetic lives in
`Pacer`, a pure class driven by explicit timestamps that tests step through without sleeping.

The model: every server signal is noisy evidence. Servers differ in what they enforce (a
whole-minute bucket, or 1-10 s windows where a minute's burst is a 429 storm) and in what they
say: x-ratelimit-remaining-* may be measured at admission or when the response is sent (stale by
one round trip either way), may describe the minute while enforcement uses a shorter window, may
be shared with other clients of the key, or may be absent. So:

- Two readings bracket the server's level. Measured at admission, it is the reported remaining
  plus refill since minus what we admitted since; measured at response, about the reported
  remaining. The bucket is corrected down only below the higher reading (so an admission-time
  guess never hides budget the server holds), and the burst grows only within the lower one.
- The burst (the budget sent at once, our bucket's capacity) starts at one second and grows by
  probing: after a request sent with the burst used up is answered, the next burst is a step
  bigger. The first step is a tenth, about the reserve, so the first probe past an unseen window
  edge costs at most one 429; each step that the headers show room for is half again bigger, up
  to doubling, so a whole-minute bucket is spent within about ten round trips.
- A 429 says "too fast now": one shared cooldown (doubling while 429s come in a row, the streak
  ended by any answer, with or without headers), the burst halves (multiplicative decrease),
  and it never again exceeds the last burst accepted before the overshooting probe. Only budget
  the server may still hold from its start is spent at once on growth; after a 429 the server's
  bucket was empty, so later growth only lets budget accumulate.
- The rate is evidence too. Two 429s within 30 s that no probe explains (the only probes
  blamed are growths that sent budget at once) say the rate itself is too high: another client
  on the key, or a limit lowered without saying so. The rate drops by 15 % and recovers by
  0.5 % of the limit per second. Headers that show less than even their higher reading allows
  ease it off by 3 %, at most once a round trip, unless the server's limit is above ours: its
  remaining then describes its own window (which a burst of ours can outgrow), and the user's
  lower limit is what they asked to be held to. A lower x-ratelimit-limit-* is adopted at once.

Costs are in the server's units: the route admits each request at the charge its Calibration
(batchrun.pacing.calibrate) learned from the server's 429s and usage, so the rate here is the
server's.

What it cannot do (bench/README.md has the figures): find a window's edge without crossing it
when no header describes the window (one probe's worth of 429s), or learn a rate cut from a
headerless server except by 429s (about 2 % of requests).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from batchrun.pacing.backoff import backoff_s

START_BURST_S = 1.0
MAX_BURST_S = 60.0
# The smallest burst: a fifth of a second's budget at a time (half of it the reserve).
PACED_BURST_S = 0.2
# Budget held back from the server's bucket so that requests arriving a little out of step
# (network jitter) never find it empty.
RESERVE_S = 0.1
# A probe asks for this much more burst than the last one that was accepted: past an unseen
# window edge it overshoots by at most this fraction (the reserve absorbs the first tenth).
FIRST_STEP = 0.1
# While the headers show the server holds more than the next probe, each probe's step grows by
# half, up to doubling, so a whole-minute bucket is reached in about ten round trips.
MAX_STEP = 1.0
STEP_GROWTH = 1.5
MAX_COOLDOWN_S = 60.0
FIRST_COOLDOWN_S = 0.5
# Two 429s this close together say the rate itself is too high (a lowered limit, another client
# on the key), not that one burst overshot: the rate drops by RATE_CUT and recovers slowly.
RATE_CUT_WINDOW_S = 30.0
RATE_CUT = 0.85
# Headers showing less than we counted cut the rate gently, once a round trip.
HEADER_RATE_CUT = 0.97
MIN_RATE_SCALE = 0.3
RATE_RECOVERY_PER_S = 0.005
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
        # The largest burst not known to overshoot; lowered by 429s, never raised.
        self.ceiling_s = MAX_BURST_S
        self._step = FIRST_STEP
        self._burst_before_growth = START_BURST_S
        self._last_growth = now
        self._probe_at: float | None = None  # when the burst last grew, if no 429 came since
        self.cooldown_until = now
        self._cooldown_started = -math.inf
        self.consecutive_429 = 0
        self._last_429 = -math.inf
        self._last_rate_cut = -math.inf
        self._drained = False  # has the server refused us, so its bucket was once empty?
        self.rate_scale = 1.0
        self._scale_updated = now
        self._requests = _Bucket(rpm, self.burst_s, now) if rpm else None
        self._tokens = _Bucket(tpm, self.burst_s, now) if tpm else None
        self.admitted_tokens = 0.0
        self.admitted_requests = 0
        self.limits_adopted = 0  # how many times a lower server limit was adopted

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

    def _refill(self, now: float) -> None:
        """Refill every bucket to `now`, letting a cut rate recover additively first."""
        if self.rate_scale < 1.0 and now > self._scale_updated:
            for bucket in self._buckets():
                bucket.refill(now)  # at the old rate up to now
            self.rate_scale = min(
                1.0, self.rate_scale + (now - self._scale_updated) * RATE_RECOVERY_PER_S)
            self._resize()
        self._scale_updated = now
        for bucket in self._buckets():
            bucket.refill(now)

    def _resize(self) -> None:
        for bucket in self._buckets():
            bucket.rate = bucket.limit / 60.0 * self.rate_scale
            bucket.capacity = bucket.rate * self.burst_s
            bucket.level = min(bucket.level, bucket.full)

    def delay(self, cost: int, now: float) -> float:
        """Seconds until a request of this cost may go; 0 means now."""
        self._refill(now)
        wait = max(0.0, self.cooldown_until - now)
        for bucket, amount in ((self._requests, 1), (self._tokens, cost)):
            if bucket is not None:
                wait = max(wait, bucket.wait(amount))
        return wait

    def admit(self, cost: int, now: float) -> Ticket:
        self._refill(now)
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= cost
        self.admitted_tokens += cost
        self.admitted_requests += 1
        constrained = any(b.level < b.full / 2 for b in self._buckets())
        return Ticket(cost, now, self.admitted_tokens, self.admitted_requests, constrained)

    def answered(self, ticket: Ticket, state: ServerState | None, now: float) -> None:
        """The server answered (not a 429): correct the buckets from its headers, if any, and
        probe for a bigger burst if this request was sent with the burst used up."""
        self.consecutive_429 = 0
        self._refill(now)
        if state is not None:
            self._adopt_limits(ticket, state)
        # How much more burst the server is known to hold (seconds); inf without headers.
        headroom = math.inf
        for bucket, remaining, since, limit in (
            (self._requests, state.remaining_requests if state else None,
             self.admitted_requests - ticket.requests_after,
             state.limit_requests if state else None),
            (self._tokens, state.remaining_tokens if state else None,
             self.admitted_tokens - ticket.tokens_after,
             state.limit_tokens if state else None),
        ):
            if bucket is None or remaining is None:
                continue
            # Two readings of the header. Measured at admission: the server's level now is
            # what it reported plus refill since, minus what we admitted since. Measured as the
            # response was sent: it has counted those already and is about what it reported.
            at_admission = remaining + bucket.rate * (now - ticket.at) - since
            low, high = sorted((at_admission, float(remaining)))
            # Correct down only past what both readings allow: a stale or foreign reading
            # never costs more than one round trip of our own traffic.
            if bucket.level > high - bucket.reserve:
                bucket.level = high - bucket.reserve
                # The server refills slower than we do (another client on the key, a limit
                # cut without saying so): ease the rate off, at most once a round trip. Not
                # when it says it refills faster than the limit we were told: its remaining
                # then describes its own window, which a burst of ours may outgrow without
                # our rate being too high, and the user's limit is what they asked for.
                if ticket.at >= self._last_rate_cut and not (limit and limit > bucket.limit):
                    self._cut_rate(HEADER_RATE_CUT, now)
            headroom = min(headroom, (low - bucket.reserve - bucket.level) / bucket.rate)
        if ticket.constrained and ticket.at >= self._last_growth:
            self._grow(headroom, now)

    def _adopt_limits(self, ticket: Ticket, state: ServerState) -> None:
        """A lower limit from the server is adopted at once, burst and rate alike."""
        for bucket, limit, cost in ((self._requests, state.limit_requests, 1),
                                    (self._tokens, state.limit_tokens, ticket.cost)):
            if not limit or bucket is None or limit >= bucket.limit:
                continue
            bucket.limit = limit
            self.limits_adopted += 1
            if cost > limit:
                # The server refuses outright what exceeds its limit ("Request too large"):
                # it charged nothing, so neither do we. Kept as debt it held every request
                # after it back by cost / rate, 90 s for one 3,000-token refusal at 2,000 TPM.
                bucket.level += cost
                if bucket is self._tokens and self._requests is not None:
                    self._requests.level += 1
            self._resize()

    def _grow(self, headroom_s: float, now: float) -> None:
        """Probe: a burst a step bigger, within what the server is known to hold."""
        want = min(self.ceiling_s, self.burst_s * (1 + self._step))
        new = min(want, self.burst_s + headroom_s)
        # A server that holds only a little more than our burst is at its edge: stay.
        if new < min(want, self.burst_s + FIRST_STEP * START_BURST_S):
            return
        # Headers that show room for the whole step speed up the next probe; without them a
        # probe stays small, since the first sign of an edge is a 429.
        confirmed = not math.isinf(headroom_s) and new == want
        self._step = min(MAX_STEP, self._step * STEP_GROWTH) if confirmed else FIRST_STEP
        old, self.burst_s = self.burst_s, new
        self._burst_before_growth = old
        self._last_growth = now
        if not self._drained:
            # Only growth that sends budget at once can overshoot: a 429 after it blames it.
            self._probe_at = now
        # The added budget is spendable now only while the server may still hold what its
        # bucket started with (never refused us; headers, if any, bounded the step). After a
        # 429 its bucket was empty, and every budget since is refill we already count, whatever
        # its headers say: a bigger burst then only lets more accumulate while we are idle.
        for bucket in self._buckets():
            added = bucket.rate * (new - old)
            bucket.capacity += added
            if not self._drained:
                bucket.level += added

    def rate_limited(self, ticket: Ticket, hint_s: float | None, now: float) -> float:
        """A per-minute 429: one shared cooldown, a smaller burst. Returns the pause.

        Requests admitted before the current cooldown began are echoes of the same overload:
        they may lengthen the pause to the server's hint but do not count as a new 429.
        """
        if ticket.at < self._cooldown_started:
            self.cooldown_until = max(self.cooldown_until, now + min(hint_s or 0, MAX_COOLDOWN_S))
            return max(0.0, self.cooldown_until - now)
        self._refill(now)
        self.consecutive_429 += 1
        self._cooldown_started = now
        # Server hints are optimistic during a storm: each 429 in a row doubles the pause.
        backoff = backoff_s(self.consecutive_429, first_s=FIRST_COOLDOWN_S, cap_s=MAX_COOLDOWN_S)
        pause = min(MAX_COOLDOWN_S, max(hint_s or 0.0, backoff))
        self.cooldown_until = max(self.cooldown_until, now + pause)
        # The burst this request went out under was too big: never probe past the last one
        # accepted, and halve the current one (the multiplicative decrease of AIMD).
        probing = self._probe_at is not None and ticket.at >= self._probe_at
        self.ceiling_s = max(PACED_BURST_S, min(
            self.ceiling_s, self._burst_before_growth if probing else self.burst_s))
        self.burst_s = max(PACED_BURST_S, min(self.ceiling_s, self.burst_s / 2))
        self._step = FIRST_STEP
        self._last_growth = now
        self._probe_at = None
        self._drained = True
        if not probing and now - self._last_429 < RATE_CUT_WINDOW_S:
            self._cut_rate(RATE_CUT, now)
        self._last_429 = now
        self._resize()
        for bucket in self._buckets():
            # The server says its bucket is empty; start ours below zero to rebuild the reserve.
            bucket.level = -bucket.reserve
        return pause

    def _cut_rate(self, factor: float, now: float) -> None:
        self.rate_scale = max(MIN_RATE_SCALE, self.rate_scale * factor)
        self._last_rate_cut = now
        self._resize()

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
        self._answered = asyncio.Event()
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
                await self._wait_or_answer(wait)
            self.in_flight += 1
            self._mean_cost = cost if not self._mean_cost else 0.95 * self._mean_cost + 0.05 * cost
            return self.pacer.admit(cost, now)

    async def _wait_or_answer(self, wait: float) -> None:
        """Sleep `wait`, or less if an answer adopts a lower server limit first: the wait is
        worked out again, since the answer may have given budget back (a request refused as too
        large was charged nothing; its debt held the next request 2.2 s at the limit we were
        told). Other answers leave the wait alone: budget a probe adds waits for it, as before
        (waking on every answer spent probes at once and doubled the 429s on 1 s windows)."""
        self._answered.clear()
        sleeper = asyncio.ensure_future(self._sleep(wait))
        answer = asyncio.ensure_future(self._answered.wait())
        try:
            await asyncio.wait((sleeper, answer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, answer):
                task.cancel()
            # Cancelled tasks are awaited, so none outlives this wait (a stop cancels it).
            await asyncio.gather(sleeper, answer, return_exceptions=True)

    def release(self, ticket: Ticket, state: ServerState | None, ok: bool = False) -> None:
        """A request finished (any outcome): free its slot, learn latency and server state.

        `ok`: the server answered it (not a 429), which ends a streak of 429s even when the
        answer carries no rate headers.
        """
        now = self._clock()
        self.in_flight -= 1
        self._slot_freed.set()
        self._latency = 0.9 * self._latency + 0.1 * max(0.0, now - ticket.at)
        if ok or state is not None:
            adopted = self.pacer.limits_adopted
            self.pacer.answered(ticket, state, now)
            if self.pacer.limits_adopted != adopted:
                self._answered.set()

    def rate_limited(self, ticket: Ticket, hint_s: float | None) -> float:
        return self.pacer.rate_limited(ticket, hint_s, self._clock())
