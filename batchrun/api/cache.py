"""`batchrun cache stats|clear`: the response caches a user has, the real one and the
--simulate one, here (SQLite under $BATCHRUN_HOME) or shared (Redis with --state)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from batchrun.api.blocking import block
from batchrun.backends.cacheflow import server_name
from batchrun.files.cache import CacheStats
from batchrun.files.cachedb import LocalCache, cache_cap_bytes, cache_path, peek_file
from batchrun.http.endpoint import Endpoint
from batchrun.policy.cachekey import key_digest
from batchrun.report.estimate_cache import CacheLookup
from batchrun.state import RedisCache, StateUrl, open_cache, peek_shared

KINDS = (("real", False), ("simulated", True))


def _local(home: Path, simulate: bool, notify: Callable[[str], None]) -> LocalCache | None:
    """The file's cache, or None when no job has made it (reading does not create it)."""
    path = cache_path(home, simulate)
    return LocalCache(path, cache_cap_bytes(), notify=notify) if path.exists() else None


def cache_stats(state: StateUrl | None, home: Path,
                notify: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Each cache's where, entries, bytes (compressed) and cap, as `cache stats --json`."""
    rows = []
    for kind, simulate in KINDS:
        if state is not None:
            stats = block(_shared_stats(state, simulate))
        elif (local := _local(home, simulate, notify)) is None:
            stats = CacheStats(str(cache_path(home, simulate)), 0, 0, cache_cap_bytes())
        else:
            try:
                stats = local.stats()
            finally:
                block(local.close())
        rows.append({"kind": kind, **asdict(stats)})
    return rows


def cache_clear(state: StateUrl | None, home: Path,
                notify: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Remove every answer of both caches; how many each held."""
    rows = []
    for kind, simulate in KINDS:
        if state is not None:
            where, removed = block(_shared_clear(state, simulate))
        else:
            where = str(cache_path(home, simulate))
            removed = 0
            if (local := _local(home, simulate, notify)) is not None:
                try:
                    removed = local.clear()
                finally:
                    block(local.close())
        rows.append({"kind": kind, "where": where, "removed": removed})
    return rows


def _shared(state: StateUrl, simulate: bool) -> RedisCache:
    cache = open_cache(state, Path(), simulate=simulate)
    assert isinstance(cache, RedisCache)  # a state URL is always Redis
    return cache


async def _shared_stats(state: StateUrl, simulate: bool) -> CacheStats:
    cache = _shared(state, simulate)
    try:
        return await cache.stats()
    finally:
        await cache.close()


async def _shared_clear(state: StateUrl, simulate: bool) -> tuple[str, int]:
    cache = _shared(state, simulate)
    try:
        return (await cache.stats()).where, await cache.clear()
    finally:
        await cache.close()


def estimate_lookup(state: StateUrl | None, endpoints: Sequence[Endpoint], home: Path,
                    from_file: bool = False) -> CacheLookup | str:
    """The cache `estimate` asks, read-only, for the keys and servers a job would send with
    (each endpoint of --endpoints, as the engine asks them all: every key of the file is the
    user's own); or why it cannot be asked. `from_file`: the endpoints of --endpoints, whose
    file names each key's variable."""
    askers = []
    for endpoint in endpoints:
        api_key = os.environ.get(endpoint.key_env, "").strip()
        if not api_key:
            hint = "" if from_file else " (or name its variable with --api-key-env)"
            return (f"${endpoint.key_env} is not set, and answers are kept per API key: set "
                    f"it{hint} to count them")
        askers.append((server_name(endpoint), key_digest(api_key)))
    if state is not None:
        url = state
        return CacheLookup(tuple(askers), state.shown,
                           lambda keys: peek_shared(url, False, keys))
    path = cache_path(home, False)
    return CacheLookup(tuple(askers), str(path), lambda keys: peek_file(path, keys))
