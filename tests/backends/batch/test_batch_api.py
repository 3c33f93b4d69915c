"""The Files and Batches calls on the wire: OpenAI and Azure routes, the key's header, the
multipart upload, list pagination, and how failures are classified (never showing the key)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.backends.batch.api import ApiCallFailed, BatchClient, Transient
from batchrun.errors import ApiRefused
from batchrun.http.endpoint import Endpoint
from batchrun.policy.classify import Kind, classify
from tests.helpers.cli import FAKE_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler, body: Callable[[str], Awaitable[Any]]) -> Any:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await body(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def test_openai_and_azure_routes_headers_and_upload(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    part = tmp_path / "part.jsonl"
    part.write_bytes(b'{"custom_id":"a"}\n')

    async def handler(request: web.Request) -> web.StreamResponse:
        entry: dict[str, Any] = {"method": request.method, "path": request.path,
                                 "query": dict(request.query), "headers": dict(request.headers)}
        if request.content_type == "multipart/form-data":
            form = await request.post()
            upload = form["file"]
            entry["form"] = {"purpose": form["purpose"],
                             "file": upload.file.read(), "name": upload.filename}  # type: ignore[union-attr]
        elif request.can_read_body:
            entry["json"] = await request.json()
        seen.append(entry)
        if request.path.endswith("/content"):
            return web.Response(body=b'{"custom_id":"a"}\n')
        return web.json_response({"id": "x1", "status": "validating"})

    async def calls(url: str, azure: bool) -> None:
        endpoint = Endpoint.make(None if azure else url + "/v1", url if azure else None, None)
        async with BatchClient(endpoint, FAKE_KEY) as api:
            await api.upload(part, "job-part1.jsonl")
            await api.create("file-1", api.batch_endpoint("/v1/chat/completions"),
                             {"batchrun_job": "j", "batchrun_part": "j/1/ab"})
            await api.retrieve("batch_1")
            await api.cancel("batch_1")
            await api.download("file-2", tmp_path / "out.jsonl")

    asyncio.run(serve(handler, lambda url: calls(url, azure=False)))
    assert [(s["method"], s["path"]) for s in seen] == [
        ("POST", "/v1/files"), ("POST", "/v1/batches"), ("GET", "/v1/batches/batch_1"),
        ("POST", "/v1/batches/batch_1/cancel"), ("GET", "/v1/files/file-2/content")]
    assert all(s["headers"]["Authorization"] == f"Bearer {FAKE_KEY}" for s in seen)
    assert seen[0]["form"] == {"purpose": "batch", "file": b'{"custom_id":"a"}\n',
                               "name": "job-part1.jsonl"}
    assert seen[1]["json"] == {"input_file_id": "file-1", "endpoint": "/v1/chat/completions",
                               "completion_window": "24h",
                               "metadata": {"batchrun_job": "j", "batchrun_part": "j/1/ab"}}
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"custom_id":"a"}\n'

    seen.clear()
    asyncio.run(serve(handler, lambda url: calls(url, azure=True)))
    assert [(s["method"], s["path"]) for s in seen] == [
        ("POST", "/openai/files"), ("POST", "/openai/batches"),
        ("GET", "/openai/batches/batch_1"), ("POST", "/openai/batches/batch_1/cancel"),
        ("GET", "/openai/files/file-2/content")]
    assert all(s["query"] == {"api-version": "2024-10-21"} for s in seen)
    assert all(s["headers"]["api-key"] == FAKE_KEY and "Authorization" not in s["headers"]
               for s in seen)
    assert seen[1]["json"]["endpoint"] == "/chat/completions"


def test_listing_follows_pages() -> None:
    pages = {None: (["b5", "b4"], True), "b4": (["b3", "b2"], True), "b2": (["b1"], False)}
    asked: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        after = request.query.get("after")
        asked.append(after)
        ids, more = pages[after]
        return web.json_response({"object": "list", "data": [{"id": i} for i in ids],
                                  "has_more": more})

    async def body(url: str) -> list[str]:
        async with BatchClient(Endpoint.make(url, None, None), FAKE_KEY) as api:
            return [b["id"] async for b in api.batches(page_size=2)]

    assert asyncio.run(serve(handler, body)) == ["b5", "b4", "b3", "b2", "b1"]
    assert asked == [None, "b4", "b2"]



@pytest.mark.timeout(30)  # before the fix: listed for ever
def test_a_list_whose_pages_go_round_in_a_circle_ends() -> None:
    # A broken server: has_more stays true and `after` leads back to a page already read.
    pages = {None: ["b5", "b4"], "b4": ["b3", "b2"], "b2": ["b5", "b4"]}

    async def handler(request: web.Request) -> web.StreamResponse:
        ids = pages[request.query.get("after")]
        return web.json_response({"object": "list", "data": [{"id": i} for i in ids],
                                  "has_more": True})

    async def body(url: str) -> list[str]:
        async with BatchClient(Endpoint.make(url, None, None), FAKE_KEY) as api:
            return [b["id"] async for b in api.batches(page_size=2)]

    assert asyncio.run(serve(handler, body)) == ["b5", "b4", "b3", "b2"]

@pytest.mark.parametrize("status,body,error", [
    (401, {"error": {"message": f"Incorrect API key provided: {FAKE_KEY}",
                     "code": "invalid_api_key"}}, ApiRefused),
    (429, {"error": {"message": "You exceeded your quota", "code": "insufficient_quota"}},
     ApiRefused),
    (503, {"error": {"message": f"overloaded {FAKE_KEY}"}}, Transient),
    (400, {"error": {"message": f"bad file {FAKE_KEY}", "code": "invalid_file"}}, ApiCallFailed),
    (307, {}, ApiCallFailed),
])
def test_failures_are_classified_and_never_show_the_key(
        status: int, body: dict[str, Any], error: type[Exception]) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Location": "http://elsewhere.test/"} if status == 307 else {}
        return web.json_response(body, status=status, headers=headers)

    async def call(url: str) -> None:
        async with BatchClient(Endpoint.make(url, None, None), FAKE_KEY) as api:
            await api.retrieve("batch_1")

    with pytest.raises(error) as caught:
        asyncio.run(serve(handler, call))
    assert FAKE_KEY not in str(caught.value) and FAKE_KEY not in getattr(caught.value,
                                                                          "message", "")
    if status == 307:
        assert "redirect" in str(caught.value)


def test_a_stalled_answer_is_transient() -> None:
    released: list[asyncio.Event] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        await released[0].wait()  # the stall: until the client has given up
        return web.json_response({})

    async def call(url: str) -> None:
        released.append(asyncio.Event())
        try:
            async with BatchClient(Endpoint.make(url, None, None), FAKE_KEY, timeout_s=0.2) as api:
                await api.retrieve("batch_1")
        finally:
            released[0].set()

    with pytest.raises(Transient, match="no answer within the timeout"):
        asyncio.run(serve(handler, call))


SAID_ALIKE = {Kind.OK: None, Kind.REFUSED: ApiRefused, Kind.RETRY: Transient,
              Kind.RATE_MINUTE: Transient, Kind.FAIL: ApiCallFailed}


@pytest.mark.parametrize("status", [200, 201, 202, 307, 400, 401, 402, 403, 404, 408, 409, 422,
                                    429, 500, 503])
def test_a_status_means_the_same_to_the_batch_api_and_the_sync_path(status: int) -> None:
    """One classification (classify.status_kind): a 201 is an answer and a 402 a refusal of
    the account whichever path meets it (SERVERS.md: every 2xx is success)."""
    body = {"id": "x", "object": "chat.completion", "choices": [],
            "error": None if status < 300 else {"message": "no", "code": ""}}

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    async def call(url: str) -> None:
        async with BatchClient(Endpoint.make(url, None, None), FAKE_KEY) as api:
            await api.retrieve("batch_1")

    sync = classify(status, {}, orjson.dumps(body), "/v1/chat/completions", FAKE_KEY).kind
    expected = SAID_ALIKE[sync]
    if expected is None:
        asyncio.run(serve(handler, call))
    else:
        with pytest.raises(expected):
            asyncio.run(serve(handler, call))
