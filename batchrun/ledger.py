"""The daily token and request budget of one (key, model).

This run-local budget stops a run before it sends more than --tpd/--rpd in one UTC day. It is the
interface the persistent SQLite ledger (shared by every process using the same key and model)
will implement; until then, usage from earlier runs of the same day is not counted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(slots=True)
class DayUsage:
    day: dt.date
    tokens: int = 0
    requests: int = 0


class DailyBudget:
    """Reserve a request's charge before sending; settle to the real usage after."""

    def __init__(self, tpd: int, rpd: int, now: Callable[[], dt.datetime] = utc_now) -> None:
        self.tpd, self.rpd = tpd, rpd
        self._now = now
        self.usage = DayUsage(now().date())

    def _today(self) -> DayUsage:
        today = self._now().date()
        if self.usage.day != today:
            self.usage = DayUsage(today)
        return self.usage

    def reserve(self, tokens: int) -> bool:
        """Take `tokens` and one request from today's budget; False if they don't fit."""
        usage = self._today()
        if self.tpd and usage.tokens + tokens > self.tpd:
            return False
        if self.rpd and usage.requests + 1 > self.rpd:
            return False
        usage.tokens += tokens
        usage.requests += 1
        return True

    def settle(self, reserved: int, actual: int) -> None:
        """Replace a reservation by what the API reported it used (0 when nothing was billed)."""
        self._today().tokens += actual - reserved

    def exhaust(self) -> None:
        """The server says today's budget is spent, whatever our count says."""
        usage = self._today()
        usage.tokens = max(usage.tokens, self.tpd)
        usage.requests = max(usage.requests, self.rpd)

    def describe(self) -> str:
        usage = self._today()
        if self.tpd:
            return (f"{usage.tokens:,} of {self.tpd:,} tokens used on {usage.day.isoformat()} "
                    "(UTC)")
        return f"{usage.requests:,} of {self.rpd:,} requests used on {usage.day.isoformat()} (UTC)"
