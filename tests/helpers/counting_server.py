"""A scripted server on virtual time that counts what it received and holds answers in flight,
and a job run against it, for the stops that drain."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchrun.backends.stop import Stop
from batchrun.backends.sync.engine import Engine, JobSpec
from batchrun.events import Event
from batchrun.files.jobs import check_input
from batchrun.files.ledger import DailyBudget, Ledger, Scope
from batchrun.http.endpoint import Endpoint
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.request import Request
from batchrun.policy.tiers import Limits
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import write_jsonl
from tests.helpers.virtual_time import VirtualClock, run_virtual

UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}
RESUME = "batchrun resume job-1"


def ok(tokens_in: int = 7, tokens_out: int = 3) -> Outcome:
    body = {"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}
    return Outcome(Kind.OK, 200, body)


class Server:
    """A scripted API that counts every request it received, by model. `latency(request)`:
    seconds until it answers; `answer(request)`: what it answers."""

    def __init__(self, latency: Callable[[Request], float],
                 answer: Callable[[Request], Outcome] = lambda request: ok()) -> None:
        self.latency, self.answer = latency, answer
        self.received: list[Request] = []

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, request: Request) -> Outcome:
        self.received.append(request)
        await asyncio.sleep(self.latency(request))
        return self.answer(request)

    def count(self, model: str) -> int:
        return sum(1 for r in self.received if r.model == model)


BudgetFor = Callable[[Ledger, str, Limits], Any]


def run_job(tmp_path: Path, rows: list[dict[str, Any]], server: Server, *,
            tpd: dict[str, int] | None = None, budget_for: BudgetFor | None = None,
            during: Callable[[Engine], Any] | None = None,
            **spec: Any) -> tuple[Stop | None, list[Event], float]:
    """The job through `server` on virtual time: (stop, events, virtual end time). `tpd`: the
    daily token budget of each model (none: unlimited)."""
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl", overrides=dict(UNLIMITED),
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None), **spec)
    report = check_input(jobs, job_spec.model, set())
    events: list[Event] = []

    async def main(clock: VirtualClock) -> tuple[Stop | None, float]:
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock.now_utc)

        def local(model: str, limits: Limits) -> Any:
            if budget_for is not None:
                return budget_for(ledger, model, limits)
            return DailyBudget(ledger, Scope("h", "k", model), (tpd or {}).get(model, 0), 0)

        engine = Engine(job_spec, report, set(), FAKE_KEY, events.append, local,
                        client=server, now_utc=clock.now_utc, rng=random.Random(7))
        if during is not None:
            asyncio.get_running_loop().call_soon(during, engine)
        try:
            stop = await engine.run()
        finally:
            ledger.close()
        return stop, asyncio.get_running_loop().time()

    stop, end = run_virtual(main)
    return stop, events, end
