"""The engine on virtual time (tests/helpers/virtual_time.py): the event loop's clock is the only
clock, so retries, cooldowns, drains and --wait across midnight run in milliseconds, and each test
can say exactly when each request went. The client is scripted; no sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from pathlib import Path

import orjson
import pytest

from batchrun.backends.sync.engine import Engine
from batchrun.events import RequestFinished, StateChanged
from batchrun.files.ledger import Ledger, Scope
from batchrun.http.client import Kind, Outcome, classify
from batchrun.policy.decide import MAX_RATE_LIMITED
from batchrun.policy.request import Request
from batchrun.policy.stopkind import StopKind
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import read_results
from tests.helpers.scripted_server import Server, engine_run, ok, status
from tests.helpers.virtual_time import START


def test_server_errors_are_retried_with_jittered_exponential_backoff(tmp_path: Path) -> None:
    def flaky(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (status(500, Kind.RETRY) if attempt <= 3 else ok())

    server = Server(flaky)
    stop, _, _ = engine_run(tmp_path, 1, server)
    assert stop is None
    sent = server.times("q0")
    gaps = [b - a - 0.1 for a, b in itertools.pairwise(sent)]  # less the latency
    # 0.5 s, 1 s, 2 s, each with ±50 % jitter: never a tight loop, never a fixed beat.
    for gap, base in zip(gaps, (0.5, 1.0, 2.0), strict=True):
        assert base * 0.5 <= gap <= base * 1.5
    assert read_results(tmp_path / "out.jsonl")["q0"]["error"] is None


def test_a_retry_after_longer_than_the_backoff_is_respected(tmp_path: Path) -> None:
    def busy(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.0, (status(503, Kind.RETRY, hint_s=7.0) if attempt == 1 else ok())

    server = Server(busy)
    engine_run(tmp_path, 1, server)
    first, second = server.times("q0")
    assert second - first >= 7.0


def test_a_30_second_429_storm_is_waited_out_together_with_a_few_probes(
    tmp_path: Path,
) -> None:
    def storm(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        if now < 30:
            return 0.05, status(429, Kind.RATE_MINUTE, "Rate limit reached on tokens per min "
                                "(TPM). Please try again in 1s.", hint_s=1.0)
        return 0.3, ok()

    server = Server(storm)
    stop, _events, end = engine_run(tmp_path, 20, server, limits={"rpm": 600}, max_retries=2)
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert len(results) == 20 and all(r["error"] is None for r in results.values())
    refused = [t for t, _ in server.sent if t < 30]
    # One shared pause, doubling: a handful of probes, not a retry per request per second.
    assert len(refused) <= 20
    assert end < 30 + 60  # and it is back within one longest pause of the storm's end


def test_pacing_at_60_rpm_sends_one_request_a_second_after_the_first_burst(
    tmp_path: Path,
) -> None:
    server = Server(lambda request, attempt, now: (0.2, ok()))
    engine_run(tmp_path, 12, server, limits={"rpm": 60})
    times = sorted(t for t, _ in server.sent)
    assert len(times) == 12
    # Over any 10 s, no more than the limit allows plus the opening burst (a second's worth).
    for i, t in enumerate(times):
        in_window = [u for u in times[i:] if u < t + 10]
        assert len(in_window) <= 10 + 2
    assert times[-1] >= 9.0  # 12 requests at 1/s cannot be done in much under 10 s


def hangs(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
    return 3600.0, ok()


def test_ctrl_c_drains_in_flight_requests_for_the_drain_time_then_stops(tmp_path: Path) -> None:
    def interrupt_at_5(engine: Engine) -> None:
        asyncio.get_running_loop().call_later(5, engine.interrupt)

    server = Server(hangs)
    stop, events, end = engine_run(tmp_path, 3, server, concurrency=3, drain_s=10,
                                   during=interrupt_at_5)
    assert stop is not None and stop.kind is StopKind.INTERRUPTED
    assert end == 15.0  # interrupted at 5, gave the requests in flight 10 s, no more
    assert StateChanged("draining", "interrupted: finishing requests in flight") in events
    assert not (tmp_path / "out.jsonl").read_bytes()  # abandoned requests have no line


def test_a_second_ctrl_c_abandons_what_is_in_flight_at_once(tmp_path: Path) -> None:
    def interrupt_twice(engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(5, engine.interrupt)
        loop.call_later(6, engine.interrupt)

    server = Server(hangs)
    stop, _, end = engine_run(tmp_path, 3, server, concurrency=3, drain_s=10,
                              during=interrupt_twice)
    assert stop is not None and stop.kind is StopKind.INTERRUPTED
    assert end == 6.0


def test_a_drain_finishes_early_when_the_last_answer_comes(tmp_path: Path) -> None:
    def interrupt_at_1(engine: Engine) -> None:
        asyncio.get_running_loop().call_later(1, engine.interrupt)

    server = Server(lambda request, attempt, now: (3.0, ok()))
    stop, _, end = engine_run(tmp_path, 10, server, concurrency=2, drain_s=10,
                              during=interrupt_at_1)
    assert stop is not None and stop.kind is StopKind.INTERRUPTED
    assert end == 3.0  # the two in flight answered at 3 s and were written
    assert len(read_results(tmp_path / "out.jsonl")) == 2


def test_wait_sleeps_to_midnight_when_the_daily_budget_is_spent_and_goes_on(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 27, 23, 59, 0, tzinfo=dt.UTC)
    server = Server(lambda request, attempt, now: (0.1, ok(7, 3)))
    # Each request reserves 10 prompt-side tokens + 10 max output; 45 tokens a day fit two.
    stop, events, _end = engine_run(tmp_path, 4, server, start=start, tpd=45, wait=True)
    assert stop is None
    midnight = 60.0  # seconds after the start
    times = sorted(t for t, _ in server.sent)
    assert len(times) == 4
    before, after = [t for t in times if t < midnight], [t for t in times if t >= midnight]
    assert before and after
    assert after[0] < midnight + 61  # it woke at the turn of the day, not a day later
    assert any(isinstance(e, StateChanged) and e.state == "paused-daily" for e in events)


# -- moved from test_decide.py: the outcomes that stop a request or a job ----------------------


def test_a_server_that_only_answers_429_cannot_hold_a_job_forever(tmp_path: Path) -> None:
    def always_429(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.0, status(429, Kind.RATE_MINUTE, "Rate limit reached (TPM)", hint_s=0.02)

    server = Server(always_429)
    stop, _, _ = engine_run(tmp_path, [{"id": "a", "prompt": "hi"}], server, max_retries=2)
    assert stop is None
    assert len(server.times("a")) == MAX_RATE_LIMITED
    error = read_results(tmp_path / "out.jsonl")["a"]["error"]
    assert f"gave up after {MAX_RATE_LIMITED} per-minute rate limits (429)" in error["message"]
    assert "do not count toward --max-retries" in error["message"]
    # The shared pause doubles from half a second up to a minute: about 25 virtual minutes.
    gaps = [b - a for a, b in itertools.pairwise(server.times("a"))]
    assert gaps[:3] == pytest.approx([0.5, 1.0, 2.0])
    assert max(gaps) == pytest.approx(60.0)


def test_lines_appended_after_the_check_are_not_sent(tmp_path: Path) -> None:
    """An appended duplicate id was sent and written twice; an appended garbage line became a
    failed result under --on-bad-line fail. Now the grown file is a changed input: the job
    stops before it sends anything read since the change."""

    def append(jobs: Path) -> None:
        with jobs.open("ab") as f:
            f.write(b'{"id": "q0", "prompt": "again"}\nnot json\n{"id": "q9", "prompt": "x"}\n')

    server = Server(lambda request, attempt, now: (0.1, ok()))
    stop, _, _ = engine_run(tmp_path, 3, server, after_check=append)
    assert stop is not None and stop.kind is StopKind.INPUT_CHANGED
    assert server.sent == []
    assert read_results(tmp_path / "out.jsonl") == {}


def test_no_network_stops_after_a_few_tries(tmp_path: Path) -> None:
    refused = Outcome(Kind.RETRY, code="connection_error", sent=False,
                      message="ClientConnectorError: Cannot connect to host api.example.com:443")
    server = Server(lambda request, attempt, now: (0.0, refused))
    stop, _, _ = engine_run(tmp_path, 3, server)
    assert stop is not None and stop.kind is StopKind.NO_NETWORK
    assert stop.host == "127.0.0.1:9" and stop.done == 0 and stop.total == 3
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_bytes() == b""


def test_a_request_too_large_429_teaches_the_tpm_to_requests_still_queued(
    tmp_path: Path,
) -> None:
    """The server's TPM is below the preset and its 429 says so only in words: the requests
    over it that are still queued fail at once instead of each being sent to be refused."""

    def small_server(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        if request.body.get("max_tokens", 0) < 2_000:
            return 0.1, ok()
        body = {"error": {"type": "tokens", "code": "rate_limit_exceeded", "message": (
            "Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
            "Limit 2,000, Requested 5,010. The input or output tokens must be reduced in order "
            "to run successfully.")}}
        return 0.1, classify(429, {}, orjson.dumps(body), request.url, FAKE_KEY)

    rows = [*({"id": f"big{i}", "prompt": "hi", "max_tokens": 5_000} for i in range(4)),
            {"id": "small", "prompt": "hi", "max_tokens": 5}]
    server = Server(small_server)
    stop, _, _ = engine_run(tmp_path, rows, server, concurrency=1,
                            limits={"rpm": None, "tpm": None})
    assert stop is None
    # big1 was already waiting for admission when big0's answer came back.
    assert [cid for _, cid in server.sent] == ["big0", "big1", "small"]
    results = read_results(tmp_path / "out.jsonl")
    for big in ("big2", "big3"):
        assert results[big]["error"]["code"] == "request_too_large"
        assert "2,000 tokens/min limit" in results[big]["error"]["message"]
    assert results["small"]["error"] is None


def test_wait_sends_again_after_midnight_when_the_server_says_the_day_is_spent(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 27, 23, 0, tzinfo=dt.UTC)
    midnight = 3600.0  # seconds after the start

    def daily_then_ok(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        if now < midnight:
            return 0.1, status(429, Kind.RATE_DAY, "Rate limit reached on requests per day "
                               "(RPD): Limit 200, Used 200")
        return 0.1, ok()

    server = Server(daily_then_ok)
    stop, _, _ = engine_run(tmp_path, 3, server, start=start, wait=True)
    assert stop is None
    assert all(r["error"] is None for r in read_results(tmp_path / "out.jsonl").values())
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    assert ledger.usage(Scope("h", "k", "gpt-4o-mini"), start.date()).exhausted
    ledger.close()
    # It slept through the hour to midnight, not through the next day.
    last = max(t for t, _ in server.sent)
    assert midnight <= last < midnight + 120


# -- stopping: what a stop leaves in the ledger, and Ctrl-C during another stop ----------------


def test_a_stop_while_waiting_for_admission_gives_the_reservation_back(tmp_path: Path) -> None:
    """The daily budget is reserved before the limiter admits a request; a request the stop
    caught waiting there was never sent and must not stay counted."""

    def interrupt_at_5(engine: Engine) -> None:
        asyncio.get_running_loop().call_later(5, engine.interrupt)

    server = Server(lambda request, attempt, now: (0.1, ok(7, 3)))
    stop, _, _ = engine_run(tmp_path, 5, server, limits={"rpm": 2}, tpd=100_000,
                            during=interrupt_at_5)
    assert stop is not None and stop.kind is StopKind.INTERRUPTED
    sent = len(server.sent)
    assert 1 <= sent < 5
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    usage = ledger.usage(Scope("h", "k", "gpt-4o-mini"), START.date())
    ledger.close()
    assert (usage.tokens, usage.requests) == (10 * sent, sent)


def test_ctrl_c_during_a_daily_stop_keeps_draining_and_a_second_abandons(tmp_path: Path) -> None:
    """Stopping for the daily limit, in-flight requests drain; a Ctrl-C then must not be lost:
    the second abandons them at once, as it does after an interrupt."""

    def day_spent_while_others_hang(request: Request, attempt: int,
                                    now: float) -> tuple[float, Outcome]:
        if request.custom_id == "q0":
            return 0.1, status(429, Kind.RATE_DAY, "Rate limit reached on tokens per day (TPD)")
        return 3600.0, ok()

    def press_twice(engine: Engine) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(2, engine.interrupt)
        loop.call_later(3, engine.interrupt)

    server = Server(day_spent_while_others_hang)
    stop, _, end = engine_run(tmp_path, 4, server, concurrency=4, drain_s=10,
                              during=press_twice)
    assert stop is not None and stop.kind is StopKind.DAILY  # the reason stays the day's limit
    assert end == 3.0


def test_each_result_reports_how_many_times_it_was_sent(tmp_path: Path) -> None:
    def twice_then_ok(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (status(500, Kind.RETRY) if attempt <= 2 else ok())

    server = Server(twice_then_ok)
    _, events, _ = engine_run(tmp_path, 1, server)
    [done] = [e for e in events if isinstance(e, RequestFinished)]
    assert done.attempts == 3 == len(server.times("q0"))
