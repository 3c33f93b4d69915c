"""The simulator's Batch API, driven over a real loopback socket as a client would drive it.

Time is the simulator's injected batch clock: a test moves it instead of sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest

from batchrun.simulator import (
    BatchConfig,
    SimConfig,
    SimServer,
    Simulator,
    config_from_argv,
    reply_text,
)

KEY = "sk-test-batch"
CHAT = "/v1/chat/completions"


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def line(custom_id: str, text: str = "hello", model: str = "gpt-4o-mini",
         url: str = CHAT, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body, **extra}


def jsonl(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


class Api:
    """Plain HTTP calls, the way batchrun's client (or the openai SDK) makes them."""

    def __init__(self, session: aiohttp.ClientSession, server: SimServer, clock: Clock,
                 sim: Simulator, azure: bool = False) -> None:
        self.session, self.clock, self.sim = session, clock, sim
        self.azure = azure
        if azure:
            self.root = f"{server.azure_endpoint}/openai"
            self.params = {"api-version": "2024-10-21"}
            self.headers = {"api-key": KEY}
        else:
            self.root, self.params = server.base_url, {}
            self.headers = {"Authorization": f"Bearer {KEY}"}

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        params = {**self.params, **kw.pop("params", {})}
        async with self.session.request(method, self.root + path, params=params,
                                        headers=self.headers, **kw) as resp:
            raw = await resp.read()
            if resp.content_type == "application/json":
                return resp.status, orjson.loads(raw)
            return resp.status, raw

    async def upload(self, data: bytes, purpose: str | None = "batch") -> tuple[int, Any]:
        form = aiohttp.FormData()
        if purpose is not None:
            form.add_field("purpose", purpose)
        form.add_field("file", data, filename="part-1.jsonl")
        return await self.call("POST", "/files", data=form)

    async def create(self, rows: list[Any] | bytes, endpoint: str = CHAT,
                     metadata: dict[str, str] | None = None) -> dict[str, Any]:
        status, file = await self.upload(rows if isinstance(rows, bytes) else jsonl(rows))
        assert status == (201 if self.azure else 200), file  # Azure documents 201 Created
        payload = {"input_file_id": file["id"], "endpoint": endpoint, "completion_window": "24h"}
        if metadata is not None:
            payload["metadata"] = metadata  # type: ignore[assignment]
        status, batch = await self.call("POST", "/batches", json=payload)
        assert status == (201 if self.azure else 200), batch
        return batch  # type: ignore[no-any-return]

    async def get(self, batch_id: str) -> dict[str, Any]:
        status, batch = await self.call("GET", f"/batches/{batch_id}")
        assert status == 200, batch
        return batch  # type: ignore[no-any-return]

    async def lines(self, file_id: str | None) -> dict[str, dict[str, Any]]:
        """custom_id -> result line; fails the test if an id appears twice."""
        if file_id is None:
            return {}
        status, raw = await self.call("GET", f"/files/{file_id}/content")
        assert status == 200
        out: dict[str, dict[str, Any]] = {}
        for row in raw.splitlines():
            result = orjson.loads(row)
            assert result["custom_id"] not in out
            out[result["custom_id"]] = result
        return out

    async def run_to_end(self, batch_id: str) -> dict[str, Any]:
        """Move the clock past every phase (validating, in progress, finalizing)."""
        self.clock.t += self.sim.config.batch.seconds * 1.3
        return await self.get(batch_id)


@asynccontextmanager
async def batch_api(azure: bool = False, **batch: Any) -> AsyncIterator[Api]:
    clock = Clock()
    config = SimConfig(api_key=KEY, batch=BatchConfig(**{"seconds": 10.0, **batch}))
    sim = Simulator(config, batch_clock=clock)
    async with SimServer(sim) as server, aiohttp.ClientSession() as session:
        yield Api(session, server, clock, sim, azure)


async def test_a_batch_goes_from_upload_to_a_downloaded_output_one_line_per_id() -> None:
    rows = [line(f"r{i}", f"question {i}") for i in range(4)]
    async with batch_api() as api:
        status, file = await api.upload(jsonl(rows))
        assert status == 200
        assert {k: file[k] for k in ("object", "purpose", "bytes", "filename", "status")} == {
            "object": "file", "purpose": "batch", "bytes": len(jsonl(rows)),
            "filename": "part-1.jsonl", "status": "processed"}
        assert (await api.call("GET", f"/files/{file['id']}"))[1]["id"] == file["id"]
        batch = await api.create(rows, metadata={"batchrun_job": "j1", "part": "1"})
        assert batch["status"] == "validating" and batch["object"] == "batch"
        assert batch["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
        assert batch["metadata"] == {"batchrun_job": "j1", "part": "1"}
        assert batch["expires_at"] == batch["created_at"] + 86_400
        assert set(batch) == {
            "id", "object", "endpoint", "errors", "input_file_id", "completion_window",
            "status", "output_file_id", "error_file_id", "created_at", "in_progress_at",
            "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
            "cancelling_at", "cancelled_at", "request_counts", "metadata"}

        api.clock.t += 1.0 + 5.0  # validating takes a tenth, then half the run
        seen = await api.get(batch["id"])
        assert seen["status"] == "in_progress"
        assert seen["request_counts"] == {"total": 4, "completed": 2, "failed": 0}
        api.clock.t += 5.0
        assert (await api.get(batch["id"]))["status"] == "finalizing"
        api.clock.t += 1.0
        done = await api.get(batch["id"])
        assert done["status"] == "completed" and done["error_file_id"] is None
        assert done["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
        assert done["in_progress_at"] <= done["finalizing_at"] <= done["completed_at"]

        results = await api.lines(done["output_file_id"])
        assert set(results) == {"r0", "r1", "r2", "r3"}
        r2 = results["r2"]
        assert r2["error"] is None and r2["id"].startswith("batch_req_")
        assert r2["response"]["status_code"] == 200
        content = r2["response"]["body"]["choices"][0]["message"]["content"]
        assert content == reply_text(rows[2]["body"])
        assert r2["response"]["body"]["usage"]["prompt_tokens"] > 0
        stats = api.sim.stats.batch
        assert stats.uploads == 2 and stats.polls == 3 and stats.downloads == 1
        assert stats.created == {batch["id"]: {"batchrun_job": "j1", "part": "1"}}
        assert stats.runs == {"r0": 1, "r1": 1, "r2": 1, "r3": 1}


async def test_an_embeddings_batch_returns_embeddings() -> None:
    rows = [{"custom_id": "e1", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": "text-embedding-3-small", "input": "some text"}}]
    async with batch_api() as api:
        batch = await api.create(rows, endpoint="/v1/embeddings")
        done = await api.run_to_end(batch["id"])
        body = (await api.lines(done["output_file_id"]))["e1"]["response"]["body"]
        assert body["object"] == "list" and body["data"][0]["object"] == "embedding"


BAD_FILES = {
    "not JSON": ([line("a"), b"{not json", line("c")], "invalid_json_line", 2, None),
    "no method": ([line("a"), line("b"), {"custom_id": "c", "url": CHAT, "body": {}}],
                  "missing_required_parameter", 3, "method"),
    "GET": ([line("a", method="GET")], "invalid_request", 1, "method"),
    "other url": ([line("a"), line("b", url="/v1/embeddings")], "invalid_url", 2, "url"),
    "duplicate id": ([line("a"), line("b"), line("a")], "duplicate_custom_id", 3, "custom_id"),
    "two models": ([line("a"), line("b", model="gpt-4o")], "mismatched_model", 2,
                   "body.model"),
    "no model": ([{"custom_id": "a", "method": "POST", "url": CHAT, "body": {"messages": []}}],
                 "missing_required_parameter", 1, "body.model"),
    "blank lines count": ([line("a"), b"", b"[1, 2]"], "invalid_request", 3, None),
    "too many": ([line("a"), line("b"), line("c")], "too_many_requests", None, None),
    "empty": ([b""], "empty_file", None, None),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
async def test_a_bad_file_fails_validation_naming_its_line(case: str) -> None:
    rows, code, number, param = BAD_FILES[case]
    data = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    async with batch_api(max_requests=2) as api:
        batch = await api.create(data)
        assert batch["status"] == "validating"
        api.clock.t += 1.0
        failed = await api.get(batch["id"])
        assert failed["status"] == "failed" and failed["failed_at"] is not None
        assert failed["output_file_id"] is None and failed["error_file_id"] is None
        assert failed["errors"]["object"] == "list"
        [error] = failed["errors"]["data"]
        assert (error["code"], error["line"], error["param"]) == (code, number, param)
        assert error["message"]
        assert api.sim.stats.batch.runs == {}


async def test_a_file_over_the_size_limit_fails_validation() -> None:
    async with batch_api(max_file_bytes=100) as api:
        batch = await api.create([line("a"), line("b")])
        api.clock.t += 1.0
        [error] = (await api.get(batch["id"]))["errors"]["data"]
        assert error["code"] == "file_too_large" and error["line"] is None


async def test_the_queue_limit_counts_the_same_models_unfinished_batches_only() -> None:
    big = "x" * 400  # about a hundred tokens a line, by the simulator's own count
    async with batch_api(queue_tokens=700) as api:
        first = await api.create([line(f"a{i}", big) for i in range(6)])
        api.clock.t += 1.0  # the first is in progress: still enqueued
        over = await api.create([line("b0", big)])
        other_model = await api.create([line("c0", big, model="gpt-4o")])
        api.clock.t += 1.0
        refused = await api.get(over["id"])
        assert refused["status"] == "failed"
        [error] = refused["errors"]["data"]
        assert error["code"] == "token_limit_exceeded" and error["line"] is None
        assert error["message"] == (
            "Enqueued token limit reached for gpt-4o-mini in organization org-simulator. "
            "Limit: 700 enqueued tokens. Please try again once some in_progress batches have "
            "been completed.")
        assert (await api.get(other_model["id"]))["status"] == "in_progress"
        assert (await api.run_to_end(first["id"]))["status"] == "completed"
        again = await api.create([line("b0", big)])  # the queue has room once it finished
        assert (await api.run_to_end(again["id"]))["status"] == "completed"


async def test_a_single_batch_over_the_queue_limit_fails_and_zero_means_no_limit() -> None:
    rows = [line(f"a{i}", "x" * 400) for i in range(3)]
    async with batch_api(queue_tokens=100) as api:
        batch = await api.create(rows)
        assert (await api.run_to_end(batch["id"]))["status"] == "failed"
    async with batch_api(queue_tokens=0) as api:
        batch = await api.create(rows)
        assert (await api.run_to_end(batch["id"]))["status"] == "completed"


async def test_an_expired_batch_keeps_its_completed_lines_and_marks_the_rest() -> None:
    rows = [line(f"r{i}") for i in range(4)]
    async with batch_api(expire_share=0.5, expire_batches=1) as api:
        batch = await api.create(rows)
        expired = await api.run_to_end(batch["id"])
        assert expired["status"] == "expired" and expired["expired_at"] is not None
        assert expired["request_counts"] == {"total": 4, "completed": 2, "failed": 2}
        done = await api.lines(expired["output_file_id"])
        not_run = await api.lines(expired["error_file_id"])
        assert set(done) == {"r0", "r1"} and set(not_run) == {"r2", "r3"}
        assert not_run["r2"]["response"] is None
        assert not_run["r2"]["error"]["code"] == "batch_expired"
        retry = await api.create(rows[2:])  # only the first batch expires
        assert (await api.run_to_end(retry["id"]))["status"] == "completed"
        assert api.sim.stats.batch.runs == {"r0": 1, "r1": 1, "r2": 1, "r3": 1}


async def test_a_cancelled_batch_keeps_its_completed_lines_and_marks_the_rest() -> None:
    rows = [line(f"r{i}") for i in range(4)]
    async with batch_api() as api:
        batch = await api.create(rows)
        api.clock.t += 1.0 + 2.5  # a quarter done
        status, cancelling = await api.call("POST", f"/batches/{batch['id']}/cancel")
        assert status == 200 and cancelling["status"] == "cancelling"
        assert cancelling["cancelling_at"] is not None
        api.clock.t += 5.0  # nothing more runs while it cancels
        assert (await api.get(batch["id"]))["request_counts"]["completed"] == 1
        api.clock.t += 1.0
        cancelled = await api.get(batch["id"])
        assert cancelled["status"] == "cancelled"
        assert set(await api.lines(cancelled["output_file_id"])) == {"r0"}
        not_run = await api.lines(cancelled["error_file_id"])
        assert set(not_run) == {"r1", "r2", "r3"}
        assert not_run["r1"]["error"]["code"] == "batch_cancelled"
        status, error = await api.call("POST", f"/batches/{batch['id']}/cancel")
        assert status == 409 and "cancelled" in error["error"]["message"]
        assert api.sim.stats.batch.cancels == 2


async def test_the_list_is_newest_first_with_metadata_and_pages() -> None:
    async with batch_api() as api:
        ids = [(await api.create([line("a")], metadata={"part": str(i)}))["id"]
               for i in range(3)]
        status, page = await api.call("GET", "/batches", params={"limit": "2"})
        assert status == 200 and page["object"] == "list"
        assert [b["id"] for b in page["data"]] == [ids[2], ids[1]]
        assert page["data"][0]["metadata"] == {"part": "2"}
        assert (page["has_more"], page["first_id"], page["last_id"]) == (True, ids[2], ids[1])
        _, rest = await api.call("GET", "/batches", params={"after": ids[1]})
        assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False


async def test_azure_routes_need_api_version_and_use_its_endpoint_names() -> None:
    rows = [line("a", url="/chat/completions", model="my-deployment")]
    async with batch_api(azure=True, queue_tokens=1) as api:
        batch = await api.create(rows, endpoint="/chat/completions")
        failed = await api.run_to_end(batch["id"])
        assert failed["errors"]["data"][0]["message"].startswith(
            "The number of enqueued tokens has surpassed the configured limit of 1 for the "
            "deployment 'my-deployment'.")
        api.sim.config.batch.queue_tokens = 0
        batch = await api.create(rows, endpoint="/chat/completions")
        done = await api.run_to_end(batch["id"])
        assert set(await api.lines(done["output_file_id"])) == {"a"}
        status, error = await api.call("POST", "/batches", json={
            "input_file_id": batch["input_file_id"], "endpoint": CHAT,
            "completion_window": "24h"})
        assert status == 400 and error["error"]["param"] == "endpoint"
        api.params = {}
        assert (await api.call("GET", f"/batches/{batch['id']}"))[0] == 400


async def test_bad_uploads_and_creates_are_refused_as_the_api_does() -> None:
    async with batch_api() as api:
        status, error = await api.upload(b"{}\n", purpose="training")
        assert status == 400 and error["error"]["param"] == "purpose"
        no_file = aiohttp.FormData({"purpose": "batch"}, default_to_multipart=True)
        status, error = await api.call("POST", "/files", data=no_file)
        assert status == 400 and error["error"]["param"] == "file"
        status, error = await api.call("POST", "/files", data={"purpose": "batch"})
        assert status == 400 and "multipart/form-data" in error["error"]["message"]
        status, error = await api.call("POST", "/batches", json={
            "input_file_id": "file-nope", "endpoint": CHAT, "completion_window": "24h"})
        assert status == 404 and error["error"]["type"] == "invalid_request_error"
        _, file = await api.upload(jsonl([line("a")]))
        for change in ({"completion_window": "1h"}, {"metadata": {"k": "v" * 513}},
                       {"metadata": {str(i): "v" for i in range(17)}}):
            status, error = await api.call("POST", "/batches", json={
                "input_file_id": file["id"], "endpoint": CHAT, "completion_window": "24h",
                **change})
            assert status == 400, change
        status, gone = await api.call("DELETE", f"/files/{file['id']}")
        assert status == 200 and gone == {"id": file["id"], "object": "file", "deleted": True}
        assert (await api.call("GET", f"/files/{file['id']}"))[0] == 404
        assert api.sim.stats.batch.created == {}


async def test_faults_5xx_on_upload_poll_and_create_request_errors_failed_validation() -> None:
    rows = [line(f"r{i}") for i in range(40)]
    async with batch_api(upload_5xx=1.0, poll_5xx=1.0) as api:
        status, _ = await api.upload(jsonl(rows))
        assert status == 500 and api.sim.stats.batch.uploads == 0
        api.sim.config.batch.upload_5xx = 0.0
        batch = await api.create(rows)
        status, error = await api.call("GET", f"/batches/{batch['id']}")
        assert status == 500 and error["error"]["type"] == "server_error"
    async with batch_api(create_5xx=1.0) as api:
        _, file = await api.upload(jsonl(rows))
        status, _ = await api.call("POST", "/batches", json={
            "input_file_id": file["id"], "endpoint": CHAT, "completion_window": "24h",
            "metadata": {"job": "j", "part": "1"}})
        assert status == 500  # yet the batch was created, and a list finds it by its metadata
        _, listed = await api.call("GET", "/batches")
        [lost] = listed["data"]
        assert lost["metadata"] == {"job": "j", "part": "1"}
        assert (await api.run_to_end(lost["id"]))["status"] == "completed"
    async with batch_api(request_errors=0.25, fail_validation=1) as api:
        first = await api.create(rows)
        assert (await api.run_to_end(first["id"]))["status"] == "failed"
        second = await api.run_to_end((await api.create(rows))["id"])
        ok = await api.lines(second["output_file_id"])
        errors = await api.lines(second["error_file_id"])
        assert 0 < len(errors) < 40 and len(ok) + len(errors) == 40
        assert second["request_counts"] == {"total": 40, "completed": len(ok),
                                            "failed": len(errors)}
        sample = next(iter(errors.values()))
        assert sample["error"] is None and sample["response"]["status_code"] == 400
        assert sample["response"]["body"]["error"]["type"] == "invalid_request_error"


async def test_a_refused_key_and_no_quota_are_refused_on_files_and_batches() -> None:
    async with batch_api() as api:
        api.headers = {"Authorization": "Bearer sk-wrong"}
        for method, path in (("GET", "/files"), ("GET", "/batches"), ("GET", "/batches/b")):
            status, error = await api.call(method, path)
            assert status == 401 and error["error"]["code"] == "invalid_api_key"
        status, _ = await api.upload(b"x")
        assert status == 401
        api.headers = {"Authorization": f"Bearer {KEY}"}
        api.sim.config.insufficient_quota = True
        status, error = await api.call("POST", "/batches", json={})
        assert status == 429 and error["error"]["code"] == "insufficient_quota"


def test_the_command_line_sets_the_batch_api() -> None:
    config, _port = config_from_argv([
        "--batch-seconds", "2", "--batch-queue-tokens", "0", "--batch-expire", "0.3",
        "--batch-expire-batches", "0", "--batch-fail-validation", "2", "--batch-upload-5xx",
        "0.1", "--batch-create-5xx", "0.15", "--batch-poll-5xx", "0.2",
        "--batch-request-errors", "0.05", "--seed", "7"])
    assert config.batch == BatchConfig(
        seconds=2.0, queue_tokens=0, expire_share=0.3, expire_batches=0, fail_validation=2,
        upload_5xx=0.1, create_5xx=0.15, poll_5xx=0.2, request_errors=0.05)
    assert config_from_argv([])[0].batch == BatchConfig()


async def test_the_threaded_fixture_serves_batches_on_wall_time_or_a_set_clock(
    sim_factory: Any,
) -> None:
    """What a client's test would do: seconds=0 finishes a batch at its first poll."""
    running = sim_factory(SimConfig(batch=BatchConfig(seconds=0)))
    headers = {"Authorization": "Bearer sk-anything"}
    async with aiohttp.ClientSession(headers=headers) as session:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", jsonl([line("a")]), filename="in.jsonl")
        async with session.post(f"{running.base_url}/files", data=form) as resp:
            file_id = (await resp.json())["id"]
        create = {"input_file_id": file_id, "endpoint": CHAT, "completion_window": "24h"}
        async with session.post(f"{running.base_url}/batches", json=create) as resp:
            batch_id = (await resp.json())["id"]
        async with session.get(f"{running.base_url}/batches/{batch_id}") as resp:
            assert (await resp.json())["status"] == "completed"
        running.sim.batch.clock = Clock()  # a running simulator takes a clock of the test's
        running.sim.config.batch.seconds = 10.0
        async with session.post(f"{running.base_url}/batches", json=create) as resp:
            assert (await resp.json())["created_at"] == Clock().t
    assert running.stats.batch.runs == {"a": 1}
