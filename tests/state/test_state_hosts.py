"""Many hosts, one key: `batchrun submit` processes with their own $BATCHRUN_HOME sharing one
Redis and one simulator. (The UTC midnight is faked in-process instead, on injected now_utc:
tests/state/test_state_redis.py::test_the_day_turns_at_utc_midnight_for_every_host.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from batchrun.simulator import SimConfig, SimLimits
from batchrun.state._redis import AHEAD_S
from tests.helpers.cli import FAKE_KEY, REPO, wait_for
from tests.helpers.jsonl import count_lines, prompts, read_results, write_jsonl

pytestmark = pytest.mark.slow


def _host(n: int, tmp_path: Path, sim: Any, redis_url: str, lines: int,
          *extra: str) -> tuple[subprocess.Popen[str], Path]:
    home = tmp_path / f"host{n}"
    # Each host's own prompts: the response cache, shared in Redis, would answer one host's
    # lines with another's answers.
    jobs = write_jsonl(tmp_path / f"jobs{n}.jsonl",
                       [{**row, "prompt": f"h{n}: {row['prompt']}"}
                        for row in prompts(lines, f"h{n}-")])
    env = {**os.environ, "OPENAI_API_KEY": FAKE_KEY, "BATCHRUN_HOME": str(home),
           "BATCHRUN_STATE": redis_url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun", "submit", str(jobs), "--base-url", sim.base_url,
         "-q", *extra], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    return proc, tmp_path / f"jobs{n}.results.jsonl"


def _share(admitted_at: list[tuple[float, int]], rpm: int) -> float:
    times = sorted(t for t, _ in admitted_at)
    return (len(times) - 1) / (times[-1] - times[0]) / (rpm / 60)


def test_four_hosts_share_one_key_at_the_limit_without_429s_or_overspend(
        sim_factory: Any, redis_url: str, tmp_path: Path) -> None:
    rpm, rpd = 3_000, 560
    # A server that enforces 1 s windows: a minute's burst from any host would be a 429 storm.
    sim = sim_factory(SimConfig(SimLimits(rpm=rpm, window_s=1.0), latency_s=0.1, jitter_s=0.05))
    import redis

    client = redis.Redis.from_url(redis_url)
    client.config_resetstat()
    # --no-cache: the limiter's round trips are counted below (the response cache's writes
    # to Redis are scripts too)
    hosts = [_host(n, tmp_path, sim, redis_url, 160, "--rpm", str(rpm), "--rpd", str(rpd),
                   "--no-cache") for n in range(4)]
    codes = []
    for proc, _ in hosts:
        out, err = proc.communicate(timeout=90)
        codes.append(proc.returncode)
        assert proc.returncode in (0, 3), err
        assert FAKE_KEY not in out + err
    assert 3 in codes  # 640 lines, 560 a day: the day ran out for someone
    admitted = len(sim.stats.admitted_at)
    assert admitted <= rpd  # never above the daily budget, across four hosts
    assert sum(len(read_results(out)) for _, out in hosts) == admitted
    assert sim.stats.rate_limited <= 0.01 * sim.stats.received
    assert _share(sim.stats.admitted_at, rpm) >= 0.95
    # One round trip admits a request; settlements ride on the next admission.
    scripts = client.info("commandstats").get("cmdstat_evalsha", {"calls": 0})["calls"]
    client.close()
    assert scripts <= 1.1 * sim.stats.received


def test_a_host_killed_mid_run_gives_its_share_back_within_seconds(
        sim_factory: Any, redis_url: str, tmp_path: Path) -> None:
    rpm = 2_400
    sim = sim_factory(SimConfig(SimLimits(rpm=rpm, window_s=1.0), latency_s=0.1))
    victim, victim_out = _host(0, tmp_path, sim, redis_url, 400, "--rpm", str(rpm))
    survivor, survivor_out = _host(1, tmp_path, sim, redis_url, 200, "--rpm", str(rpm))
    wait_for(lambda: count_lines(victim_out) >= 40 and count_lines(survivor_out) >= 40)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    killed_at = len(sim.stats.admitted_at)
    _, err = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, err
    assert len(read_results(survivor_out)) == 200
    after = sorted(t for t, _ in sim.stats.admitted_at[killed_at:])
    # What the dead host had been scheduled runs out within AHEAD_S: after that the survivor
    # alone sends at the whole limit.
    steady = [t for t in after if t > after[0] + AHEAD_S + 0.5]
    assert (len(steady) - 1) / (steady[-1] - steady[0]) >= 0.9 * rpm / 60


RACE = """
import asyncio, sys
from batchrun.files.ledger import Scope
from batchrun.state import StateUrl
from batchrun.state._redis import ADMITTED, RedisState
from batchrun.policy.tiers import Limits
from tests.helpers.cli import FAKE_KEY
from tests.helpers.redis_hosts import DAY, SCOPE

async def main(url, rpd, rpm):
    state = await RedisState.connect(StateUrl(url), lambda: DAY, keys=(FAKE_KEY,))
    budget = state.budget(SCOPE, 0, rpd)
    limits = Limits(rpm=rpm, rpd=rpd)
    got = await asyncio.gather(*(state.admit(budget, 5, DAY.date(), limits) for _ in range(60)))
    await state.close()
    print(sum(1 for g in got if g[0] == ADMITTED))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


@pytest.mark.parametrize(("rpd", "rpm", "expected"), [(100, 0, 100), (0, 6, 1)])
def test_processes_racing_for_the_last_of_a_day_or_a_minute_never_take_more(
        redis_url: str, rpd: int, rpm: int, expected: int) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", RACE, redis_url, str(rpd), str(rpm)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    admitted = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(admitted) == expected  # 240 asked, across four processes
