"""A counting chat-completions server for the cache's outside check (not batchrun's simulator):
each answer is a digest of the body it was sent, and every body is logged, so a judge counts
what was billed and checks that each id got the answer to its own body.

    python server.py PORT LOG      (DELAY=seconds: each answer waits up to that long)
"""

import asyncio
import hashlib
import json
import os
import random
import sys
from typing import TextIO

from aiohttp import web

LOG = web.AppKey("log", TextIO)


def answer_of(body: dict[str, object]) -> str:
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return "ANS " + hashlib.sha256(canon.encode()).hexdigest()[:16]


async def chat(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    await asyncio.sleep(float(os.environ.get("DELAY", "0")) * random.random())
    log = request.app[LOG]
    log.write(json.dumps({"path": request.path, "host": request.host, "body": body}) + "\n")
    log.flush()  # the judge counts the lines while the job runs
    text = body["messages"][-1]["content"][:40]
    return web.json_response({
        "id": "chatcmpl-x", "object": "chat.completion", "model": body.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant",
                                             "content": f"{answer_of(body)} {text}"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}})


async def alive(request: web.Request) -> web.Response:
    return web.json_response({})


if __name__ == "__main__":
    app = web.Application()
    app[LOG] = open(sys.argv[2], "a")  # noqa: SIM115 - open while the server runs
    app.router.add_post("/{prefix:.*}/chat/completions", chat)
    app.router.add_get("/alive", alive)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
