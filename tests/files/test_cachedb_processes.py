"""The local response cache between real processes: two filling one file at once, and one
killed with SIGKILL in the middle of its writes."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson

from batchrun.files.cachedb import LocalCache
from tests.helpers.cli import REPO, wait_for

# A process that stores answer(n) under key(n) for n in [start, stop) (stop -1: forever), as
# the engine does: a put per answer, written every 0.25 s, flushed on close.
FILLER = """
import asyncio, hashlib, sys
from pathlib import Path
import orjson
from batchrun.files.cachedb import LocalCache

def key(n): return hashlib.sha256(f"request {n}".encode()).digest()
def answer(n): return orjson.dumps({"n": n, "content": "answer %d " % n + "y" * (n % 300)})

async def main(path, start, stop):
    cache = LocalCache(Path(path))
    n = start
    while n != stop:
        await cache.put(key(n), answer(n))
        got = await cache.get(key(n - 7))  # reads beside the writes, as the engine's lookups
        assert got is None or orjson.loads(got)["n"] == n - 7
        n += 1
    await cache.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def key(n: int) -> bytes:
    return hashlib.sha256(f"request {n}".encode()).digest()


def start(path: Path, first: int, stop: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", FILLER, str(path), str(first), str(stop)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                            stderr=subprocess.PIPE)


def rows(path: Path) -> int:
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM answers").fetchone()[0])
    except sqlite3.Error:
        return 0


async def assert_right_answers(path: Path, numbers: range) -> int:
    cache = LocalCache(path)
    found = 0
    for n in numbers:
        got = await cache.get(key(n))
        if got is not None:
            assert orjson.loads(got)["n"] == n
            found += 1
    await cache.close()
    return found


async def test_two_processes_fill_one_cache_at_once_and_every_answer_is_readable(
        tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    # Overlapping ranges: both store 3,000-3,999, the same answer under the same key.
    first, second = start(path, 0, 4000), start(path, 3000, 7000)
    for proc in (first, second):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert await assert_right_answers(path, range(7000)) == 7000
    assert rows(path) == 7000


async def test_a_process_killed_mid_put_leaves_a_cache_that_opens_with_no_wrong_answer(
        tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    proc = start(path, 0, -1)
    try:
        wait_for(lambda: rows(path) >= 2000)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    found = await assert_right_answers(path, range(rows(path) + 10_000))
    assert found >= 2000
    cache = LocalCache(path)  # and it takes new answers
    await cache.put(key(-1), b'{"n": -1}')
    await cache.close()
    assert await assert_right_answers(path, range(-1, 0)) == 1
