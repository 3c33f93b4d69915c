"""Signals on a real process: SIGTERM (what `kill`, systemd and Kubernetes send) drains like Ctrl-C.

A second Ctrl-C and the drain timeout are tested on virtual time in the engine tests."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson

from batchrun.simulator import SimConfig
from tests.helpers.cli import start_submit, wait_for
from tests.helpers.jsonl import count_lines, prompts, read_results, write_jsonl


def manifest_state(home: Path) -> str:
    [path] = (home / "jobs").glob("*.json")
    return str(orjson.loads(path.read_bytes())["state"])


def test_sigterm_drains_exits_130_and_keeps_the_checkpoint(
    sim_factory: Any, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    sim = sim_factory(SimConfig(latency_s=0.2))
    rows = prompts(200)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    out = tmp_path / "jobs.results.jsonl"
    proc = start_submit(sim, jobs, "--concurrency", "4")
    wait_for(lambda: count_lines(out) >= 1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Interrupted" in stderr and "batchrun resume" in stderr
    kept = read_results(out)
    assert 0 < len(kept) < len(rows)
    # Requests in flight at the signal were finished and written, not dropped: every request
    # the server answered has its line.
    assert len(kept) == sim.stats.ok
    assert manifest_state(Path(isolated_env["BATCHRUN_HOME"])) == "interrupted"

