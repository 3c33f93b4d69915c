"""kill -9 in the middle of a job over two endpoints, then `resume`: exactly one line per id."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import REPO, wait_for
from tests.helpers.endpoints import KEY_A, KEY_B, openai, prompts, toml_file
from tests.helpers.jsonl import assert_all_answered, count_lines, read_results, write_jsonl


@pytest.mark.slow
def test_kill_9_then_resume_with_endpoints_gives_exactly_once(
    sim_factory: Any, tmp_path: Path,
) -> None:
    a = sim_factory(SimConfig(SimLimits(rpm=1200, window_s=1.0), latency_s=0.05, api_key=KEY_A))
    b = sim_factory(SimConfig(SimLimits(rpm=2400, window_s=1.0), latency_s=0.05, api_key=KEY_B))
    conf = toml_file(tmp_path / "endpoints.toml", openai("a", a.base_url, "KEY_A", 1200),
                     openai("b", b.base_url, "KEY_B", 2400))
    rows = prompts(300)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    env = {**os.environ, "KEY_A": KEY_A, "KEY_B": KEY_B}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--endpoints", str(conf),
         "--record-endpoint", "-q"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: count_lines(out) >= 60 or proc.poll() is not None)
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = read_results(out)
    assert 0 < len(before) < 300
    resumed = subprocess.run(
        [sys.executable, "-m", "batchrun", "resume", str(out), "-q"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = read_results(out)
    assert_all_answered(rows, after)
    # The resumed run read the same endpoints file: both served it, and named themselves.
    assert {line["endpoint"] for line in after.values()} == {"a", "b"}
    assert a.stats.ok + b.stats.ok <= 300 + 2 * 64
