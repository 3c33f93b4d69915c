"""End to end: `batchrun submit` as a real subprocess against the simulator on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.simulator import Faults, SimConfig, SimLimits, request_digest
from tests.helpers.cli import FAKE_KEY, REPO, run_cli, submit
from tests.helpers.jsonl import assert_all_answered, body_as_sent, read_results, write_jsonl
from tests.helpers.sim import RunningSim

UNLIMITED = ("--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0")


def mixed_rows(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        text = f"Question {i}: what is {i} squared?"
        if i % 4 == 0:
            rows.append({"id": f"r{i}", "prompt": text, "max_tokens": 20})
        elif i % 4 == 1:
            rows.append({"id": f"r{i}", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": text}]})
        elif i % 4 == 2:
            rows.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4o-mini", "max_tokens": 30,
                                  "messages": [{"role": "user", "content": text}]}})
        else:
            rows.append({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                         "body": {"model": "text-embedding-3-small", "input": text}})
    return rows


def test_two_thousand_requests_every_result_matches_its_request(sim: RunningSim,
                                                               tmp_path: Path) -> None:
    rows = mixed_rows(2000)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, *UNLIMITED)
    assert run.code == 0, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert_all_answered(rows, results)
    assert sim.stats.received == 2000  # nothing sent twice
    assert "2,000 ok · 0 failed" in run.stdout
    assert FAKE_KEY not in run.stdout + run.stderr


def test_json_summary(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(20))
    run = submit(sim, jobs, "--json", "-o", str(tmp_path / "out.jsonl"))
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["requests"] == {"total": 20, "ok": 20, "failed": 0, "bad_lines": 0,
                                   "already_done": 0, "not_done": 0, "failed_before": 0}
    assert summary["tokens"]["input"] > 0 and summary["tokens"]["output"] > 0
    assert summary["cost_usd"] > 0
    assert summary["limits"]["gpt-4o-mini"] == {"rpm": 500, "tpm": 200_000, "rpd": 10_000,
                                                "tpd": 0}
    assert set(summary) == {"job", "state", "requests", "tokens", "cost_usd", "prices_as_of",
                            "wall_seconds", "achieved", "limits", "rate_limited_429", "message",
                            "results", "unpriced_models", "via", "job_cost_usd", "max_cost_usd",
                            "cache"}
    assert summary["cache"] == {"answered": 0, "saved_usd": 0.0}
    assert summary["via"]["batch"]["requests"] == 0
    assert summary["via"]["sync"]["requests"] == 20
    assert summary["job"].startswith("jobs-")
    assert summary["state"] == "done"


def test_limits_in_force_are_printed_at_start(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(4)[:1])
    run = submit(sim, jobs, "--tier", "tier2", "--tpm", "123456")
    assert run.code == 0, run.stderr
    assert "gpt-4o-mini: 5K RPM · 123,456 TPM · unlimited RPD · unlimited TPD" in run.stderr


def test_bad_lines_fail_lists_them_and_sends_nothing(sim: RunningSim, tmp_path: Path) -> None:
    lines = [b'{"id": "ok", "prompt": "x"}', b"{oops"] + [
        orjson.dumps({"id": f"b{i}", "prompt": "x", "max_tokens": -i}) for i in range(25)
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"\n".join(lines) + b"\n")
    run = submit(sim, jobs)
    assert run.code == 2
    assert "26 bad lines; nothing was sent" in run.stderr
    assert "line 2: not valid JSON" in run.stderr
    assert "line 3 (id 'b0'): max_tokens must be a positive integer" in run.stderr
    assert "… and 6 more" in run.stderr
    assert "--on-bad-line skip" in run.stderr
    assert "Traceback" not in run.stderr
    assert sim.stats.received == 0
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_bad_lines_skip_records_them_as_failed(sim: RunningSim, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "ok", "prompt": "x"}\n{oops\n{"id": "neg", "prompt": "x", '
                     b'"max_tokens": 0}\n')
    run = submit(sim, jobs, "--on-bad-line", "skip")
    assert run.code == 1, run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert results["ok"]["error"] is None
    assert results["line-2"]["error"]["code"] == "invalid_request_line"
    assert "not valid JSON" in results["line-2"]["error"]["message"]
    assert results["line-2"]["response"] is None
    assert "max_tokens" in results["neg"]["error"]["message"]
    assert sim.stats.received == 1
    assert "2 failed for good" in run.stdout
    assert "batchrun resume jobs-" in run.stdout and "--retry-failed" in run.stdout


@pytest.mark.parametrize("args", [
    ("submit", "/nonexistent/jobs.jsonl", "--simulate"),
    ("submit", "."),
    ("submit", "samples/jobs.jsonl", "--tier", "tier9"),
    ("submit", "samples/jobs.jsonl", "--rpm", "-5"),
])
def test_usage_errors_exit_2_without_traceback(args: tuple[str, ...]) -> None:
    run = run_cli(*args, env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 2
    assert "Traceback" not in run.stderr and run.stderr.strip()


def test_missing_key_is_a_clear_error(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(1))
    run = submit(sim, jobs, key="")
    assert run.code == 2
    assert "$OPENAI_API_KEY is not set" in run.stderr and "--simulate" in run.stderr
    assert sim.stats.received == 0


def test_plain_http_to_remote_host_is_refused(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(1))
    run = run_cli("submit", str(jobs), "--base-url", "http://api.example.com/v1",
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 2 and "--insecure" in run.stderr


def test_revoked_key_stops_the_job_with_exit_4(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(api_key="sk-the-real-key-0000000000"))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(10))
    run = submit(sim, jobs)
    assert run.code == 4
    assert "refused" in run.stderr and "$OPENAI_API_KEY" in run.stderr
    assert FAKE_KEY not in run.stderr + run.stdout
    # Nothing was answered, so nothing is recorded: a later run sends these again.
    assert read_results(tmp_path / "jobs.results.jsonl") == {}


def test_insufficient_quota_stops_with_exit_4(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(insufficient_quota=True))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(5))
    run = submit(sim, jobs)
    assert run.code == 4
    assert "insufficient_quota" in run.stderr and "billing" in run.stderr


def test_server_daily_limit_pauses_with_exit_3_and_keeps_results(sim_factory: Any,
                                                                 tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(SimLimits(tpd=500)))
    rows = [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40} for i in range(30)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, *UNLIMITED, "--concurrency", "1")
    assert run.code == 3, run.stderr
    assert "Daily token budget reached" in run.stderr and "tokens per day (TPD)" in run.stderr
    assert "Resume after 00:00 UTC" in run.stderr and "batchrun resume jobs-" in run.stderr
    done = read_results(tmp_path / "jobs.results.jsonl")
    assert 0 < len(done) < 30 and all(line["error"] is None for line in done.values())


def test_local_daily_budget_stops_before_sending_past_it(sim: RunningSim, tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40} for i in range(30)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--tpd", "300", "--concurrency", "1")
    assert run.code == 3, run.stderr
    assert "Daily token budget reached for gpt-4o-mini:" in run.stderr
    assert "of 300 tokens used on" in run.stderr
    assert sim.stats.rate_limited == 0  # we stopped ourselves; the server never had to say no
    assert 0 < sim.stats.received < 30


def test_per_minute_429s_are_retried_until_everything_succeeds(sim_factory: Any,
                                                               tmp_path: Path) -> None:
    # The server allows a tenth of what the client was told: 429s are certain.
    sim = sim_factory(SimConfig(SimLimits(rpm=1200, window_s=1.0)))
    rows = [{"id": f"m{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(60)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--rpm", "12000", "--tpm", "0", "--json")
    assert run.code == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["requests"]["ok"] == 60
    assert summary["rate_limited_429"] == sim.stats.rate_limited > 0
    assert max(sim.stats.attempts.values()) <= 9
    assert_all_answered(rows, read_results(tmp_path / "jobs.results.jsonl"))


def test_server_errors_are_retried_then_recorded(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(faults=Faults(error_500=1.0)))
    rows = [{"id": f"e{i}", "prompt": f"q{i}"} for i in range(3)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--max-retries", "2")
    assert run.code == 1
    results = read_results(tmp_path / "jobs.results.jsonl")
    for row in rows:
        line = results[row["id"]]
        assert line["error"]["code"] == "server_error"
        assert "gave up after 3 attempts" in line["error"]["message"]
        assert line["response"]["status_code"] == 500
        body = body_as_sent(row)
        assert sim.stats.attempts[request_digest(body)] == 3  # max-retries + 1, never more


def test_a_request_larger_than_the_tpm_limit_fails_at_once(sim: RunningSim,
                                                           tmp_path: Path) -> None:
    rows = [{"id": "small", "prompt": "hi", "max_tokens": 10},
            {"id": "huge", "prompt": "hi", "max_tokens": 5000},
            {"id": "small2", "prompt": "hi there", "max_tokens": 10}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--tpm", "1000")
    assert run.code == 1
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert results["huge"]["error"]["code"] == "request_too_large"
    assert "1,000 tokens/min" in results["huge"]["error"]["message"]
    assert results["small"]["error"] is None and results["small2"]["error"] is None
    assert sim.stats.received == 2


def test_azure_endpoint(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(8))
    run = run_cli("submit", str(jobs), "--azure-endpoint", sim.azure_endpoint, *UNLIMITED,
                  env={"AZURE_OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    assert_all_answered(mixed_rows(8), read_results(tmp_path / "jobs.results.jsonl"))


def test_a_second_run_sends_only_what_is_missing(sim: RunningSim, tmp_path: Path) -> None:
    rows = mixed_rows(40)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    write_jsonl(tmp_path / "first.jsonl", rows[:25])
    # Another input's job, in another state dir, without the record of its owner beside the
    # output (moved here alone, or made before batchrun kept one): no manifest here, so the
    # output is taken as ours because every id in it is one of the input's.
    first = run_cli("submit", str(tmp_path / "first.jsonl"), "--base-url", sim.base_url, "-o",
                    str(out), *UNLIMITED, env={"OPENAI_API_KEY": FAKE_KEY,
                                               "BATCHRUN_HOME": str(tmp_path / "elsewhere")})
    assert first.code == 0, first.stderr
    (tmp_path / ".jobs.results.jsonl.batchrun").unlink()
    # A crash left half a line behind.
    with out.open("ab") as f:
        f.write(b'{"id": "batch_req_torn", "custom_id": "r3')
    run = submit(sim, jobs, "-o", str(out), *UNLIMITED)
    assert run.code == 0, run.stderr
    assert "25 done before" in run.stdout
    assert_all_answered(rows, read_results(out))
    assert sim.stats.received == 40


# The quick suite has SIGTERM on a real process (test_signals.py) and the drain on virtual time
# (test_engine_time.py); this real Ctrl-C runs in make test-all.
@pytest.mark.slow
def test_ctrl_c_drains_exits_130_and_a_rerun_finishes(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(latency_s=0.5))
    rows = [{"id": f"c{i}", "prompt": f"q{i}", "max_tokens": 5} for i in range(400)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         "--rpm", "600"],
        env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the first result line, not waiting a fixed time
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and "Continue with: batchrun resume jobs-" in stderr
    partial = read_results(out)
    assert 0 < len(partial) < 400
    rerun = submit(sim, jobs, "--rpm", "0")
    assert rerun.code == 0, rerun.stderr
    assert_all_answered(rows, read_results(out))


def test_the_key_is_in_nothing_batchrun_leaves_behind(sim_factory: Any, tmp_path: Path,
                                                      isolated_env: dict[str, str]) -> None:
    sim = sim_factory(SimConfig(faults=Faults(error_500=0.3), api_key=FAKE_KEY))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(30))
    runs = [submit(sim, jobs, *UNLIMITED, "--json"), submit(sim, jobs, *UNLIMITED)]
    revoked = submit(sim_factory(SimConfig(api_key="sk-other-key-aaaaaaaaaaaa")), jobs,
                     "-o", str(tmp_path / "x.jsonl"))
    texts = [r.stdout + r.stderr for r in [*runs, revoked]]
    for root in (tmp_path, Path(isolated_env["HOME"])):
        for path in root.rglob("*"):
            if path.is_file():
                texts.append(path.read_bytes().decode("utf-8", "replace"))
    assert texts and not [t for t in texts if FAKE_KEY in t]


def test_unwritable_output_is_a_clear_error(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", mixed_rows(3))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    run = submit(sim, jobs, "-o", str(blocker / "out.jsonl"))
    assert run.code == 2
    assert "cannot open output" in run.stderr and "Traceback" not in run.stderr
    assert sim.stats.received == 0


def test_bad_lines_cost_nothing_in_the_summary(sim: RunningSim, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "ok", "prompt": "x"}\n{oops\n')
    run = submit(sim, jobs, "--on-bad-line", "skip", "--json")
    assert run.code == 1
    summary = orjson.loads(run.stdout)
    assert summary["requests"]["bad_lines"] == 1 and summary["requests"]["failed"] == 1
    assert summary["cost_usd"] is not None and summary["cost_usd"] > 0
