"""With --state redis://, a stop by the API's per-day *request* limit is named as one, in the run
and on a resume the same day (where the server's words are gone): "Daily token budget reached"
sent the user to raise --tpd, the wrong limit (hostile round 2; the local ledger's twin is in
test_daily_wording.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl


def test_an_rpd_stop_shared_in_redis_names_the_request_limit_also_on_resume(
        sim_factory: Any, redis_url: str, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(SimLimits(rpd=5), latency_s=0.01))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(12))
    env = {"OPENAI_API_KEY": FAKE_KEY}
    common = ("--base-url", sim.base_url, "--state", redis_url, "--tpd", "100000", "-q")
    run = run_cli("submit", str(jobs), *common, "--concurrency", "1", env=env)
    assert run.code == 3, run.stderr
    assert "Daily request budget reached for gpt-4o-mini" in run.stderr, run.stderr
    assert "token budget" not in run.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 5

    again = run_cli("resume", "--state", redis_url, "-q", env=env)
    assert again.code == 3, again.stderr
    assert "Daily request budget reached for gpt-4o-mini" in again.stderr, again.stderr
    assert "token budget" not in again.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 5  # nothing more was sent
