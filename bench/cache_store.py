"""What the response cache costs per operation, and on disk (#25).

    python bench/cache_store.py                  # local SQLite: 100k ops, then 1M answers
    python bench/cache_store.py --size 0         # the per-op costs only
    python bench/cache_store.py --redis redis://127.0.0.1:6379/0   # also the shared cache

The engine calls get() for every line and put() for every success; puts wait in memory and
are written every 0.25 s, as in a job. Answers are chat completions of ~600 bytes, each
different (an id, a created time, a content of about 40 words). Runs in a fresh temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import tempfile
import time
from pathlib import Path

import orjson

from batchrun.files.cachedb import LocalCache
from batchrun.state import RedisCache, parse_state_url

WORDS = ["the", "answer", "depends", "on", "the", "question", "you", "asked", "and", "the",
         "context", "of", "the", "request", "which", "here", "is", "a", "short", "sentence",
         "about", "rate", "limits", "tokens", "and", "batches"]


def key(n: int) -> bytes:
    return hashlib.sha256(f"request {n}".encode()).digest()


def answer(n: int) -> bytes:
    content = " ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(40))
    return orjson.dumps({
        "id": f"chatcmpl-{hashlib.md5(str(n).encode()).hexdigest()[:24]}",  # noqa: S324
        "object": "chat.completion", "created": 1_764_000_000 + n, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 40 + n % 50, "completion_tokens": 60,
                  "total_tokens": 100 + n % 50}})


async def per_op(cache: LocalCache | RedisCache, ops: int) -> dict[str, float]:
    """µs per op (keys and answers made before the clock starts): puts, then hits, then
    misses; the time of the writes every 0.25 s and of close() is in the puts'."""
    keys = [key(n) for n in range(2 * ops)]
    bodies = [answer(n) for n in range(ops)]
    start = time.perf_counter()
    for n in range(ops):
        await cache.put(keys[n], bodies[n])
    if isinstance(cache, LocalCache):
        cache.flush()
    else:
        await cache.flush()
    put_us = (time.perf_counter() - start) / ops * 1e6
    start = time.perf_counter()
    for n in range(ops):
        assert await cache.get(keys[n]) is not None
    hit_us = (time.perf_counter() - start) / ops * 1e6
    start = time.perf_counter()
    for n in range(ops, 2 * ops):
        assert await cache.get(keys[n]) is None
    miss_us = (time.perf_counter() - start) / ops * 1e6
    await cache.close()
    return {"put": put_us, "get_hit": hit_us, "get_miss": miss_us}


async def file_size(path: Path, answers: int) -> tuple[int, float]:
    cache = LocalCache(path)
    start = time.perf_counter()
    for n in range(answers):
        await cache.put(key(n), answer(n))
    await cache.close()
    took = time.perf_counter() - start
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return size, took


def show(name: str, costs: dict[str, float], ops: int) -> None:
    print(f"{name}: {ops:,} ops · put {costs['put']:.1f} µs · get (hit) "
          f"{costs['get_hit']:.1f} µs · get (miss) {costs['get_miss']:.1f} µs")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1_000_000,
                        help="answers stored for the file size (0: skip)")
    parser.add_argument("--redis", help="also measure the shared cache at this URL (its "
                        "batchrun:v2:cache:* keys are cleared after)")
    args = parser.parse_args()
    body = answer(1)
    print(f"answer: {len(body)} bytes of JSON")
    with tempfile.TemporaryDirectory() as folder:
        show("local SQLite", await per_op(LocalCache(Path(folder) / "ops.sqlite3"), args.ops),
             args.ops)
        if args.size:
            size, took = await file_size(Path(folder) / "size.sqlite3", args.size)
            print(f"local SQLite: {args.size:,} answers in {size / 2**20:,.1f} MiB "
                  f"({size / args.size:,.0f} bytes each), stored in {took:,.1f} s")
    if args.redis:
        state = parse_state_url(args.redis)
        assert state is not None
        shared = RedisCache(state, cap_bytes=2**30, ttl_s=3600)
        show("Redis", await per_op(shared, args.ops), args.ops)
        cleanup = RedisCache(state, cap_bytes=2**30, ttl_s=3600)
        await cleanup.clear()
        await cleanup.close()


if __name__ == "__main__":
    asyncio.run(main())
