"""--via batch with identical lines (#25): a copy waits for its first line's batch; when that
request fails for good, each copy records the same failure instead of being uploaded (and
billed) again in the next planning. `--retry-failed` then sends it once again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from batchrun.simulator import SimConfig
from batchrun.simulator.batch_model import BatchConfig
from tests.helpers.cli import FAKE_KEY, run_cli, submit
from tests.helpers.jsonl import read_results, write_jsonl


def with_copies(n: int, distinct: int) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"Question number {i % distinct}", "max_tokens": 10}
            for i in range(n)]


def test_a_batch_request_refused_for_good_gives_each_copy_its_failure_without_uploading_it(
        sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=1.0, request_errors=1.0)))
    rows = with_copies(12, 3)  # 3 distinct bodies, each 4 times
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = submit(sim, jobs, "--via", "batch", "--poll-max", "1")
    assert run.code == 1, run.stderr
    assert sum(sim.stats.batch.runs.values()) == 3
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert len(results) == 12
    for line in results.values():
        assert line["error"] is not None and "cached" not in line
        assert "rejected this request" in line["error"]["message"]
    # --retry-failed sends each distinct request once again (and the copies wait for it).
    sim.config.batch.request_errors = 0.0
    again = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--retry-failed",
                    "--poll-max", "1", env={"OPENAI_API_KEY": FAKE_KEY})
    assert again.code == 0, again.stderr
    assert sum(sim.stats.batch.runs.values()) == 3 + 3
    assert all(line["error"] is None
               for line in read_results(tmp_path / "jobs.results.jsonl").values())


def test_a_batch_request_out_of_tries_gives_each_copy_its_failure_without_uploading_it(
        sim_factory: Any, tmp_path: Path) -> None:
    # every batch expires with nothing done: each try of a request ends unanswered
    sim = sim_factory(SimConfig(batch=BatchConfig(seconds=1.0, expire_share=0.0,
                                                  expire_batches=0)))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", with_copies(12, 3))
    run = submit(sim, jobs, "--via", "batch", "--poll-max", "1", "--max-retries", "1")
    assert run.code == 1, run.stderr
    assert sim.stats.batch.uploads == 2  # the 3 distinct requests, tried twice; no copy
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert len(results) == 12
    assert {line["error"]["code"] for line in results.values()} == {"batch_expired"}
