"""Whatever the API, the disk or the input does: every request ends in exactly one output line
or in a clear error, and no request is sent more than --max-retries + 1 times."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import BatchrunError
from batchrun.files.ledger import Ledger, Scope
from batchrun.simulator import Faults, SimConfig, request_digest
from tests.helpers.cli import FAKE_KEY, REPO, Run, run_cli, start_submit, wait_for
from tests.helpers.jsonl import (
    assert_all_answered,
    body_as_sent,
    count_lines,
    prompts,
    read_results,
    write_jsonl,
)
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}
FAST = ("--rpm", "0", "--tpm", "0", "--tpd", "0", "--rpd", "0", "--timeout", "1")

# fault -> (the sim's settings, the error code a request gets when it meets the fault every time)
API_FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "500": ({"error_500": 1.0}, "server_error"),
    "503 with retry-after": ({"error_503": 1.0}, "server_error"),
    "503 without retry-after": ({"error_503": 1.0, "retry_after_503": False}, "server_error"),
    "502 HTML page": ({"html": 1.0}, "http_502"),
    "reset before headers": ({"drop": 1.0}, "connection_error"),
    "reset after headers": ({"truncate": 1.0}, "truncated_response"),
    "hang past the timeout": ({"hang": 1.0}, "timeout"),
    "200 without choices": ({"no_choices": 1.0}, "invalid_response"),
}


def attempts_on_server(sim: RunningSim, rows: list[dict[str, Any]]) -> list[int]:
    return [sim.stats.attempts[request_digest(body_as_sent(r))] for r in rows]


# Each fault's classification is unit-tested in http/test_client.py and
# http/test_any_response_is_an_outcome.py; here the quick suite keeps the faults that only a real
# socket produces, and CI runs them all.
EVERY_TIME = [pytest.param(f, marks=pytest.mark.slow if f in (
    "hang past the timeout", "503 with retry-after", "503 without retry-after") else ())
    for f in API_FAULTS]


@pytest.mark.parametrize("fault", EVERY_TIME)
def test_a_fault_every_time_fails_each_request_after_max_retries(
    sim_factory: Any, tmp_path: Path, fault: str
) -> None:
    settings, code = API_FAULTS[fault]
    sim = sim_factory(SimConfig(faults=Faults(**settings)))
    rows = prompts(4)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    # One retry is enough to show the wiring; the backoff schedule itself is tested on virtual
    # time (test_engine_time.py).
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, *FAST, "--max-retries", "1",
                  env=ENV)
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert set(results) == {r["id"] for r in rows}
    for line in results.values():
        assert line["error"]["code"] == code, line
        assert "gave up after 2 attempts" in line["error"]["message"]
    assert attempts_on_server(sim, rows) == [2, 2, 2, 2]


# Retrying to success is the engine's job whatever the fault (test_engine_time.py, on virtual
# time); test_submit.py retries 500s on a real socket; CI runs this whole matrix.
NOW_AND_THEN = [pytest.param(f, marks=pytest.mark.slow) for f in API_FAULTS]


@pytest.mark.parametrize("fault", NOW_AND_THEN)
def test_a_fault_now_and_then_is_retried_to_success(sim_factory: Any, tmp_path: Path,
                                                    fault: str) -> None:
    settings, _ = API_FAULTS[fault]
    sim = sim_factory(SimConfig(faults=Faults(**{k: v * 0.3 if isinstance(v, float) else v
                                                 for k, v in settings.items()}), seed=7))
    rows = prompts(40)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, *FAST, env=ENV)
    assert run.code == 0, run.stderr
    assert_all_answered(rows, read_results(tmp_path / "jobs.results.jsonl"))
    assert max(attempts_on_server(sim, rows)) <= 9


@pytest.mark.slow
def test_a_429_storm_of_30_seconds_is_waited_out_together(sim_factory: Any,
                                                          tmp_path: Path) -> None:
    sim = sim_factory(SimConfig())
    sim.config.storm_until = time.monotonic() + 30
    rows = prompts(20)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, *FAST, "--json", env=ENV)
    assert run.code == 0, run.stderr
    assert_all_answered(rows, read_results(tmp_path / "jobs.results.jsonl"))
    assert max(attempts_on_server(sim, rows)) <= 9
    # One shared cooldown, doubling: a handful of probes per request, not a storm of retries.
    assert sim.stats.rate_limited <= 20 * 8
    summary = orjson.loads(run.stdout)
    assert summary["rate_limited_429"] == sim.stats.rate_limited


def test_key_revoked_in_the_middle_stops_with_exit_4_and_keeps_results(
    sim_factory: Any, tmp_path: Path
) -> None:
    sim = sim_factory(SimConfig(latency_s=0.05, api_key=FAKE_KEY))
    rows = prompts(200)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    proc = start_submit(sim, jobs, "--timeout", "2", "--concurrency", "4")
    wait_for(lambda: count_lines(out) >= 20)
    sim.config.api_key = "sk-rotated-key-0000000000000"  # the key is revoked
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 4, stderr
    assert "HTTP 401" in stderr and "batchrun resume jobs-" in stderr
    done = read_results(out)
    assert 20 <= len(done) < 200 and all(line["error"] is None for line in done.values())
    assert FAKE_KEY not in stderr


# -- faults on our side ----------------------------------------------------------------------


def test_disk_full_is_a_clear_error_and_resume_finishes(sim: RunningSim, tmp_path: Path) -> None:
    rows = prompts(600)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    limit = 300_000  # bytes: with the 256 KB batchrun keeps free, it stops after ~100 lines
    # tiktoken's encoding file (~1.6 MB) would not fit under the limit: have it cached first.
    assert run_cli("estimate", str(jobs), env=ENV).code == 0

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG, not a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    # --no-cache: the response cache's file, under the same limit, would refuse first (its
    # own exit 5); the output's check is what this shows.
    proc = subprocess.run(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         *FAST, "-q", "--no-cache"], env={**os.environ, **ENV}, cwd=REPO, capture_output=True,
        text=True, preexec_fn=small_disk, timeout=120, check=False)
    assert proc.returncode == 5, proc.stderr  # local I/O failure, not failed requests
    # The output's room is checked before each request goes (tests/behaviour/test_disk_full.py).
    assert "file-size limit" in proc.stderr and "nothing more was sent" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert 0 < out.stat().st_size <= limit
    resumed = run_cli("resume", str(out), env=ENV)
    assert resumed.code == 0, resumed.stderr
    assert_all_answered(rows, read_results(out))  # the torn last line was cut, none lost


def running_job(sim_factory: Any, tmp_path: Path) -> tuple[list[dict[str, Any]], Path,
                                                            subprocess.Popen[str]]:
    """A 150-request job that has written at least 30 results and is still going."""
    sim = sim_factory(SimConfig(latency_s=0.02))
    rows = prompts(150)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    proc = start_submit(sim, jobs, "--timeout", "2", "--concurrency", "4")
    wait_for(lambda: count_lines(out) >= 30)
    return rows, out, proc


def test_output_deleted_under_a_running_job_is_rebuilt(sim_factory: Any, tmp_path: Path) -> None:
    rows, out, proc = running_job(sim_factory, tmp_path)
    out.unlink()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_all_answered(rows, read_results(out))


def test_output_truncated_under_a_running_job_stops_and_resume_repairs(
    sim_factory: Any, tmp_path: Path
) -> None:
    rows, out, proc = running_job(sim_factory, tmp_path)
    os.truncate(out, 0)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 5, stderr
    assert "was truncated by another program" in stderr
    resumed = run_cli("resume", str(out), env=ENV)
    assert resumed.code == 0, resumed.stderr
    assert_all_answered(rows, read_results(out))


def test_batchrun_home_not_writable_is_a_clear_error(sim: RunningSim, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "home-file"
    not_a_dir.write_text("x")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url,
                  env={**ENV, "BATCHRUN_HOME": str(not_a_dir)})
    assert run.code == 5
    assert "Set $BATCHRUN_HOME to a writable directory" in run.stderr
    assert "Traceback" not in run.stderr and sim.stats.received == 0


def test_a_ledger_locked_briefly_is_waited_for_and_nothing_goes_unbudgeted(
    sim: RunningSim, tmp_path: Path, isolated_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    # Know when the job has reached its first reservation: from then on it is blocked on the
    # lock this test holds, and a request sent now would be one sent without budget.
    reserving, real_lease = threading.Event(), Ledger.lease

    def lease(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        reserving.set()
        return real_lease(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "lease", lease)
    rows = prompts(5)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    ran: list[Run] = []
    job = threading.Thread(target=lambda: ran.append(run_cli(
        "submit", str(jobs), "--base-url", sim.base_url, "--tpd", "100000", "-q", env=ENV)))
    job.start()
    try:
        assert reserving.wait(30), "the job never tried to reserve its budget"
        assert sim.stats.received == 0  # waiting for the ledger, it has sent nothing
    finally:
        holder.execute("COMMIT")
        holder.close()
        job.join(60)
    [run] = ran
    assert run.code == 0, run.stderr
    assert_all_answered(rows, read_results(tmp_path / "jobs.results.jsonl"))


def test_a_ledger_locked_too_long_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    ledger = Ledger(path, busy_timeout_s=0.2)
    with pytest.raises(BatchrunError, match=r"stayed locked .* Another process holds it"):
        ledger.reserve(Scope("h", "k", "m"), 10, 100, 0)
    holder.execute("COMMIT")
    holder.close()
    ledger.close()


# -- security -------------------------------------------------------------------------------


def test_a_key_echoed_by_the_server_is_redacted(sim_factory: Any, tmp_path: Path,
                                                isolated_env: dict[str, str]) -> None:
    sim = sim_factory(SimConfig(echo_key_in_errors=True))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, env=ENV)
    assert run.code == 1
    results = read_results(tmp_path / "jobs.results.jsonl")
    for line in results.values():
        assert "[redacted]" in line["error"]["message"]
    leftovers = [p.read_bytes() for root in (tmp_path, Path(isolated_env["HOME"]))
                 for p in root.rglob("*") if p.is_file()]
    assert not [b for b in leftovers if FAKE_KEY.encode() in b]
    assert FAKE_KEY not in run.stdout + run.stderr


def test_input_lines_cannot_choose_the_host_or_the_output(sim: RunningSim,
                                                          tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"\n".join([
        orjson.dumps({"custom_id": "../../etc/passwd", "method": "POST",
                      "url": "/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "x"}]}}),
        orjson.dumps({"custom_id": "evil", "method": "POST",
                      "url": "http://169.254.169.254/v1/chat/completions",
                      "body": {"messages": [{"role": "user", "content": "x"}]}}),
        orjson.dumps({"custom_id": "evil2", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "../../admin", "messages": [
                          {"role": "user", "content": "x"}]}}),
    ]) + b"\n")
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--on-bad-line", "skip",
                  env=ENV)
    assert run.code == 1
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert results["../../etc/passwd"]["error"] is None  # just a name in a JSON field
    assert results["evil"]["error"]["code"] == "invalid_request_line"
    assert not (Path("/etc") / "passwd.results.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".jobs.results.jsonl.batchrun", "home", "jobs.jsonl", "jobs.results.jsonl"]
    assert sim.stats.received == 2  # the two requests for our own host, nothing elsewhere


# -- load -----------------------------------------------------------------------------------

LOAD_REQUESTS = int(os.environ.get("BATCHRUN_LOAD_REQUESTS", "100000"))


@pytest.mark.slow
# 100,000 requests take 90-105 s on a 2-core machine (every one looked up in and stored to the
# response cache, recorded in the timeline): the suite's 120 s guard against a hang is too close.
@pytest.mark.timeout(300)
def test_load_with_one_percent_of_every_fault_is_exactly_once(sim_factory: Any,
                                                              tmp_path: Path) -> None:
    """100,000 requests; 1 % each of 500, 503, dropped connection, hang, truncated body,
    200 without choices and HTML error page. Every id ends with exactly one successful line."""
    faults = Faults(error_500=0.01, error_503=0.01, drop=0.01, hang=0.01, truncate=0.01,
                    no_choices=0.01, html=0.01)
    sim = sim_factory(SimConfig(faults=faults, seed=11))
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("wb") as f:
        for i in range(LOAD_REQUESTS):
            f.write(orjson.dumps({"id": f"L{i}", "prompt": f"load {i}", "max_tokens": 5}) + b"\n")
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, *FAST, "--json",
                  env=ENV, timeout=900)
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["requests"]["ok"] == LOAD_REQUESTS
    results = read_results(tmp_path / "jobs.results.jsonl")  # fails on any id twice
    assert len(results) == LOAD_REQUESTS
    assert all(line["error"] is None for line in results.values())
    assert max(sim.stats.attempts.values()) <= 9
    assert sum(sim.stats.attempts.values()) > LOAD_REQUESTS  # the faults really happened
