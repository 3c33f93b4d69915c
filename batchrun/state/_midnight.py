"""Which UTC day a per-day 429 is about, just after our midnight.

Hosts waiting for 00:00 UTC fire together, and a server whose clock is a little behind still
answers for its yesterday, saying its day ends in a moment. That day is not ours: neither the
shared state nor the host that got the answer may take the new day as spent. (Only just after
midnight: some servers' per-day hints are minutes at any hour.)
"""

from __future__ import annotations

import datetime as dt

MIDNIGHT_SKEW = dt.timedelta(minutes=5)  # a server's day ending this soon after ours began


def servers_yesterday(day: dt.date, now: dt.datetime, hint_s: float | None) -> bool:
    """Is a per-day 429 with this reset hint, for a request admitted on `day`, about the day
    before (the server's day ends within MIDNIGHT_SKEW of `day`'s start)?"""
    began = dt.datetime.combine(day, dt.time(), dt.UTC)
    return hint_s is not None and now + dt.timedelta(seconds=hint_s) - began < MIDNIGHT_SKEW
