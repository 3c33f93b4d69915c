"""The response cache shared through Redis (`--state redis://`): hosts on one key pay once (#25).

Names, under the shared state's prefix (`batchrun:v2:`), `cache:` for real answers and
`cache-simulate:` for --simulate jobs:

    a:<key hex>  string  the answer, zlib-compressed; expires TTL after its last use
    lru          zset    key hex -> last use (the Redis server's ms): the least recent go first
    size         hash    key hex -> bytes it counts (answer + name), so eviction knows
    bytes        string  the sum of `size`: checked against the cap without a scan

The key hex is the cache key (policy/cachekey), itself a digest of the host, a salted digest of
the API key, the url and the body: nothing in Redis names a key or holds a prompt.

One script (FLUSH) writes what a process buffered (puts, uses, damaged entries), forgets what
the TTL expired, and evicts past the cap, atomically, so hosts writing at once keep `bytes`
true. Like the engine's local cache, puts and uses wait in memory and go at most every
FLUSH_S and on close; a get is one GET. It derives the names of the answers it evicts from
the prefix (they cannot be handed in as KEYS: which go is decided inside), so it needs a
single Redis, not a cluster, as the rest of the shared state does.

Every Redis failure is a SharedStateError (exit 5) naming the URL without its credentials.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from batchrun.errors import InputError, redact
from batchrun.files.cache import CacheStats, ResponseCache
from batchrun.files.cachedb import (
    FLUSH_S,
    LocalCache,
    cache_cap_bytes,
    cache_path,
    pack,
    unpack,
)
from batchrun.state._gate import SharedStateError
from batchrun.state._redis import PREFIX, TIMEOUT_S
from batchrun.state._url import StateUrl

TTL_VARIABLE = "BATCHRUN_CACHE_TTL_DAYS"
DEFAULT_TTL_DAYS = 30.0
CLEAR_BATCH = 1000

FLUSH = """
local p, ttl, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local nd, np, nt = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lru, sizes, total = p .. 'lru', p .. 'size', p .. 'bytes'
-- later than any use before: two writes within one millisecond keep their order
local last = redis.call('ZRANGE', lru, -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= now then now = tonumber(last[2]) + 1 end
local function forget(m)
  local size = tonumber(redis.call('HGET', sizes, m) or '0')
  redis.call('HDEL', sizes, m)
  redis.call('ZREM', lru, m)
  redis.call('DEL', p .. 'a:' .. m)
  redis.call('DECRBY', total, size)
end
-- answers the TTL removed: their sizes still count until forgotten here
for _, m in ipairs(redis.call('ZRANGEBYSCORE', lru, '-inf', now - ttl * 1000, 'LIMIT', 0, 1000)) do
  forget(m)
end
local i = 7
for _ = 1, nd do forget(ARGV[i]); i = i + 1 end
for _ = 1, np do
  local m, body = ARGV[i], ARGV[i + 1]
  i = i + 2
  local size = #body + #m
  local old = tonumber(redis.call('HGET', sizes, m) or '0')
  redis.call('SET', p .. 'a:' .. m, body, 'EX', ttl)
  redis.call('HSET', sizes, m, size)
  redis.call('ZADD', lru, now, m)
  redis.call('INCRBY', total, size - old)
end
for _ = 1, nt do
  local m = ARGV[i]
  i = i + 1
  if redis.call('EXPIRE', p .. 'a:' .. m, ttl) == 1 then redis.call('ZADD', lru, now, m) end
end
while tonumber(redis.call('GET', total) or '0') > cap do
  local oldest = redis.call('ZRANGE', lru, 0, 99)
  if #oldest == 0 then redis.call('SET', total, 0) break end
  for _, m in ipairs(oldest) do
    forget(m)
    if tonumber(redis.call('GET', total)) <= cap then break end
  end
end
for _, k in ipairs({lru, sizes, total}) do redis.call('EXPIRE', k, ttl) end
return 0
"""

# Removes up to ARGV[2] answers; how many it removed (0: the cache is empty).
CLEAR = """
local p, n = ARGV[1], tonumber(ARGV[2])
local members = redis.call('ZRANGE', p .. 'lru', 0, n - 1)
for _, m in ipairs(members) do
  redis.call('DEL', p .. 'a:' .. m)
  redis.call('HDEL', p .. 'size', m)
  redis.call('ZREM', p .. 'lru', m)
end
if #members == 0 then redis.call('DEL', p .. 'size', p .. 'bytes', p .. 'lru') end
return #members
"""


def cache_ttl_s(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """How long an unused answer stays in Redis: $BATCHRUN_CACHE_TTL_DAYS days, else 30."""
    given = environ.get(TTL_VARIABLE, "").strip()
    try:
        days = float(given) if given else DEFAULT_TTL_DAYS
    except ValueError:
        days = -1.0
    if not 0 < days <= 36_500:
        raise InputError(f"${TTL_VARIABLE} is {given!r}: give how many days an unused answer "
                         "stays in the shared cache, a number above 0 (e.g. 30), or unset it "
                         "for 30 days.")
    return max(1, round(days * 86400))


def cache_prefix(simulate: bool) -> str:
    return PREFIX + ("cache-simulate:" if simulate else "cache:")


def _client(url: StateUrl, sync: bool = False) -> Any:
    """A client as the shared state makes one: short timeouts, one quick retry of a dropped
    connection (see RedisState.connect)."""
    import redis
    import redis.asyncio
    import redis.exceptions
    from redis.backoff import NoBackoff

    module: Any = redis if sync else redis.asyncio
    retry_module: Any = redis.retry if sync else redis.asyncio.retry
    try:
        return module.from_url(
            url.url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
            retry=retry_module.Retry(NoBackoff(), 1,
                                     supported_errors=(redis.exceptions.ConnectionError,)))
    except (ValueError, TypeError) as exc:  # an ?option= redis-py does not take
        raise InputError(f"--state {url.shown} cannot be used: "
                         f"{redact(str(exc), *url.secrets)}") from None


def unavailable(url: StateUrl, exc: BaseException) -> SharedStateError:
    reason = redact(f"{type(exc).__name__}: {exc}", *url.secrets) if str(exc) else \
        type(exc).__name__
    return SharedStateError(
        f"The shared response cache at {url.shown} is unavailable ({reason}). Run again when "
        "Redis answers, or send with --no-cache; a job's results so far are kept.")


class RedisCache:
    """A ResponseCache in Redis. Made inside the running loop; one per process."""

    def __init__(self, url: StateUrl, *, simulate: bool = False, cap_bytes: int,
                 ttl_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.prefix = cache_prefix(simulate)
        self.cap_bytes = cap_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._client = _client(url)
        self._flush = self._client.register_script(FLUSH)
        self._clear = self._client.register_script(CLEAR)
        self._puts: dict[str, bytes] = {}
        self._used: set[str] = set()
        self._drop: set[str] = set()
        self._flushed_at = clock()

    async def _call(self, work: Any) -> Any:
        import redis.exceptions

        try:
            return await work
        except redis.exceptions.RedisError as exc:
            raise unavailable(self.url, exc) from None

    async def get(self, key: bytes) -> bytes | None:
        name = key.hex()
        packed = self._puts.get(name)
        if packed is None:
            packed = await self._call(self._client.get(self.prefix + "a:" + name))
            if packed is None:
                await self._maybe_flush()
                return None
        body = unpack(packed)
        if body is None:
            self._puts.pop(name, None)
            self._drop.add(name)
        else:
            self._used.add(name)
        await self._maybe_flush()
        return body

    async def put(self, key: bytes, body: bytes) -> None:
        name = key.hex()
        self._puts[name] = pack(body)
        self._used.discard(name)
        await self._maybe_flush()

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            await self._client.aclose()

    async def _maybe_flush(self) -> None:
        if self._clock() - self._flushed_at >= FLUSH_S:
            await self.flush()

    async def flush(self) -> None:
        self._flushed_at = self._clock()
        if not (self._puts or self._used or self._drop):
            return
        puts, used, drop = self._puts, self._used, self._drop
        self._puts, self._used, self._drop = {}, set(), set()
        args: list[Any] = [self.prefix, self.ttl_s, self.cap_bytes, len(drop), len(puts),
                           len(used), *drop]
        for name, packed in puts.items():
            args += [name, packed]
        await self._call(self._flush(args=[*args, *used]))

    async def stats(self) -> CacheStats:
        await self.flush()
        entries, total = await self._call(self._stats())
        return CacheStats(f"{self.url.shown} ({self.prefix}*)", entries, total, self.cap_bytes)

    async def _stats(self) -> tuple[int, int]:
        entries = await self._client.zcard(self.prefix + "lru")
        total = await self._client.get(self.prefix + "bytes")
        return int(entries), int(total or 0)

    async def clear(self) -> int:
        """Remove every answer; how many there were."""
        self._puts, self._used, self._drop = {}, set(), set()
        removed = 0
        while n := await self._call(self._clear(args=[self.prefix, CLEAR_BATCH])):
            removed += int(n)
        return removed


def peek_shared(url: StateUrl, simulate: bool, keys: Iterable[bytes]) -> dict[bytes, bytes]:
    """The stored answers of `keys`, without counting a use: `estimate`, which has no loop."""
    import redis.exceptions

    wanted = list(keys)
    if not wanted:
        return {}
    prefix = cache_prefix(simulate)
    client = _client(url, sync=True)
    try:
        values = client.mget([prefix + "a:" + k.hex() for k in wanted])
    except redis.exceptions.RedisError as exc:
        raise unavailable(url, exc) from None
    finally:
        client.close()
    found = {}
    for k, packed in zip(wanted, values, strict=True):
        if (body := unpack(packed)) is not None:
            found[k] = body
    return found


def open_cache(state: StateUrl | None, home: Path, *, simulate: bool,
               notify: Callable[[str], None] = lambda _: None) -> ResponseCache:
    """The response cache a job uses: shared in Redis with --state redis://, else the SQLite
    file under `home` ($BATCHRUN_HOME); --simulate jobs have one of their own (the simulator's
    answers are not the API's). Call it inside the running loop; close() it when the job ends.
    `notify` hears once of a damaged cache file moved aside. The size cap is
    $BATCHRUN_CACHE_MAX_MB (1 GiB), Redis's TTL $BATCHRUN_CACHE_TTL_DAYS (30): a bad value is
    an InputError (exit 2), a file or Redis that cannot be used a StateError (exit 5)."""
    cap = cache_cap_bytes()
    if state is not None:
        return RedisCache(state, simulate=simulate, cap_bytes=cap, ttl_s=cache_ttl_s())
    return LocalCache(cache_path(home, simulate), cap, notify=notify)
