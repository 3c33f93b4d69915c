"""The Batch API path end to end against a scripted API (tests/helpers/batch_fake.py), through the
runner as `submit`/`resume` run it, with no real waiting: exactly one line per id whatever the
batches do, retries in new parts, crashes at every step, Ctrl-C, --detach, cancel."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun import job
from batchrun.backends.batch import run as batch_run
from batchrun.errors import ApiRefused, Interrupted, StateError
from tests.helpers.batch_fake import Crash, FakeBatchApi, Outcome
from tests.helpers.batch_harness import Harness, ok_ids, rows
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import write_jsonl


def test_every_request_gets_one_line_and_parts_respect_the_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=6, batch_queue_tokens=30)
    assert h.submit() is None
    results = h.results()
    assert ok_ids(results) == {f"r{i}" for i in range(1, 7)}
    assert results["r3"]["response"]["body"]["choices"][0]["message"]["content"] == "re r3"
    parts = h.manifest().batch["parts"]
    assert len(parts) > 1 and all(p["tokens"] <= 30 for p in parts)
    assert all(p["state"] == "collected" and p["batch_id"] and p["file_id"] for p in parts)
    assert len(set(h.fake.created_parts())) == len(parts)
    assert h.manifest().state == "done"
    # A collected part keeps only the list of what it left unfinished, not a copy of its lines.
    kept = sorted(p.name for p in (h.store.home / "batches" / h.job_id).iterdir())
    assert kept == [f"part-{n:05d}.left" for n in range(1, len(parts) + 1)]
    # Polls start after 1 s and back off by doubling, never past --poll-max.
    assert h.naps[0] == 1.0 and max(h.naps) <= 60


def test_an_expired_batch_keeps_its_finished_lines_and_the_rest_go_into_a_new_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome("expired", finish=2) if n == 1 else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=5)
    assert h.submit() is None
    assert ok_ids(h.results()) == {f"r{i}" for i in range(1, 6)}
    second = fake.by_id[fake.order[1]]
    assert [x["custom_id"] for x in second["_lines"]] == ["r3", "r4", "r5"]


def test_a_cancelled_batch_keeps_its_lines_too(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome("cancelled", finish=3) if n == 1 else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=4)
    assert h.submit() is None
    assert len(fake.order) == 2 and len(fake.by_id["batch_2"]["_lines"]) == 1
    assert ok_ids(h.results()) == {"r1", "r2", "r3", "r4"}


def test_retries_end_at_max_retries_with_the_batch_error_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome("expired", finish=0))
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=1)
    assert h.submit() is None
    results = h.results()
    assert len(fake.order) == 2  # the first try and one retry
    assert {line["error"]["code"] for line in results.values()} == {"batch_expired"}
    assert h.manifest().failed == 3


def test_request_4xx_is_final_and_5xx_goes_into_a_new_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome(errors={"r1": 400, "r2": 500}) if n == 1
                        else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=3)
    assert h.submit() is None
    results = h.results()
    assert results["r1"]["error"]["code"] == "code_400"
    assert results["r1"]["response"]["status_code"] == 400
    assert ok_ids(results) == {"r2", "r3"}
    assert [x["custom_id"] for x in fake.by_id["batch_2"]["_lines"]] == ["r2"]


def test_a_batch_that_fails_validation_names_the_lines_of_our_input(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome("failed", validation=[
        {"code": "invalid_request", "message": "bad body", "param": "body", "line": 2}])
        if n == 1 else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=4)
    # r1 is done already, so the part's line 2 is r3: line 3 of the input.
    h.output.write_bytes(b'{"id":"batch_req_x","custom_id":"r1","response":null,'
                         b'"error":{"code":"x","message":"y"}}\n')
    assert h.submit() is None
    assert any("line 3 of" in note and "'r3'" in note and "bad body" in note
               for note in h.notes), h.notes
    results = h.results()
    assert results["r3"]["error"]["code"] == "invalid_request"
    assert results["r3"]["error"]["message"] == f"bad body (line 3 of {h.input})"
    assert ok_ids(results) == {"r2", "r4"}


@pytest.mark.parametrize("op,when", [
    ("upload", "before"), ("upload", "after"), ("create", "before"), ("create", "after"),
    ("retrieve", "after"), ("download", "after"),
])
def test_a_crash_at_any_step_then_resume_gives_one_line_per_id_and_one_batch_per_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str, when: str) -> None:
    fake = FakeBatchApi(lambda n: Outcome("expired", finish=1) if n == 1 else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=4, batch_queue_tokens=40)
    fake.crash = (op, 2, when)
    with pytest.raises(Crash):
        h.submit()
    fake.crash = None
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3", "r4"}
    keys = fake.created_parts()
    assert len(keys) == len(set(keys)), keys
    if (op, when) == ("create", "after"):
        assert "list" in fake.calls  # found the batch whose answer was lost


def test_transient_errors_are_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi()
    fake.transient = {"upload": 2, "create": 1, "retrieve": 2, "download": 1}
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    assert h.submit() is None
    assert len(fake.order) == 1 and len(h.results()) == 2


def test_ctrl_c_leaves_the_batches_running_and_says_how_to_collect_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=3)

    async def interrupted_nap(seconds: float) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)  # cancelled by the interrupt: no real wait

    h._nap = interrupted_nap  # type: ignore[method-assign]
    stop = h.submit()
    assert isinstance(stop, Interrupted) and stop.exit_code == 130
    assert "goes on running on the server (Ctrl-C does not cancel it)" in stop.message
    assert f"batchrun resume {h.job_id}" in stop.message
    assert f"batchrun cancel {h.job_id}" in stop.message
    assert "cancel" not in h.fake.calls
    assert h.manifest().state == "interrupted"
    h._nap = Harness._nap.__get__(h)  # type: ignore[method-assign]
    assert h.resume() is None and len(h.results()) == 3
    assert len(h.fake.order) == 1


def test_detach_submits_and_exits_then_resume_collects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=3)
    stop = h.submit(detach=True)
    assert isinstance(stop, batch_run.Detached) and stop.exit_code == 0
    assert "submitted, not finished" in stop.message
    assert h.output.read_bytes() == b""
    assert h.manifest().state == "submitted" and len(h.fake.order) == 1
    assert "detach" not in h.manifest().options  # a resume waits for the results
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"} and len(h.fake.order) == 1


def test_cancel_then_resume_keeps_finished_lines_and_fails_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(lambda n: Outcome(finish=1)), monkeypatch, n=3)
    h.submit(detach=True)
    cancelled, dropped = asyncio.run(job.cancel_batches(h.manifest(), h.store))
    assert (cancelled, dropped) == (1, 0) and h.fake.calls.count("cancel") == 1
    assert h.resume() is None
    results = h.results()
    assert ok_ids(results) == {"r1"}
    assert {results[c]["error"]["code"] for c in ("r2", "r3")} == {"batch_cancelled"}
    assert len(h.fake.order) == 1  # nothing was sent again
    assert h.resume(retry_failed=None) is None  # finished: nothing more
    stop = asyncio.run(job.run(*job.spec_from_manifest(h.manifest(), {})[:1],
                                  h.manifest(), h.store, FAKE_KEY, lambda e: None, "host",
                                  sleep=h._nap, retry_failed=True))
    assert stop is None and ok_ids(h.results()) == {"r1", "r2", "r3"}


def test_manifest_records_ids_but_never_the_key(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    h.submit(detach=True)
    raw = (h.store.dir / f"{h.job_id}.json").read_bytes()
    part = orjson.loads(raw)["batch"]["parts"][0]
    assert part["file_id"] == "file-1" and part["batch_id"] == "batch_1"
    assert FAKE_KEY.encode() not in raw


def test_cancel_skips_a_batch_that_finished_meanwhile(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake answers a finished batch's cancel as the real client raises OpenAI's 409
    # (Transient), not as an ApiCallFailed the client never raises.
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    write_jsonl(h.input, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y",
                                                       "model": "gpt-4o"}])
    h.submit(detach=True)
    assert len(h.fake.order) == 2  # one part per model
    for _ in range(2):  # the server finishes the first batch; nobody has collected it
        asyncio.run(h.fake.retrieve("batch_1"))
    assert asyncio.run(job.cancel_batches(h.manifest(), h.store)) == (1, 0)
    assert h.resume() is None
    results = h.results()
    assert results["a"]["error"] is None and results["b"]["error"]["code"] == "batch_cancelled"


def mixed_models(h: Harness) -> None:
    """Four gpt-4o-mini lines and one gpt-4o: with a 40-token queue, gpt-4o-mini's last line
    waits for the queue in a part of its own."""
    write_jsonl(h.input, [*rows(3), {"id": "m", "prompt": "question m", "max_tokens": 5,
                                     "model": "gpt-4o"}, {"id": "r4", "prompt": "question 4",
                                                          "max_tokens": 5}])


def test_cancel_after_a_batch_finished_cancels_the_rest_and_nothing_is_created_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, batch_queue_tokens=30)
    mixed_models(h)
    assert isinstance(h.submit(detach=True), batch_run.Detached)
    states = [p["state"] for p in h.manifest().batch["parts"]]
    assert len(h.fake.order) == 2 and "planned" in states
    for _ in range(2):  # part 1 finishes on the server since the last poll
        asyncio.run(h.fake.retrieve("batch_1"))
    assert asyncio.run(job.cancel_batches(h.manifest(), h.store)) == (1, 1)
    assert h.fake.by_id["batch_2"]["status"] == "cancelling"
    assert h.resume() is None
    results = h.results()
    assert len(h.fake.order) == 2  # the part waiting for the queue was never created
    assert len(results) == 5 and {"r1", "r2", "r3"} <= ok_ids(results)
    assert {results[c]["error"]["code"] for c in ("m", "r4")} == {"batch_cancelled"}


def test_forget_stays_refused_while_a_batch_whose_cancel_failed_may_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers.cli import run_cli

    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, batch_queue_tokens=30)
    mixed_models(h)
    h.submit(detach=True)
    h.fake.transient["cancel"] = 100  # the API stops answering cancels
    with pytest.raises(StateError, match="did not answer"):
        asyncio.run(job.cancel_batches(h.manifest(), h.store))
    forget = run_cli("forget", h.job_id)
    assert forget.code == 2 and "batches on the server" in forget.stderr
    assert h.resume() is None  # collects both batches, submits nothing new
    assert len(h.fake.order) == 2
    assert h.results()["r4"]["error"]["code"] == "batch_cancelled"


def test_an_enqueued_token_refusal_waits_before_trying_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The account's queue is fuller than the preset says (another job uses it): the part is
    # refused, and goes again only after a wait, not at once.
    refusal = Outcome("failed", validation=[{"code": "token_limit_exceeded", "line": None,
                                             "message": "Enqueued token limit reached"}])
    fake = FakeBatchApi(lambda n: refusal if n == 1 else Outcome(), steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=2)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    # Created before the first wait, refused at the poll after it, sent again a wait later.
    assert fake.naps_at_create == [0, 2]


def test_retry_failed_sends_again_what_ran_out_of_retries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome("expired", finish=0) if n == 1 else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=2, max_retries=0)
    assert h.submit() is None
    assert {x["error"]["code"] for x in h.results().values()} == {"batch_expired"}
    stop = asyncio.run(job.run(job.spec_from_manifest(h.manifest(), {})[0], h.manifest(),
                                  h.store, FAKE_KEY, lambda e: None, "host", sleep=h._nap,
                                  retry_failed=True))
    assert stop is None and ok_ids(h.results()) == {"r1", "r2"} and len(fake.order) == 2


def test_a_request_refused_for_quota_stops_the_job_with_exit_4_and_resume_sends_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(lambda n: Outcome(errors={"r2": (429, "insufficient_quota")}) if n == 1
                        else Outcome())
    h = Harness(tmp_path, fake, monkeypatch, n=3)
    with pytest.raises(ApiRefused) as refused:
        h.submit()
    stop = refused.value
    assert stop.exit_code == 4 and h.manifest().state == "stopped"
    assert "insufficient_quota" in stop.message and f"batchrun resume {h.job_id}" in stop.message
    assert set(h.results()) == {"r1", "r3"} and len(fake.order) == 1  # r2: no line, not retried
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}


def test_a_poll_failing_now_and_then_is_asked_again_even_with_max_retries_0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi()
    fake.transient = {"retrieve": 2, "download": 1}
    h = Harness(tmp_path, fake, monkeypatch, n=2, max_retries=0)
    assert h.submit() is None and ok_ids(h.results()) == {"r1", "r2"}


def test_an_api_that_stops_answering_ends_with_exit_5_and_the_batch_left_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi()
    fake.transient = {"retrieve": 1000}
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    with pytest.raises(StateError) as caught:
        h.submit()
    message = caught.value.message
    assert caught.value.exit_code == 5 and "api.example.test" in message
    assert "HTTP 503" in message and "goes on running on the server" in message
    assert f"batchrun resume {h.job_id}" in message and "cancel" not in fake.calls
    fake.transient = {}
    assert h.resume() is None and len(fake.order) == 1


def test_a_damaged_batch_record_is_named_not_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    h.submit(detach=True)
    manifest = h.manifest()
    manifest.batch["parts"][0] = {"n": 1, "state": "in_progress"}  # lost its key and counts
    h.store.save(manifest)
    with pytest.raises(StateError) as caught:
        h.resume()
    assert caught.value.exit_code == 5
    assert f"Batch API record of job {h.job_id} is damaged" in caught.value.message


def test_a_manifest_from_before_api_status_loads_and_its_batch_is_collected(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Older manifests kept the API's status in the part's `state`.
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=3)
    h.submit(detach=True)
    path = h.store.dir / f"{h.job_id}.json"
    data = orjson.loads(path.read_bytes())
    part = data["batch"]["parts"][0]
    part["state"] = "in_progress"
    for name in ("api_status", "cancel_asked", "output_tries"):
        part.pop(name, None)
    path.write_bytes(orjson.dumps(data))
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"} and len(h.fake.order) == 1


def test_a_batch_run_that_leaves_ids_without_a_line_never_ends_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sync engine's guard, on the Batch API path: a reader that gives fewer lines than
    # the check counted (the input changing under it) must not end the job `done`.
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=3)
    items = batch_run.Pending.items

    def fewer(self: Any) -> Any:
        return (i for i in items(self) if i.custom_id != "r3")

    monkeypatch.setattr(batch_run.Pending, "items", fewer)
    stop = h.submit()
    assert isinstance(stop, StateError) and "not finished" in stop.message
    assert set(h.results()) == {"r1", "r2"} and h.manifest().state != "done"


def test_a_lost_create_is_found_past_the_newest_5000_batches_of_the_account(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi()
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    fake.crash = ("create", 1, "after")  # the batch exists; its answer was lost
    with pytest.raises(Crash):
        h.submit()
    fake.crash = None
    for i in range(5_000):  # other jobs' batches since, newer than ours in the list
        fake.by_id[f"other_{i}"] = {"id": f"other_{i}", "metadata": {}, "_n": 0}
        fake.order.append(f"other_{i}")
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2"}
    assert fake.counts["create"] == 1  # found, not made twice
