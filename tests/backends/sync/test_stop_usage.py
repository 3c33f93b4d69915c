"""A budget stop says the true usage, also far above the budget (issue 21, item 9e).

A server may bill far more than a request's reservation (a huge prompt it counts its own way,
or a model that ignores max_tokens). The ledger then holds the true figure, and the stop
message must say it: "2,000,000 of 2,000,000 tokens used" when 40,000,000 were billed tells the
user the budget was kept when it was overrun twentyfold."""

from __future__ import annotations

from pathlib import Path

from batchrun.messages import phrase
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.request import Request
from batchrun.policy.stopkind import StopKind
from tests.helpers.counting_server import RESUME, Server, run_job


def billed_10m(request: Request) -> Outcome:
    body = {"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": 9_999_990, "completion_tokens": 10}}
    return Outcome(Kind.OK, 200, body)


def test_the_daily_stop_says_the_true_usage_far_above_the_budget(tmp_path: Path) -> None:
    rows = [{"id": f"q{i}", "prompt": "hi", "max_tokens": 10} for i in range(5)]
    server = Server(lambda request: 0.1, billed_10m)
    stop, _, _ = run_job(tmp_path, rows, server, tpd={"gpt-4o-mini": 500_000}, concurrency=1)
    assert stop is not None and stop.kind is StopKind.DAILY
    message = phrase(stop, "out.jsonl", RESUME, "OPENAI_API_KEY").message
    billed = 10_000_000 * len(server.received)  # each answer billed 10M: 20x the budget
    assert f"{billed:,} of 500,000 tokens used" in message
    assert "500,000 of 500,000" not in message
