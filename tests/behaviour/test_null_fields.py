"""A body field set to null is a field not set, as the API reads it: `"n": null` is one choice,
`"max_completion_tokens": null` leaves `max_tokens` in charge. (Hypothesis found `"n": null`
passing the validator and then crashing the token counter.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.sim import RunningSim

LINES: list[dict[str, Any]] = [
    {"id": "n-null", "prompt": "hello", "max_tokens": 5, "n": None},
    {"id": "mct-null", "prompt": "hello", "max_completion_tokens": None, "max_tokens": 7},
]


def test_estimate_reads_a_null_field_as_not_set(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    run = run_cli("estimate", str(jobs), "--json")
    assert run.code == 0, run.stderr
    model = orjson.loads(run.stdout)["models"][0]
    assert model["max_output_tokens"] == 5 + 7
    assert model["requests_without_max"] == 0


def test_submit_sends_requests_with_null_fields(tmp_path: Path, sim: RunningSim) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", LINES)
    out = tmp_path / "out.jsonl"
    run = run_cli("submit", str(jobs), "-o", str(out), "--base-url", sim.base_url,
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    assert {k: r["error"] for k, r in read_results(out).items()} == {"n-null": None,
                                                                       "mct-null": None}
