"""The server's accounting on virtual time: what it charges and the limits it teaches, against
tests/strict_server.py (its own charge rule and bucket). Issue 22."""

from __future__ import annotations

from pathlib import Path

from batchrun.jobs import Request
from batchrun.sizing import size_of
from tests.conftest import read_results
from tests.strict_server import StrictServer, by_characters
from tests.test_engine_time import Server, engine_run


def test_after_a_too_large_refusal_small_requests_pace_at_the_taught_limit(
    tmp_path: Path,
) -> None:
    """Told 30,000 TPM, the server's real limit is 2,000: its "Request too large ... Limit 2000"
    teaches it. The refused request was never charged, so the 18 small ones after it go at the
    taught 2,000 tokens a minute (they took 94 s, 18 % of it, while a debt for the refused
    request's 3,000 tokens was paid off first)."""
    strict = StrictServer(2000, by_characters(4), window_s=10)
    rows = [{"id": "big", "prompt": "x" * 120, "max_tokens": 3000},
            *({"id": f"s{i}", "prompt": "word " * 11, "max_tokens": 20} for i in range(18))]
    server = Server(strict)
    stop, _, _ = engine_run(tmp_path, rows, server, limits={"tpm": 30000, "rpm": 500})
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert results["big"]["error"]["code"] == "request_too_large"
    assert all(results[f"s{i}"]["error"] is None for i in range(18))
    ours = sum(size_of(Request(1, "s", "/v1/chat/completions", {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 11}],
        "max_tokens": 20}), 0).charge for _ in range(18))
    refused_at = server.times("big")[0]
    last = max(t for t, cid in server.sent if cid != "big")
    at_the_limit = ours / (2000 / 60)
    assert last - refused_at <= at_the_limit / 0.95
    assert strict.refused == 1
