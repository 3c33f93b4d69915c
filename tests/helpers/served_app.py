"""An odd server for billing tests: an aiohttp app on loopback, served from its own thread,
answering each request by a function of the test."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

Handler = Callable[[dict[str, Any], int], Awaitable[web.Response]]


class ServedApp:
    """A scripted OpenAI-compatible server on 127.0.0.1. `handler(body, n)` answers the n-th
    attempt (1-based) of the request whose first message is `body`'s."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.attempts: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._stop: asyncio.Event | None = None
        self.port = 0

    async def _answer(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        key = str(body.get("messages", body.get("input")))
        self.attempts[key] += 1
        return await self.handler(body, self.attempts[key])

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._answer)
        app.router.add_post("/v1/embeddings", self._answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _serve(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    def __enter__(self) -> ServedApp:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def received(self) -> int:
        return sum(self.attempts.values())


def ok(body: dict[str, Any], prompt: int = 10, completion: int = 5) -> web.Response:
    return web.json_response({
        "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion},
    })


UNLIMITED = ("--rpm", "0", "--tpm", "0", "--rpd", "0", "--tpd", "0")
