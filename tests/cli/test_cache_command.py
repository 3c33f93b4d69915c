"""`batchrun cache stats|clear` as a user runs it: the lines printed, --json, exit codes."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import orjson

from batchrun.files.cachedb import LocalCache
from batchrun.state import RedisCache, parse_state_url
from tests.helpers.cli import run_cli
from tests.helpers.redis_server import RedisServer

PASSWORD = "qs-Secret-PW-0815"


def key(n: int) -> bytes:
    return hashlib.sha256(f"request {n}".encode()).digest()


def fill(path: Path, n: int) -> None:
    async def put() -> None:
        cache = LocalCache(path)
        for i in range(n):
            await cache.put(key(i), orjson.dumps({"answer": i}))
        await cache.close()

    asyncio.run(put())


def home(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["BATCHRUN_HOME"])


def test_stats_before_any_job_shows_both_caches_empty_and_creates_nothing(
        isolated_env: dict[str, str]) -> None:
    run = run_cli("cache", "stats")
    assert run.code == 0, run.stderr
    state = home(isolated_env)
    assert run.stdout.splitlines() == [
        f"real       {state / 'cache.sqlite3'}: 0 answers, 0 MB of a 1,024 MB cap",
        f"simulated  {state / 'cache-simulate.sqlite3'}: 0 answers, 0 MB of a 1,024 MB cap",
    ]
    assert not (state / "cache.sqlite3").exists()


def test_stats_counts_the_answers_of_each_cache(isolated_env: dict[str, str]) -> None:
    state = home(isolated_env)
    fill(state / "cache.sqlite3", 120)
    fill(state / "cache-simulate.sqlite3", 1)
    run = run_cli("cache", "stats", env={"BATCHRUN_CACHE_MAX_MB": "5"})
    assert run.code == 0, run.stderr
    real, simulated = run.stdout.splitlines()
    assert real.startswith(f"real       {state / 'cache.sqlite3'}: 120 answers, ")
    assert real.endswith(" KB of a 5.0 MB cap")
    assert simulated.startswith(f"simulated  {state / 'cache-simulate.sqlite3'}: 1 answer, ")


def test_stats_json(isolated_env: dict[str, str]) -> None:
    state = home(isolated_env)
    fill(state / "cache.sqlite3", 3)
    run = run_cli("cache", "stats", "--json")
    assert run.code == 0
    caches = orjson.loads(run.stdout)["caches"]
    assert [(c["kind"], c["where"], c["entries"], c["cap_bytes"]) for c in caches] == [
        ("real", str(state / "cache.sqlite3"), 3, 1024 ** 3),
        ("simulated", str(state / "cache-simulate.sqlite3"), 0, 1024 ** 3)]
    assert caches[0]["bytes"] > 0


def test_clear_says_how_many_answers_it_removed_and_they_are_gone(
        isolated_env: dict[str, str]) -> None:
    state = home(isolated_env)
    fill(state / "cache.sqlite3", 7)
    run = run_cli("cache", "clear")
    assert run.code == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"real       removed 7 answers from {state / 'cache.sqlite3'}",
        f"simulated  removed 0 answers from {state / 'cache-simulate.sqlite3'}",
    ]
    assert "real       " + f"{state / 'cache.sqlite3'}: 0 answers" in run_cli(
        "cache", "stats").stdout


def test_a_damaged_cache_file_is_said_once_and_started_again(
        isolated_env: dict[str, str]) -> None:
    state = home(isolated_env)
    state.mkdir(parents=True)
    (state / "cache.sqlite3").write_bytes(b"not a database" * 100)
    run = run_cli("cache", "stats")
    assert run.code == 0
    assert run.stderr.count("moved aside") == 1
    assert f"{state / 'cache.sqlite3'}: 0 answers" in run.stdout


def test_a_bad_cap_is_a_usage_error(isolated_env: dict[str, str]) -> None:
    run = run_cli("cache", "stats", env={"BATCHRUN_CACHE_MAX_MB": "lots"})
    assert run.code == 2
    assert "$BATCHRUN_CACHE_MAX_MB is 'lots'" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_shared_cache_in_redis(redis_url: str) -> None:
    async def put() -> None:
        state = parse_state_url(redis_url)
        assert state is not None
        cache = RedisCache(state, cap_bytes=1 << 20, ttl_s=3600)
        for i in range(4):
            await cache.put(key(i), orjson.dumps({"answer": i}))
        await cache.close()

    asyncio.run(put())
    run = run_cli("cache", "stats", "--state", redis_url)
    assert run.code == 0, run.stderr
    real, simulated = run.stdout.splitlines()
    assert real.startswith(f"real       {redis_url} (batchrun:v2:cache:*): 4 answers, ")
    assert real.endswith("of a 1,024 MB cap")
    assert "(batchrun:v2:cache-simulate:*): 0 answers" in simulated
    cleared = run_cli("cache", "clear", "--state", redis_url)
    assert cleared.code == 0
    assert cleared.stdout.splitlines()[0] == (
        f"real       removed 4 answers from {redis_url} (batchrun:v2:cache:*)")
    assert ": 0 answers" in run_cli("cache", "stats", "--state", redis_url).stdout


def test_a_redis_that_does_not_answer_exits_5_without_its_password(
        redis_factory: type[RedisServer]) -> None:
    server = redis_factory(password=PASSWORD).start()
    url = server.url
    server.stop()
    for command in ("stats", "clear"):
        run = run_cli("cache", command, "--state", url)
        assert run.code == 5
        assert "The shared response cache at redis://127.0.0.1:" in run.stderr
        assert PASSWORD not in run.stdout + run.stderr


def test_help_names_both_commands() -> None:
    run = run_cli("cache", "--help")
    assert run.code == 0
    assert "stats" in run.stdout and "clear" in run.stdout
    assert "answers stored under a digest of what was asked" in " ".join(run.stdout.split())
