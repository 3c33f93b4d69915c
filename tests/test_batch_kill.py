"""kill -9 of a real `batchrun` process at random moments of a --via batch job (uploading,
creating, polling, downloading, merging), then resume: exactly one line per id, no part's batch
created twice, and every request run by the simulator exactly once."""

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

from batchrun.sim import SimConfig
from batchrun.sim_batch import BatchConfig
from tests.conftest import REPO, read_results, write_jsonl

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
