"""`--state redis://…` attacked as a hostile user and an operator would: credentials in every
place a Redis URL can hold them, keys batchrun leaves behind, hosts that disagree about the
limits, and Redis failing in the ways operators meet."""

from __future__ import annotations

import asyncio
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.tiers import Limits
from batchrun.simulator import SimConfig, SimLimits
from batchrun.state._redis import DAY_TTL_S
from tests.helpers.cli import FAKE_KEY, everything_shown, run_cli, wait_for
from tests.helpers.jsonl import prompts, read_results, write_jsonl
from tests.helpers.redis_hosts import DAY, SCOPE, redis_gate
from tests.helpers.redis_server import RedisServer
from tests.helpers.sim import RunningSim

ENV = {"OPENAI_API_KEY": FAKE_KEY}
PASSWORD = "qs-Secret-PW-0815"


def test_a_password_in_the_urls_query_is_never_shown_or_stored(
        sim: RunningSim, redis_factory: type[RedisServer], tmp_path: Path,
        isolated_env: dict[str, str]) -> None:
    # redis-py also takes the password as ?password=: a URL an operator copies from a
    # connection string holds it there, not before the '@'.
    redis = redis_factory(password=PASSWORD).start()
    url = f"redis://127.0.0.1:{redis.port}/0?password={PASSWORD}"
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", url, env=ENV)
    assert run.code == 0, run.stderr
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 3
    status = run_cli("status", "--state", url)
    as_json = run_cli("status", "--json", "--state", url)
    wrong = run_cli("submit", str(jobs), "-o", str(tmp_path / "b.jsonl"), "--base-url",
                    sim.base_url, "--state", url.replace(PASSWORD, PASSWORD + "-wrong"),
                    env=ENV)
    assert (status.code, as_json.code, wrong.code) == (0, 0, 5), wrong.stderr
    assert f"redis://127.0.0.1:{redis.port}/0" in status.stdout + wrong.stderr
    assert PASSWORD not in everything_shown(Path(isolated_env["BATCHRUN_HOME"]), run,
                                             status, as_json, wrong)
    # Never stored, so `resume` asks for it again rather than going without it.
    manifest = next(Path(isolated_env["BATCHRUN_HOME"]).rglob("*.json"))
    options = orjson.loads(manifest.read_bytes())["options"]
    assert (options["state"], options["state_credentials"]) == (
        f"redis://127.0.0.1:{redis.port}/0", True)


def test_a_refused_url_does_not_echo_a_password_in_its_query(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli("submit", str(jobs), env={**ENV, "BATCHRUN_STATE":
                                            f"redis://localhost:6379/jobs?password={PASSWORD}"})
    assert run.code == 2 and "names database 'jobs'" in run.stderr
    assert "redis://localhost:6379/jobs" in run.stderr and PASSWORD not in run.stderr


async def test_every_key_batchrun_writes_expires_even_one_it_finds_gone(
        hosts: Any, redis_url: str) -> None:
    import redis.asyncio

    a = await hosts()
    gate = redis_gate(a, Limits(rpm=600, rpd=1))
    day, ticket = await gate.admit(5, 0.0) or pytest.fail("not admitted")
    await gate.settle(day, ticket, 5, Outcome(Kind.OK, 200), None)
    client = redis.asyncio.from_url(redis_url)
    # The bucket outlived its idle TTL (a request in flight for minutes), then the answer's
    # "ok" travels with an admission that finds the day spent.
    await client.delete(gate.budget.names.lim())
    assert await gate.admit(5, 0.0) is None
    ttls = {key.decode(): await client.pttl(key) async for key in client.scan_iter()}
    await client.aclose()
    assert gate.budget.names.lim() in ttls
    assert all(0 < ttl <= DAY_TTL_S * 1000 for ttl in ttls.values()), ttls


async def test_a_host_given_a_lower_rpm_paces_every_host_at_it_while_it_asks(
        hosts: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # --rpm is the key's limit as a host was told. Hosts that disagree cannot each pace their
    # own turns at their own rate in one bucket: 3 hosts at 1200 and one at 300 sent 691 a
    # minute between them (measured), over the 300 and far under the 1200. The lowest limit
    # of a host still asking is every host's, as a lower x-ratelimit-limit-* is.
    from batchrun.state import _redis

    slow, fast = await hosts(name="slow"), await hosts(name="fast")
    slow_b, fast_b = slow.budget(SCOPE, 0, 0), fast.budget(SCOPE, 0, 0)
    day = DAY.date()

    async def fast_admitted(n: int) -> int:
        got = [await fast.admit(fast_b, 1, day, Limits(rpm=600)) for _ in range(n)]
        return sum(status == _redis.ADMITTED for status, *_ in got)

    assert (await slow.admit(slow_b, 1, day, Limits(rpm=60)))[0] == _redis.ADMITTED
    # At 60 a minute the bucket (0.9 s of burst) holds one more within the 1.5 s batchrun
    # schedules ahead; at 600 it would hold all five.
    assert await fast_admitted(5) == 1
    # A host gone quiet lets go of its limit (here at once): the others pace at their own (at
    # 60 a minute, none of these would fit in the next 1.5 s).
    monkeypatch.setattr(_redis, "ACTIVE_S", 0.0)
    assert await fast_admitted(3) == 3


class Silencer(socketserver.ThreadingTCPServer):
    """A loopback proxy to a redis-server that, once `silent` is set, takes what it is sent and
    never answers (a Redis that stopped answering: paused, overloaded, behind a dead route),
    and counts the connections batchrun opens after that."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.target, self.silent, self.opened_after = port, threading.Event(), 0
        super().__init__(("127.0.0.1", 0), _Pipe)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.server_address[1]}/0"


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Silencer = self.server  # type: ignore[assignment]
        if server.silent.is_set():
            server.opened_after += 1
        upstream = socket.create_connection(("127.0.0.1", server.target))
        threading.Thread(target=self._back, args=(upstream,), daemon=True).start()
        with upstream:
            while data := self.request.recv(65536):
                if not server.silent.is_set():
                    upstream.sendall(data)

    def _back(self, upstream: socket.socket) -> None:
        server: Silencer = self.server  # type: ignore[assignment]
        while (data := upstream.recv(65536)) and not server.silent.is_set():
            self.request.sendall(data)


@pytest.fixture
def silencer(redis_session: RedisServer) -> Iterator[Silencer]:
    redis_session.flush()
    proxy = Silencer(redis_session.port)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    yield proxy
    proxy.shutdown()
    proxy.server_close()


@pytest.mark.slow
def test_a_redis_that_stops_answering_is_asked_once_not_again_and_again(
        sim_factory: Any, silencer: Silencer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Each question to a silent Redis costs the whole timeout (5 s): asking it again (a retry,
    # a last settlement on the way out) made the user wait 20 s, not 5, for the message.
    from batchrun.state import _redis

    monkeypatch.setattr(_redis, "TIMEOUT_S", 0.2)
    sim = sim_factory(SimConfig(SimLimits(rpm=60_000), latency_s=0.02))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(300))

    def silence() -> None:
        wait_for(lambda: sim.stats.received >= 10)
        silencer.silent.set()

    threading.Thread(target=silence, daemon=True).start()
    # --no-cache: the limiter's and ledger's connection is counted here (the response
    # cache's own, in Redis too, opens when it first writes)
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--state", silencer.url,
                  "--rpm", "60000", "--no-cache", env=ENV)
    assert run.code == 5, run.stderr
    assert f"{silencer.url} is unavailable (TimeoutError" in run.stderr
    assert 10 <= len(read_results(tmp_path / "jobs.results.jsonl")) == sim.stats.received
    assert silencer.opened_after == 0  # no reconnecting to ask once more


async def test_a_per_day_429_about_yesterday_does_not_spend_today_for_every_host(
        redis_url: str, tmp_path: Path) -> None:
    # Hosts wait for 00:00 UTC and fire at once; a server whose clock is 2 s behind answers a
    # per-day 429 for the day it is still in ("try again in 1s"). That is not the hosts' new
    # day: marked spent in Redis, it stopped every host for all of it (measured: a host at
    # 00:05 refused without sending, "2,000,000 of 2,000,000 tokens used").
    import datetime as dt

    from batchrun.backends.sync.engine import JobSpec
    from batchrun.files.jobstore import JobStore
    from batchrun.http.endpoint import Endpoint
    from batchrun.job import prepare
    from batchrun.job import run as run_job
    from batchrun.simulator import SimServer, Simulator
    from batchrun.state import StateUrl

    now = [dt.datetime(2026, 11, 27, 23, 50, tzinfo=dt.UTC)]

    async def sleep(s: float) -> None:  # b waits out the server's last second: time moves
        now[0] += dt.timedelta(seconds=s)
        await asyncio.sleep(0)

    sim = Simulator(SimConfig(SimLimits(rpd=5)), today=lambda: now[0] - dt.timedelta(seconds=2))
    async with SimServer(sim) as server:
        async def host(name: str, lines: int) -> Any:
            write_jsonl(tmp_path / f"{name}.jsonl", prompts(lines, name))
            spec = JobSpec(input=tmp_path / f"{name}.jsonl", output=tmp_path / f"{name}.out",
                           endpoint=Endpoint.make(server.base_url, None, None),
                           overrides={"rpm": 0, "tpm": 0, "rpd": 0})
            store = JobStore(tmp_path / name)
            return await run_job(spec, prepare(spec, False, store), store, FAKE_KEY,
                                 lambda event: None, "sim", now_utc=lambda: now[0],
                                 sleep=sleep, state=StateUrl(redis_url))

        assert await host("a", 6) is not None  # the 27th is spent (the server's 429)
        now[0] = dt.datetime(2026, 11, 28, 0, 0, 1, tzinfo=dt.UTC)  # the server: 23:59:59
        await host("b", 1)
        now[0] = dt.datetime(2026, 11, 28, 0, 5, tzinfo=dt.UTC)
        assert await host("c", 3) is None
    assert len(read_results(tmp_path / "c.out")) == 3
