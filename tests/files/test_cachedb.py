"""The local response cache (batchrun.files.cachedb) on real files: what it answers, its
cap, its modes, and what it does with a file that is not a cache."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

from batchrun.errors import InputError, StateError
from batchrun.files.cachedb import DEFAULT_CAP_BYTES, LocalCache, cache_cap_bytes, pack


def key(n: int) -> bytes:
    return hashlib.sha256(f"request {n}".encode()).digest()


def answer(n: int, pad: int = 0) -> bytes:
    return orjson.dumps({"id": f"chatcmpl-{n}", "choices": [{"message": {
        "content": f"answer {n} " + "x" * pad}}], "usage": {"prompt_tokens": 3,
                                                           "completion_tokens": 2}})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_an_answer_put_is_got_back_in_this_process_and_after_reopening(
        tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = LocalCache(path)
    assert await cache.get(key(1)) is None
    await cache.put(key(1), answer(1))
    assert await cache.get(key(1)) == answer(1)  # buffered, not yet written
    await cache.close()
    again = LocalCache(path)
    assert await again.get(key(1)) == answer(1)
    assert await again.get(key(2)) is None
    await again.close()


async def test_a_put_overwrites_the_stored_answer(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c.sqlite3")
    await cache.put(key(1), answer(1))
    cache.flush()
    await cache.put(key(1), answer(2))
    await cache.close()
    again = LocalCache(tmp_path / "c.sqlite3")
    assert await again.get(key(1)) == answer(2)
    assert again.stats().entries == 1
    await again.close()


async def test_puts_are_written_together_once_the_flush_interval_passed(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "c.sqlite3"
    cache = LocalCache(path, clock=clock)
    other = LocalCache(path)  # another process's view of the file
    await cache.put(key(1), answer(1))
    await cache.put(key(2), answer(2))
    assert other.peek(key(1)) is None
    clock.now += 0.3
    await cache.put(key(3), answer(3))
    assert [other.peek(key(n)) for n in (1, 2, 3)] == [answer(1), answer(2), answer(3)]
    await cache.close()
    await other.close()


async def test_answers_are_stored_compressed(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "c.sqlite3")
    await cache.put(key(1), answer(1, pad=10_000))
    await cache.close()
    with sqlite3.connect(tmp_path / "c.sqlite3") as db:
        (stored,) = db.execute("SELECT body FROM answers").fetchone()
    assert len(stored) < 500 < len(answer(1, pad=10_000))
    assert b"answer 1" not in stored


async def test_past_the_cap_the_least_recently_used_answers_go(tmp_path: Path) -> None:
    clock = Clock()
    bodies = {n: orjson.dumps({"n": n, "text": "".join(
        hashlib.sha512(f"{n}-{i}".encode()).hexdigest() for i in range(16))}) for n in range(7)}
    size = max(len(pack(b)) for b in bodies.values()) + len(key(0))  # what the cap counts
    cache = LocalCache(tmp_path / "c.sqlite3", cap_bytes=5 * size, clock=clock)
    for n in range(4):
        await cache.put(key(n), bodies[n])
        clock.now += 1
    assert await cache.get(key(0)) == bodies[0]  # used again: now the most recent
    clock.now += 1
    for n in range(4, 7):
        await cache.put(key(n), bodies[n])
        clock.now += 1
    await cache.close()
    again = LocalCache(tmp_path / "c.sqlite3", cap_bytes=5 * size)
    kept = {n for n in range(7) if again.peek(key(n)) is not None}
    stats = again.stats()
    await again.close()
    assert stats.bytes <= 5 * size
    assert 0 in kept and 1 not in kept and {4, 5, 6} <= kept


async def test_the_file_and_its_wal_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "cache.sqlite3"
    cache = LocalCache(path)
    await cache.put(key(1), answer(1))
    cache.flush()
    for name in ("cache.sqlite3", "cache.sqlite3-wal", "cache.sqlite3-shm"):
        assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    await cache.close()


async def test_a_file_that_is_not_a_database_is_moved_aside_and_said_once(
        tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    path.write_bytes(b"this is not a database\n" * 200)
    notes: list[str] = []
    cache = LocalCache(path, notify=notes.append)
    assert await cache.get(key(1)) is None
    await cache.put(key(1), answer(1))
    await cache.close()
    aside = [tmp_path / n for n in os.listdir(tmp_path) if n.startswith("cache.sqlite3.damaged-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert len(notes) == 1
    assert str(path) in notes[0] and str(aside[0]) in notes[0] and "moved aside" in notes[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = LocalCache(path, notify=notes.append)
    assert await again.get(key(1)) == answer(1)
    await again.close()
    assert len(notes) == 1


async def test_a_file_cut_short_answers_nothing_wrong_and_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = LocalCache(path)
    for n in range(300):
        await cache.put(key(n), orjson.dumps({"n": n, "pad": hashlib.sha512(
            str(n).encode()).hexdigest() * 8}))
    await cache.close()
    with sqlite3.connect(path) as db:  # everything in the main file, no -wal beside it
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    notes: list[str] = []
    cut = LocalCache(path, notify=notes.append)
    for n in range(300):
        got = await cut.get(key(n))
        assert got is None or orjson.loads(got)["n"] == n
    await cut.put(key(1000), answer(1000))
    await cut.close()
    assert len(notes) == 1 and "moved aside" in notes[0]
    again = LocalCache(path)
    assert await again.get(key(1000)) == answer(1000)
    await again.close()


async def test_an_entry_that_does_not_decompress_is_a_miss_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = LocalCache(path)
    await cache.put(key(1), answer(1))
    await cache.put(key(2), answer(2))
    await cache.close()
    with sqlite3.connect(path) as db:
        (body,) = db.execute("SELECT body FROM answers WHERE key=?", (key(1),)).fetchone()
        db.execute("UPDATE answers SET body=? WHERE key=?", (body[:-6] + b"\0" * 6, key(1)))
        db.execute("UPDATE answers SET body=? WHERE key=?", (b"junk", key(2)))
    again = LocalCache(path)
    assert await again.get(key(1)) is None
    assert await again.get(key(2)) is None
    await again.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM answers").fetchone() == (0,)


async def test_a_directory_that_cannot_hold_the_cache_is_a_state_error(tmp_path: Path) -> None:
    # A file where the directory should be: refused for root as for anyone (unlike chmod 000).
    (tmp_path / "state").write_text("a file")
    with pytest.raises(StateError) as caught:
        LocalCache(tmp_path / "state" / "cache.sqlite3")
    assert caught.value.exit_code == 5
    assert str(tmp_path / "state" / "cache.sqlite3") in caught.value.message
    assert "--no-cache" in caught.value.message


async def test_a_cache_locked_past_the_busy_timeout_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    cache = LocalCache(path, busy_timeout_s=0.05)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        await cache.put(key(1), answer(1))
        with pytest.raises(StateError) as caught:
            cache.flush()
        assert caught.value.exit_code == 5
        assert "locked" in caught.value.message and str(path) in caught.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await cache.close()  # what waited is written once the lock is gone
    again = LocalCache(path)
    assert again.peek(key(1)) == answer(1)
    await again.close()


def test_the_cap_comes_from_the_environment_in_megabytes() -> None:
    assert cache_cap_bytes({}) == DEFAULT_CAP_BYTES == 1024 ** 3
    assert cache_cap_bytes({"BATCHRUN_CACHE_MAX_MB": "2"}) == 2 * 1024 * 1024
    with pytest.raises(InputError, match="BATCHRUN_CACHE_MAX_MB"):
        cache_cap_bytes({"BATCHRUN_CACHE_MAX_MB": "lots"})
    with pytest.raises(InputError, match="above 0"):
        cache_cap_bytes({"BATCHRUN_CACHE_MAX_MB": "0"})
