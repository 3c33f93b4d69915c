"""--via auto: the sync path while today's budget lasts, then the Batch API for the rest, both
into the one output, exactly once per id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers.batch_fake import FakeBatchApi
from tests.helpers.batch_harness import Harness, ok_ids


@pytest.mark.parametrize("wait", [False, True])  # --wait: no waiting for 00:00 UTC either
def test_auto_switches_to_the_batch_api_at_the_daily_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any, wait: bool) -> None:
    fake = FakeBatchApi()
    # Each request costs about 15 tokens (prompt + max_tokens 5): a 50-token day holds 3.
    h = Harness(tmp_path, fake, monkeypatch, n=8, base_url=sim.base_url, via="auto",
                overrides={"tpd": 50}, wait=wait)
    assert h.submit() is None
    results = h.results()
    assert ok_ids(results) == {f"r{i}" for i in range(1, 9)}
    by_batch = {x["custom_id"] for b in fake.by_id.values() for x in b["_lines"]}
    # Both paths did some of the work, and no request went through both.
    assert sim.stats.ok > 0 and by_batch
    assert sim.stats.ok + len(by_batch) == 8
    assert any("through the Batch API now" in note for note in h.notes)
    assert h.manifest().state == "done" and h.manifest().done == 8
    summary = h.stats.summary()["requests"]
    assert (summary["ok"], summary["already_done"], summary["not_done"]) == (8, 0, 0)
