"""The Batch API path attacked as a hostile user and a hostile server would: what broke in the
review of #15, each shown first by a test here (in-process, the simulator's clock moved by the
client's waits, no real seconds)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun import job
from batchrun.backends.batch import entry as batch_entry
from batchrun.backends.batch.api import ApiCallFailed, BatchClient
from batchrun.backends.batch.run import BatchJob, Detached
from batchrun.errors import BatchrunError, Interrupted
from batchrun.events import StateChanged, Stats
from batchrun.files.outputlock import OutputLock
from tests.helpers import batch_harness
from tests.helpers.batch_fake import FakeBatchApi, Outcome
from tests.helpers.batch_harness import (
    Harness,
    HostileBatches,
    SimHarness,
    batch_sim,
    ok_ids,
    ok_line,
)
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import write_jsonl


def test_a_queue_smaller_than_the_preset_splits_the_part_instead_of_failing_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    # The account's enqueued-token limit (here 40) is far below the tier preset (2,000,000)
    # batchrun planned with: the one part is refused however often it goes as it is.
    sim = batch_sim(sim_factory, queue_tokens=40, seconds=1)
    h = SimHarness(tmp_path, monkeypatch, sim, n=8, max_retries=2)
    assert h.submit() is None
    assert ok_ids(h.results()) == {f"r{i}" for i in range(1, 9)}
    assert h.runs() == {f"r{i}": 1 for i in range(1, 9)}


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


def real_api_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any,
                     n: int) -> Harness:
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=n, base_url=server.base_url)
    monkeypatch.setattr(batch_entry, "BatchClient", BatchClient)  # the real client, over HTTP
    return h


def test_an_output_file_with_strangers_duplicates_and_garbage_gives_one_line_per_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def content(uploaded: list[dict[str, Any]]) -> web.Response:
        ids = [x["custom_id"] for x in uploaded]
        body = (ok_line("never-sent") + b"not json at all\n[1, 2]\n\xff\xfe\n"
                + b"".join(ok_line(c) + ok_line(c) for c in ids[:-1]) + ok_line(ids[0]))
        return web.Response(body=body)

    with HostileBatches(content) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=4)
        stop = h.submit(max_retries=0)
    results = h.results()  # fails on a duplicate id
    assert set(results) == {"r1", "r2", "r3", "r4"}
    assert ok_ids(results) == {"r1", "r2", "r3"}
    # A completed batch ran r4: its result is unread, not undone (never sent again unasked).
    assert results["r4"]["error"]["code"] == "batch_output_unavailable"
    assert stop is None


def test_a_download_never_leaves_the_base_url_nor_follows_a_redirect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch names its output file by a path and a URL of another host, and the content
    # route answers with a redirect there: the key must reach no other host.
    file_id = "../../http://127.0.0.2:9/x"
    with HostileBatches(lambda lines: web.Response(body=b"x\n"), file_id) as elsewhere:
        def content(uploaded: list[dict[str, Any]]) -> web.Response:
            return web.Response(status=302, headers={"Location": elsewhere.base_url + "/s"})

        with HostileBatches(content, file_id) as server:
            h = real_api_harness(tmp_path, monkeypatch, server, n=2)
            with pytest.raises(BatchrunError, match="redirect, which batchrun never follows"
                               ) as stop:
                h.submit()
    assert elsewhere.seen == []
    assert all(s.startswith("/v1/") for s in server.seen)
    assert FAKE_KEY not in stop.value.message


def test_a_batch_the_api_no_longer_knows_is_a_way_out_not_a_dead_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The job's batch was made with another key (another project), or deleted: every poll is
    # a 404. Resume must say what to do, and cancel must be that way out.
    fake = FakeBatchApi(steps=3)
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    assert isinstance(h.submit(detach=True), Detached)

    async def unknown(batch_id: str) -> dict[str, Any]:
        raise ApiCallFailed(f"HTTP 404: No such Batch object: {batch_id}", 404, "")

    monkeypatch.setattr(fake, "retrieve", unknown)
    monkeypatch.setattr(fake, "cancel", unknown)
    with pytest.raises(BatchrunError) as stuck:
        h.resume()
    assert stuck.value.exit_code != 1  # nothing finished: not "some requests failed for good"
    assert "another key" in stuck.value.message
    assert f"batchrun cancel {h.job_id} --force" in stuck.value.message
    assert asyncio.run(job.cancel_batches(h.manifest(), h.store, force=True)) == (1, 0)
    assert h.resume() is None
    assert {x["error"]["code"] for x in h.results().values()} == {"batch_cancelled"}
    assert h.manifest().failed == 2


def test_detach_with_the_sync_path_is_refused_before_anything_is_sent(
        tmp_path: Path, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # --detach promises "submitted, exit at once"; the sync path has nothing to leave running
    # on the server, so it used to ignore the flag and run the whole job in the foreground.
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--detach", "-q")
    assert run.code == 2, run.stdout + run.stderr
    assert "--detach" in run.stderr and "--via batch" in run.stderr
    assert sim.stats.received == 0
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_requests_a_failed_validation_did_not_name_keep_their_tries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The API refuses the file for line 1 alone: lines 2 and 3 never ran, so with
    # --max-retries 0 they still go (once) in a new part instead of failing for good.
    bad = Outcome("failed", validation=[{"code": "invalid_url", "line": 1,
                                         "message": "bad url"}])
    fake = FakeBatchApi(lambda n: bad if n == 1 else Outcome(), steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3, max_retries=0)
    assert h.submit() is None
    results = h.results()
    assert results["r1"]["error"]["code"] == "invalid_url"
    assert ok_ids(results) == {"r2", "r3"}


def test_an_error_file_quoting_the_key_does_not_put_it_in_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A careless server echoes our headers in its request-level errors, as the sync path's
    # tests have proxies do: the output (which users share) must not keep the key.
    def content(uploaded: list[dict[str, Any]]) -> web.Response:
        lines = [orjson.dumps({
            "id": f"batch_req_{x['custom_id']}", "custom_id": x["custom_id"], "error": None,
            "response": {"status_code": 400, "request_id": "req_1", "body": {"error": {
                "message": f"Unsupported header Authorization: Bearer {FAKE_KEY}",
                "type": "invalid_request_error", "code": f"bad_{FAKE_KEY}"},
                "echo": {f"Bearer {FAKE_KEY}": [FAKE_KEY]}}}}) + b"\n" for x in uploaded]
        return web.Response(body=b"".join(lines))

    with HostileBatches(content) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=2)
        h.submit()
    raw = h.output.read_bytes()
    assert len(h.results()) == 2
    assert FAKE_KEY.encode() not in raw
    assert b"Unsupported header Authorization" in raw  # the server's words, less the key


def test_a_validation_error_quoting_the_key_is_not_recorded_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = Outcome("failed", validation=[{"code": "invalid_request", "line": None,
                                         "message": f"bad header: Bearer {FAKE_KEY}"}])
    h = Harness(tmp_path, FakeBatchApi(lambda n: bad, steps=1), monkeypatch, n=2)
    assert h.submit() is None
    assert {x["error"]["code"] for x in h.results().values()} == {"invalid_request"}
    written = [h.output.read_bytes(), (h.store.dir / f"{h.job_id}.json").read_bytes(),
               *(p.read_bytes() for p in (h.store.home / "batches").rglob("*") if p.is_file())]
    assert all(FAKE_KEY.encode() not in raw for raw in written)
    assert all(FAKE_KEY not in note for note in h.notes)


def test_a_status_that_read_the_manifest_before_a_resume_ended_does_not_forget_its_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `status JOB` reads the manifest, then waits for the output's lock while a resume ends;
    # the resume submitted part 2 (the expired part 1's rest). Status must not save its stale
    # copy over that record: the next resume would submit part 2's requests again.
    fake = FakeBatchApi(lambda n: Outcome("expired", finish=1) if n == 1 else Outcome(),
                        steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=3)
    assert isinstance(h.submit(detach=True), Detached)
    stale = h.manifest()
    assert isinstance(h.resume(detach=True), Detached)  # collects part 1, submits part 2
    assert len(fake.order) == 2
    asyncio.run(job.collect_finished(stale, h.store, Stats()))
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert len(fake.order) == 2, "part 2's requests were submitted twice"


def test_the_progress_line_names_the_model_of_each_queue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two models queue separately; "queued 8/90,000 tok · queued 25/2,000,000 tok" did not
    # say which was which.
    shown: list[str] = []

    class Recording(Stats):
        def __call__(self, event: Any) -> None:
            super().__call__(event)
            if isinstance(event, StateChanged) and event.state == "batch":
                shown.append(event.detail)

    monkeypatch.setattr(batch_harness, "Stats", Recording)
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    write_jsonl(h.input, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y",
                                                       "model": "gpt-4o"}])
    assert h.submit() is None
    assert "gpt-4o queued " in shown[0] and "gpt-4o-mini queued " in shown[0]


def test_a_server_counting_more_prompt_tokens_than_batchrun_still_gets_every_part_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim_factory: Any) -> None:
    # The simulator counts this text about 40 % higher than tiktoken does: parts planned to
    # nine tenths of the stated limit are still over it, and must shrink, not wait forever.
    sim = batch_sim(sim_factory, queue_tokens=1000)
    h = SimHarness(tmp_path, monkeypatch, sim, n=10)
    text = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20
    write_jsonl(h.input, [{"id": f"r{i}", "prompt": text, "max_tokens": 5} for i in range(10)])
    assert h.submit() is None
    assert ok_ids(h.results()) == {f"r{i}" for i in range(10)}
    assert len(h.parts_created()) < 12


@pytest.mark.timeout(10)  # without the fix the run waits on the stalled upload for good
def test_ctrl_c_during_a_stalled_upload_stops_the_run_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C only cut the wait between polls: during a files or batches call that the server
    # does not answer (a 200 MB upload on a slow link, a hung gateway) it did nothing until
    # --timeout, and then the call was asked again.
    started: list[tuple[BatchJob, asyncio.AbstractEventLoop]] = []
    made = BatchJob.__init__

    def init(self: BatchJob, *args: Any, **kwargs: Any) -> None:
        made(self, *args, **kwargs)
        started.append((self, asyncio.get_running_loop()))

    monkeypatch.setattr(BatchJob, "__init__", init)

    def ctrl_c() -> None:
        job, loop = started[0]
        loop.call_soon_threadsafe(job.interrupt)

    with HostileBatches(lambda lines: web.Response(body=b""), on_upload=ctrl_c) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=2)
        stop = h.submit()
    assert isinstance(stop, Interrupted) and stop.exit_code == 130
    assert h.manifest().batch["parts"][0]["state"] == "planned"  # uploaded again by resume


@pytest.mark.parametrize("submitted", [True, False])
def test_cancel_while_the_job_runs_elsewhere_says_how_to_cancel_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, submitted: bool) -> None:
    # The generic lock message told the user to "choose another output with -o", which
    # cancel has no use for; and a run that had not recorded a batch yet (it is about to)
    # got "nothing to cancel".
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    if submitted:
        assert isinstance(h.submit(detach=True), Detached)
    else:
        assert h.submit() is None  # recorded, no batch open: as a resume that just started
    lock = OutputLock(h.output)  # a resume running in another process holds it
    try:
        run = run_cli("cancel", h.job_id)
    finally:
        lock.release()
    assert run.code == 2
    assert "-o" not in run.stderr and "Ctrl-C" in run.stderr
    assert f"batchrun cancel {h.job_id}" in run.stderr
    assert h.fake.calls.count("cancel") == 0


def test_a_batch_object_with_odd_request_counts_is_no_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(steps=2)
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    retrieve = fake.retrieve

    async def odd(batch_id: str) -> dict[str, Any]:
        batch = await retrieve(batch_id)
        batch["request_counts"] = {"completed": "n/a", "failed": [1], "total": None}
        return batch

    monkeypatch.setattr(fake, "retrieve", odd)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2"}


def test_status_of_a_job_stopped_before_any_batch_existed_does_not_call_it_submitted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server with no Batch API (a 404 on /v1/files) stops the job with its part planned.
    # `status JOB` then "collected" it and recorded it as submitted, with "0 batches still on
    # the server. Collect the rest with: batchrun resume".
    fake = FakeBatchApi()
    h = Harness(tmp_path, fake, monkeypatch, n=2)

    async def no_files(path: Path, name: str) -> dict[str, Any]:
        raise ApiCallFailed("HTTP 404: Invalid URL (POST /v1/files)", 404, "")

    monkeypatch.setattr(fake, "upload", no_files)
    with pytest.raises(BatchrunError, match=r"serve the Batch API.*--via sync"):
        h.submit()  # not "Continue with: batchrun resume", which meets the same 404
    assert h.manifest().state == "stopped"
    run = run_cli("status", h.job_id)
    assert run.code == 0
    assert h.manifest().state == "stopped"
    assert "submitted" not in run.stdout and "still on the server" not in run.stdout


def test_resume_via_sync_of_a_job_whose_batch_api_was_missing_sends_by_the_sync_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any) -> None:
    # What the 404's message advises. A part that never reached the server (planned, not
    # uploaded) barred the sync path as if its requests were in a batch.
    fake = FakeBatchApi()
    h = Harness(tmp_path, fake, monkeypatch, n=2, base_url=sim.base_url)

    async def no_files(path: Path, name: str) -> dict[str, Any]:
        raise ApiCallFailed("HTTP 404: Invalid URL (POST /v1/files)", 404, "")

    monkeypatch.setattr(fake, "upload", no_files)
    with pytest.raises(BatchrunError):
        h.submit()
    assert h.resume(via="sync") is None
    assert ok_ids(h.results()) == {"r1", "r2"} and sim.stats.ok == 2
    assert fake.calls.count("create") == 0
    # The dropped part is not uploaded later by a --via batch resume.
    assert h.resume(via="batch") is None and sim.stats.ok == 2


def test_an_output_file_the_api_no_longer_has_fails_its_requests_instead_of_every_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The batch completed, but its output file is gone (deleted, past its retention): every
    # resume met the same 404 and the job could never end. Its requests ran (and were billed),
    # so they are not sent again unasked: they fail, and --retry-failed is the user's choice.
    fake = FakeBatchApi(steps=1)
    h = Harness(tmp_path, fake, monkeypatch, n=2)

    async def gone(file_id: str, dest: Path) -> None:
        raise ApiCallFailed(f"HTTP 404: No such File object: {file_id}", 404, "")

    monkeypatch.setattr(fake, "download", gone)
    assert h.submit() is None
    results = h.results()
    assert {x["error"]["code"] for x in results.values()} == {"output_file_missing"}
    assert "--retry-failed" in results["r1"]["error"]["message"]
    assert len(fake.order) == 1
    assert any("is gone" in note for note in h.notes)


def test_forgetting_a_job_with_batches_on_the_server_says_they_run_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "Forgot job X. Its results stay in OUT." and nothing else: its batches went on running
    # (and being billed) with nothing left that would ever collect or cancel them.
    h = Harness(tmp_path, FakeBatchApi(), monkeypatch, n=2)
    assert isinstance(h.submit(detach=True), Detached)
    run = run_cli("forget", h.job_id)
    assert run.code == 2, run.stdout
    assert f"batchrun cancel {h.job_id}" in run.stderr
    assert h.store.get(h.job_id) is not None
    asyncio.run(job.cancel_batches(h.manifest(), h.store))
    assert run_cli("forget", h.job_id).code == 0 and h.store.get(h.job_id) is None


def test_an_output_file_that_echoes_the_input_is_not_taken_for_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lines with a custom_id but neither a response nor an error are no results: they were
    # recorded as failed "http_None: the request failed with HTTP None".
    def content(uploaded: list[dict[str, Any]]) -> web.Response:
        return web.Response(body=b"".join(orjson.dumps(x) + b"\n" for x in uploaded))

    with HostileBatches(content) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=2)
        h.submit(max_retries=0)
    results = h.results()
    # The batch says completed: its results are unreadable, not its requests undone.
    assert {x["error"]["code"] for x in results.values()} == {"batch_output_unavailable"}


def test_cancel_with_another_projects_key_claims_nothing_and_the_right_key_still_collects(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under another project's key every batch answers 404 and the list is empty, while the
    # batches run (and bill) under the key the job was started with.
    fake = FakeBatchApi(steps=3)
    h = Harness(tmp_path, fake, monkeypatch, n=4)
    assert isinstance(h.submit(detach=True), Detached)
    batch_ids = [p["batch_id"] for p in h.manifest().batch["parts"] if p["batch_id"]]
    assert batch_ids

    async def unknown(batch_id: str) -> dict[str, Any]:
        raise ApiCallFailed(f"HTTP 404: No such Batch object: {batch_id}", 404, "")

    async def nothing(page_size: int = 100) -> Any:
        for batch in []:
            yield batch

    with monkeypatch.context() as other_key:
        other_key.setattr(fake, "retrieve", unknown)
        other_key.setattr(fake, "cancel", unknown)
        other_key.setattr(fake, "batches", nothing)
        run = run_cli("cancel", h.job_id)
        refused = run_cli("forget", h.job_id)
    assert run.code == 4
    said = run.stdout + run.stderr
    assert "Cancelled" not in said
    for batch_id in batch_ids:
        assert batch_id in said
    assert "another key" in said and f"batchrun cancel {h.job_id} --force" in said
    assert refused.code == 2 and h.store.get(h.job_id) is not None
    # The right key: every batch is collected, no request recorded as cancelled.
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3", "r4"}
    assert all(b["status"] == "completed" for b in fake.by_id.values())
    assert "cancel" not in fake.calls


def test_cancel_force_is_the_way_out_of_batches_that_are_truly_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(steps=3)
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    assert isinstance(h.submit(detach=True), Detached)

    async def unknown(batch_id: str) -> dict[str, Any]:
        raise ApiCallFailed(f"HTTP 404: No such Batch object: {batch_id}", 404, "")

    monkeypatch.setattr(fake, "retrieve", unknown)
    monkeypatch.setattr(fake, "cancel", unknown)
    assert run_cli("cancel", h.job_id).code == 4
    forced = run_cli("cancel", h.job_id, "--force")
    assert forced.code == 0, forced.stderr
    assert "count as gone" in forced.stdout
    assert h.resume() is None
    assert {x["error"]["code"] for x in h.results().values()} == {"batch_cancelled"}
    assert run_cli("forget", h.job_id).code == 0


def test_two_status_calls_at_once_each_fetch_a_whole_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `status JOB` looks without the output's lock, so two of them (a watch loop and a user)
    # may download the same finished batch at once: both downloads are held half sent until
    # both have started, so they overlap on disk.
    halfway: list[asyncio.Future[None]] = []

    def content(uploaded: list[dict[str, Any]]) -> Any:
        body = b"".join(ok_line(x["custom_id"]) for x in uploaded)

        async def stream(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            await response.prepare(request)
            await response.write(body[:10])
            if halfway:
                halfway[0].set_result(None)
            else:
                halfway.append(asyncio.get_running_loop().create_future())
                await halfway[0]
            await response.write(body[10:])
            await response.write_eof()
            return response

        return stream

    with HostileBatches(content) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=3)
        assert isinstance(h.submit(detach=True), Detached)
        manifest = h.manifest()
        spec, _ = job.spec_from_manifest(manifest, {})

        async def two() -> list[Any]:
            looks = [batch_entry.look_at_batches(spec, manifest, h.store, FAKE_KEY)
                     for _ in range(2)]
            return list(await asyncio.gather(*looks, return_exceptions=True))

        fetched = asyncio.run(two())
    assert [type(f).__name__ for f in fetched] == ["Fetched", "Fetched"]
    for f in fetched:
        assert f.trouble is None
        (path,) = f.files.values()
        lines = path.read_bytes().splitlines()
        assert [orjson.loads(x)["custom_id"] for x in lines] == ["r1", "r2", "r3"]


def test_a_download_that_cannot_be_written_is_a_state_error_not_a_crash(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def content(uploaded: list[dict[str, Any]]) -> web.Response:
        return web.Response(body=b"".join(ok_line(x["custom_id"]) for x in uploaded))

    with HostileBatches(content) as server:
        h = real_api_harness(tmp_path, monkeypatch, server, n=2)
        assert isinstance(h.submit(detach=True), Detached)
        # Something in the way of the download (a full disk, a quota, a name taken): here a
        # directory where the file being downloaded goes.
        blocked = h.store.home / "batches" / h.job_id / "part-00001.output.jsonl.part"
        blocked.mkdir(parents=True)
        run = run_cli("resume", h.job_id)
        assert run.code == 5, run.stderr
        assert "internal error" not in run.stderr and "part-00001.output.jsonl" in run.stderr
        assert f"batchrun resume {h.job_id}" in run.stderr
        blocked.rmdir()
        assert run_cli("resume", h.job_id).code == 0
    assert ok_ids(h.results()) == {"r1", "r2"}


def test_cancel_under_another_key_does_not_drop_a_part_whose_create_answer_was_lost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Part 2's create reached the API but its answer was lost (state "creating"): only the
    # list can tell whether its batch exists, and under another key the list is empty.
    fake = FakeBatchApi(steps=3)
    h = Harness(tmp_path, fake, monkeypatch, n=6, batch_queue_tokens=40)
    assert isinstance(h.submit(detach=True), Detached)
    manifest = h.manifest()
    second = manifest.batch["parts"][1]
    lines = (h.store.home / "batches" / h.job_id / "part-00002.jsonl")
    file_id = asyncio.run(fake.upload(lines, "part-2"))["id"]
    asyncio.run(fake.create(file_id, "/v1/chat/completions",
                            {"batchrun_job": h.job_id, "batchrun_part": second["key"]}))
    second.update(state="creating", file_id=file_id)
    h.store.save(manifest)

    async def unknown(batch_id: str) -> dict[str, Any]:
        raise ApiCallFailed(f"HTTP 404: No such Batch object: {batch_id}", 404, "")

    async def nothing(page_size: int = 100) -> Any:
        for batch in []:
            yield batch

    with monkeypatch.context() as other_key:
        other_key.setattr(fake, "retrieve", unknown)
        other_key.setattr(fake, "cancel", unknown)
        other_key.setattr(fake, "batches", nothing)
        assert run_cli("cancel", h.job_id).code == 4
    assert h.manifest().batch["parts"][1]["state"] == "creating"
    assert h.resume() is None  # the right key: both batches found and collected
    assert ok_ids(h.results()) == {f"r{i}" for i in range(1, 7)}
    assert len(fake.order) == 2 and len(set(fake.created_parts())) == 2
