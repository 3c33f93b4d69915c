"""`estimate --endpoints`: the time under the endpoints' limits together, and which binds."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.helpers.cli import run_cli
from tests.helpers.endpoints import FILE
from tests.helpers.jsonl import write_jsonl


def test_estimate_spreads_the_job_over_the_endpoints_and_names_what_binds_each(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "endpoints.toml"
    conf.write_text(FILE)
    # 600 requests of 30 tokens charged: a admits 600/min (RPM), b 200/min (its TPM).
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": f"q{i}", "prompt": "x", "max_tokens": 22} for i in range(600)])
    run = run_cli("estimate", str(jobs), "--endpoints", str(conf), "--json")
    assert run.code == 0, run.stderr  # no key is needed to estimate
    [model] = orjson.loads(run.stdout)["models"]
    rows = {r["name"]: r for r in model["endpoints"]}
    # Worked by hand: each request is charged 8 prompt tokens ("x" in the chat template) and
    # its 22 of output, 30 in all. a admits 600 a minute (its RPM); b's 6,000 TPM admits
    # 6,000 / 30 = 200 (below its 1,200 RPM). Together 800 a minute: 600 requests take 0.75
    # minutes, three quarters of them through a.
    assert model["limit_tokens"] == 600 * 30
    assert rows["a"]["binding"] == "rpm" and rows["a"]["requests_per_min"] == 600
    assert rows["b"]["binding"] == "tpm" and rows["b"]["requests_per_min"] == 200
    assert (rows["a"]["share"], rows["b"]["share"], rows["spare"]["share"]) == (0.75, 0.25, 0.0)
    assert model["limits"]["rpm"] == 1800  # a + b; the spare is not counted
    assert model["binding"] == "endpoints"
    assert model["minutes_to_finish"] == 0.75
    # as words: how the terminal wraps the table is not the point
    text = " ".join(run_cli("estimate", str(jobs), "--endpoints", str(conf)).stdout.split())
    assert " b 1.2K RPM" in text and "200 req/min, TPM binds" in text
