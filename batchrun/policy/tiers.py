"""Published rate-limit presets per model family.

Numbers are OpenAI's published limits page as of the prices' date (policy/prices.py). Every
limit can be overridden on the command line; 0 means unlimited.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace

TIERS = ("free", "tier1", "tier2", "tier3", "tier4", "tier5")
UNLIMITED = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-model limits in force. 0 means unlimited."""

    rpm: int = UNLIMITED
    tpm: int = UNLIMITED
    rpd: int = UNLIMITED
    tpd: int = UNLIMITED  # only ever the user's own (--tpd): no tier publishes one
    # The Batch API's enqueued-token limit: what `--via batch` plans its rounds by, never a
    # daily limit of the per-minute path.
    batch_queue_tokens: int = UNLIMITED
    # Which of rpm/tpm/rpd/tpd the user set (--rpm..., an endpoints file) rather than a preset:
    # where a limit came from is said, not compared.
    given: frozenset[str] = field(default=frozenset(), compare=False)

    def override(self, **values: int | None) -> Limits:
        given = {k: v for k, v in values.items() if v is not None}
        for key, value in given.items():
            if value < 0:
                raise ValueError(f"--{key} must be 0 (unlimited) or a positive number, not {value}")
        return replace(self, **given, given=self.given | frozenset(given))


# family -> tier -> published limits. No tier publishes a daily token limit for the per-minute
# path: the figure several guides call "TPD" is the Batch API's queue limit (enqueued tokens),
# so it lives in `batch_queue_tokens` and only `--via batch` reads it.
_L = Limits
_MINI = {
    "free": _L(rpm=3, rpd=200, tpm=40_000, batch_queue_tokens=200_000),
    "tier1": _L(rpm=500, rpd=10_000, tpm=200_000, batch_queue_tokens=2_000_000),
    "tier2": _L(rpm=5_000, tpm=2_000_000, batch_queue_tokens=20_000_000),
    "tier3": _L(rpm=5_000, tpm=4_000_000, batch_queue_tokens=40_000_000),
    "tier4": _L(rpm=10_000, tpm=10_000_000, batch_queue_tokens=1_000_000_000),
    "tier5": _L(rpm=30_000, tpm=150_000_000, batch_queue_tokens=15_000_000_000),
}
_LARGE = {
    "free": _L(rpm=3, rpd=200, tpm=10_000, batch_queue_tokens=90_000),
    "tier1": _L(rpm=500, tpm=30_000, batch_queue_tokens=90_000),
    "tier2": _L(rpm=5_000, tpm=450_000, batch_queue_tokens=1_350_000),
    "tier3": _L(rpm=5_000, tpm=800_000, batch_queue_tokens=50_000_000),
    "tier4": _L(rpm=10_000, tpm=2_000_000, batch_queue_tokens=200_000_000),
    "tier5": _L(rpm=10_000, tpm=30_000_000, batch_queue_tokens=5_000_000_000),
}
_EMBED = {
    "free": _L(rpm=100, rpd=2_000, tpm=40_000),
    "tier1": _L(rpm=3_000, tpm=1_000_000, batch_queue_tokens=3_000_000),
    "tier2": _L(rpm=5_000, tpm=1_000_000, batch_queue_tokens=20_000_000),
    "tier3": _L(rpm=5_000, tpm=5_000_000, batch_queue_tokens=100_000_000),
    "tier4": _L(rpm=10_000, tpm=5_000_000, batch_queue_tokens=500_000_000),
    "tier5": _L(rpm=10_000, tpm=10_000_000, batch_queue_tokens=4_000_000_000),
}
_GPT35 = {
    "free": _L(rpm=3, rpd=200, tpm=40_000, batch_queue_tokens=200_000),
    "tier1": _L(rpm=3_500, rpd=10_000, tpm=200_000, batch_queue_tokens=2_000_000),
    "tier2": _L(rpm=3_500, tpm=2_000_000, batch_queue_tokens=5_000_000),
    "tier3": _L(rpm=3_500, tpm=4_000_000, batch_queue_tokens=50_000_000),
    "tier4": _L(rpm=10_000, tpm=10_000_000, batch_queue_tokens=1_000_000_000),
    "tier5": _L(rpm=10_000, tpm=50_000_000, batch_queue_tokens=10_000_000_000),
}

PRESETS: dict[str, dict[str, Limits]] = {
    "gpt-4o-mini": _MINI,
    "gpt-4.1-mini": _MINI,
    "gpt-4.1-nano": _MINI,
    "gpt-4o": _LARGE,
    "gpt-4.1": _LARGE,
    "gpt-3.5-turbo": _GPT35,
    "text-embedding-3-small": _EMBED,
    "text-embedding-3-large": _EMBED,
    "text-embedding-ada-002": _EMBED,
}

# Context windows (prompt + output), for requests that can never run.
CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o-mini": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-3.5-turbo": 16_385,
    "text-embedding-3-small": 8_191,
    "text-embedding-3-large": 8_191,
    "text-embedding-ada-002": 8_191,
}

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")
# Longest names first so gpt-4o-mini is not taken for gpt-4o.
_FAMILIES = sorted(PRESETS, key=len, reverse=True)


@functools.cache
def family(model: str) -> str | None:
    """Map a model name (dated snapshots included) to a known family, or None."""
    name = _DATED.sub("", model.strip().lower())
    if name in PRESETS:
        return name
    for fam in _FAMILIES:
        if name.startswith(fam + "-"):
            return fam
    return None


def preset(model: str, tier: str) -> Limits | None:
    """The published limits for model at tier, or None for a model we have no table for."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    fam = family(model)
    return PRESETS[fam][tier] if fam else None


def context_window(model: str) -> int | None:
    """Prompt + output tokens the model accepts, or None for a model we have no figure for."""
    fam = family(model)
    return CONTEXT_WINDOWS.get(fam) if fam else None


def batch_queue_tokens(model: str, tier: str) -> int:
    """The Batch API's enqueued-token limit of model at tier (prompt tokens of all its batches in
    progress), or 0 (unlimited) for a model we have no table for."""
    limits = preset(model, tier)
    return limits.batch_queue_tokens if limits is not None else UNLIMITED


@dataclass(frozen=True, slots=True)
class Daily:
    """The daily limit that ends a job's day on the per-minute path, and where it came from."""

    binds: str | None  # "tpd", "rpd" or None: no daily limit stops the job
    limit: int
    source: str  # e.g. "published RPD", "--tpd", "the server's per-day 429 on 2026-12-07"
    days_by_tokens: int
    days_by_requests: int

    @property
    def days(self) -> int:
        return max(self.days_by_tokens, self.days_by_requests)


def daily_source(limits: Limits, which: str) -> str:
    """Where a daily limit in force came from: the user (a flag or an endpoints file) or the
    published table (only RPD is ever published)."""
    if which in limits.given:
        return f"--{which}"
    return f"published {which.upper()}" if getattr(limits, which) else "none published"


def days_for(needed: int, per_day: int, used_today: int) -> int:
    """UTC days (today counts as the first) for `needed` against a daily limit (0: none)."""
    if not per_day:
        return 1
    left_today = max(0, per_day - used_today)
    if needed <= left_today:
        return 1
    return 1 + -(-(needed - left_today) // per_day)


def daily(limits: Limits, tokens: int, requests: int, used: tuple[int, int] = (0, 0),
          spent_on: str = "") -> Daily:
    """Which daily limit decides how many UTC days a job of `tokens` and `requests` takes, after
    `used` (tokens, requests) of today. `spent_on`:
    today's date when the server's per-day 429 said today is spent: the job starts tomorrow,
    whatever our counts say."""
    start = (0, 0) if spent_on else used
    by_t = days_for(tokens, limits.tpd, start[0]) + (1 if spent_on else 0)
    by_r = days_for(requests, limits.rpd, start[1]) + (1 if spent_on else 0)
    # The limit that takes the most days binds; on a tie, the one the job fills most of.
    ranks = {name: (days, need / limit) for name, days, need, limit in
             (("tpd", by_t, tokens, limits.tpd), ("rpd", by_r, requests, limits.rpd)) if limit}
    binds = max(ranks, key=lambda k: ranks[k]) if ranks else None
    if spent_on:
        source = f"the server's per-day 429 on {spent_on}"
    else:
        source = daily_source(limits, binds) if binds else "none published"
    return Daily(binds, getattr(limits, binds) if binds else 0, source, by_t, by_r)
