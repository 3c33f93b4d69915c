"""Billing end to end, in process: what each request costs, when the job stops, what the ledger
says afterwards. Odd servers are small aiohttp apps on loopback, served from their own thread."""

from __future__ import annotations

import datetime as dt
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.backends.sync import engine
from batchrun.cli import commands as cli
from batchrun.files import ledger
from batchrun.files.jobstore import JobStore
from batchrun.simulator import SimConfig
from tests.helpers.cli import submit_with_key as submit
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.served_app import UNLIMITED, ServedApp, ok


def rate_limited(what: str, hint_ms: int = 20) -> web.Response:
    return web.json_response({"error": {
        "message": f"Rate limit reached for gpt-4o-mini in organization org-x on {what}: "
                   f"Limit 10000, Used 10000, Requested 1. Please try again in {hint_ms}ms.",
        "type": "requests", "code": "rate_limit_exceeded"}},
        status=429, headers={"retry-after-ms": str(hint_ms)})


def prompts(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"Question number {i}", **extra} for i in range(n)]


def ledger_today(home: str) -> list[dict[str, object]]:
    book = ledger.Ledger(Path(home) / "ledger.sqlite3")
    rows = book.usage_rows(book.today())
    book.close()
    return rows


def test_per_minute_429s_do_not_count_toward_max_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The contract: a per-minute 429 is waiting, not failing."""

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return rate_limited("tokens per min (TPM)") if n == 1 else ok(body)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED, "--max-retries", "0")
    assert run.code == 0, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert all(r["error"] is None for r in results.values()) and len(results) == 3


def test_a_per_day_429_after_midnight_marks_the_day_it_was_reserved_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    isolated_env: dict[str, str],
) -> None:
    """Reserved at 23:59:59, refused at 00:00:01: the old day is spent, the new one is not
    (marking the new day would make --wait sleep 24 hours)."""
    now = [dt.datetime(2026, 11, 27, 23, 59, 59, tzinfo=dt.UTC)]
    monkeypatch.setattr(ledger, "utc_now", lambda: now[0])

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        now[0] = dt.datetime(2026, 11, 28, 0, 0, 1, tzinfo=dt.UTC)
        return rate_limited("requests per day (RPD)")

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED)
    assert run.code == 3, run.stderr
    book = ledger.Ledger(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3", lambda: now[0])
    exhausted = {r["day"]: r["exhausted"] for d in ("2026-11-27", "2026-11-28")
                 for r in book.usage_rows(dt.date.fromisoformat(d))}
    book.close()
    assert exhausted == {"2026-11-27": 1}


def test_an_answer_whose_usage_is_unknown_is_billed_at_its_reservation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    isolated_env: dict[str, str],
) -> None:
    """A truncated 200 was recorded as 0 tokens although the server may have billed it."""

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        if n == 1:
            return web.Response(body=b'{"id": "chatcmpl-1", "choi', content_type="application/json")
        return ok(body, prompt=10, completion=5)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2, max_tokens=100))
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED, "--tpd", "1000000")
    assert run.code == 0, run.stderr
    (row,) = ledger_today(isolated_env["BATCHRUN_HOME"])
    # Two answers of 15 tokens, and two unknown attempts charged their 100 + prompt.
    assert int(str(row["tokens"])) >= 2 * 15 + 2 * 100


def test_a_request_larger_than_the_whole_daily_budget_fails_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It used to say "resume after 00:00 UTC" every day, forever."""

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return ok(body)

    rows = [*prompts(2, max_tokens=500), {"id": "small", "prompt": "hi", "max_tokens": 5}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, "--tpd", "100", "--rpd", "0")
        assert app.received == 1
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    for big in ("q0", "q1"):
        error = results[big]["error"]
        assert error["code"] == "request_too_large" and "daily" in error["message"]
    assert results["small"]["error"] is None


def test_estimate_lists_a_request_larger_than_the_daily_budget_under_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2, max_tokens=500))
    assert cli.run(["estimate", str(jobs), "--tpd", "100", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["never_run_total"] == 2
    assert "daily" in result["never_run"][0]["reason"]


def test_a_request_beyond_the_context_window_is_not_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def handler(body: dict[str, Any], n: int) -> web.Response:
        return ok(body)

    rows = [{"id": "huge", "prompt": "hi", "max_tokens": 130_000}, *prompts(1)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, *UNLIMITED)
        assert app.received == 1
    assert run.code == 1, run.stderr
    error = read_results(tmp_path / "jobs.results.jsonl")["huge"]["error"]
    assert error["code"] == "request_too_large"
    assert "128,000-token context window" in error["message"]


def test_with_no_network_the_job_stops_instead_of_failing_every_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    isolated_env: dict[str, str],
) -> None:
    with socket.socket() as s:  # a port nothing listens on: every connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    run = submit(capsys, monkeypatch, f"http://127.0.0.1:{port}/v1", jobs, *UNLIMITED,
                 "--max-retries", "1")
    assert run.code == 5, run.stderr
    assert f"127.0.0.1:{port}" in run.stderr and "batchrun resume" in run.stderr
    out = tmp_path / "jobs.results.jsonl"
    assert not out.exists() or out.read_bytes() == b""
    (job,) = JobStore(Path(isolated_env["BATCHRUN_HOME"])).all()
    assert not job.finished


def test_a_lower_token_limit_learned_from_headers_rechecks_queued_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's TPM is lower than the preset: requests over it can never be admitted."""

    async def handler(body: dict[str, Any], n: int) -> web.Response:
        response = ok(body)
        response.headers["x-ratelimit-limit-tokens"] = "2000"
        return response

    rows = [{"id": "small", "prompt": "hi", "max_tokens": 5},
            *prompts(3, max_tokens=5_000)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    with ServedApp(handler) as app:
        run = submit(capsys, monkeypatch, app.base_url, jobs, "--rpd", "0", "--tpd", "0",
                     "--concurrency", "1")
        # q0 was already waiting for admission when the answer taught the limit, so it goes
        # (a real server refuses it with its own request_too_large); the queued ones do not.
        assert app.received == 2
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert {k for k, r in results.items() if r["error"]} == {"q1", "q2"}
    assert all(results[k]["error"]["code"] == "request_too_large" for k in ("q1", "q2"))
    assert "2,000 tokens/min limit" in results["q1"]["error"]["message"]


def test_an_unexpected_exception_leaves_the_job_resumable_not_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    sim_factory: Any,
) -> None:
    sim = sim_factory(SimConfig())
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    real, calls = engine.result_line, [0]

    def breaks_once(*args: Any, **kwargs: Any) -> bytes:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "result_line", breaks_once)
    crash = submit(capsys, monkeypatch, sim.base_url, jobs, *UNLIMITED)
    assert crash.code == cli.EXIT_INTERNAL
    assert "internal error: RuntimeError: a bug" in crash.stderr
    assert "batchrun resume" in crash.stderr
    monkeypatch.setattr(engine, "result_line", real)
    assert cli.run(["status", "--json"]) == 0
    (job,) = orjson.loads(capsys.readouterr().out)["jobs"]
    assert job["state"] == "crashed"
    assert cli.run(["resume"]) == 0
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 5


def test_a_job_runs_to_its_daily_request_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    sim_factory: Any,
) -> None:
    """Token leases used to take 1 % of the RPD each: --tpd 0 stopped at a third of it."""
    sim = sim_factory(SimConfig())
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(310, max_tokens=5))
    run = submit(capsys, monkeypatch, sim.base_url, jobs, "--rpm", "0", "--tpm", "0",
                 "--rpd", "300", "--tpd", "0")
    assert run.code == 3, run.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) >= 297  # within 1 % of 300
    assert "300 of 300 requests" in run.stderr


def test_a_job_runs_to_within_one_percent_of_its_daily_token_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    sim_factory: Any,
) -> None:
    sim = sim_factory(SimConfig())
    long_prompt = " ".join(f"word{i}" for i in range(300))
    rows = [{"id": f"q{i}", "prompt": f"{i} {long_prompt}", "max_tokens": 20} for i in range(200)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(capsys, monkeypatch, sim.base_url, jobs, "--rpm", "0", "--tpm", "0",
                 "--rpd", "0", "--tpd", "100000")
    assert run.code == 3, run.stderr
    billed = sum(r["response"]["body"]["usage"]["total_tokens"]
                 for r in read_results(tmp_path / "jobs.results.jsonl").values())
    assert 99_000 <= billed <= 100_000


def test_estimate_counts_no_days_or_cost_for_requests_that_never_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--tpd 100` on requests of ~500 tokens said "3 UTC days" though none could ever run."""
    rows = [*prompts(2, max_tokens=500), {"id": "small", "prompt": "hi", "max_tokens": 5}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    assert cli.run(["estimate", str(jobs), "--tpd", "100", "--json"]) == 0
    result = orjson.loads(capsys.readouterr().out)
    assert result["never_run_total"] == 2
    assert result["days"] == 1 and result["requests"] == 1
    assert result["models"][0]["output_tokens"] == 5
