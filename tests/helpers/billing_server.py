"""An outside judge of cost: a chat-completions server on a real loopback socket that caches
prompts and bills at list prices by its own arithmetic, never batchrun's.

What it plays (OpenAI's prompt caching, platform.openai.com/docs/guides/prompt-caching): a prompt
whose leading message was seen before and is at least 1,024 tokens long is served from the
cache in steps of 128 tokens, reported as `usage.prompt_tokens_details.cached_tokens` (a part of
`prompt_tokens`) and billed at the cached price. It counts tokens as characters / 4 plus 3 per
message and 3 for the reply (not a tokenizer), and writes the usage it bills into every answer.
Its prices are its own copy of gpt-4o-mini's list prices (per 1M tokens), not batchrun's table.

Served from its own thread and loop, so the CLI under test may run `asyncio.run` itself, or
another process may talk to it (kill -9 tests). `latency_s` holds every answer that long (the
server's own pace, not the test's synchronisation).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.helpers.served_app import ServedApp

INPUT, CACHED, OUTPUT = 0.15, 0.075, 0.60  # gpt-4o-mini, US dollars per 1M tokens
CACHE_MIN, CACHE_STEP = 1024, 128


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


class BillingServer:
    def __init__(self, latency_s: float = 0.0, bill_on_receipt: bool = False) -> None:
        self.latency_s = latency_s
        # Bill a request as it arrives, before its answer is sent (the model ran; the answer
        # may never reach the client): what a kill -9 with requests in flight leaves billed.
        self.bill_on_receipt = bill_on_receipt
        self.received = 0
        self.bill = 0.0  # US dollars of every answer sent
        self.answered: Counter[str] = Counter()  # the user message -> times billed
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._app = ServedApp(self._chat)
        self.url = ""

    def __enter__(self) -> BillingServer:
        self.url = self._app.__enter__().base_url
        return self

    def __exit__(self, *exc: Any) -> None:
        self._app.__exit__(*exc)

    def billed(self) -> float:
        with self._lock:
            return self.bill

    def _usage(self, body: dict[str, Any]) -> tuple[int, int, int]:
        messages = body["messages"]
        texts = [str(m.get("content", "")) for m in messages]
        prompt = sum(tokens(t) + 3 for t in texts) + 3
        # Tool definitions and a response schema are prompt the model reads, billed as input.
        for extra in ("tools", "response_format"):
            if body.get(extra) is not None:
                prompt += tokens(orjson.dumps(body[extra]).decode())
        lead = texts[0]
        cached = 0
        if lead in self._seen and tokens(lead) >= CACHE_MIN:
            cached = tokens(lead) // CACHE_STEP * CACHE_STEP
        self._seen.add(lead)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 4096
        digest = hashlib.sha256(texts[-1].encode()).digest()
        completion = min(int(limit), 5 + digest[0] % 20)
        return prompt, cached, completion

    def _billed(self, body: dict[str, Any]) -> tuple[int, int, int]:
        with self._lock:
            self.received += 1
            prompt, cached, completion = self._usage(body)
            self.bill += ((prompt - cached) * INPUT + cached * CACHED
                          + completion * OUTPUT) / 1_000_000
            self.answered[str(body["messages"][-1].get("content"))] += 1
        return prompt, cached, completion

    async def _chat(self, body: dict[str, Any], _attempt: int) -> web.Response:
        if self.bill_on_receipt:
            prompt, cached, completion = self._billed(body)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        if not self.bill_on_receipt:
            prompt, cached, completion = self._billed(body)
        answer = {
            "id": "chatcmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}},
        }
        return web.json_response(answer)


# A ~1,500-token system prompt every request shares: what the server caches.
SYSTEM = " ".join(f"rule {n}: answer briefly and politely." for n in range(170))


def rows(n: int, max_tokens: int | None = 40) -> list[dict[str, Any]]:
    """n chat lines sharing SYSTEM, each with its own question."""
    out = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"r{i}", "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"}]}
        if max_tokens is not None:
            row["max_tokens"] = max_tokens
        out.append(row)
    return out
