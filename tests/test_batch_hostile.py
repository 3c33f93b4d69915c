"""The Batch API path attacked as a hostile user and a hostile server would: what broke in the
review of #15, each shown first by a test here (in-process, the simulator's clock moved by the
client's waits, no real seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.sim import SimConfig
from batchrun.sim_batch import BatchConfig
from tests.batch_fake import FakeBatchApi, Outcome
from tests.conftest import write_jsonl
from tests.test_batch_run import Harness, ok_ids
from tests.test_batch_sim import SimHarness


def batch_sim(sim_factory: Any, **config: Any) -> Any:
    return sim_factory(SimConfig(batch=BatchConfig(**{"seconds": 10, **config})))


def test_a_queue_smaller_than_the_preset_splits_the_part_instead_of_failing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    # The account's enqueued-token limit (here 120) is far below the tier preset (2,000,000)
    # batchrun planned with: the one part is refused however often it goes as it is.
    sim = batch_sim(sim_factory, queue_tokens=120)
    h = SimHarness(tmp_path, monkeypatch, sim, n=30, max_retries=2)
    assert h.submit() is None
    assert ok_ids(h.results()) == {f"r{i}" for i in range(1, 31)}
    assert h.runs() == {f"r{i}": 1 for i in range(1, 31)}


def test_enqueued_token_refusals_do_not_use_up_a_requests_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another job holds the account's queue for a while: its refusals are waits, not tries.
    refusal = Outcome("failed", validation=[{
        "code": "token_limit_exceeded", "line": None,
        "message": "Enqueued token limit reached for gpt-4o-mini in organization org-x. "
                   "Limit: 2,000,000 enqueued tokens. Please try again once some in_progress "
                   "batches have been completed."}])
    fake = FakeBatchApi(lambda n: refusal if n <= 4 else Outcome(), steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=1)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}


def test_a_request_alone_over_the_queue_limit_fails_at_once_saying_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory, queue_tokens=30)
    h = SimHarness(tmp_path, monkeypatch, sim, n=2, max_retries=8)
    big = {"id": "big", "prompt": "word " * 200, "max_tokens": 5}
    small = {"id": "small", "prompt": "hi", "max_tokens": 5}
    write_jsonl(h.input, [big, small])
    assert h.submit() is None
    results = h.results()
    assert results["small"]["error"] is None
    error = results["big"]["error"]
    assert error["code"] == "token_limit_exceeded"
    assert "enqueued-token limit" in error["message"] and "--via sync" in error["message"]
    # Refused once, not sent again and again until --max-retries ran out.
    assert len(sim.stats.batch.created) <= 3
