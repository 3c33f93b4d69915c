"""`estimate` and the response cache: how many lines it would answer, what that saves at list
prices (the stored answers' own usage), how many distinct requests are left to send; read-only."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from batchrun.files.cachedb import LocalCache
from batchrun.files.jobs import read_jobs
from batchrun.policy.cachekey import cache_key, key_digest
from batchrun.policy.request import Request
from batchrun.state import RedisCache, parse_state_url
from tests.helpers.cli import FAKE_KEY, estimate, run_cli
from tests.helpers.jsonl import prompts, write_jsonl

ENV = {"OPENAI_API_KEY": FAKE_KEY}
# gpt-4o-mini at OpenAI's list prices ($0.15 / $0.60 per 1M tokens in / out): an answer of
# 1,000 prompt and 500 completion tokens was billed $0.00045.
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
BILLED = 0.00045


def jobs_file(tmp_path: Path) -> Path:
    """10 lines: 8 distinct questions, q8 and q9 repeat q0 and q1."""
    lines = prompts(8)
    lines += [{**lines[0], "id": "q8"}, {**lines[1], "id": "q9"}]
    return write_jsonl(tmp_path / "jobs.jsonl", lines)


def requests(path: Path) -> list[Request]:
    return [r for r in read_jobs(path, "gpt-4o-mini") if isinstance(r, Request)]


def answer(request: Request) -> bytes:
    return orjson.dumps({"object": "chat.completion", "model": request.model,
                         "choices": [{"message": {"content": "stored"}}], "usage": USAGE})


# The server as the cache names it (backends/cacheflow.server_name): host and base URL path.
def key_of(request: Request, host: str = "api.openai.com/v1", api_key: str = FAKE_KEY,
           ) -> bytes:
    return cache_key(host, key_digest(api_key), request.url, request.body)


def store(path: Path, answers: dict[bytes, bytes]) -> None:
    async def put() -> None:
        cache = LocalCache(path)
        for key, body in answers.items():
            await cache.put(key, body)
        await cache.close()

    asyncio.run(put())


def cache_file(isolated_env: dict[str, str]) -> Path:
    return Path(isolated_env["BATCHRUN_HOME"]) / "cache.sqlite3"


def test_lines_the_cache_holds_are_counted_with_what_they_save(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    jobs = jobs_file(tmp_path)
    reqs = requests(jobs)
    # q0 (and so its copy q8) and q2 answered before, under this key at this host
    store(cache_file(isolated_env), {key_of(reqs[i]): answer(reqs[i]) for i in (0, 2)})
    result = estimate(str(jobs), env=ENV)
    assert result["cache"] == {
        "looked_up": True, "where": str(cache_file(isolated_env)), "lines": 10,
        "answered": 3, "saved_usd": round(3 * BILLED, 6), "unpriced_models": [],
        "requests_sent": 6, "identical_lines": 1}
    run = run_cli("estimate", str(jobs), env=ENV)
    assert run.code == 0
    assert run.stdout.splitlines()[-1] == (
        "cache: 3 of 10 lines answered from the cache, saving $0.0014 at list prices of "
        f"{result['prices_as_of']}; 6 distinct requests to send for the other 7 lines "
        "(identical lines are sent once: 1 fewer)")


def test_another_key_or_host_finds_nothing(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    jobs = jobs_file(tmp_path)
    reqs = requests(jobs)
    store(cache_file(isolated_env), {key_of(r, api_key="sk-someone-else"): answer(r)
                                     for r in reqs} | {
                                         key_of(r, host="other.example/v1"): answer(r)
                                         for r in reqs})
    assert estimate(str(jobs), env=ENV)["cache"]["answered"] == 0
    on_other = estimate(str(jobs), "--base-url", "https://other.example/v1", env=ENV)
    assert on_other["cache"]["answered"] == 10


def test_no_cache_yet_sends_the_distinct_requests_and_creates_nothing(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    result = estimate(str(jobs_file(tmp_path)), env=ENV)
    assert (result["cache"]["answered"], result["cache"]["requests_sent"]) == (0, 8)
    assert not cache_file(isolated_env).exists()
    run = run_cli("estimate", str(jobs_file(tmp_path)), env=ENV)
    assert run.stdout.splitlines()[-1] == (
        "cache: 0 of 10 lines answered from the cache; 8 distinct requests to send "
        "(identical lines are sent once: 2 fewer)")


def test_estimating_counts_no_use_of_the_answers(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    import sqlite3

    jobs = jobs_file(tmp_path)
    reqs = requests(jobs)
    store(cache_file(isolated_env), {key_of(reqs[0]): answer(reqs[0])})

    def used() -> list[Any]:
        with sqlite3.connect(cache_file(isolated_env)) as db:
            return db.execute("SELECT used FROM answers").fetchall()

    before = used()
    estimate(str(jobs), env=ENV)
    assert used() == before


def test_without_the_key_the_cache_is_not_looked_up_and_it_says_why(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path)
    result = estimate(str(jobs))
    assert result["cache"]["looked_up"] is False
    assert "$OPENAI_API_KEY is not set" in result["cache"]["why"]
    run = run_cli("estimate", str(jobs))
    assert run.stdout.splitlines()[-1].startswith(
        "cache: not looked up ($OPENAI_API_KEY is not set, and answers are kept per API key")


def test_a_damaged_cache_file_answers_nothing_and_is_left_alone(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    path = cache_file(isolated_env)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database" * 100)
    result = estimate(str(jobs_file(tmp_path)), env=ENV)
    assert result["cache"]["answered"] == 0
    assert path.read_bytes() == b"not a database" * 100


def test_the_shared_cache_in_redis_is_asked_with_state(
        tmp_path: Path, redis_url: str) -> None:
    jobs = jobs_file(tmp_path)
    reqs = requests(jobs)
    state = parse_state_url(redis_url)
    assert state is not None

    async def put() -> None:
        cache = RedisCache(state, cap_bytes=1 << 20, ttl_s=3600)
        await cache.put(key_of(reqs[1]), answer(reqs[1]))
        await cache.close()

    asyncio.run(put())
    result = estimate(str(jobs), "--state", redis_url, env=ENV)
    assert (result["cache"]["answered"], result["cache"]["requests_sent"]) == (2, 7)
    assert result["cache"]["where"] == redis_url


def test_the_saving_is_at_the_rate_the_job_would_pay(
        tmp_path: Path, isolated_env: dict[str, str]) -> None:
    """As the job counts what it saved (backends/cacheflow.saved_usd): the Batch API bills
    half the list price, so the cache saves half."""
    jobs = jobs_file(tmp_path)
    reqs = requests(jobs)
    store(cache_file(isolated_env), {key_of(reqs[i]): answer(reqs[i]) for i in (0, 2)})
    assert estimate(str(jobs), env=ENV)["cache"]["saved_usd"] == round(3 * BILLED, 6)
    saved = estimate(str(jobs), "--via", "batch", env=ENV)["cache"]["saved_usd"]
    assert saved == round(3 * BILLED / 2, 6)
