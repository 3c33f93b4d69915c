"""`batchrun forget` takes the job's own records with its manifest: the same input and output
make the same job id again, and a new job must not inherit the forgotten one's spend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.helpers.cli import run_cli, submit
from tests.helpers.jsonl import read_results, write_jsonl

FAST = ("--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0", "--no-cache", "--json")


def test_a_job_forgotten_and_submitted_again_starts_its_max_cost_from_nothing(
        sim: Any, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"r{i}", "prompt": f"q{i}",
                                                  "max_tokens": 5} for i in range(40)])
    out = tmp_path / "jobs.results.jsonl"
    first = submit(sim, jobs, *FAST)
    assert first.code == 0, first.stderr
    cost = orjson.loads(first.stdout)["cost_usd"]
    cap = f"{cost * 1.6:.8f}"  # room for one run of it, not two
    assert run_cli("forget", str(out)).code == 0
    out.unlink()
    again = submit(sim, jobs, *FAST, "--max-cost", cap)
    assert again.code == 0, again.stderr
    assert orjson.loads(again.stdout)["state"] == "done"
    assert len(read_results(out)) == 40
