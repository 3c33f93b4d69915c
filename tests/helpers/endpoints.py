"""Several endpoints: files that list them, simulators behind them, and scripted servers on
virtual time that log which endpoint answered."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun.backends.stop import Stop
from batchrun.backends.sync.engine import Engine, JobSpec, Upstream
from batchrun.events import Event, RouteChanged
from batchrun.files.jobs import check_input
from batchrun.files.ledger import DailyBudget, Ledger, Scope
from batchrun.http.client import Endpoint, Outcome
from batchrun.policy.request import Request
from batchrun.policy.tiers import Limits
from batchrun.simulator import SimConfig
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.scripted_server import Answer, Server, ok
from tests.helpers.virtual_time import START, VirtualClock, run_virtual

KEY_A = "sk-test-endpointA-0123456789abcdef"
KEY_B = "sk-test-endpointB-0123456789abcdef"


def toml_file(path: Path, *endpoints: str) -> Path:
    path.write_text("\n".join(endpoints))
    return path


def openai(name: str, url: str, env: str, rpm: int, tpm: int = 0, tpd: int = 0,
           **extra: Any) -> str:
    more = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in extra.items())
    return (f'[[endpoint]]\nname = "{name}"\nbase_url = "{url}"\napi_key_env = "{env}"\n{more}'
            f'[endpoint.limits."gpt-4o-mini"]\nrpm = {rpm}\ntpm = {tpm}\ntpd = {tpd}\n')


def two_keyed_endpoints(tmp_path: Path, sim_factory: Any,
                        monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any, Path]:
    """Endpoints a and b: two simulators, each refusing all but its own key ($KEY_A, $KEY_B),
    in one endpoints file."""
    a = sim_factory(SimConfig(latency_s=0.02, api_key=KEY_A))
    b = sim_factory(SimConfig(latency_s=0.02, api_key=KEY_B))
    monkeypatch.setenv("KEY_A", KEY_A)
    monkeypatch.setenv("KEY_B", KEY_B)
    conf = toml_file(tmp_path / "endpoints.toml", openai("a", a.base_url, "KEY_A", 1200),
                     openai("b", b.base_url, "KEY_B", 1200))
    return a, b, conf


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"hello {i}", "max_tokens": 5} for i in range(n)]


class Logged(Server):
    """A Server that also writes each first attempt into a log shared by every server."""

    def __init__(self, answer: Answer, log: list[str]) -> None:
        super().__init__(answer)
        self.log = log

    async def send(self, request: Request) -> Outcome:
        if request.custom_id not in self.log:
            self.log.append(request.custom_id)
        return await super().send(request)


@dataclass
class Ep:
    answer: Answer
    limits: Limits = field(default_factory=Limits)
    priority: int = 1
    server: Logged | None = None


def always(latency: float, outcome: Outcome | None = None) -> Answer:
    return lambda request, attempt, now: (latency, outcome or ok())


def run(tmp_path: Path, rows: int, endpoints: dict[str, Ep], start: dt.datetime = START,
        **spec: Any) -> tuple[Stop | None, list[Event], float, dict[str, int]]:
    """(stop, events, end time, results per endpoint); each id has at most one line."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [
        {"id": f"q{i}", "prompt": "hi", "max_tokens": 10} for i in range(rows)])
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl", record_endpoint=True,
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None), **spec)
    report = check_input(jobs, job_spec.model, set())
    events: list[Event] = []
    log: list[str] = []
    for ep in endpoints.values():
        ep.server = Logged(ep.answer, log)

    async def main(clock: VirtualClock) -> tuple[Stop | None, float]:
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock.now_utc)

        def upstream(name: str, ep: Ep) -> Upstream:
            def budget_for(model: str, lim: Limits) -> DailyBudget:
                return DailyBudget(ledger, Scope(f"{name}.test", "k", model), lim.tpd, lim.rpd)

            assert ep.server is not None
            return Upstream(name, ep.server, f"{name}.test", lambda model: ep.limits,
                            budget_for, priority=ep.priority)

        upstreams = [upstream(name, ep) for name, ep in endpoints.items()]
        engine = Engine(job_spec, report, set(), FAKE_KEY, events.append, None,  # type: ignore[arg-type]
                        now_utc=clock.now_utc, rng=random.Random(7), upstreams=upstreams)
        try:
            stop = await engine.run()
        finally:
            ledger.close()
        return stop, asyncio.get_running_loop().time()

    stop, end = run_virtual(main, start)
    results = read_results(tmp_path / "out.jsonl")
    by: dict[str, int] = dict.fromkeys(endpoints, 0)
    for line in results.values():
        by[line["endpoint"]] += 1
    run.log = log  # type: ignore[attr-defined]
    return stop, events, end, by


def outs(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.endpoint, e.state) for e in events if isinstance(e, RouteChanged)]


FILE = '''[[endpoint]]
name = "a"
base_url = "https://a.example/v1"
api_key_env = "NOT_SET_A"
[endpoint.limits."gpt-4o-mini"]
rpm = 600
tpm = 0

[[endpoint]]
name = "b"
base_url = "https://b.example/v1"
api_key_env = "NOT_SET_B"
[endpoint.limits."gpt-4o-mini"]
rpm = 1200
tpm = 6000

[[endpoint]]
name = "spare"
base_url = "https://c.example/v1"
api_key_env = "NOT_SET_C"
priority = 2
'''
