"""The client never sends the key or a prompt where the user did not point it, never echoes a
credential, and never lets one response exhaust memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from batchrun.client import ApiClient, Endpoint, Kind
from batchrun.jobs import CHAT_URL, Request

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


# -- 11.1 redirects ---------------------------------------------------------------------------


@pytest.mark.parametrize("azure", [False, True], ids=["openai", "azure"])
@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_to_another_host_is_not_followed(azure: bool, status: int) -> None:
    elsewhere = Recorder()
    async with serve(elsewhere.handle, "127.0.0.2") as other:
        target = other.replace("http://", "http://user:hunter2pw@")

        async def redirect(request: web.Request) -> web.Response:
            return web.Response(status=status, headers={"Location": target + request.path_qs})

        async with serve(redirect) as origin, ApiClient(
            endpoint_for(origin, azure), KEY, 5.0, 10
        ) as client:
            out = await client.send(REQ)
    assert elsewhere.got == []  # neither the key nor the prompt left for the other host
    assert out.kind is Kind.FAIL and out.code == "redirected" and out.status == status
    assert other.removeprefix("http://") in out.message
    assert "hunter2pw" not in out.message and KEY not in out.message
