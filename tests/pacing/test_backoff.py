"""Every wait that doubles after a failure comes from one function (batchrun.pacing.backoff), and it
stays at its cap however many failures came before: a server failing for hours must not turn
the 1,025th wait into an OverflowError that ends the job with a traceback."""

from __future__ import annotations

import random

import pytest

from batchrun.pacing.backoff import MAX_BACKOFF_S, backoff_s
from batchrun.pacing.limiter import MAX_COOLDOWN_S, Pacer
from batchrun.routing.rules import MAX_COOL_OFF_S, cool_off_s


def test_the_wait_doubles_from_the_first_up_to_the_cap() -> None:
    waits = [backoff_s(n, first_s=0.5) for n in range(1, 10)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


@pytest.mark.parametrize("failures", [1_024, 1_025, 2_000, 10**9])
def test_the_2000th_failure_waits_the_cap_not_an_overflow(failures: int) -> None:
    assert backoff_s(failures, first_s=0.5) == MAX_BACKOFF_S


def test_jitter_spreads_the_wait_by_half_either_way_with_the_given_random() -> None:
    waits = {backoff_s(3, first_s=1.0, rng=random.Random(seed)) for seed in range(200)}
    assert min(waits) >= 2.0 and max(waits) <= 6.0 and len(waits) == 200
    assert backoff_s(3, first_s=1.0, rng=random.Random(7)) == \
        backoff_s(3, first_s=1.0, rng=random.Random(7))


def test_a_route_failing_for_the_2000th_time_stays_out_the_longest_cool_off() -> None:
    assert cool_off_s(2_000) == MAX_COOL_OFF_S


def test_the_2000th_429_in_a_row_pauses_the_longest_cooldown() -> None:
    pacer = Pacer(rpm=600, tpm=0, now=0.0)
    pauses = []
    for i in range(2_000):
        now = 100.0 * i  # each sent after the last cooldown began: each counts
        pauses.append(pacer.rate_limited(pacer.admit(1, now), None, now + 0.1))
    assert pauses[-1] == MAX_COOLDOWN_S
