"""What to do with an attempt's outcome: a pure function beside `classify`, so the table in
docs/design.md ("What each response means") and the engine's reaction to it read as one.

    classify(status, headers, body) -> Outcome      (classify.py: what the server said)
    decide(outcome, tries, policy)  -> Action       (here: what the job does about it)
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from batchrun.pacing.backoff import MAX_BACKOFF_S, backoff_s
from batchrun.policy.classify import TOO_LARGE_CODE, Kind, Outcome

# A per-minute 429 is waiting, not failing, so it does not count toward --max-retries. This
# separate, generous ceiling (the limiter's pauses double up to a minute each: about 25 minutes
# of nothing but 429s) keeps a server that only ever answers 429 from holding a job forever.
MAX_RATE_LIMITED = 30
# With nothing ever answered, this many failed connections in a row for one request mean there
# is no route to the API: stop the job rather than record every line as connection_error.
NO_NETWORK_TRIES = 4
# The first wait after flex says it has no capacity; the one backoff doubles it from there.
FIRST_FLEX_WAIT_S = 1.0
# --flex-wait's default: how long one request may wait, in all, for flex capacity. OpenAI's
# guide gives a flex request 15 minutes to run; it is given as long to find room.
DEFAULT_FLEX_WAIT_S = 900.0


class Action(enum.Enum):
    WRITE = "write"  # the answer is the result
    FAIL = "fail"  # failed for good: write the error
    TOO_LARGE = "too_large"  # failed for good, and the server taught us a lower limit
    BACKOFF = "backoff"  # send again after a jittered backoff
    FLEX_WAIT = "flex_wait"  # flex has no capacity now: send again after the backoff
    THROTTLE = "throttle"  # per-minute 429: the model's lane pauses; send again after it
    WAIT_DAY = "wait_day"  # per-day 429 with --wait: send again after 00:00 UTC
    STOP_DAILY = "stop_daily"  # per-day 429: stop the job, resume tomorrow
    STOP_REFUSED = "stop_refused"  # the key or account was refused: stop the job
    STOP_NO_NETWORK = "stop_no_network"  # nothing can connect: stop the job


@dataclass(frozen=True, slots=True)
class Policy:
    max_retries: int
    wait_daily: bool = False
    max_rate_limited: int = MAX_RATE_LIMITED
    flex_wait_s: float = DEFAULT_FLEX_WAIT_S  # --flex-wait


@dataclass(slots=True)
class Tries:
    """One request's history, counted the way the policy needs it."""

    failures: int = 0  # attempts that count toward --max-retries
    rate_limited: int = 0  # per-minute 429s (they do not)
    flex_unavailable: int = 0  # flex's "no capacity" answers (nor do they)
    flex_waited_s: float = 0.0  # the waits after them, in all: --flex-wait's ceiling

    @property
    def attempts(self) -> int:
        return self.failures + self.rate_limited + self.flex_unavailable


def decide(outcome: Outcome, tries: Tries, policy: Policy, connected: bool = True) -> Action:
    """`tries` already counts this outcome; `connected`: has any attempt of the job reached a
    server that answered?"""
    kind = outcome.kind
    if kind is Kind.OK:
        return Action.WRITE
    if kind is Kind.FAIL:
        return Action.TOO_LARGE if outcome.code == TOO_LARGE_CODE else Action.FAIL
    if kind is Kind.REFUSED:
        return Action.STOP_REFUSED
    if kind is Kind.RATE_DAY:
        return Action.WAIT_DAY if policy.wait_daily else Action.STOP_DAILY
    if kind is Kind.FLEX_UNAVAILABLE:
        return Action.FAIL if tries.flex_waited_s >= policy.flex_wait_s else Action.FLEX_WAIT
    if kind is Kind.RATE_MINUTE:
        return Action.FAIL if tries.rate_limited >= policy.max_rate_limited else Action.THROTTLE
    if (not connected and never_connected(outcome)
            and tries.failures >= min(NO_NETWORK_TRIES, policy.max_retries + 1)):
        return Action.STOP_NO_NETWORK
    return Action.FAIL if tries.failures > policy.max_retries else Action.BACKOFF


def flex_delay(tries: Tries, ceiling_s: float, hint_s: float | None,
               rng: random.Random | None) -> float:
    """The wait before asking flex again: the one backoff (or the server's hint, if longer),
    never past what is left of --flex-wait, so the last try comes at the ceiling, not after."""
    wait = max(backoff_s(tries.flex_unavailable, first_s=FIRST_FLEX_WAIT_S, rng=rng),
               min(hint_s or 0.0, MAX_BACKOFF_S))
    return max(0.0, min(wait, ceiling_s - tries.flex_waited_s))


def taught_tpm(outcome: Outcome) -> int | None:
    """The tokens-per-minute limit a request_too_large refusal states, if it states one."""
    return outcome.server_limit_tokens if outcome.code == TOO_LARGE_CODE else None


def never_connected(outcome: Outcome) -> bool:
    """No connection could be made (the client knows by the error's type, not its words)."""
    return outcome.code == "connection_error" and not outcome.sent


def billed(outcome: Outcome, reserved: int) -> int:
    """The tokens to settle an attempt's reservation at. An answer that says what it used is
    billed at that; an error the server answered (4xx, 429), at nothing; one whose fate is
    unknown (reset, truncated, timed out, unreadable, 5xx) may have been billed in full, so at
    its reservation: the ledger must never count less than the server did."""
    return sum(outcome.usage) if outcome.usage_known else reserved


def outcome_usage(outcome: Outcome) -> tuple[int, int] | None:
    """(prompt, completion) tokens the server reported, clamped by the client, or None when it
    may have billed without saying (`"prompt_tokens": "n/a"`, a reset, a 5xx)."""
    return outcome.usage if outcome.usage_known else None
