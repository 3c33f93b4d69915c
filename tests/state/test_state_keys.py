"""Whose usage a shared Redis shows: names derived from the API key itself (not its public
fingerprint), so a host without the key can neither find nor set that key's counts, and
`status --state` shows the caller's keys only. And what a Redis written by batchrun before
that change keeps: today's usage of a job carries over."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import orjson
import redis

from batchrun.files.ledger import key_fingerprint, ledger_host
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl
from tests.helpers.redis_server import everything_stored
from tests.helpers.sim import RunningSim

OTHER_KEY = "sk-test-OTHERKEY9876543210fedcbaOTHER"


def _usage(run_stdout: str) -> list[tuple[str, int]]:
    return [(u["key_fingerprint"], u["requests"]) for u in orjson.loads(run_stdout)["usage"]]


def test_redis_holds_nothing_that_says_whose_key_and_status_shows_only_the_callers(
        sim: RunningSim, redis_url: str, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(6))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", redis_url,
                  "--rpd", "1000", env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    mine = key_fingerprint(FAKE_KEY)
    # `status` shows this fingerprint to anyone: a name built from it could be found and its
    # `exhausted` set by a host that never held the key.
    stored = everything_stored(redis_url)
    assert stored and not any(mine in s or mine.removeprefix("key-") in s for s in stored)
    theirs = run_cli("status", "--state", redis_url, "--json",
                     env={"OPENAI_API_KEY": OTHER_KEY})
    assert theirs.code == 0, theirs.stderr
    assert _usage(theirs.stdout) == []
    own = run_cli("status", "--state", redis_url, "--json", env={"OPENAI_API_KEY": FAKE_KEY})
    assert _usage(own.stdout) == [(mine, 6)]
    nobody = run_cli("status", "--state", redis_url)
    assert "no API key" in nobody.stdout and "OPENAI_API_KEY" in nobody.stdout


def test_a_job_mid_day_keeps_the_usage_an_older_batchrun_counted_in_redis(
        sim: RunningSim, redis_url: str, tmp_path: Path) -> None:
    # batchrun before key-derived names kept today's count under the fingerprint's name.
    today = dt.datetime.now(dt.UTC).date().isoformat()
    scope = f"{ledger_host(sim.base_url.split('//')[1].split('/')[0])}|" \
            f"{key_fingerprint(FAKE_KEY)}|gpt-4o-mini"
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(f"batchrun:v1:day:{scope}:{today}",
                    mapping={"tokens": 1_000, "requests": 8, "tpd": 0, "rpd": 10})
        client.sadd(f"batchrun:v1:scopes:{today}", scope)
    finally:
        client.close()
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", redis_url,
                  "--rpd", "10", env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 3, run.stderr  # 8 of the day's 10 were spent before the upgrade
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 2 == sim.stats.received
    status = run_cli("status", "--state", redis_url, "--json", env={"OPENAI_API_KEY": FAKE_KEY})
    assert _usage(status.stdout) == [(key_fingerprint(FAKE_KEY), 10)]
    assert not any(key_fingerprint(FAKE_KEY) in s for s in everything_stored(redis_url))
