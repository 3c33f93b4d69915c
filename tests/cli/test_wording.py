"""Small words a user reads: one request is not "1 requests", the endpoints are not
a limit written in capitals, and the Redis client's install hint works from a checkout too."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.messages import describe_endpoint
from tests.helpers.cli import run_cli
from tests.helpers.endpoints import FILE
from tests.helpers.jsonl import write_jsonl


def test_one_request_is_one_request() -> None:
    line = describe_endpoint({"requests": 1, "tokens": {"input": 31, "output": 8},
                              "rate_limited_429": 1, "cost_usd": None, "out": {}})
    assert line.startswith("1 request · 31 in, 8 out · 1 429 ·")


def test_estimate_names_the_endpoints_in_words_not_capitals(tmp_path: Path) -> None:
    conf = tmp_path / "endpoints.toml"
    conf.write_text(FILE)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": f"q{i}", "prompt": "x", "max_tokens": 22} for i in range(600)])
    run = run_cli("estimate", str(jobs), "--endpoints", str(conf))
    assert run.code == 0, run.stderr
    said = " ".join(run.stdout.split())  # the table wraps at 80 columns
    assert "ENDPOINTS" not in said
    assert "by the endpoints" in said and "the endpoints' limits bind" in said
    assert ": 600 requests, 1 model ·" in said
    one = write_jsonl(tmp_path / "one.jsonl", [{"id": "q", "prompt": "x"}])
    assert ": 1 request, 1 model ·" in run_cli("estimate", str(one)).stdout


def test_the_redis_client_hint_works_from_a_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "redis" else real(name, *a))
    run = run_cli("status", "--state", "redis://127.0.0.1:1/0")
    assert run.code == 2
    assert "pip install 'batchrun[redis]'" in run.stderr and "'.[redis]'" in run.stderr
