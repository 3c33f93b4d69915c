"""--max-cost on the Batch API path: a part is not created when its worst case could take the
job's spend past the cap; a part's real cost is settled when it is collected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun.errors import SpendCapReached
from batchrun.files.jobstore import JobState
from batchrun.files.spend import read_spent, spend_path
from tests.helpers.batch_harness import SimHarness, batch_sim

# gpt-4o-mini's list prices, US dollars per 1M tokens, at the Batch API's half (the judge's own
# copy, not batchrun's table)
INPUT, OUTPUT = 0.15 / 2, 0.60 / 2


def billed(results: dict[str, dict[str, Any]]) -> float:
    """What the lines in the output were billed, from the usage each answer reports."""
    total = 0.0
    for line in results.values():
        usage = (line["response"] or {}).get("body", {}).get("usage") or {}
        total += (usage.get("prompt_tokens", 0) * INPUT
                  + usage.get("completion_tokens", 0) * OUTPUT) / 1e6
    return total


def test_via_batch_no_part_is_created_past_the_cap_and_a_larger_cap_finishes_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory)
    h = SimHarness(tmp_path, monkeypatch, sim, n=20, max_cost=4e-5)

    stopped = h.submit()

    assert isinstance(stopped, SpendCapReached) and stopped.exit_code == 3
    assert "of the --max-cost $0.000040 at list prices" in stopped.message
    assert f"batchrun resume {h.job_id} --max-cost" in stopped.message
    assert h.manifest().state == JobState.PAUSED_COST
    results = h.results()
    assert 0 < len(results) < 20
    spent = read_spent(spend_path(h.store.dir, h.job_id))
    assert billed(results) - 1e-12 <= spent <= 4e-5

    assert h.resume(max_cost=1.0) is None

    results = h.results()
    assert len(results) == 20
    assert set(h.runs().values()) == {1}  # no request ran twice over the two runs
    spent = read_spent(spend_path(h.store.dir, h.job_id))
    assert spent == pytest.approx(billed(results), rel=0.01)
