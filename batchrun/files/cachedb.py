"""The response cache on this host: one SQLite file under $BATCHRUN_HOME (#25).

`cache.sqlite3` (and `cache-simulate.sqlite3` for --simulate jobs, whose answers are the
simulator's). One `WITHOUT ROWID` table: the 32-byte key, the answer zlib-compressed, its size
and when it was last used. A byte count kept by triggers in the same transactions lets the cap
be checked without summing a million rows; past the cap the least recently used answers go.

The engine asks for every line and stores every success, so the hot path touches SQLite only
to read: puts, last-used times and deletions wait in memory and are written in one transaction
at most every FLUSH_S and on close. A kill -9 loses at most those (the output is the
checkpoint; they are sent again); WAL keeps every written transaction whole, and an answer is
given only when it decompresses to JSON: a damaged entry is a miss, never a wrong answer.

A file SQLite cannot read (not a database, malformed, cut short) is moved aside as
`cache.sqlite3.damaged-<UTC stamp>` and an empty cache started, said once through `notify`.
The disk refusing a write (locked past the busy timeout, read-only, full) is a StateError:
the job stops with its checkpoint kept (exit 5).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import orjson

from batchrun.errors import InputError, StateError
from batchrun.files.cache import CacheStats

CACHE_FILE, SIMULATE_FILE = "cache.sqlite3", "cache-simulate.sqlite3"
CAP_VARIABLE = "BATCHRUN_CACHE_MAX_MB"
DEFAULT_CAP_BYTES = 1024 * 1024 * 1024
BUSY_TIMEOUT_S = 30.0
FLUSH_S = 0.25
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key BLOB PRIMARY KEY,
    body BLOB NOT NULL,  -- zlib
    size INTEGER NOT NULL,  -- len(body) plus the key: what the cap counts
    used INTEGER NOT NULL  -- last use, ms since the epoch: the least recent go first
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS answers_used ON answers (used);
CREATE TABLE IF NOT EXISTS total (one INTEGER PRIMARY KEY CHECK (one = 1), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (1, 0);
CREATE TRIGGER IF NOT EXISTS answers_in AFTER INSERT ON answers
    BEGIN UPDATE total SET bytes = bytes + new.size; END;
CREATE TRIGGER IF NOT EXISTS answers_out AFTER DELETE ON answers
    BEGIN UPDATE total SET bytes = bytes - old.size; END;
CREATE TRIGGER IF NOT EXISTS answers_resized AFTER UPDATE OF size ON answers
    BEGIN UPDATE total SET bytes = bytes - old.size + new.size; END;
"""
Notify = Callable[[str], None]


def cache_cap_bytes(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The size cap: $BATCHRUN_CACHE_MAX_MB megabytes (MiB), else 1 GiB."""
    given = environ.get(CAP_VARIABLE, "").strip()
    if not given:
        return DEFAULT_CAP_BYTES
    try:
        mb = float(given)
    except ValueError:
        mb = -1.0
    if not 0 < mb < 1e9:
        raise InputError(f"${CAP_VARIABLE} is {given!r}: give the response cache's size cap in "
                         "megabytes, a number above 0 (e.g. 1024), or unset it for 1 GiB.")
    return int(mb * 1024 * 1024)


def cache_path(home: Path, simulate: bool) -> Path:
    return home / (SIMULATE_FILE if simulate else CACHE_FILE)


def pack(body: bytes) -> bytes:
    return zlib.compress(body, 1)  # level 1: most of the size for a fraction of the time


def unpack(stored: object) -> bytes | None:
    """The answer as stored, or None when it is not one (cut short, altered, not JSON)."""
    if not isinstance(stored, bytes):
        return None
    try:
        body = zlib.decompress(stored)
        orjson.loads(body)
    except (zlib.error, orjson.JSONDecodeError):
        return None
    return body


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LocalCache:
    """A ResponseCache in one SQLite file. One per process; not thread-safe."""

    def __init__(self, path: Path, cap_bytes: int = DEFAULT_CAP_BYTES, *,
                 notify: Notify = lambda _: None,
                 clock: Callable[[], float] = time.monotonic,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.path = path
        self.cap_bytes = cap_bytes
        self._notify = notify
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._puts: dict[bytes, bytes] = {}  # key -> packed body, not written yet
        self._used: set[bytes] = set()  # keys read since the last write
        self._drop: set[bytes] = set()  # entries found damaged
        self._flushed_at = clock()
        self._stamp = 0
        self._db = self._open()

    # -- opening, and a file that is not a cache ------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it: its -wal and -shm take the same mode.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as exc:
            raise StateError(
                f"cannot open the response cache {self.path}: {exc.strerror}. Make "
                "$BATCHRUN_HOME writable or point it elsewhere, or run with --no-cache."
            ) from None
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from None
        except sqlite3.DatabaseError as exc:  # not a database, or a malformed one
            return self._start_again(exc)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        try:
            # Switching a new file to WAL needs an exclusive lock that SQLite does not always
            # wait for under its busy timeout: two processes starting together can see "locked".
            deadline = time.monotonic() + self._busy_timeout_s
            while True:
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.execute("PRAGMA synchronous=NORMAL")
                    db.executescript(_SCHEMA)
                    db.execute("SELECT bytes FROM total").fetchone()
                    return db
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        except BaseException:
            db.close()
            raise

    def _start_again(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move the damaged file (and its -wal/-shm, which belong to it) aside; a new one."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = self.path.with_name(self.path.name + suffix)
                if source.exists():
                    source.replace(aside.with_name(aside.name + suffix))
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            db = self._connect()
        except (OSError, sqlite3.Error) as again:
            raise StateError(
                f"the response cache {self.path} is damaged ({exc}) and could not be replaced "
                f"({again}). Move it aside yourself, or run with --no-cache."
            ) from None
        self._notify(f"The response cache {self.path} was damaged ({exc}); it was moved aside "
                     f"to {aside} and an empty cache started: answers stored before are sent "
                     "again.")
        return db

    def _busy(self, exc: sqlite3.Error) -> StateError:
        return StateError(
            f"the response cache {self.path} is locked or unusable ({exc}): another batchrun "
            f"may hold it longer than {self._busy_timeout_s:.0f}s, or the disk refuses it. "
            "Results so far are kept; run the same command again (or with --no-cache)."
        )

    def _damaged_now(self, exc: sqlite3.DatabaseError) -> None:
        """Damage found after opening (a file cut short shows only when its pages are read):
        what is buffered is kept, the file starts again."""
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._used.clear()
        self._drop.clear()
        self._db = self._start_again(exc)

    # -- the ResponseCache protocol -------------------------------------------------------

    async def get(self, key: bytes) -> bytes | None:
        body = self._read(key, touch=True)
        self._maybe_flush()
        return body

    async def put(self, key: bytes, body: bytes) -> None:
        self._puts[key] = pack(body)
        self._used.discard(key)
        self._maybe_flush()

    async def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def peek(self, key: bytes) -> bytes | None:
        """The stored answer, without counting a use (`estimate` asks what the cache holds)."""
        return self._read(key, touch=False)

    # -- reading and writing --------------------------------------------------------------

    def _read(self, key: bytes, touch: bool) -> bytes | None:
        packed: object = self._puts.get(key)
        if packed is None:
            row = self._select(key)
            if row is None:
                return None
            packed = row[0]
        body = unpack(packed)
        if body is None:
            self._puts.pop(key, None)
            self._drop.add(key)
        elif touch:
            self._used.add(key)
        return body

    def _select(self, key: bytes) -> tuple[object] | None:
        try:
            row: tuple[object] | None = self._db.execute(
                "SELECT body FROM answers WHERE key=?", (key,)).fetchone()
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from None
        except sqlite3.DatabaseError as exc:
            self._damaged_now(exc)
            return None
        return row

    def _maybe_flush(self) -> None:
        if (self._puts or self._used or self._drop) and \
                self._clock() - self._flushed_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write what waits in one transaction, then evict past the cap."""
        self._flushed_at = self._clock()
        if not (self._puts or self._used or self._drop):
            return
        puts, used, drop = self._puts, self._used, self._drop
        try:
            self._write(puts, used, drop)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise self._busy(exc) from None
            self._damaged_now(exc)
            self._write(puts, set(), set())
        self._puts, self._used, self._drop = {}, set(), set()

    def _write(self, puts: dict[bytes, bytes], used: set[bytes], drop: set[bytes]) -> None:
        # Strictly later than this process's last write: uses within one millisecond keep order.
        now = self._stamp = max(_now_ms(), self._stamp + 1)
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from None
        try:
            db.executemany("DELETE FROM answers WHERE key=?", ((k,) for k in drop))
            db.executemany(
                "INSERT INTO answers VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "body=excluded.body, size=excluded.size, used=excluded.used",
                ((k, b, len(b) + len(k), now) for k, b in puts.items()))
            db.executemany("UPDATE answers SET used=? WHERE key=?", ((now, k) for k in used))
            self._evict()
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise

    def _evict(self) -> None:
        excess = self._total() - self.cap_bytes
        if excess <= 0:
            return
        oldest: list[tuple[bytes]] = []
        for key, size in self._db.execute("SELECT key, size FROM answers ORDER BY used"):
            oldest.append((key,))
            excess -= size
            if excess <= 0:
                break
        self._db.executemany("DELETE FROM answers WHERE key=?", oldest)

    def _total(self) -> int:
        row = self._db.execute("SELECT bytes FROM total").fetchone()
        return int(row[0]) if row else 0

    # -- `batchrun cache` -----------------------------------------------------------------

    def stats(self) -> CacheStats:
        self.flush()
        try:
            entries = int(self._db.execute("SELECT count(*) FROM answers").fetchone()[0])
            return CacheStats(str(self.path), entries, self._total(), self.cap_bytes)
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from None

    def clear(self) -> int:
        """Remove every answer; how many there were."""
        self._puts, self._used, self._drop = {}, set(), set()
        try:
            with contextlib.closing(self._db.execute("DELETE FROM answers")) as cursor:
                removed = cursor.rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from None
        return removed



def peek_file(path: Path, keys: list[bytes]) -> dict[bytes, bytes]:
    """The answers stored under `keys`, read without writing anything (`estimate`): no file
    created, no use counted, a damaged file or entry read as holding nothing."""
    if not keys or not path.exists():
        return {}
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True,
                                                timeout=BUSY_TIMEOUT_S)) as db:
            found = {}
            for key in keys:
                row = db.execute("SELECT body FROM answers WHERE key=?", (key,)).fetchone()
                if row is not None and (body := unpack(row[0])) is not None:
                    found[key] = body
            return found
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise StateError(f"cannot read the response cache {path} ({exc}). Run the same "
                         "command again.") from None
    except sqlite3.DatabaseError:
        return {}  # a job moves it aside and starts again; until then it answers nothing
