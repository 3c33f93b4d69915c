"""Checkpoint and resume: crashes, Ctrl-C, changed input, and the daily budget across days."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.backends.sync.engine import JobSpec
from batchrun.cli import commands as cli
from batchrun.events import Event, StateChanged
from batchrun.files import ledger
from batchrun.files.jobstore import JobStore
from batchrun.http.client import Endpoint
from batchrun.job import prepare
from batchrun.job import run as run_job
from batchrun.simulator import Faults, SimConfig, SimServer, Simulator
from tests.helpers.cli import FAKE_KEY, REPO, Run, run_cli, start_submit, wait_for
from tests.helpers.jsonl import assert_all_answered, count_lines, prompts, read_results, write_jsonl
from tests.helpers.sim import RunningSim

UTC = dt.UTC


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    """The CLI in this process, so the test can move the date (batchrun.files.ledger.utc_now)."""
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


# One seed in the quick suite; CI (make test-all) runs all four.
@pytest.mark.parametrize("seed", [1, *(pytest.param(n, marks=pytest.mark.slow) for n in (2, 3, 4))])
def test_kill_9_at_random_moments_then_resume_gives_exactly_once(
    sim_factory: Any, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    sim = sim_factory(SimConfig(latency_s=0.05, jitter_s=0.04, seed=seed))
    rows = prompts(300)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    proc = start_submit(sim, jobs, "--concurrency", "16")
    for _ in range(2):
        target = count_lines(out) + rng.randint(1, 100)
        wait_for(lambda t=target, p=proc: count_lines(out) >= t or p.poll() is not None)
        proc.kill()  # SIGKILL: no cleanup, no drain
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        before = read_results(out)  # every line whole, no id twice
        assert 0 < len(before) < 300
        proc = subprocess.Popen(
            [sys.executable, "-m", "batchrun", "resume", str(out), "-q"],
            env={**os.environ, "OPENAI_API_KEY": FAKE_KEY}, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_all_answered(rows, read_results(out))
    # Only requests in flight at a kill may have been sent twice.
    assert sim.stats.received <= 300 + 2 * 16


def test_changed_input_is_refused_unless_forced(sim: RunningSim, tmp_path: Path) -> None:
    rows = prompts(20)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    env = {"OPENAI_API_KEY": FAKE_KEY}
    first = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--tpd", "200",
                    "--concurrency", "1", env=env)
    assert first.code == 3, first.stderr
    job_id = first.stderr.rsplit("batchrun resume ", 1)[1].split()[0]
    with jobs.open("ab") as f:
        f.write(orjson.dumps({"id": "extra", "prompt": "one more", "max_tokens": 10}) + b"\n")
    refused = run_cli("resume", job_id, env=env)
    assert refused.code == 2
    assert "changed since job" in refused.stderr and "--force" in refused.stderr
    assert "size went from" in refused.stderr
    forced = run_cli("resume", job_id, "--force", "--tpd", "0", env=env)
    assert forced.code == 0, forced.stderr
    # The input was checked again (the first run's count of 20 lines no longer holds).
    [job] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert job["total"] == job["done"] == 21 and job["checked"]["total"] == 21
    assert_all_answered([*rows, {"id": "extra", "prompt": "one more", "max_tokens": 10}],
                        read_results(tmp_path / "jobs.results.jsonl"))


def test_a_three_day_job_completes_by_resuming_once_a_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    today = [dt.datetime(2026, 11, 27, 9, 0, tzinfo=UTC)]
    monkeypatch.setattr(ledger, "utc_now", lambda: today[0])
    rows = prompts(60)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    run = in_process(capsys, "submit", str(jobs), "--simulate", "--rpm", "0", "--tpm", "0",
                     "--tpd", "600", "-q")
    assert run.code == 3
    assert "Daily token budget reached for gpt-4o-mini:" in run.stderr
    assert "used on 2026-11-27 (UTC)" in run.stderr
    assert "Resume after 00:00 UTC (in 15h 00m) with: batchrun resume jobs-" in run.stderr
    done = [count_lines(out)]
    assert 0 < done[0] < 60

    again = in_process(capsys, "resume")  # the same UTC day: nothing more fits
    assert again.code == 3 and "(in 15h 00m)" in again.stderr
    assert "most recently updated unfinished job" in again.stderr
    assert count_lines(out) == done[0]

    codes = []
    while len(codes) < 5:
        today[0] += dt.timedelta(days=1)
        run = in_process(capsys, "resume")
        codes.append(run.code)
        done.append(count_lines(out))
        if run.code == 0:
            break
        assert run.code == 3 and today[0].date().isoformat() in run.stderr
    assert codes[-1] == 0 and 2 <= len(codes) <= 4
    assert all(b > a for a, b in itertools.pairwise(done))
    assert_all_answered(rows, read_results(out))
    finished = in_process(capsys, "resume", "jobs")
    assert finished.code == 0 and "is finished: 60 of 60 requests" in finished.stdout


async def test_wait_sleeps_until_midnight_utc_and_carries_on(tmp_path: Path) -> None:
    now = [dt.datetime(2026, 11, 27, 23, 58, tzinfo=UTC)]

    async def fake_sleep(seconds: float) -> None:
        now[0] += dt.timedelta(seconds=seconds)
        await asyncio.sleep(0)

    rows = prompts(40)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    events: list[Event] = []
    async with SimServer(Simulator()) as server:
        spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl",
                       endpoint=Endpoint.make(server.base_url, None, None),
                       overrides={"rpm": 0, "tpm": 0, "tpd": 500}, wait=True)
        store = JobStore(tmp_path / "home")
        manifest = prepare(spec, False, store)
        stop = await run_job(spec, manifest, store, FAKE_KEY, events.append, "sim",
                             now_utc=lambda: now[0], sleep=fake_sleep)
    assert stop is None
    assert now[0].date() == dt.date(2026, 11, 28)
    paused = [e for e in events if isinstance(e, StateChanged) and e.state == "paused-daily"]
    assert paused and "resuming at 00:00 UTC" in paused[0].detail
    assert_all_answered(rows, read_results(tmp_path / "out.jsonl"))
    assert store.get(manifest.job_id).state == "done"  # type: ignore[union-attr]


def test_two_processes_sharing_a_ledger_never_exceed_the_budget(sim: RunningSim,
                                                                tmp_path: Path,
                                                                isolated_env: dict[str, str]
                                                                ) -> None:
    budget = 3000
    procs = []
    for name in ("a", "b"):
        jobs = write_jsonl(tmp_path / f"{name}.jsonl", prompts(200, prefix=name))
        procs.append(start_submit(sim, jobs, "--tpd", str(budget), "--concurrency", "4"))
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [3, 3], errors
    used = 0
    for name in ("a", "b"):
        for line in read_results(tmp_path / f"{name}.results.jsonl").values():
            if not line.get("cached"):  # the same prompts: one job's answers serve the other
                used += line["response"]["body"]["usage"]["total_tokens"]
    assert 0 < used <= budget
    db = sqlite3.connect(Path(isolated_env["BATCHRUN_HOME"]) / "ledger.sqlite3")
    [(ledger_tokens,)] = db.execute("SELECT tokens FROM usage").fetchall()
    db.close()
    assert used <= ledger_tokens <= budget


def test_retry_failed_sends_failures_again_once(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(faults=Faults(error_500=1.0)))
    rows = prompts(5)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    env = {"OPENAI_API_KEY": FAKE_KEY}
    first = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--max-retries", "0",
                    env=env)
    assert first.code == 1
    out = tmp_path / "jobs.results.jsonl"
    assert all(line["error"] for line in read_results(out).values())
    plain = run_cli("resume", str(out), env=env)  # failed stays failed without the flag
    assert plain.code == 1  # the job's result, the same as its run said: some failed for good
    assert "is finished: 5 of 5 requests have a result (5 failed)" in plain.stdout
    sim.config.faults.error_500 = 0.0
    retried = run_cli("resume", str(out), "--retry-failed", env=env)
    assert retried.code == 0, retried.stderr
    assert "Dropped 5 failed results" in retried.stderr
    assert_all_answered(rows, read_results(out))


def test_a_running_job_cannot_be_resumed_twice(sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(latency_s=1.0))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(100))
    out = tmp_path / "jobs.results.jsonl"
    proc = start_submit(sim, jobs, "--concurrency", "1")
    try:
        wait_for(lambda: count_lines(out) >= 1)
        second = run_cli("resume", str(out), env={"OPENAI_API_KEY": FAKE_KEY})
        assert second.code == 2 and "already running" in second.stderr
    finally:
        proc.kill()
        proc.communicate()


def test_manifest_is_private_complete_and_keyless(sim: RunningSim, tmp_path: Path,
                                                  isolated_env: dict[str, str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--tier", "tier2",
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    home = Path(isolated_env["BATCHRUN_HOME"])
    [path] = (home / "jobs").glob("*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "ledger.sqlite3").stat().st_mode) == 0o600
    manifest = orjson.loads(path.read_bytes())
    assert manifest["job_id"].startswith("jobs-") and len(manifest["job_id"]) == len("jobs-") + 6
    assert manifest["state"] == "done" and manifest["done"] == manifest["total"] == 3
    assert manifest["input"] == str(jobs) and manifest["output"].endswith("jobs.results.jsonl")
    assert set(manifest["fingerprint"]) == {"size", "mtime_ns", "sha256_head_tail", "sha256"}
    assert manifest["options"]["tier"] == "tier2"
    assert manifest["options"]["api_key_env"] == "OPENAI_API_KEY"
    assert FAKE_KEY not in path.read_text()


def test_resume_unknown_job(tmp_path: Path) -> None:
    run = run_cli("resume", "nope")
    assert run.code == 2 and "no job 'nope'" in run.stderr and "batchrun status" in run.stderr
