"""The engine on virtual time (tests/virtual_time.py): the event loop's clock is the only clock,
so retries, cooldowns, drains and --wait across midnight run in milliseconds, and each test can
say exactly when each request went. The client is scripted; no sockets."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchrun.client import Endpoint, Kind, Outcome
from batchrun.engine import Engine, JobSpec
from batchrun.events import Event, StateChanged
from batchrun.jobs import Request, check_input
from batchrun.ledger import DailyBudget, Ledger, Scope
from batchrun.stop import Stop, StopKind
from batchrun.tiers import Limits
from tests.conftest import FAKE_KEY, read_results, write_jsonl
from tests.virtual_time import VirtualClock, run_virtual

UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}
Answer = Callable[[Request, int, float], tuple[float, Outcome]]


def ok(tokens_in: int = 7, tokens_out: int = 3) -> Outcome:
    body = {"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}
    return Outcome(Kind.OK, 200, body)


def status(code: int, kind: Kind, message: str = "", hint_s: float | None = None) -> Outcome:
    return Outcome(kind, code, {"error": {"message": message}}, code=f"http_{code}",
                   message=message or f"HTTP {code}", hint_s=hint_s)


class Server:
    """A scripted client: `answer(request, attempt, now)` gives (latency, outcome). Records
    (time sent, custom_id) for every attempt."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[tuple[float, str]] = []

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, request: Request) -> Outcome:
        now = asyncio.get_running_loop().time()
        self.sent.append((now, request.custom_id))
        attempt = sum(1 for _, cid in self.sent if cid == request.custom_id)
        latency, outcome = self.answer(request, attempt, now)
        await asyncio.sleep(latency)
        return outcome

    def times(self, custom_id: str) -> list[float]:
        return [t for t, cid in self.sent if cid == custom_id]


def engine_run(tmp_path: Path, n: int, server: Server, *, start: dt.datetime | None = None,
               tpd: int = 0, during: Callable[[Engine], Any] | None = None,
               **spec: Any) -> tuple[Stop | None, list[Event], float]:
    """Run a job of n prompts through `server` on virtual time; (stop, events, end time)."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"q{i}", "prompt": "hi", "max_tokens": 10} for i in range(n)])
    limits = {**UNLIMITED, **spec.pop("limits", {})}
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl", overrides=limits,
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None), **spec)
    events: list[Event] = []

    async def main(clock: VirtualClock) -> tuple[Stop | None, float]:
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock.now_utc)

        def budget_for(model: str, lim: Limits) -> DailyBudget:
            return DailyBudget(ledger, Scope("h", "k", model), tpd, 0)

        engine = Engine(job_spec, check_input(jobs, job_spec.model, set()), set(), FAKE_KEY,
                        events.append, budget_for, client=server, now_utc=clock.now_utc,
                        rng=random.Random(7))
        if during is not None:
            asyncio.get_running_loop().call_soon(during, engine)
        try:
            stop = await engine.run()
        finally:
            ledger.close()
        return stop, asyncio.get_running_loop().time()

    kwargs = {"start": start} if start else {}
    stop, end = run_virtual(main, **kwargs)
    return stop, events, end


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
