"""What the job does with each outcome (a table), and the engine driven by a scripted client on
virtual time: no sockets, no sleeping, every pause exact."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchrun.client import Endpoint, Kind, Outcome
from batchrun.decide import MAX_RATE_LIMITED, Action, Policy, Tries, billed, decide
from batchrun.engine import Engine, JobSpec
from batchrun.events import Event
from batchrun.jobs import Request, check_input
from batchrun.ledger import DailyBudget, Ledger, Scope
from batchrun.stop import StopKind
from batchrun.tiers import Limits
from tests.conftest import FAKE_KEY, read_results, write_jsonl

REFUSED_CONNECT = "ClientConnectorError: Cannot connect to host api.example.com:443"
RESET = "ServerDisconnectedError: Server disconnected"
USAGE = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

P = Policy(max_retries=2)
W = Policy(max_retries=2, wait_daily=True)


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
    (out(Kind.RETRY, code="connection_error", message=REFUSED_CONNECT), Tries(failures=3), P,
     False, Action.STOP_NO_NETWORK),
    (out(Kind.RETRY, code="connection_error", message=REFUSED_CONNECT), Tries(failures=2), P,
     False, Action.BACKOFF),
    # Something answered once: the network is there, this request just fails.
    (out(Kind.RETRY, code="connection_error", message=REFUSED_CONNECT), Tries(failures=3), P,
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


class VirtualTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class Scripted:
    """A client whose every answer comes from `answer(request, attempt)`."""

    def __init__(self, answer: Callable[[Request, int], Outcome]) -> None:
        self.answer = answer
        self.sent: list[str] = []

    async def __aenter__(self) -> Scripted:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, request: Request) -> Outcome:
        self.sent.append(request.custom_id)
        await asyncio.sleep(0)
        return self.answer(request, self.sent.count(request.custom_id))


def ok(request: Request, attempt: int) -> Outcome:
    return out(Kind.OK, 200, body={"choices": [{"message": {"content": "hi"}}],
                                   "usage": {"prompt_tokens": 7, "completion_tokens": 3}})


async def run_engine(tmp_path: Path, jobs: Path, client: Scripted, time: VirtualTime,
                     **spec: Any) -> tuple[Any, list[Event]]:
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl",
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None), **spec)
    report = check_input(jobs, job_spec.model, set())
    ledger = Ledger(tmp_path / "ledger.sqlite3", lambda: dt.datetime(2026, 11, 27, tzinfo=dt.UTC))

    def budget_for(model: str, limits: Limits) -> DailyBudget:
        return DailyBudget(ledger, Scope("h", "k", model), limits.tpd, limits.rpd)

    return await _run(job_spec, report, client, time, budget_for, ledger)


async def _run(spec: JobSpec, report: Any, client: Scripted, time: VirtualTime,
               budget_for: Any, ledger: Ledger) -> tuple[Any, list[Event]]:
    events: list[Event] = []
    engine = Engine(spec, report, set(), FAKE_KEY, events.append, budget_for, client=client,
                    clock=time.clock, sleep=time.sleep)
    try:
        return await engine.run(), events
    finally:
        ledger.close()


UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}


async def test_a_server_that_only_answers_429_cannot_hold_a_job_forever(tmp_path: Path) -> None:
    def always_429(request: Request, attempt: int) -> Outcome:
        o = out(Kind.RATE_MINUTE, 429, "rate_limit_exceeded", "Rate limit reached (TPM)")
        o.hint_s = 0.02
        return o

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    client, time = Scripted(always_429), VirtualTime()
    stop, _ = await run_engine(tmp_path, jobs, client, time, overrides=UNLIMITED,
                               max_retries=2)
    assert stop is None
    assert client.sent == ["a"] * MAX_RATE_LIMITED
    error = read_results(tmp_path / "out.jsonl")["a"]["error"]
    assert f"gave up after {MAX_RATE_LIMITED} per-minute rate limits (429)" in error["message"]
    assert "do not count toward --max-retries" in error["message"]
    # The pauses double from half a second up to a minute: about 25 virtual minutes.
    assert time.slept[:3] == pytest.approx([0.5, 1.0, 2.0])
    assert max(time.slept) == pytest.approx(60.0)


async def test_lines_appended_after_the_check_are_not_sent(tmp_path: Path) -> None:
    """An appended duplicate id was sent and written twice; an appended garbage line became a
    failed result under --on-bad-line fail. Now the grown file is a changed input: the job
    stops before it sends anything read since the change."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"q{i}", "prompt": "hi"} for i in range(3)])
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl",
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None),
                       overrides=UNLIMITED)
    report = check_input(jobs, job_spec.model, set())
    with jobs.open("ab") as f:
        f.write(b'{"id": "q0", "prompt": "again"}\nnot json\n{"id": "q9", "prompt": "new"}\n')
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    client = Scripted(ok)

    def budget_for(model: str, limits: Limits) -> DailyBudget:
        return DailyBudget(ledger, Scope("h", "k", model), 0, 0)

    stop, _ = await _run(job_spec, report, client, VirtualTime(), budget_for, ledger)
    assert stop is not None and stop.kind is StopKind.INPUT_CHANGED
    assert client.sent == []
    assert read_results(tmp_path / "out.jsonl") == {}


async def test_no_network_stops_after_a_few_tries_on_virtual_time(tmp_path: Path) -> None:
    def refused(request: Request, attempt: int) -> Outcome:
        return out(Kind.RETRY, None, "connection_error", REFUSED_CONNECT)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"q{i}", "prompt": "hi"} for i in range(3)])
    client, time = Scripted(refused), VirtualTime()
    stop, _ = await run_engine(tmp_path, jobs, client, time, overrides=UNLIMITED)
    assert stop is not None and stop.kind is StopKind.NO_NETWORK
    assert stop.host == "127.0.0.1:9" and stop.done == 0 and stop.total == 3
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_bytes() == b""


async def test_a_request_too_large_429_teaches_the_tpm_to_requests_still_queued(
    tmp_path: Path,
) -> None:
    """The server's TPM is below the preset and its 429 says so only in words: the requests
    over it that are still queued fail at once instead of each being sent to be refused."""

    def small_server(request: Request, attempt: int) -> Outcome:
        if request.body.get("max_tokens", 0) < 2_000:
            return ok(request, attempt)
        return out(Kind.FAIL, 429, "request_too_large",
                   "Request too large for gpt-4o-mini in organization org-x on tokens per min "
                   "(TPM): Limit 2,000, Requested 5,010. The input or output tokens must be "
                   "reduced in order to run successfully.")

    rows = [*({"id": f"big{i}", "prompt": "hi", "max_tokens": 5_000} for i in range(4)),
            {"id": "small", "prompt": "hi", "max_tokens": 5}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    client = Scripted(small_server)
    stop, _ = await run_engine(tmp_path, jobs, client, VirtualTime(), concurrency=1,
                               overrides={"rpd": 0, "tpd": 0})
    assert stop is None
    # big1 was already waiting for admission when big0's answer came back.
    assert client.sent == ["big0", "big1", "small"]
    results = read_results(tmp_path / "out.jsonl")
    for big in ("big2", "big3"):
        assert results[big]["error"]["code"] == "request_too_large"
        assert "2,000 tokens/min limit" in results[big]["error"]["message"]
    assert results["small"]["error"] is None


async def test_wait_sends_again_after_midnight_when_the_server_says_the_day_is_spent(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 27, 23, 0, tzinfo=dt.UTC)
    time = VirtualTime()

    def now_utc() -> dt.datetime:
        return start + dt.timedelta(seconds=time.now)

    def daily_then_ok(request: Request, attempt: int) -> Outcome:
        if now_utc().date() == start.date():
            return out(Kind.RATE_DAY, 429, "rate_limit_exceeded",
                       "Rate limit reached on requests per day (RPD): Limit 200, Used 200")
        return ok(request, attempt)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"q{i}", "prompt": "hi"} for i in range(3)])
    spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl",
                   endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None),
                   overrides=UNLIMITED, wait=True)
    ledger = Ledger(tmp_path / "ledger.sqlite3", now_utc)

    def budget_for(model: str, limits: Limits) -> DailyBudget:
        return DailyBudget(ledger, Scope("h", "k", model), 0, 0)

    client = Scripted(daily_then_ok)
    events: list[Event] = []
    engine = Engine(spec, check_input(jobs, spec.model, set()), set(), FAKE_KEY, events.append,
                    budget_for, client=client, clock=time.clock, sleep=time.sleep,
                    now_utc=now_utc)
    assert await engine.run() is None
    assert ledger.usage(Scope("h", "k", "gpt-4o-mini"), start.date()).exhausted
    ledger.close()
    assert all(r["error"] is None for r in read_results(tmp_path / "out.jsonl").values())
    # It slept through the hour to midnight, not through the next day.
    assert dt.timedelta(hours=1) <= now_utc() - start < dt.timedelta(hours=1, minutes=2)
