"""Small aiohttp servers on loopback, served from their own thread, that record what reached
them (the key, the prompt, the proxy's view)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchrun.cli.commands import run
from batchrun.http.client import Endpoint
from batchrun.policy.request import CHAT_URL, Request
from tests.helpers.jsonl import read_results, write_jsonl

KEY = "sk-test-abcdefghijklmnop1234"
REQ = Request(1, "a", CHAT_URL, {"model": "gpt-4o-mini", "messages": [
    {"role": "user", "content": "the secret prompt"}]})


CHAT_OK = {"object": "chat.completion", "choices": [
    {"message": {"role": "assistant", "content": "an answer"}}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """A one-handler HTTP server on a loopback address; yields its origin (http://host:port)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


class Recorder:
    """A server that answers every request with a chat completion and remembers what it got."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.json_response(CHAT_OK)


def endpoint_for(origin: str, azure: bool) -> Endpoint:
    return Endpoint.make(None, origin, None) if azure else Endpoint.make(origin + "/v1", None, None)


class ThreadedServer:
    """`serve` on its own thread and loop, for tests that run the CLI in-process."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))
        self.origin = ""

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler) as origin:
            self.origin = origin
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._loop.close()


def submit_against(
    handler: Handler, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, dict[str, Any]]:
    """Submit one prompt to a server answering with `handler`; the exit code and output line."""
    monkeypatch.setenv("OPENAI_API_KEY", key)
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": "a", "prompt": "hi"}])
    with ThreadedServer(handler) as server:
        code = run(["submit", str(jobs), "--base-url", server.origin + "/v1", "--max-retries", "0"])
    return code, read_results(tmp_path / "jobs.results.jsonl")["a"]
