"""Two counts in the shared books (issue 22, item 4, the Redis side), against a real
redis-server: billed tokens beside the server's rate-limit charge, the count a per-day 429 shows
the server uses (every host's from then on) and the learned accounting every host of the key
reads. They mirror tests/files/test_ledger_counts.py's local ones. And a Redis that restarted empty
does not give a resumed job its day's budget again."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import redis

from batchrun.files.ledger import Scope, key_fingerprint
from batchrun.pacing.calibrate import CHARS, TOKENS, Learned
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.tiers import Limits
from batchrun.state import StateUrl
from batchrun.state._redis import RedisGate, RedisState
from tests.helpers.charging import TPD_429
from tests.helpers.cli import FAKE_KEY, estimate, run_cli
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.redis_hosts import DAY, SCOPE
from tests.helpers.redis_server import RedisServer, everything_stored
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}


def _answer(prompt: int, completion: int) -> Outcome:
    return Outcome(Kind.OK, 200, body={"usage": {"prompt_tokens": prompt,
                                                 "completion_tokens": completion}})


async def _no_sleep(_s: float) -> None:
    await asyncio.sleep(0)


def _gate(state: Any, tpd: int = 0, rpd: int = 0) -> RedisGate:
    limits = Limits(tpd=tpd, rpd=rpd)
    gate = state.budget(SCOPE, tpd, rpd).gate(limits, None, lambda: 0.0, _no_sleep)
    assert isinstance(gate, RedisGate)
    return gate


async def _send(gate: RedisGate, cost: int, billed: Outcome) -> dt.date | None:
    admitted = await gate.admit(cost, 0.0)
    if admitted is None:
        return None
    day, ticket = admitted
    await gate.settle(day, ticket, cost, billed, None)
    return day


async def test_redis_keeps_billed_tokens_and_the_charge(hosts: Any) -> None:
    state = await hosts()
    gate = _gate(state, tpd=10_000, rpd=100)
    for _ in range(3):  # reserved (charged) 500 each, billed 120
        assert await _send(gate, 500, _answer(100, 20)) == DAY.date()
    await state.close()
    row = (await (await hosts()).usage_rows(DAY.date()))[0]
    assert (row["tokens"], row["charge"], row["requests"]) == (360, 1_500, 3)


async def test_a_request_never_sent_leaves_neither_count(hosts: Any) -> None:
    state = await hosts()
    budget = state.budget(SCOPE, 10_000, 0)
    limits = Limits(tpd=10_000)
    await state.admit(budget, 500, DAY.date(), limits)
    budget.give_back(DAY.date(), -500, -1, 500, charge=-500)  # what a stop's give-back writes
    await state.close()
    row = (await (await hosts()).usage_rows(DAY.date()))[0]
    assert (row["tokens"], row["charge"], row["requests"]) == (0, 0, 0)


async def test_a_per_day_429_decides_the_count_for_every_host(hosts: Any) -> None:
    one, two = await hosts(), await hosts()
    gate = _gate(one, tpd=2_000)
    for _ in range(4):  # billed 600 in all, charged 2,000
        assert await _send(gate, 500, _answer(100, 50)) == DAY.date()
    admitted = await gate.admit(10, 0.0)
    assert admitted is not None
    # The server's per-day 429 counts ~2,000 used: its charge, not what it billed.
    await gate.settle(admitted[0], admitted[1], 10,
                      Outcome(Kind.RATE_DAY, 429, message=TPD_429.format(used=2_000)), None)
    gate.budget.exhaust(admitted[0], TPD_429.format(used=2_000))
    assert gate.budget.counts == "charge"

    # Another host, the next day: its budget is kept on the charge too.
    two_now = two._now_utc
    two._now_utc = lambda: two_now() + dt.timedelta(days=1)
    other = _gate(two, tpd=2_000)
    next_day = DAY.date() + dt.timedelta(days=1)
    for _ in range(4):
        assert await _send(other, 500, _answer(100, 50)) == next_day
    assert other.budget.counts == "charge"
    assert await other.admit(500, 0.0) is None  # 2,000 charged, though only 600 billed
    assert other.budget.used_today() == (2_000, 4)
    assert "2,000 of 2,000 tokens used on 2026-11-28" in other.budget.describe()
    row = (await two.usage_rows(next_day))[0]  # what `status --json` shows
    assert (row["tokens"], row["charge"], row["daily_counts"]) == (600, 2_000, "charge")


async def test_a_per_day_429_that_counts_billed_tokens_keeps_them(hosts: Any) -> None:
    state = await hosts()
    gate = _gate(state, tpd=2_000)
    for _ in range(3):
        await _send(gate, 500, _answer(100, 50))
    admitted = await gate.admit(10, 0.0)
    assert admitted is not None
    await gate.settle(admitted[0], admitted[1], 10,
                      Outcome(Kind.RATE_DAY, 429, message=TPD_429.format(used=460)), None)
    assert gate.budget.counts == "billed"
    assert (await hosts()).budget(SCOPE, 2_000, 0).counts == "billed"


async def test_what_one_host_learns_of_the_accounting_every_host_uses(
        hosts: Any, redis_url: str) -> None:
    one, two = await hosts(), await hosts()
    budget = one.budget(SCOPE, 0, 0)
    other_model = one.budget(Scope(SCOPE.host, SCOPE.key_fingerprint, "gpt-4o"), 0, 0)
    assert budget.accounting() is None
    budget.record_accounting(Learned(CHARS, 0.52))
    other_model.record_accounting(Learned(TOKENS, 1.1))
    # not evidence: the last good one stays
    budget.record_accounting(Learned(CHARS, float("nan")))
    budget.record_accounting(Learned(CHARS, -1.0))
    assert budget.accounting() == Learned(CHARS, 0.52)
    await one.close()
    # Another host of the key reads it as soon as its budget is open: before any admission.
    theirs = two.budget(SCOPE, 0, 0)
    await two.learned(theirs)
    assert theirs.accounting() == Learned(CHARS, 0.52)
    elsewhere = two.budget(Scope("localhost:8000", SCOPE.key_fingerprint, SCOPE.model), 0, 0)
    await two.learned(elsewhere)
    assert elsewhere.accounting() is None
    # and it follows what is learned later, with each admission
    three = await hosts()
    three.budget(SCOPE, 0, 0).record_accounting(Learned(CHARS, 0.6))
    await three.close()
    await two.admit(theirs, 10, DAY.date(), Limits())
    assert theirs.accounting() == Learned(CHARS, 0.6)
    assert (await two.usage_rows(DAY.date()))[0]["accounting"] == "chars:0.6"
    # An earlier version's whole-charge ratio (a bare number) in the same field is dropped.
    client = redis.Redis.from_url(redis_url)
    for name in client.keys("*"):
        if client.type(name) == b"hash" and client.hget(name, "accounting") == b"chars:0.6":
            client.hset(name, "accounting", "0.55")
    client.close()
    await two.admit(theirs, 10, DAY.date(), Limits())
    assert theirs.accounting() is None
    # Named and stored as the rest of the shared state: no key or fingerprint, and it expires.
    stored = " ".join(everything_stored(redis_url))
    assert FAKE_KEY not in stored and SCOPE.key_fingerprint not in stored
    client = redis.Redis.from_url(redis_url)
    assert all(client.ttl(name) > 0 for name in client.keys("*"))
    client.close()


def test_resume_after_redis_lost_its_memory_counts_what_the_job_used_today(
        sim: RunningSim, redis_factory: type[RedisServer], tmp_path: Path) -> None:
    redis = redis_factory().start()
    rows = [{"id": f"r{i}", "prompt": f"Question number {i}", "max_tokens": 10}
            for i in range(300)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    args = ("--base-url", sim.base_url, "--tpd", "1000", "--state", redis.url)
    first = run_cli("submit", str(jobs), *args, env=ENV)
    assert first.code == 3, first.stderr
    done = len(read_results(tmp_path / "jobs.results.jsonl"))
    assert 0 < done < 300
    redis.stop()
    redis.start()  # without persistence: empty
    second = run_cli("resume", "--state", redis.url, env=ENV)
    assert second.code == 3, second.stderr
    # Today's budget was spent by the first run: a request or two at most fits after it.
    assert len(read_results(tmp_path / "jobs.results.jsonl")) <= done + 2
    said = " ".join(second.stderr.split())
    assert "Daily token budget reached for gpt-4o-mini" in said
    used = int(said.split("Daily token budget reached for gpt-4o-mini: ")[1]
               .split(" of ")[0].replace(",", ""))
    assert used >= 900


def test_estimate_with_the_shared_state_reads_the_accounting_any_host_learned(
        tmp_path: Path, redis_url: str, isolated_env: dict[str, str]) -> None:
    rows = [{"id": f"r{i}", "prompt": "x", "max_tokens": 990} for i in range(600)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)

    async def learned_elsewhere() -> None:
        # Learned by some host on a local server with the key in $MY_KEY (it charges half our
        # estimate), on another day: no usage of today's to find it by.
        state = await RedisState.connect(StateUrl(redis_url), keys=(FAKE_KEY,))
        scope = Scope("127.0.0.1:8000", key_fingerprint(FAKE_KEY), "gpt-4o-mini")
        state.budget(scope, 0, 0).record_accounting(Learned(TOKENS, 0.5))
        await state.close()

    asyncio.run(learned_elsewhere())
    args = ("--base-url", "http://localhost:8000/v1", "--api-key-env", "MY_KEY")
    env = {"MY_KEY": FAKE_KEY}
    ours = estimate(str(jobs), *args, env=env)["models"][0]  # this host's ledger knows nothing
    assert ours["accounting"]["used"] == "ours"
    shared = estimate(str(jobs), *args, "--state", redis_url, env=env)["models"][0]
    assert shared["accounting"]["server_charge_tokens"] == round(
        ours["prompt_tokens"] / 2) + 600 * 990
    # another key at that host has learned nothing
    other = estimate(str(jobs), *args, "--state", redis_url,
                     env={"MY_KEY": "sk-other-key-0123456789"})
    assert other["models"][0]["accounting"]["used"] == "ours"
