"""The one doubling wait after a failure: a request sent again, a files or batches call asked
again, a per-minute 429's cooldown, a failing endpoint's cool-off. Pure (the random is passed
in), so callers keep their own seeded generator and tests their virtual time."""

from __future__ import annotations

import random

MAX_BACKOFF_S = 60.0
# Past this many doublings every first wait worth having is above any cap; without the bound
# 2.0 ** 1024 raises OverflowError, and a job failing for long enough would end in a traceback.
_MAX_DOUBLINGS = 1_000
JITTER = 0.5  # the wait is spread uniformly over [1 - JITTER, 1 + JITTER] times itself


def backoff_s(attempt: int, *, first_s: float, cap_s: float = MAX_BACKOFF_S,
              rng: random.Random | None = None) -> float:
    """The wait after the `attempt`-th failure in a row (1: the first): `first_s`, doubled for
    each failure after the first, at most `cap_s`; then, with `rng`, spread by ±JITTER so
    many clients failing together do not come back together."""
    doublings = min(max(attempt - 1, 0), _MAX_DOUBLINGS)
    wait = min(cap_s, first_s * 2.0 ** doublings)
    return wait * rng.uniform(1 - JITTER, 1 + JITTER) if rng is not None else wait
