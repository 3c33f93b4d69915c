"""Signals to a real `batchrun` process running a --via batch job: kill -9 at random moments
(uploading, creating, polling, downloading, merging), then resume gives exactly one line per id,
no part's batch created twice and every request run once by the simulator; Ctrl-C leaves the
batch running and says how to collect or cancel it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import BatchConfig, SimConfig
from tests.helpers.cli import REPO
from tests.helpers.jsonl import read_results, write_jsonl

pytestmark = pytest.mark.slow


def batchrun(*args: str, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "batchrun", *args], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                            env={**os.environ, "OPENAI_API_KEY": "sk-x"})


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_at_random_moments_then_resume(tmp_path: Path, sim_factory: Any,
                                              seed: int) -> None:
    rng = random.Random(seed)
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=0.6, expire_share=0.5,
                                                  expire_batches=1, create_5xx=0.2)))
    n = 60
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"r{i}", "prompt": f"question number {i}", "max_tokens": 5}
                        for i in range(n)])
    out = tmp_path / "out.jsonl"
    common = ["--via", "batch", "--poll-max", "1", "--batch-queue-tokens", "400", "-q"]
    # `submit` again each time: it continues the job, and starts it if a kill came before the
    # job was recorded at all (while the input was being checked).
    submit = ["submit", str(jobs), "-o", str(out), "--base-url", sim.base_url, *common]
    for _ in range(4):
        proc = batchrun(*submit)
        time.sleep(rng.uniform(0.3, 2.0))  # the moment of the kill, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    final = batchrun(*submit, stderr=subprocess.PIPE)
    _, stderr = final.communicate(timeout=90)
    assert final.returncode == 0, stderr.decode()
    results = read_results(out)  # fails on a duplicate id
    assert set(results) == {f"r{i}" for i in range(n)}
    assert all(line["error"] is None for line in results.values())
    keys = [m["batchrun_part"] for m in sim.stats.batch.created.values()]
    assert len(keys) == len(set(keys)), "a part's batch was created twice"
    assert dict(sim.stats.batch.runs) == {f"r{i}": 1 for i in range(n)}


def test_ctrl_c_of_a_real_process_leaves_its_batch_running(tmp_path: Path,
                                                           sim_factory: Any) -> None:
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=60)))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"r{i}", "prompt": "hi"} for i in range(5)])
    proc = batchrun("submit", str(jobs), "--via", "batch", "--base-url", sim.base_url, "-q",
                    stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not sim.stats.batch.created and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the batch to exist on the server
    assert sim.stats.batch.created, "the batch was never created"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    said = stderr.decode()
    assert "goes on running on the server (Ctrl-C does not cancel it)" in said
    assert "batchrun resume jobs-" in said and "batchrun cancel jobs-" in said
    assert sim.stats.batch.cancels == 0


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_9_during_resume_via_sync_beside_open_batches(tmp_path: Path, sim_factory: Any,
                                                           seed: int) -> None:
    # The job's first batch runs on the server; `resume --via sync` (and with
    # --cancel-batches) is killed at random moments. No batch is ever created for the rest,
    # and the last resume gives one line per id.
    rng = random.Random(seed)
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=3)))
    n = 40
    jobs = write_jsonl(tmp_path / "jobs.jsonl",
                       [{"id": f"r{i}", "prompt": f"question number {i}", "max_tokens": 5}
                        for i in range(n)])
    out = tmp_path / "out.jsonl"
    submit = batchrun("submit", str(jobs), "-o", str(out), "--base-url", sim.base_url,
                      "--via", "batch", "--batch-queue-tokens", "400", "--detach", "-q")
    assert submit.wait(60) == 0
    created = len(sim.stats.batch.created)
    assert created == 1
    for extra in ([], ["--cancel-batches"], []):
        proc = batchrun("resume", str(out), "--via", "sync", *extra, "-q")
        time.sleep(rng.uniform(0.2, 1.5))  # the moment of the kill, not a synchronisation
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    final = batchrun("resume", str(out), "--via", "sync", "-q", stderr=subprocess.PIPE)
    _, stderr = final.communicate(timeout=90)
    assert final.returncode == 0, stderr.decode()
    results = read_results(out)  # fails on a duplicate id
    assert set(results) == {f"r{i}" for i in range(n)}
    assert all(line["error"] is None for line in results.values()), results
    assert len(sim.stats.batch.created) == created, "a batch was created for the sync path"
    assert all(runs == 1 for runs in sim.stats.batch.runs.values())
