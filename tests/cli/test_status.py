"""batchrun status: jobs, their states, and today's usage against the daily budget."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from tests.helpers.cli import FAKE_KEY, REPO, run_cli, wait_for
from tests.helpers.jsonl import count_lines, prompts, write_jsonl
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}


def test_status_with_no_jobs() -> None:
    run = run_cli("status")
    assert run.code == 0 and "No jobs yet. Start one with: batchrun submit" in run.stdout
    data = orjson.loads(run_cli("status", "--json").stdout)
    assert data == {"jobs": [], "usage": []}


def test_status_lists_paused_finished_and_crashed_jobs(sim: RunningSim, tmp_path: Path) -> None:
    done = write_jsonl(tmp_path / "done.jsonl", prompts(3, "d"))
    paused = write_jsonl(tmp_path / "paused.jsonl", prompts(30, "p"))
    crashed = write_jsonl(tmp_path / "crashed.jsonl", prompts(200, "c"))
    base = ("--base-url", sim.base_url)
    assert run_cli("submit", str(done), *base, env=ENV).code == 0
    assert run_cli("submit", str(paused), *base, "--tpd", "300", "--concurrency", "1",
                   env=ENV).code == 3
    proc = subprocess.Popen(
        # --no-cache: its first line must be sent (the others' answers would be written at once)
        [sys.executable, "-m", "batchrun", "submit", str(crashed), *base, "--concurrency", "1",
         "-q", "--no-cache"], env={**os.environ, **ENV}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "crashed.results.jsonl"
    wait_for(lambda: count_lines(out) >= 1)
    proc.kill()
    proc.wait()

    run = run_cli("status")
    assert run.code == 0
    lines = run.stdout.splitlines()
    row = {name: next(line for line in lines if line.lstrip().startswith(name))
           for name in ("done-", "paused-", "crashed-")}
    assert "done" in row["done-"] and "3/3" in row["done-"]
    assert "paused-daily" in row["paused-"] and "/30" in row["paused-"]
    assert "crashed" in row["crashed-"]
    assert "Continue the latest unfinished job with: batchrun resume crashed-" in run.stdout
    # One key and model: one usage row for all three jobs, against the last budget checked
    # (the crashed job's default: tier 1's published 10,000 RPD and no daily token budget).
    assert "Usage on" in run.stdout and "gpt-4o-mini" in run.stdout
    usage_row = next(line for line in lines if "gpt-4o-mini" in line)
    assert usage_row.split()[3:] == ["-", usage_row.split()[4], "10,000"]
    assert FAKE_KEY not in run.stdout

    data = orjson.loads(run_cli("status", "--json").stdout)
    states = {j["job_id"].split("-")[0]: j["state"] for j in data["jobs"]}
    assert states == {"done": "done", "paused": "paused-daily", "crashed": "crashed"}
    assert all(j["resume"] == f"batchrun resume {j['job_id']}" for j in data["jobs"])
    [usage] = data["usage"]
    assert usage["model"] == "gpt-4o-mini" and (usage["tpd"], usage["rpd"]) == (0, 10_000)
    assert usage["key_fingerprint"].startswith("key-") and usage["tokens"] > 0

    one = run_cli("status", "paused")
    assert "paused-daily" in one.stdout and "resume  batchrun resume paused-" in one.stdout
    assert "Daily token budget reached" in one.stdout


def test_status_shows_a_live_job_as_running(sim_factory: object, tmp_path: Path) -> None:
    from batchrun.simulator import SimConfig

    sim = sim_factory(SimConfig(latency_s=1.0))  # type: ignore[operator]
    jobs = write_jsonl(tmp_path / "live.jsonl", prompts(50))
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         "--concurrency", "1", "-q"], env={**os.environ, **ENV}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def job() -> dict[str, object]:
            jobs = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
            return jobs[0] if jobs else {"done": 0}  # type: ignore[no-any-return]

        wait_for(lambda: job()["done"] >= 2)  # progress is saved every few seconds
        assert job()["state"] == "running"
    finally:
        proc.kill()
        proc.wait()
