"""`resume --via sync` of a job whose batch still runs on the server (issue 21 item 5): the
requests no batch holds go by the sync path as asked, the open batch is collected when it
finishes (or cancelled with --cancel-batches), and no batch is ever created for the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchrun import job
from batchrun.backends.batch.run import Detached
from tests.helpers.batch_fake import FakeBatchApi, Outcome
from tests.helpers.batch_harness import Harness, ok_ids
from tests.helpers.cli import run_cli

ALL = {f"r{i}" for i in range(1, 7)}


def half_on_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any,
                       fake: FakeBatchApi) -> Harness:
    """Six requests; the queue admits the first part's batch, the second part waits."""
    h = Harness(tmp_path, fake, monkeypatch, n=6, base_url=sim.base_url, batch_queue_tokens=40)
    assert isinstance(h.submit(detach=True), Detached)
    parts = h.manifest().batch["parts"]
    assert len(fake.order) == 1 and len(parts) == 2, parts
    return h


def in_batch(h: Harness) -> set[str]:
    """The ids whose answer came from the scripted Batch API (the simulator's differ)."""
    return {cid for cid, line in h.results().items()
            if (line["response"] or {}).get("body", {}).get("id") == f"chatcmpl-{cid}"}


def test_resume_via_sync_sends_the_rest_by_sync_and_collects_the_open_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any) -> None:
    fake = FakeBatchApi(steps=3)  # still running when the resume starts
    h = half_on_the_server(tmp_path, monkeypatch, sim, fake)
    first = set(h.fake.by_id["batch_1"]["_lines"][i]["custom_id"]
                for i in range(len(h.fake.by_id["batch_1"]["_lines"])))
    assert h.resume(via="sync") is None
    assert ok_ids(h.results()) == ALL
    assert len(fake.order) == 1, "a new batch was created for the sync path's requests"
    assert in_batch(h) == first  # collected from the batch that held them
    assert sim.stats.ok == len(ALL - first)  # the rest, and only the rest, went by sync
    assert h.manifest().state == "done"


def test_resume_via_sync_with_cancel_batches_cancels_and_sends_what_they_did_not_finish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any) -> None:
    fake = FakeBatchApi(lambda n: Outcome(finish=1), steps=3)
    h = half_on_the_server(tmp_path, monkeypatch, sim, fake)
    run = run_cli("resume", h.job_id, "--via", "sync", "--cancel-batches", "--json")
    assert run.code == 0, run.stderr
    assert fake.calls.count("cancel") == 1 and len(fake.order) == 1
    assert ok_ids(h.results()) == ALL
    assert len(in_batch(h)) == 1  # what the batch finished before its cancel is kept
    assert sim.stats.ok == len(ALL) - 1  # each request answered once
    assert len(h.output.read_bytes().splitlines()) == len(ALL)  # one line per request


def test_cancel_batches_goes_with_via_sync_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any) -> None:
    h = half_on_the_server(tmp_path, monkeypatch, sim, FakeBatchApi(steps=3))
    run = run_cli("resume", h.job_id, "--cancel-batches")
    assert run.code == 2 and "--via sync" in run.stderr
    assert h.fake.calls.count("cancel") == 0


def test_a_kill_during_cancel_batches_then_a_plain_resume_sends_the_rest_not_fails_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any) -> None:
    # `resume --via sync --cancel-batches` is killed (-9) once the cancel is recorded, before
    # the sync path sent anything; the user then runs the resume command status prints.
    fake = FakeBatchApi(lambda n: Outcome(finish=1), steps=3)
    h = half_on_the_server(tmp_path, monkeypatch, sim, fake)

    class Killed(BaseException):
        pass

    async def killed(*args: Any, **kwargs: Any) -> None:
        raise Killed  # the process ends here: nothing after it is saved

    with monkeypatch.context() as m:
        m.setattr(job, "_run_engine", killed)
        with pytest.raises(Killed):
            h.resume(via="sync", cancel_batches=True)
    assert fake.calls.count("cancel") == 1
    assert h.resume() is None
    results = h.results()
    assert ok_ids(results) == ALL, {c: r["error"] for c, r in results.items() if r["error"]}
    created = fake.created_parts()
    assert len(created) == len(set(created))  # no part created twice
    assert sim.stats.ok == len(ALL) - len(in_batch(h))  # each request answered once
