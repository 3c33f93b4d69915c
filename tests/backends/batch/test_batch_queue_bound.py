"""The wait for the enqueued-token queue has an end (issue 21 item 6): when the API keeps
refusing a model's batches for the queue while none of the job's own batches is in it (another
tool fills it, or the API counts the job's requests far above batchrun's estimate), the run
stops after `run.QUEUE_WAIT_MAX_S` of its own waiting: exit 4, resumable, saying what fills the
queue. Waits are the harness's naps: no real time passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.backends.batch import run as batch_run
from batchrun.errors import ApiRefused
from tests.helpers.batch_fake import FakeBatchApi, Outcome
from tests.helpers.batch_harness import Harness, ok_ids

QUEUE_FULL = Outcome("failed", validation=[{
    "code": "token_limit_exceeded", "line": None,
    "message": "Enqueued token limit reached for gpt-4o-mini in organization org-x. Limit: "
               "2,000,000 enqueued tokens. Please try again once some in_progress batches have "
               "been completed."}])


@pytest.mark.timeout(60)  # before the fix: refused and created again for ever
def test_a_queue_that_stays_full_stops_the_run_with_exit_4_and_resume_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = True
    fake = FakeBatchApi(lambda n: QUEUE_FULL if full else Outcome(), steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=1)
    stop = h.submit()
    assert isinstance(stop, ApiRefused) and stop.exit_code == 4
    message = stop.message
    assert "enqueued-token" in message and "gpt-4o-mini" in message
    assert "other batches" in message and "estimate" in message  # what may fill it
    assert f"batchrun resume {h.job_id}" in message
    assert "Limit: 2,000,000 enqueued tokens" in message  # the API's own words
    assert sum(h.naps) >= batch_run.QUEUE_WAIT_MAX_S
    # Refused batches are asked for at the longest poll interval, not every second.
    assert len(fake.order) <= batch_run.QUEUE_WAIT_MAX_S // 60 + 8
    assert h.results() == {}  # nothing failed for good: every request waits for resume
    assert h.manifest().state == "stopped"
    full = False
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}


def test_a_queue_that_frees_within_the_bound_is_waited_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: QUEUE_FULL if n <= 10 else Outcome(), steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=1)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}


def test_a_queue_that_frees_just_at_the_bound_is_not_called_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another tool's batches leave the queue exactly when the bound is reached: the batch
    # batchrun created before its last wait got in, and the next look would find it done.
    h: Harness

    def queue(n: int) -> Outcome:
        return QUEUE_FULL if sum(h.naps) < batch_run.QUEUE_WAIT_MAX_S else Outcome()

    fake = FakeBatchApi(queue, steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=1)
    stop = h.submit()
    assert stop is None, stop.message if stop else ""
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert h.manifest().state == "done"
