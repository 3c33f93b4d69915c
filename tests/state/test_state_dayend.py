"""The end of a shared day: hosts on one Redis key near their daily budget."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.errors import DailyLimitReached
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.tiers import Limits
from batchrun.state import StateUrl
from batchrun.state._redis import RedisState
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import prompts, read_results, write_jsonl
from tests.helpers.redis_hosts import DAY, SCOPE, redis_gate
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}
NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


async def _short_sleep(s: float) -> None:
    # The hosts' waits (polling for other hosts' settlements) pass 100 times faster.
    await asyncio.sleep(s / 100)


async def test_hosts_refused_while_another_hosts_reservations_are_in_flight_wait_for_them(
        redis_url: str, tmp_path: Path) -> None:
    # Requests that set no max_tokens are reserved at 256 output tokens and billed about 12:
    # one host's reservations in flight filled the 3,000-token day, and the other three
    # stopped (exit 3) at once; the day then ended well short of its budget.
    from batchrun.backends.sync.engine import JobSpec
    from batchrun.files.jobstore import JobStore
    from batchrun.http.endpoint import Endpoint
    from batchrun.job import prepare
    from batchrun.job import run as run_job
    from batchrun.simulator import SimConfig, SimServer, Simulator

    sim = Simulator(SimConfig(latency_s=0.02))
    async with SimServer(sim) as server:
        async def host(name: str) -> Any:
            # No max_tokens; each host's own prompts (the shared response cache would answer
            # one host's from another's).
            write_jsonl(tmp_path / f"{name}.jsonl",
                        [{"id": f"{name}{i}", "prompt": f"Question {i} of {name}"}
                         for i in range(60)])
            spec = JobSpec(input=tmp_path / f"{name}.jsonl", output=tmp_path / f"{name}.out",
                           endpoint=Endpoint.make(server.base_url, None, None),
                           overrides={"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 3_000})
            store = JobStore(tmp_path / name)
            return await run_job(spec, prepare(spec, False, store), store, FAKE_KEY,
                                 lambda event: None, "sim", now_utc=lambda: NOW,
                                 sleep=_short_sleep, state=StateUrl(redis_url))

        stops = await asyncio.gather(*(host(name) for name in "abcd"))
    state = await RedisState.connect(StateUrl(redis_url), lambda: NOW, keys=(FAKE_KEY,))
    try:
        [row] = await state.usage_rows(NOW.date())
    finally:
        await state.close()
    # A request is charged under 300 tokens: every host went on until what was left could not
    # hold one more, none stopped while other hosts' reservations were still coming back. Past
    # the budget only by what the last requests in flight answered beyond the running mean
    # they were reserved at: without max_tokens the cap is not hard (docs/daily-budget.md),
    # and 3,007 and 3,010 were seen when the suite's other tests shared the machine. Sending
    # on past the budget would be thousands over (240 requests of about 23 tokens).
    assert 2_700 < int(str(row["tokens"])) <= 3_000 + 100
    assert any(stops)  # 240 requests of about 23 tokens do not fit in 3,000
    for stop in filter(None, stops):  # (a host may have finished its 60)
        assert isinstance(stop, DailyLimitReached), stop
        used = re.search(r"([\d,]+) of 3,000 tokens used", str(stop))
        assert used is not None and int(used[1].replace(",", "")) > 2_700, stop


async def test_a_host_refused_for_the_day_is_admitted_once_anothers_reservations_settle(
        hosts: Any) -> None:
    a, b = await hosts(), await hosts()
    limits = Limits(tpd=1_000)
    gate_a = redis_gate(a, limits)
    held = [await gate_a.admit(300, 0.0) or pytest.fail("not admitted") for _ in range(3)]
    billed = Outcome(Kind.OK, 200, body={"usage": {"prompt_tokens": 20, "completion_tokens": 30}})
    clock = [0.0]

    async def sleep(s: float) -> None:  # host a's answers come back while b waits
        clock[0] += s
        if held:
            day, ticket = held.pop()
            await gate_a.settle(day, ticket, 300, billed, None)

    gate_b = b.budget(SCOPE, limits.tpd, limits.rpd).gate(limits, None, lambda: clock[0], sleep)
    admitted = await gate_b.admit(300, 0.0)
    assert admitted is not None and admitted[0] == DAY.date()
    assert (await b.usage_rows(DAY.date()))[0]["tokens"] == 2 * 300 + 50 + 300


async def test_a_dead_hosts_reservations_hold_the_others_back_no_longer_than_their_hold(
        hosts: Any) -> None:
    a, b = await hosts(), await hosts()
    limits = Limits(tpd=1_000)
    gate_a = redis_gate(a, limits)
    for _ in range(3):  # a dies with these in flight: nothing ever settles them
        await gate_a.admit(300, 0.0) or pytest.fail("not admitted")
    clock = [0.0]

    async def sleep(s: float) -> None:
        clock[0] += s

    budget = b.budget(SCOPE, limits.tpd, limits.rpd, timeout_s=60)
    assert await budget.gate(limits, None, lambda: clock[0], sleep).admit(300, 0.0) is None
    assert clock[0] >= 60  # waited for a's answers as long as they could have come
    assert "900 of 1,000 tokens used" in budget.describe()


def _manifest_state(home: str) -> object:
    [manifest] = Path(home).rglob("*.json")
    return orjson.loads(manifest.read_bytes())["options"].get("state")


def test_resuming_a_shared_state_job_on_local_limits_is_refused_unless_asked_for(
        sim: RunningSim, redis_url: str, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    # A job that keeps its budget in Redis, resumed with BATCHRUN_STATE=local (a leftover of
    # another shell) ran on this host's limits alone, not a word said, its manifest still
    # naming Redis.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(8))
    first = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", redis_url,
                    "--rpd", "5", env=ENV)
    assert first.code == 3, first.stderr
    refused = run_cli("resume", env={**ENV, "BATCHRUN_STATE": "local"})
    assert refused.code == 2, refused.stderr
    assert f"this job keeps its shared state in {redis_url}" in refused.stderr
    assert "--state local" in refused.stderr and "other hosts" in refused.stderr
    assert sim.stats.received == 5  # nothing sent
    assert _manifest_state(isolated_env["BATCHRUN_HOME"]) == redis_url

    local = run_cli("resume", "--state", "local", env=ENV)
    assert local.code == 0, local.stderr
    assert "warning:" in local.stderr and "no longer counted" in local.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 8
    assert _manifest_state(isolated_env["BATCHRUN_HOME"]) is None  # what it now uses


async def test_a_per_day_429_about_the_servers_yesterday_is_waited_out_not_a_days_stop(
        redis_url: str, tmp_path: Path) -> None:
    # Just after 00:00 UTC a server whose clock is 2 s behind answers for the day it is still
    # in, saying it ends in a moment. The shared state marks yesterday spent; the host that
    # got the answer stopped for the whole new day all the same (exit 3).
    from batchrun.backends.sync.engine import JobSpec
    from batchrun.files.jobstore import JobStore
    from batchrun.http.endpoint import Endpoint
    from batchrun.job import prepare
    from batchrun.job import run as run_job
    from batchrun.simulator import SimConfig, SimLimits, SimServer, Simulator

    now = [dt.datetime(2026, 11, 27, 23, 50, tzinfo=dt.UTC)]

    async def sleep(s: float) -> None:  # the UTC clock moves with the host's waits
        now[0] += dt.timedelta(seconds=s)
        await asyncio.sleep(0)

    sim = Simulator(SimConfig(SimLimits(rpd=5)), today=lambda: now[0] - dt.timedelta(seconds=2))
    async with SimServer(sim) as server:
        async def host(name: str, lines: int) -> Any:
            # Its own prompts: b's must not be answered by a's from the shared response cache.
            write_jsonl(tmp_path / f"{name}.jsonl",
                        [{**row, "prompt": f"{name} {row['prompt']}"}
                         for row in prompts(lines, name)])
            spec = JobSpec(input=tmp_path / f"{name}.jsonl", output=tmp_path / f"{name}.out",
                           endpoint=Endpoint.make(server.base_url, None, None),
                           overrides={"rpm": 0, "tpm": 0, "rpd": 0})
            store = JobStore(tmp_path / name)
            return await run_job(spec, prepare(spec, False, store), store, FAKE_KEY,
                                 lambda event: None, "sim", now_utc=lambda: now[0],
                                 sleep=sleep, state=StateUrl(redis_url))

        assert isinstance(await host("a", 6), DailyLimitReached)  # the 27th is spent
        now[0] = dt.datetime(2026, 11, 28, 0, 0, 1, tzinfo=dt.UTC)  # the server: 23:59:59
        assert await host("b", 2) is None
    assert len(read_results(tmp_path / "b.out")) == 2
    # a's sixth refused, then b's first (and its second, when it reached the server before
    # the first's refusal came back: a race on loopback, as the refusal is answered at once
    # and the waiting it starts moves this test's clock), each sent again once the server's
    # day had turned.
    assert sim.stats.statuses[429] in (2, 3)
    assert sim.stats.ok == 7
