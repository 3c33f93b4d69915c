"""The limiter's invariants, with time stepped by hand (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batchrun.pacing.limiter import MAX_BURST_S, Limiter, Pacer, ServerState

TPM = 60_000  # 1,000 tokens/s
RPM = 600  # 10 requests/s


def run_pacer(pacer: Pacer, costs: list[int], gaps: list[float]) -> list[tuple[float, int]]:
    """Admit each cost as soon as the pacer allows, after an optional idle gap."""
    now, admitted = 0.0, []
    for cost, gap in zip(costs, gaps, strict=True):
        now += gap
        now += pacer.delay(cost, now)
        assert pacer.delay(cost, now) <= 1e-9
        pacer.admit(cost, now)
        admitted.append((now, cost))
    return admitted


def worst_window_excess(admitted: list[tuple[float, int]], rate: float, allowance: float) -> float:
    """max over windows [t_i, t_j] of (tokens admitted) - (rate x length + allowance)."""
    worst = -1e18
    for i in range(len(admitted)):
        total = 0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            worst = max(worst, total - (rate * (admitted[j][0] - admitted[i][0]) + allowance))
    return worst


costs_strategy = st.lists(st.integers(1, TPM), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(costs=costs_strategy, data=st.data())
def test_no_window_admits_more_than_the_limit_plus_the_burst(costs: list[int],
                                                             data: st.DataObject) -> None:
    gaps = data.draw(st.lists(st.floats(0, 5), min_size=len(costs), max_size=len(costs)))
    pacer = Pacer(rpm=0, tpm=TPM, now=0.0)
    admitted = run_pacer(pacer, costs, gaps)
    burst = TPM / 60 * 1.0  # one second of budget
    oversize = max(0, max(costs) - burst)
    assert worst_window_excess(admitted, TPM / 60, burst + oversize) <= 1e-6


@settings(max_examples=150, deadline=None)
@given(
    costs=st.lists(st.integers(1, 2_000), min_size=1, max_size=60),
    feedback=st.lists(st.tuples(st.booleans(), st.integers(0, TPM), st.integers(0, RPM)),
                      min_size=60, max_size=60),
)
def test_whatever_the_server_says_no_window_exceeds_a_minute_plus_rate(
    costs: list[int], feedback: list[tuple[bool, int, int]]
) -> None:
    """Headers only correct downwards, and growth stops at a minute's budget."""
    pacer = Pacer(rpm=RPM, tpm=TPM, now=0.0)
    now, admitted = 0.0, []
    for cost, (is_429, rem_tokens, rem_requests) in zip(costs, feedback, strict=False):
        now += pacer.delay(cost, now)
        ticket = pacer.admit(cost, now)
        admitted.append((now, cost))
        if is_429 and rem_tokens % 7 == 0:
            pacer.rate_limited(ticket, None, now)
        else:
            pacer.answered(ticket, ServerState(remaining_requests=rem_requests,
                                              remaining_tokens=rem_tokens), now)
    assert pacer.burst_s <= MAX_BURST_S
    assert worst_window_excess(admitted, TPM / 60, TPM + 2_000) <= 1e-6


def test_a_request_bigger_than_the_burst_goes_when_the_bucket_is_full() -> None:
    pacer = Pacer(rpm=0, tpm=TPM, now=0.0)
    pacer.admit(500, 0.0)
    big = TPM // 2  # 30 s of budget against a 1 s burst
    wait = pacer.delay(big, 0.0)
    assert wait == pytest.approx(0.5)  # until the bucket is full again, not 30 s
    pacer.admit(big, wait)
    # It went into debt: the next small request waits until the debt is repaid.
    full = 900  # a second's budget less the 0.1 s reserve
    assert pacer.delay(10, wait) == pytest.approx((big - full + 10) / 1000)


def test_a_request_bigger_than_the_per_minute_limit_can_never_run() -> None:
    pacer = Pacer(rpm=0, tpm=TPM, now=0.0)
    assert pacer.too_big(TPM + 1)
    assert not pacer.too_big(TPM)
    assert not Pacer(rpm=0, tpm=0, now=0.0).too_big(10**9)


def test_burst_grows_while_headers_show_room_and_falls_back_at_the_first_429() -> None:
    pacer = Pacer(rpm=RPM, tpm=0, now=0.0)
    now = 0.0
    sizes = [pacer.burst_s]
    for _ in range(14):
        tickets = []
        while pacer.delay(1, now) == 0:
            tickets.append(pacer.admit(1, now))
        now += 0.3  # one round trip
        # A whole-minute server: it started with RPM and has seen what we sent.
        for t in tickets:
            pacer.answered(t, ServerState(remaining_requests=RPM - int(pacer.admitted_requests)),
                           now)
        sizes.append(pacer.burst_s)
    # Small probes first (an unseen 1 s window edge costs at most a tenth of a second's
    # budget), faster while the headers keep showing room, up to doubling.
    assert sizes[:3] == pytest.approx([1.0, 1.1, 1.265])
    assert sizes == sorted(sizes)
    # Within 14 round trips the burst holds all the server had left (a minute's budget, less
    # what we spent meanwhile).
    assert pacer.burst_s >= 0.85 * MAX_BURST_S
    before = pacer.burst_s
    pacer.rate_limited(pacer.admit(1, now), 1.5, now)
    assert pacer.burst_s == before / 2
    assert pacer.delay(1, now) >= 1.5


def test_no_growth_when_the_server_holds_only_a_second() -> None:
    pacer = Pacer(rpm=RPM, tpm=0, now=0.0)
    now = 0.0
    for _ in range(20):
        tickets = []
        while pacer.delay(1, now) == 0:
            tickets.append(pacer.admit(1, now))
        now += pacer.delay(1, now)
        # A one-second-window server: its remaining never exceeds a second's budget.
        for t in tickets:
            pacer.answered(t, ServerState(remaining_requests=1), now)
    assert pacer.burst_s == 1.0


def test_a_lower_server_limit_is_adopted() -> None:
    pacer = Pacer(rpm=RPM, tpm=TPM, now=0.0)
    ticket = pacer.admit(10, 0.0)
    pacer.answered(ticket, ServerState(limit_requests=300, limit_tokens=TPM * 2), 0.1)
    assert pacer.rpm == 300 and pacer.tpm == TPM


def test_consecutive_429s_lengthen_the_cooldown() -> None:
    pacer = Pacer(rpm=RPM, tpm=0, now=0.0)
    pauses = []
    for i in range(8):
        # Each request was sent after the previous cooldown began: the pause was not enough.
        now = 100.0 * i
        pauses.append(pacer.rate_limited(pacer.admit(1, now), 0.2, now + 0.1))
    assert pauses == sorted(pauses) and pauses[-1] == 60.0
    assert pauses[0] == pytest.approx(0.5)


def test_429s_to_requests_sent_before_the_cooldown_do_not_escalate_it() -> None:
    pacer = Pacer(rpm=RPM, tpm=0, now=0.0)
    wave = [pacer.admit(1, 0.0) for _ in range(5)]
    first = pacer.rate_limited(wave[0], 0.3, 0.3)
    echoes = [pacer.rate_limited(t, 0.3, 0.31) for t in wave[1:]]
    assert first == pytest.approx(0.5)
    assert max(echoes) <= 0.5 and pacer.consecutive_429 == 1


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


@settings(max_examples=50, deadline=None)
@given(costs=st.lists(st.integers(1, TPM), min_size=2, max_size=25))
def test_admission_is_fifo_big_requests_are_not_overtaken(costs: list[int]) -> None:
    async def scenario() -> list[int]:
        fake = FakeTime()
        limiter = Limiter(rpm=RPM, tpm=TPM, concurrency=1000, clock=fake.clock, sleep=fake.sleep)
        order: list[int] = []

        async def one(i: int, cost: int) -> None:
            await limiter.acquire(cost)
            order.append(i)

        async with asyncio.TaskGroup() as tg:
            for i, cost in enumerate(costs):
                tg.create_task(one(i, cost))
                await asyncio.sleep(0)  # start them in this order
        return order

    assert asyncio.run(scenario()) == list(range(len(costs)))


async def test_in_flight_slots_wait_for_release() -> None:
    limiter = Limiter(rpm=0, tpm=0, concurrency=2)
    a = await limiter.acquire(1)
    await limiter.acquire(1)
    third = asyncio.create_task(limiter.acquire(1))
    await asyncio.sleep(0)
    assert not third.done() and limiter.in_flight == 2
    limiter.release(a, None)
    await asyncio.wait_for(third, 1)
    assert limiter.in_flight == 2


def test_default_concurrency_follows_rate_and_latency() -> None:
    async def sized() -> tuple[int, int]:
        slow = Limiter(rpm=RPM, tpm=0)
        slow._latency = 2.0
        fast = Limiter(rpm=RPM, tpm=0)
        fast._latency = 0.1
        return slow.max_in_flight, fast.max_in_flight

    slow, fast = asyncio.run(sized())
    # 10 req/s x 2 s x 2 + a one-second burst + 8 spare
    assert slow == 10 * 2 * 2 + 10 + 8
    assert fast < slow
