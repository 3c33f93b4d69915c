"""A scripted fake client for the engine on virtual time: each request's answer comes from a
function of the test, and the server records when each request went."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchrun.backends.stop import Stop
from batchrun.backends.sync.engine import Engine, JobSpec
from batchrun.events import Event
from batchrun.files.jobs import check_input
from batchrun.files.ledger import DailyBudget, Ledger, Scope
from batchrun.http.client import Endpoint, Kind, Outcome
from batchrun.policy.request import Request
from batchrun.policy.tiers import Limits
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import write_jsonl
from tests.helpers.virtual_time import VirtualClock, run_virtual

UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}
Answer = Callable[[Request, int, float], tuple[float, Outcome]]


def ok(tokens_in: int = 7, tokens_out: int = 3) -> Outcome:
    body = {"choices": [{"message": {"content": "hi"}}],
            "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out}}
    return Outcome(Kind.OK, 200, body)


def status(code: int, kind: Kind, message: str = "", hint_s: float | None = None) -> Outcome:
    return Outcome(kind, code, {"error": {"message": message}}, code=f"http_{code}",
                   message=message or f"HTTP {code}", hint_s=hint_s)


class Server:
    """A scripted client: `answer(request, attempt, now)` gives (latency, outcome). Records
    (time sent, custom_id) for every attempt."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.sent: list[tuple[float, str]] = []

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, request: Request) -> Outcome:
        now = asyncio.get_running_loop().time()
        self.sent.append((now, request.custom_id))
        attempt = sum(1 for _, cid in self.sent if cid == request.custom_id)
        latency, outcome = self.answer(request, attempt, now)
        await asyncio.sleep(latency)
        return outcome

    def times(self, custom_id: str) -> list[float]:
        return [t for t, cid in self.sent if cid == custom_id]


def engine_run(tmp_path: Path, rows: int | list[dict[str, Any]], server: Server, *,
               start: dt.datetime | None = None, tpd: int = 0,
               during: Callable[[Engine], Any] | None = None,
               after_check: Callable[[Path], None] | None = None,
               **spec: Any) -> tuple[Stop | None, list[Event], float]:
    """Run a job through `server` on virtual time; (stop, events, end time). `rows` is the
    input (or a number of prompts); `after_check` may change the input once it is checked."""
    if isinstance(rows, int):
        rows = [{"id": f"q{i}", "prompt": "hi", "max_tokens": 10} for i in range(rows)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    limits = {**UNLIMITED, **spec.pop("limits", {})}
    job_spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl", overrides=limits,
                       endpoint=Endpoint.make("http://127.0.0.1:9/v1", None, None), **spec)
    report = check_input(jobs, job_spec.model, set())
    if after_check is not None:
        after_check(jobs)
    events: list[Event] = []

    async def main(clock: VirtualClock) -> tuple[Stop | None, float]:
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock.now_utc)

        def budget_for(model: str, lim: Limits) -> DailyBudget:
            return DailyBudget(ledger, Scope("h", "k", model), tpd, 0)

        engine = Engine(job_spec, report, set(), FAKE_KEY, events.append, budget_for,
                        client=server, now_utc=clock.now_utc, rng=random.Random(7))
        if during is not None:
            asyncio.get_running_loop().call_soon(during, engine)
        try:
            stop = await engine.run()
        finally:
            ledger.close()
        return stop, asyncio.get_running_loop().time()

    kwargs = {"start": start} if start else {}
    stop, end = run_virtual(main, **kwargs)
    return stop, events, end
