"""What the job does with each outcome, and what each attempt is billed: pure functions, as
tables. The engine acting on these decisions is tested on virtual time in test_engine_time.py."""

from __future__ import annotations

from typing import Any

import pytest

from batchrun.http.client import Kind, Outcome
from batchrun.policy.decide import MAX_RATE_LIMITED, Action, Policy, Tries, billed, decide

REFUSED_CONNECT = "ClientConnectorError: Cannot connect to host api.example.com:443"
RESET = "ServerDisconnectedError: Server disconnected"
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

P = Policy(max_retries=2)
W = Policy(max_retries=2, wait_daily=True)


def refused() -> Outcome:
    """What the client returns when no connection could be made: nothing reached the API."""
    return Outcome(Kind.RETRY, code="connection_error", message=REFUSED_CONNECT, sent=False)


def out(kind: Kind, status: int | None = None, code: str = "", message: str = "",
        body: Any = None) -> Outcome:
    return Outcome(kind, status, body, code=code, message=message)


@pytest.mark.parametrize(("outcome", "tries", "policy", "connected", "action"), [
    (out(Kind.OK, 200, body=USAGE), Tries(), P, True, Action.WRITE),
    (out(Kind.FAIL, 400, "invalid_request_error"), Tries(), P, True, Action.FAIL),
    (out(Kind.FAIL, 429, "request_too_large"), Tries(), P, True, Action.TOO_LARGE),
    (out(Kind.REFUSED, 401, "invalid_api_key"), Tries(), P, True, Action.STOP_REFUSED),
    (out(Kind.RATE_DAY, 429), Tries(), P, True, Action.STOP_DAILY),
    (out(Kind.RATE_DAY, 429), Tries(), W, True, Action.WAIT_DAY),
    # A per-minute 429 is waiting, not failing: --max-retries does not apply...
    (out(Kind.RATE_MINUTE, 429), Tries(failures=2, rate_limited=10), P, True, Action.THROTTLE),
    # ...but a separate ceiling does, so a server that only answers 429 cannot hang a job.
    (out(Kind.RATE_MINUTE, 429), Tries(rate_limited=MAX_RATE_LIMITED), P, True, Action.FAIL),
    (out(Kind.RETRY, 503), Tries(failures=2), P, True, Action.BACKOFF),
    (out(Kind.RETRY, 503), Tries(failures=3), P, True, Action.FAIL),
    (refused(), Tries(failures=3), P,
     False, Action.STOP_NO_NETWORK),
    (refused(), Tries(failures=2), P,
     False, Action.BACKOFF),
    # Something answered once: the network is there, this request just fails.
    (refused(), Tries(failures=3), P,
     True, Action.FAIL),
    # A reset after connecting is a server fault, not a missing network.
    (out(Kind.RETRY, code="connection_error", message=RESET), Tries(failures=3), P, False,
     Action.FAIL),
])
def test_decide(outcome: Outcome, tries: Tries, policy: Policy, connected: bool,
                action: Action) -> None:
    assert decide(outcome, tries, policy, connected) is action


@pytest.mark.parametrize(("outcome", "tokens"), [
    (out(Kind.OK, 200, body=USAGE), 10),
    (out(Kind.RETRY, 200, "invalid_response"), 500),  # truncated: may have been billed
    (out(Kind.RETRY, code="timeout"), 500),
    (out(Kind.RETRY, code="connection_error", message=RESET), 500),
    (out(Kind.RETRY, 200, body={"usage": {"prompt_tokens": "n/a"}}), 500),
    # A negative count is nonsense, not a refund: billed at the reservation, never below it.
    (out(Kind.OK, 200, body={"usage": {"prompt_tokens": -3_000_000, "completion_tokens": 5}}),
     500),
    (out(Kind.RATE_MINUTE, 429), 0),
    (out(Kind.FAIL, 400), 0),
])
def test_what_an_attempt_is_billed(outcome: Outcome, tokens: int) -> None:
    assert billed(outcome, reserved=500) == tokens
