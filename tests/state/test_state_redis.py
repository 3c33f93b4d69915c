"""The Redis state against a real redis-server: atomic admission, what one host learns, the
daily ledger across a faked UTC midnight. Each "host" is its own RedisState connection."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from batchrun.pacing.limiter import ServerState
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.tiers import Limits
from batchrun.state import StateUrl
from batchrun.state._redis import ADMITTED, DAY_SPENT, LATER
from tests.helpers.cli import FAKE_KEY
from tests.helpers.redis_hosts import DAY, SCOPE, Day, redis_gate


async def test_hosts_racing_for_the_last_requests_of_a_day_never_take_more(hosts: Any) -> None:
    states = [await hosts() for _ in range(4)]
    limits = Limits(rpd=25, tpd=10_000)
    budgets = [s.budget(SCOPE, limits.tpd, limits.rpd) for s in states]

    async def ask(i: int) -> int:
        status, *_ = await states[i % 4].admit(budgets[i % 4], 300, DAY.date(), limits)
        return status

    results = await asyncio.gather(*(ask(i) for i in range(60)))
    # 10,000 tokens hold 33 requests of 300, the day's 25 requests fewer: exactly 25 go.
    assert results.count(ADMITTED) == 25
    assert results.count(DAY_SPENT) == 35
    rows = await states[0].usage_rows(DAY.date())
    assert (rows[0]["requests"], rows[0]["tokens"]) == (25, 7_500)
    assert sum(rows[0]["hosts"].values()) == 25  # type: ignore[attr-defined]


async def test_hosts_racing_for_a_minute_bucket_get_one_slot_between_them(hosts: Any) -> None:
    # 6 a minute is one request per 10 s: a full bucket lets one go now, and the next is more
    # than the 1.5 s batchrun schedules ahead, so every other host is told to ask later.
    states = [await hosts() for _ in range(3)]
    limits = Limits(rpm=6, tpm=600_000)
    budgets = [s.budget(SCOPE, 0, 0) for s in states]
    results = await asyncio.gather(*(
        states[i % 3].admit(budgets[i % 3], 10, DAY.date(), limits) for i in range(30)))
    statuses = [r[0] for r in results]
    assert statuses.count(ADMITTED) == 1
    assert statuses.count(LATER) == 29
    assert min(r[1] for r in results if r[0] == LATER) > 7  # seconds until the next slot


async def test_the_day_turns_at_utc_midnight_for_every_host(hosts: Any) -> None:
    day = Day()
    a, b = await hosts(day), await hosts(day)
    limits = Limits(rpd=3)
    gate_a, gate_b = redis_gate(a, limits), redis_gate(b, limits)
    admitted = [await g.admit(1, 0.0) for g in (gate_a, gate_b, gate_a, gate_b)]
    assert [x is not None for x in admitted] == [True, True, True, False]
    assert "3 of 3 requests used on 2026-11-27" in gate_b.budget.describe()
    day.now = DAY + dt.timedelta(minutes=1)  # 00:00:30 the next day
    again = await gate_b.admit(1, 0.0)
    assert again is not None and again[0] == dt.date(2026, 11, 28)


async def test_a_per_minute_429_on_one_host_pauses_every_host(hosts: Any) -> None:
    a, b = await hosts(), await hosts()
    limits = Limits(rpm=600, tpm=1_000_000)
    gate_a, gate_b = redis_gate(a, limits), redis_gate(b, limits)
    day, ticket = await gate_a.admit(10, 0.0) or pytest.fail("not admitted")
    await gate_a.settle(day, ticket, 10, Outcome(Kind.RATE_MINUTE, 429, hint_s=4.0), None)
    assert gate_a.limiter.rate_limited(ticket, 4.0) >= 4.0
    status, wait_s, *_ = await b.admit(gate_b.budget, 10, day, limits)
    assert status == LATER and wait_s > 2  # host b waits out the cooldown host a was given


async def test_a_lower_limit_one_host_is_told_is_every_hosts_limit(hosts: Any) -> None:
    a, b = await hosts(), await hosts()
    limits = Limits(rpm=600, tpm=1_000_000)
    gate_a, gate_b = redis_gate(a, limits), redis_gate(b, limits)
    day, ticket = await gate_a.admit(10, 0.0) or pytest.fail("not admitted")
    told = ServerState(limit_requests=300, limit_tokens=50_000)
    await gate_a.settle(day, ticket, 10, Outcome(Kind.OK, 200), told)
    assert await gate_b.admit(10, 0.0) is not None
    assert (gate_b.limiter.pacer.rpm, gate_b.limiter.pacer.tpm) == (300, 50_000)


async def test_a_per_day_429_on_one_host_spends_the_day_for_every_host(hosts: Any) -> None:
    a, b = await hosts(), await hosts()
    gate_a, gate_b = redis_gate(a, Limits()), redis_gate(b, Limits())
    day, ticket = await gate_a.admit(10, 0.0) or pytest.fail("not admitted")
    await gate_a.settle(day, ticket, 10, Outcome(Kind.RATE_DAY, 429), None)
    assert await gate_b.admit(10, 0.0) is None
    assert "the API's per-day limit is spent on 2026-11-27" in gate_b.budget.describe()


async def test_usage_settles_to_what_the_server_billed(hosts: Any) -> None:
    a = await hosts()
    gate = redis_gate(a, Limits(tpd=1_000))
    day, ticket = await gate.admit(400, 0.0) or pytest.fail("not admitted")
    billed = Outcome(Kind.OK, 200, body={"usage": {"prompt_tokens": 30, "completion_tokens": 20}})
    await gate.settle(day, ticket, 400, billed, None)
    assert gate.budget.used_today() == (50, 1)
    await a.close()  # what was given back is written when the state closes
    b = await hosts()
    rows = await b.usage_rows(day)
    assert (rows[0]["tokens"], rows[0]["requests"]) == (50, 1)


async def test_a_redis_that_lost_its_memory_is_not_trusted_mid_run(
        hosts: Any, redis_url: str) -> None:
    import redis.asyncio

    from batchrun.state import SharedStateError

    a = await hosts()
    gate = redis_gate(a, Limits(rpd=100))
    assert await gate.admit(1, 0.0) is not None
    client = redis.asyncio.from_url(redis_url)
    await client.flushall()  # as a restart without persistence leaves it
    await client.aclose()
    with pytest.raises(SharedStateError, match="was reset") as caught:
        await gate.admit(1, 0.0)
    assert "appendonly" in caught.value.message


async def test_headers_showing_other_hosts_use_do_not_slow_a_host_twice(hosts: Any) -> None:
    # With four hosts on a key, x-ratelimit-remaining-* shows everyone's use. The shared bucket
    # already paces this host; its local limiter must not read the headers as "the server is
    # emptier than I counted" and pace it again on top.
    a = await hosts()
    now, waits = [0.0], []

    async def sleep(s: float) -> None:
        waits.append(s)
        now[0] += s

    limits = Limits(rpm=600, tpm=1_000_000)  # 0.9 s of burst: 9 requests go at once
    gate = a.budget(SCOPE, 0, 0).gate(limits, None, lambda: now[0], sleep)
    crowded = ServerState(600, 1_000_000, remaining_requests=0, remaining_tokens=0)
    for _ in range(8):
        day, ticket = await gate.admit(10, now[0]) or pytest.fail("not admitted")
        await gate.settle(day, ticket, 10, Outcome(Kind.OK, 200, server=crowded), crowded)
    assert waits == []


async def test_four_engines_on_one_redis_keep_each_days_budget_across_midnight(
        redis_url: str, tmp_path: Any) -> None:
    # Four "hosts" (their own homes and Redis connections) in one loop, on one virtual UTC clock
    # that the simulator reads too: it counts each day's requests itself and would answer a
    # per-day 429 past its own limit of 30. Day one spends the budget and they stop (exit 3);
    # after midnight they go on and finish.
    from batchrun.backends.sync.engine import JobSpec
    from batchrun.errors import DailyLimitReached
    from batchrun.files.jobstore import JobStore
    from batchrun.http.endpoint import Endpoint
    from batchrun.job import prepare
    from batchrun.job import run as run_job
    from batchrun.simulator import SimConfig, SimLimits, SimServer, Simulator
    from tests.helpers.jsonl import prompts, read_results, write_jsonl

    now = [dt.datetime(2026, 11, 27, 23, 59, tzinfo=dt.UTC)]
    sim = Simulator(SimConfig(SimLimits(rpd=30)), today=lambda: now[0])
    async with SimServer(sim) as server:
        names = ("a", "b", "c", "d")
        for name in names:
            # Each host's own prompts: not answered by another's from the shared response cache.
            write_jsonl(tmp_path / f"{name}.jsonl",
                        [{**row, "prompt": f"{name} {row['prompt']}"} for row in prompts(13, name)])

        async def host(name: str) -> Any:
            spec = JobSpec(input=tmp_path / f"{name}.jsonl", output=tmp_path / f"{name}.out.jsonl",
                           endpoint=Endpoint.make(server.base_url, None, None),
                           overrides={"rpm": 0, "tpm": 0, "rpd": 30})
            store = JobStore(tmp_path / name)
            return await run_job(spec, prepare(spec, False, store), store, FAKE_KEY,
                                 lambda event: None, "sim", now_utc=lambda: now[0],
                                 state=StateUrl(redis_url))

        first = await asyncio.gather(*(host(name) for name in names))
        assert sim.stats.ok == 30
        assert all(isinstance(stop, DailyLimitReached) for stop in first if stop is not None)
        assert "30 of 30 requests used on 2026-11-27" in next(str(s) for s in first if s)
        now[0] = dt.datetime(2026, 11, 28, 0, 1, tzinfo=dt.UTC)
        second = await asyncio.gather(*(host(name) for name in names))
    assert second == [None] * 4
    assert not sim.stats.rejected_at  # the simulator's own count never went past 30 a day
    assert [len(read_results(tmp_path / f"{name}.out.jsonl")) for name in names] == [13] * 4
    assert sim.stats.ok == 52


@pytest.mark.parametrize(("tpd", "seen_at_once"), [(1_000, 100), (200, 150)])
async def test_usage_above_a_reservation_is_written_at_once_near_the_days_end(
        hosts: Any, tpd: int, seen_at_once: int) -> None:
    a, b = await hosts(), await hosts()
    gate = redis_gate(a, Limits(tpd=tpd))
    day, ticket = await gate.admit(100, 0.0) or pytest.fail("not admitted")
    billed = Outcome(Kind.OK, 200, body={"usage": {"prompt_tokens": 140, "completion_tokens": 10}})
    await gate.settle(day, ticket, 100, billed, None)
    # Far from the budget's end the extra 50 rides on a's next admission; near it, every host
    # sees it before anything else is admitted.
    assert (await b.usage_rows(day))[0]["tokens"] == seen_at_once
    assert gate.budget.used_today() == (150, 1)


async def test_an_admission_cancelled_while_redis_answers_is_counted_once_and_given_back(
        hosts: Any) -> None:
    # A stop cancels an admission whose script Redis has already run: the give-back that rode
    # on it was written and must not ride again, and the request it admitted, never to be
    # sent, goes back too.
    a = await hosts()
    gate = redis_gate(a, Limits(tpd=100_000))
    day, ticket = await gate.admit(10_000, 0.0) or pytest.fail("not admitted")
    billed = Outcome(Kind.OK, 200,
                     body={"usage": {"prompt_tokens": 4_000, "completion_tokens": 1_000}})
    await gate.settle(day, ticket, 10_000, billed, None)  # 5,000 go back with the next admission
    script, ran, answer = a._admit, asyncio.Event(), asyncio.Event()

    async def answered_late(**kwargs: Any) -> Any:
        reply = await script(**kwargs)
        ran.set()
        await answer.wait()  # the reply is still on its way when the stop comes
        return reply

    a._admit = answered_late
    stopped = asyncio.ensure_future(gate.admit(1_000, 0.0))
    await ran.wait()
    stopped.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopped
    a._admit = script
    answer.set()
    assert await gate.admit(1_000, 0.0) is not None
    await a.close()  # what is still to give back is written
    # By hand: 10,000 reserved, 5,000 of it given back; 1,000 admitted and given back unsent;
    # 1,000 admitted. Two requests.
    rows = await (await hosts()).usage_rows(day)
    assert (rows[0]["tokens"], rows[0]["requests"]) == (6_000, 2)
