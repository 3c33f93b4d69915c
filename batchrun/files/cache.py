"""The response cache's contract (#25): answers stored under a digest of what was asked.

The key is a digest the caller builds (batchrun.policy.cachekey: host, API-key fingerprint,
url, canonical body); the value is the answer's body as the server sent it (bytes of JSON).
Only successful answers are stored; the cache never sees a prompt or a key.

Implementations: the local SQLite file under $BATCHRUN_HOME (batchrun.files.cachedb) and the
shared one in Redis with --state redis:// (batchrun.state). `MemoryCache` is for tests and
for runs that must not touch the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CacheStats:
    where: str  # a path or a redis URL with its credentials masked
    entries: int
    bytes: int  # stored (compressed) size
    cap_bytes: int  # the size cap; least-recently-used answers go first past it


class ResponseCache(Protocol):
    async def get(self, key: bytes) -> bytes | None:
        """The stored answer body, or None. A hit counts as a use (least-recently-used)."""
        ...

    async def put(self, key: bytes, body: bytes) -> None:
        """Store (or overwrite: --cache-refresh) an answer. May buffer; `close` flushes."""
        ...

    async def close(self) -> None: ...


class MemoryCache:
    """A ResponseCache in a dict: tests, and the contract's reference behaviour."""

    def __init__(self) -> None:
        self.answers: dict[bytes, bytes] = {}

    async def get(self, key: bytes) -> bytes | None:
        return self.answers.get(key)

    async def put(self, key: bytes, body: bytes) -> None:
        self.answers[key] = body

    async def close(self) -> None:
        return None
