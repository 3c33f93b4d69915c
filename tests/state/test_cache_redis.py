"""The response cache shared through a real redis-server: hosts share answers, every answer
has a TTL, the cap evicts the least recently used, and a Redis that does not answer is a
SharedStateError (exit 5), its credentials never shown."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
import redis

from batchrun.files.cachedb import LocalCache, pack
from batchrun.state import RedisCache, SharedStateError, open_cache, parse_state_url
from batchrun.state._cache_redis import cache_ttl_s
from batchrun.state._url import StateUrl
from tests.helpers.redis_server import RedisServer

DAY = 86400
PASSWORD = "qs-Secret-PW-0815"


def key(n: int) -> bytes:
    return hashlib.sha256(f"request {n}".encode()).digest()


def answer(n: int) -> bytes:
    return orjson.dumps({"n": n, "text": "".join(
        hashlib.sha512(f"{n}-{i}".encode()).hexdigest() for i in range(8))})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def shared(url: str, *, simulate: bool = False, cap: int = 1 << 30, ttl: int = 30 * DAY,
           clock: Clock | None = None) -> RedisCache:
    return RedisCache(StateUrl(url), simulate=simulate, cap_bytes=cap, ttl_s=ttl,
                      clock=clock or Clock())


async def test_an_answer_one_host_stored_is_found_by_another(redis_url: str) -> None:
    first, second = shared(redis_url), shared(redis_url)
    await first.put(key(1), answer(1))
    assert await second.get(key(1)) is None  # buffered on the first host
    await first.close()
    assert await second.get(key(1)) == answer(1)
    assert await second.get(key(2)) is None
    await second.close()


async def test_simulated_answers_are_kept_apart_from_real_ones(redis_url: str) -> None:
    real, simulated = shared(redis_url), shared(redis_url, simulate=True)
    await simulated.put(key(1), answer(1))
    await simulated.close()
    assert await real.get(key(1)) is None
    await real.close()


async def test_every_answer_has_the_ttl_and_a_use_renews_it(redis_url: str) -> None:
    cache = shared(redis_url, ttl=7 * DAY)
    await cache.put(key(1), answer(1))
    await cache.close()
    client = redis.Redis.from_url(redis_url)
    name = f"batchrun:v2:cache:a:{key(1).hex()}"
    assert 7 * DAY - 5 <= client.ttl(name) <= 7 * DAY
    assert [k.decode() for k in client.keys("*")] and all(
        client.ttl(k) > 0 for k in client.keys("*"))
    client.expire(name, 100)
    again = shared(redis_url, ttl=7 * DAY)
    assert await again.get(key(1)) == answer(1)
    await again.close()
    assert client.ttl(name) > 7 * DAY - 5
    client.close()


async def test_the_ttl_comes_from_the_environment_in_days() -> None:
    assert cache_ttl_s({}) == 30 * DAY
    assert cache_ttl_s({"BATCHRUN_CACHE_TTL_DAYS": "2"}) == 2 * DAY
    from batchrun.errors import InputError

    with pytest.raises(InputError, match="BATCHRUN_CACHE_TTL_DAYS"):
        cache_ttl_s({"BATCHRUN_CACHE_TTL_DAYS": "forever"})


async def test_past_the_cap_the_least_recently_used_answers_go(redis_url: str) -> None:
    size = max(len(pack(answer(n))) for n in range(8)) + 64  # what the cap counts
    clock = Clock()
    cache = shared(redis_url, cap=5 * size, clock=clock)
    for n in range(4):
        await cache.put(key(n), answer(n))
        clock.now += 1
        await cache.flush()
    assert await cache.get(key(0)) == answer(0)  # used again: now the most recent
    await cache.flush()
    for n in range(4, 7):
        await cache.put(key(n), answer(n))
        await cache.flush()
    stats = await cache.stats()
    await cache.close()
    assert stats.bytes <= 5 * size and stats.entries == 5
    other = shared(redis_url)
    kept = {n for n in range(7) if await other.get(key(n)) is not None}
    await other.close()
    assert kept == {0, 3, 4, 5, 6}


async def test_two_hosts_writing_at_once_keep_the_byte_count_true(redis_url: str) -> None:
    hosts = [shared(redis_url), shared(redis_url)]
    for n in range(200):
        await hosts[n % 2].put(key(n % 150), answer(n % 150))  # some stored by both
    for host in hosts:
        await host.close()
    client = redis.Redis.from_url(redis_url)
    sizes = client.hgetall("batchrun:v2:cache:size")
    assert len(sizes) == 150
    assert int(client.get("batchrun:v2:cache:bytes") or 0) == sum(int(v) for v in
                                                                  sizes.values())
    client.close()


async def test_a_stored_entry_that_is_not_an_answer_is_a_miss(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set(f"batchrun:v2:cache:a:{key(1).hex()}", b"not zlib")
    client.close()
    cache = shared(redis_url)
    assert await cache.get(key(1)) is None
    await cache.close()


async def test_a_redis_that_is_down_is_a_shared_state_error_without_its_password(
        redis_factory: type[RedisServer]) -> None:
    server = redis_factory(password=PASSWORD).start()
    url = server.url
    server.stop()
    cache = shared(url)
    with pytest.raises(SharedStateError) as caught:
        await cache.get(key(1))
    await cache.close()
    assert caught.value.exit_code == 5
    assert PASSWORD not in caught.value.message
    assert "127.0.0.1" in caught.value.message and "--no-cache" in caught.value.message


async def test_open_cache_picks_redis_for_a_redis_state_and_the_file_otherwise(
        redis_url: str, tmp_path: Path) -> None:
    state = parse_state_url(redis_url)
    shared_one = open_cache(state, tmp_path, simulate=False)
    local = open_cache(None, tmp_path, simulate=False)
    simulated = open_cache(None, tmp_path, simulate=True)
    assert isinstance(shared_one, RedisCache) and isinstance(local, LocalCache)
    assert isinstance(simulated, LocalCache)
    assert local.path == tmp_path / "cache.sqlite3"
    assert simulated.path == tmp_path / "cache-simulate.sqlite3"
    for cache in (shared_one, local, simulated):
        await cache.close()
