"""A successful answer is recorded exactly as the server sent it, and a resume still reads it."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.helpers.cli import run_cli
from tests.helpers.jsonl import write_jsonl

# What orjson would rewrite or refuse: an integer past 64 bits, a lone surrogate the model
# wrote, a float written the server's way. All valid JSON, all the user's data.
ANSWER = (b'{"object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant",'
          b'"content":"half an emoji: \\ud83d"}}],"seed":18446744073709551616,"p":1.50,'
          b'"usage":{"prompt_tokens":5,"completion_tokens":3}}')


@pytest.fixture
def odd_server() -> Iterator[str]:
    """A server on a loopback socket that answers every request with ANSWER."""
    ready, loop = threading.Event(), asyncio.new_event_loop()
    origin: list[str] = []
    stop = asyncio.Event()

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=ANSWER, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        origin.append(f"http://127.0.0.1:{runner.addresses[0][1]}/v1")
        ready.set()
        await stop.wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield origin[0]
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.close()


def test_an_answer_is_written_byte_for_byte_and_a_resume_counts_it(
    odd_server: str, tmp_path: Path
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [{"id": f"q{i}", "prompt": "hi"} for i in range(3)])
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    run = run_cli("submit", str(jobs), "--base-url", odd_server, "-q", env=env)
    assert run.code == 0, run.stderr
    lines = (tmp_path / "jobs.results.jsonl").read_bytes().splitlines()
    assert len(lines) == 3
    for raw in lines:
        assert b'"body":' + ANSWER + b"}" in raw
        line = json.loads(raw)  # a JSON reader that takes what the server sent takes ours
        assert line["response"]["body"]["seed"] == 18446744073709551616
        assert line["error"] is None
    again = run_cli("submit", str(jobs), "--base-url", odd_server, "-q", env=env)
    assert again.code == 0, again.stderr
    assert "is finished: 3 of 3 requests have a result (0 failed)" in again.stdout
    assert len((tmp_path / "jobs.results.jsonl").read_bytes().splitlines()) == 3
