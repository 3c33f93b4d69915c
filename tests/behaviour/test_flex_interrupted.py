"""Ctrl-C while requests wait for flex capacity, on a real process: the job stops at once with
exit 130 (a flex wait is no request in flight to drain), and resume finishes each id once."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from batchrun.simulator import Faults, SimConfig
from tests.helpers.cli import FAKE_KEY, run_cli, start_submit, wait_for
from tests.helpers.jsonl import prompts, read_results, write_jsonl


def test_ctrl_c_during_a_flex_wait_exits_130_and_resume_sends_each_once(
    sim_factory: Any, tmp_path: Path, isolated_env: dict[str, str],
) -> None:
    sim = sim_factory(SimConfig(faults=Faults(flex_unavailable=1.0)))
    rows = [{**row, "model": "gpt-5-mini"} for row in prompts(4)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    proc = start_submit(sim, jobs, "--service-tier", "flex", "--flex-wait", "3600")
    # every request refused at least twice: all of them are in a flex wait now or soon
    wait_for(lambda: sim.stats.flex_unavailable >= 2 * len(rows))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "batchrun resume" in stderr
    out = tmp_path / "jobs.results.jsonl"
    assert read_results(out) == {}  # nothing answered, nothing recorded failed
    sim.config.faults.flex_unavailable = 0.0  # capacity is back
    run = run_cli("resume", str(out), env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    results = read_results(out)
    assert sorted(results) == sorted(r["id"] for r in rows)
    assert all(line["error"] is None for line in results.values())
    assert sim.stats.ok == len(rows)
    assert sim.stats.service_tiers["flex"] == sim.stats.flex_unavailable + len(rows)
