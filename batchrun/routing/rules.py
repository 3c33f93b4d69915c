"""Which of a model's routes may take its next request, and when a model has none left: pure
functions over each route's standing, so the rules read (and are tested) apart from the engine.

A route is one (endpoint, model). It is *out* for the UTC day (its daily budget is spent), for
the run (the key was refused, nothing ever connected, or it answered that it does not serve the
model: a 404 or a redirect), or for a cool-off (it kept failing).
Only priority-1 routes take work while any of them is in; priority 2 only when all are out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from batchrun.pacing.backoff import backoff_s
from batchrun.policy.stopkind import StopKind
from batchrun.policy.tiers import Limits

# Retryable failures (5xx, timeouts, resets) in a row that take a route out for a cool-off,
# when the model has another route to go to.
FAIL_STREAK = 5
FIRST_COOL_OFF_S = 30.0
MAX_COOL_OFF_S = 600.0


BACK = "back in rotation"  # the state of a RouteChanged event for a route that takes work again


class Out(enum.Enum):
    DAILY = "spent for the day"
    REFUSED = "refused the key"
    UNREACHABLE = "unreachable"
    FAILING = "failing"
    NOT_SERVED = "does not serve it"


# Out for the rest of the run: nothing sent through them any more counts.
FOR_THE_RUN = (Out.REFUSED, Out.UNREACHABLE, Out.NOT_SERVED)


@dataclass(frozen=True, slots=True)
class Standing:
    priority: int
    out: Out | None = None


def may_take(me: Standing, routes: Sequence[Standing]) -> bool:
    """Whether a route standing `me` among its model's `routes` may take the next request."""
    if me.out is not None:
        return False
    return me.priority == min(r.priority for r in routes if r.out is None)


def verdict(routes: Sequence[Standing]) -> StopKind | None:
    """Why the model can go no further, or None while any route is in or only cooling off.
    Spent routes come back tomorrow, so one spent among refused ones makes it a daily pause."""
    outs = [r.out for r in routes]
    if any(o is None or o is Out.FAILING for o in outs):
        return None
    if Out.DAILY in outs:
        return StopKind.DAILY
    if Out.REFUSED in outs:
        return StopKind.REFUSED
    return StopKind.NO_NETWORK


def combined(limits: Sequence[Limits]) -> Limits:
    """The limits of several routes of a model together: their sum, unlimited if any is."""
    def total(values: list[int]) -> int:
        return 0 if not values or 0 in values else sum(values)

    return Limits(rpm=total([x.rpm for x in limits]), tpm=total([x.tpm for x in limits]),
                  rpd=total([x.rpd for x in limits]), tpd=total([x.tpd for x in limits]))


def cool_off_s(times: int) -> float:
    """How long a failing route stays out the `times`-th time: doubling, within bounds."""
    return backoff_s(times, first_s=FIRST_COOL_OFF_S, cap_s=MAX_COOL_OFF_S)
