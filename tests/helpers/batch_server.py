"""A small Files and Batches server on a real loopback socket, playing what the services
document (or were observed to do) rather than what our simulator believes, with knobs for the
odd servers outside trials met. The real `BatchClient` client talks to it.

What it plays, and where that comes from:
- Azure OpenAI (api-version 2024-10-21, learn.microsoft.com/rest/api/azureopenai/files/upload):
  Files – Upload answers **201 Created** with a `Location` header. Batch – Create answers 201
  in the 2025-01-01-preview spec (the 2024-10-21 page says 200); `create_status` picks.
- OpenAI, cancelling a batch that already finished: HTTP **409** with
  `{"error": {"message": "Cannot cancel a batch with status 'completed'.", "type":
  "invalid_request_error", "param": null, "code": null}}` (the live API as litellm's batch test
  meets it: it catches `openai.ConflictError`, the SDK's class for 409, with that message).
- A batch ends after `steps` retrieves; `finished_status` is the status it then reports (the
  documented "completed", or an undocumented one); `output` says what its output file is.

Served from its own thread and loop, so the code under test may run `asyncio.run` itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class ServerConfig:
    azure: bool = True
    upload_status: int = 201
    create_status: int = 201
    steps: int = 2
    finished_status: str = "completed"
    # "ok" | "null" (output_file_id null) | "html" (a 200 HTML page) | "cut" (the last line cut)
    output: str = "ok"
    bad_outputs: int = 10**9  # how many finished retrieves see `output`; then "ok"
    stall_cancels_after: int | None = None  # cancels after this many never answer
    stall_retrieves: bool = False  # retrieves never answer


@dataclass
class Stats:
    runs: Counter[str] = field(default_factory=Counter)  # custom_id -> times run (billed)
    created: list[dict[str, str]] = field(default_factory=list)  # each create's metadata
    cancels: int = 0
    cancel_calls: int = 0  # cancels asked, answered or not
    retrieve_calls: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)  # (route, status)


class BatchServer:
    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.stats = Stats()
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._lines: dict[str, list[dict[str, Any]]] = {}
        self._polls: Counter[str] = Counter()
        self._finished_retrieves = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> BatchServer:
        self._thread.start()
        assert self._ready.wait(10), "the batch server did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._route)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    # -- routes -----------------------------------------------------------------------------

    async def _route(self, request: web.Request) -> web.StreamResponse:
        prefix = "/openai" if self.config.azure else "/v1"
        path = request.path.removeprefix(prefix).strip("/").split("/")
        if path == ["files"] and request.method == "POST":
            return await self._upload(request)
        if path[0] == "files" and path[-1] == "content":
            return self._content(path[1])
        if path == ["batches"] and request.method == "POST":
            return await self._create(request)
        if path == ["batches"]:
            return self._list(request)
        if path[0] == "batches" and path[-1] == "cancel":
            self.stats.cancel_calls += 1
            stall = self.config.stall_cancels_after
            if stall is not None and self.stats.cancel_calls > stall:
                await self._never()
            return self._cancel(path[1])
        if path[0] == "batches":
            self.stats.retrieve_calls += 1
            if self.config.stall_retrieves:
                await self._never()
            return self._retrieve(path[1])
        return _error(404, "Resource not found")

    async def _never(self) -> None:
        assert self._stop is not None
        await self._stop.wait()

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = upload.file.read()  # type: ignore[union-attr]
        return self._json("upload", {"id": fid, "object": "file", "purpose": "batch",
                                     "bytes": len(self.files[fid]), "status": "processed"},
                          self.config.upload_status, location=f"files/{fid}")

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        bid = f"batch_{len(self.batches) + 1}"
        self._lines[bid] = [orjson.loads(x) for x in self.files[body["input_file_id"]].splitlines()
                            if x.strip()]
        self.batches[bid] = {
            "id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": "24h",
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "request_counts": {"total": len(self._lines[bid]), "completed": 0, "failed": 0},
            "metadata": body.get("metadata") or {}}
        self.stats.created.append(dict(self.batches[bid]["metadata"]))
        return self._json("create", self.batches[bid], self.config.create_status,
                          location=f"batches/{bid}")

    def _retrieve(self, bid: str) -> web.Response:
        b = self.batches.get(bid)
        if b is None:
            return _error(404, f"No such Batch object: {bid}")
        self._polls[bid] += 1
        if b["status"] in ("validating", "in_progress"):
            if self._polls[bid] < self.config.steps:
                b["status"] = "in_progress"
            else:
                self._finish(bid, "completed")
        elif b["status"] == "cancelling":
            self._finish(bid, "cancelled")
        if b["status"] == "completed" or b["status"] == self.config.finished_status:
            return self._json("retrieve", self._as_reported(b))
        return self._json("retrieve", b)

    def _as_reported(self, b: dict[str, Any]) -> dict[str, Any]:
        """A finished batch as the configured server shows it."""
        self._finished_retrieves += 1
        shown = {**b, "status": self.config.finished_status}
        bad = self._finished_retrieves <= self.config.bad_outputs
        if bad and self.config.output == "null":
            shown["output_file_id"] = None
        elif bad and self.config.output in ("html", "cut"):
            shown["output_file_id"] = f"{b['output_file_id']}-{self.config.output}"
        return shown

    def _finish(self, bid: str, status: str) -> None:
        b = self.batches[bid]
        lines = self._lines[bid]
        ran = lines if status == "completed" else lines[: len(lines) // 2]
        ok = []
        for line in ran:
            cid = line["custom_id"]
            self.stats.runs[cid] += 1
            ok.append({"id": f"batch_req_{cid}", "custom_id": cid, "response": {
                "status_code": 200, "request_id": f"req_{cid}", "body": {
                    "id": f"chatcmpl-{cid}", "object": "chat.completion", "choices": [{
                        "index": 0, "message": {"role": "assistant", "content": f"re {cid}"}}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5,
                              "total_tokens": 15}}}, "error": None})
        errors = [{"id": f"batch_req_{x['custom_id']}", "custom_id": x["custom_id"],
                   "response": None, "error": {"code": "batch_cancelled",
                                               "message": "the batch was cancelled"}}
                  for x in lines[len(ran):]]
        b["status"] = status
        b["request_counts"].update(completed=len(ok), failed=len(errors))
        if ok:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = b"".join(orjson.dumps(r) + b"\n" for r in ok)
            b["output_file_id"] = fid
        if errors:
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = b"".join(orjson.dumps(r) + b"\n" for r in errors)
            b["error_file_id"] = fid

    def _content(self, fid: str) -> web.Response:
        if fid.endswith("-html"):
            return web.Response(body=b"<html><body>Service Unavailable</body></html>",
                                content_type="text/html")
        if fid.endswith("-cut"):
            whole = self.files[fid.removesuffix("-cut")]
            return web.Response(body=whole[: len(whole) // 2])
        if fid not in self.files:
            return _error(404, f"No such File object: {fid}")
        return web.Response(body=self.files[fid], content_type="application/octet-stream")

    def _list(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "20"))
        ids = list(reversed(self.batches))
        after = request.query.get("after")
        if after in ids:
            ids = ids[ids.index(after) + 1:]
        page = [self.batches[i] for i in ids[:limit]]
        return self._json("list", {"object": "list", "data": page,
                                   "has_more": len(ids) > limit})

    def _cancel(self, bid: str) -> web.Response:
        b = self.batches.get(bid)
        if b is None:
            return _error(404, f"No such Batch object: {bid}")
        if b["status"] not in ("validating", "in_progress"):
            self.stats.statuses[("cancel", 409)] += 1
            return _error(409, f"Cannot cancel a batch with status '{b['status']}'.")
        self.stats.cancels += 1
        b["status"] = "cancelling"
        return self._json("cancel", b)

    def _json(self, route: str, payload: dict[str, Any], status: int = 200,
              location: str | None = None) -> web.Response:
        self.stats.statuses[(route, status)] += 1
        headers = {"Location": f"{self.url}/openai/{location}"} if location else {}
        return web.Response(status=status, body=orjson.dumps(payload), headers=headers,
                            content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json", body=orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None,
                   "code": None}}))
