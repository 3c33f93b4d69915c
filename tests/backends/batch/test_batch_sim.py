"""The Batch API path against the simulator's independent Batch API on loopback, its clock
moved by the client's waits (no real seconds): expiry, a lost create answer, validation
failures, Azure routes, cancel — each request run exactly once (the simulator counts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from batchrun import job
from batchrun.backends.batch import run as batch_run
from tests.helpers.batch_harness import SimHarness, batch_sim, ok_ids


def test_an_expired_batch_keeps_its_lines_and_each_request_runs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory, expire_share=0.5, expire_batches=1)
    h = SimHarness(tmp_path, monkeypatch, sim, n=6)
    assert h.submit() is None
    assert ok_ids(h.results()) == {f"r{i}" for i in range(1, 7)}
    assert h.runs() == {f"r{i}": 1 for i in range(1, 7)}
    keys = h.parts_created()
    assert len(keys) == 2 and len(set(keys)) == 2
    assert h.naps[:3] == [1.0, 2.0, 4.0]


def test_a_create_whose_answer_is_lost_is_found_by_its_metadata_not_made_twice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory, create_5xx=1.0, upload_5xx=0.3, poll_5xx=0.3)
    h = SimHarness(tmp_path, monkeypatch, sim, n=4)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3", "r4"}
    assert len(h.parts_created()) == 1 and h.runs() == {f"r{i}": 1 for i in range(1, 5)}


def test_a_batch_failing_validation_fails_its_requests_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory, fail_validation=1)
    h = SimHarness(tmp_path, monkeypatch, sim, n=3)
    assert h.submit() is None
    results = h.results()
    assert {x["error"]["code"] for x in results.values()} == {"invalid_request"}
    assert any("failed validation" in note for note in h.notes)
    assert h.manifest().failed == 3


def test_request_errors_are_final_and_written_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    sim = batch_sim(sim_factory, request_errors=0.5)
    h = SimHarness(tmp_path, monkeypatch, sim, n=10)
    assert h.submit() is None
    results = h.results()
    failed = {c for c, x in results.items() if x["error"] is not None}
    assert len(results) == 10 and failed
    assert all(results[c]["response"]["status_code"] == 400 for c in failed)
    assert len(h.parts_created()) == 1


def test_azure_routes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      sim_factory: Any) -> None:
    sim = batch_sim(sim_factory)
    """The simulator answers Azure's upload and create as Azure documents them, 201 Created
    (see test_batch_server_habits.py for the client against a server playing the docs)."""
    h = SimHarness(tmp_path, monkeypatch, sim, n=3, azure=True)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert len(h.parts_created()) == 1
    assert sim.stats.statuses[201] == 2  # one upload, one create


def test_detach_cancel_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              sim_factory: Any) -> None:
    sim = batch_sim(sim_factory)
    h = SimHarness(tmp_path, monkeypatch, sim, n=10)
    assert isinstance(h.submit(detach=True), batch_run.Detached)
    h.now[0] += 5  # halfway through the batch
    assert asyncio.run(job.cancel_batches(h.manifest(), h.store)) == (1, 0)
    assert h.resume() is None
    results = h.results()
    kept = ok_ids(results)
    assert 0 < len(kept) < 10 and len(results) == 10
    assert {results[c]["error"]["code"] for c in set(results) - kept} == {"batch_cancelled"}
    assert sum(h.runs().values()) == len(kept) and len(h.parts_created()) == 1
