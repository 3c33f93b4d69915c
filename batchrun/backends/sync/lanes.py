"""A model's share of a run, and each endpoint's share of a model.

    Lane  (one per model): the FIFO queue every route of the model takes from
    Route (one per endpoint x model): that endpoint's client, limiter and daily budget

A job without --endpoints has one Upstream, so one Route per model: exactly a lane of before.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol

from batchrun.backends.costcap import Spend
from batchrun.events import Paced
from batchrun.files.ledger import DailyBudget
from batchrun.pacing.calibrate import Calibration, Learned, Source
from batchrun.pacing.limiter import Limiter, ServerState, Ticket
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.decide import Tries, taught_tpm
from batchrun.policy.request import Request
from batchrun.policy.sizing import Size
from batchrun.policy.tiers import Limits
from batchrun.routing.rules import Out, Standing
from batchrun.state import Budget, Gate, SharedBudget

# Until we have seen real answers, a request that sets no max_tokens is charged this much output.
INITIAL_OUTPUT_GUESS = 256
# The learned accounting is written to the ledger (SQLite, or Redis for every host) when it has
# moved by this share since it was last written or read, and at the end of a run: not per answer.
RECORD_MOVE = 0.05


class Client(Protocol):
    """What the engine sends through: ApiClient, or a scripted fake in tests."""

    async def send(self, request: Request) -> Outcome: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> Any: ...


def _same(model: str) -> str:
    return model


@dataclass(frozen=True, slots=True)
class Upstream:
    """One endpoint as the engine sends to it. `name` is "" for a job without --endpoints."""

    name: str
    client: Client
    host: str
    limits_for: Callable[[str], Limits | None]  # None: this endpoint does not serve the model
    budget_for: Callable[[str, Limits], DailyBudget | SharedBudget]
    deployment: Callable[[str], str] = _same  # the name this endpoint knows a model by
    priority: int = 1
    key_digest: bytes = b""  # its key as the response cache knows it (policy.cachekey)
    server: str = ""  # the server as the response cache knows it (cacheflow.server_name)


@dataclass(slots=True)
class Job:
    request: Request
    size: Size
    tries: Tries = field(default_factory=Tries)
    last: Outcome | None = None
    day: dt.date | None = None  # the UTC day its budget reservation was made on
    charged: int | None = None  # what its route admitted it at: the server's charge as learned
    spend: Spend | None = None  # --max-cost: this attempt's hold on the spend cap
    key: bytes | None = None  # the response cache's key, when identical lines wait for it

    @property
    def cost(self) -> int:
        return self.size.charge if self.charged is None else self.charged


class Route:
    """One endpoint's share of one model: its client, and its gate (limiter and daily budget,
    local or shared through Redis: batchrun.state) with its own ledger scope: the endpoint's
    host, the key's fingerprint, the model family.

    `admit` and `settle` are the only places a request takes and gives back quota."""

    def __init__(self, upstream: Upstream, model: str, limits: Limits, gate: Gate) -> None:
        self.upstream = upstream
        self.model = model
        self.limits = limits
        self.gate = gate
        self.settled = asyncio.Event()  # an attempt came back and its reservation settled
        self.budget_reported = -math.inf
        self.paced_reported = -math.inf  # when its Paced event last went out (engine clock)
        self.connected = False  # has any attempt through this route reached a server?
        self.out: Out | None = None
        self.refusal: Outcome | None = None  # the answer that took it out for the run
        self.out_day: dt.date | None = None  # Out.DAILY: the UTC day it is spent for
        self.back_at = math.inf  # Out.FAILING: when its cool-off ends (engine clock)
        self.streak = 0  # retryable failures in a row
        self.cool_offs = 0
        self.calibration = Calibration()  # this server's accounting, learned from its answers
        # A shared budget (Redis) hears what other hosts learn with every admission; the local
        # ledger only has what earlier runs learned, read once.
        self._follows = not isinstance(gate.budget, DailyBudget)
        self._recorded: Learned | None = None  # what the ledger holds, as far as we know
        self._start_from_ledger()

    @property
    def name(self) -> str:
        return self.upstream.name

    @property
    def limiter(self) -> Limiter:
        return self.gate.limiter

    @property
    def budget(self) -> Budget:
        return self.gate.budget

    def standing(self, today: dt.date, now: float) -> Standing:
        """Where the route stands now: a spent day and a cool-off end by themselves."""
        if self.out is Out.DAILY and self.out_day != today:
            self.out = None
        if self.out is Out.FAILING and now >= self.back_at:
            self.out, self.streak = None, 0
        return Standing(self.upstream.priority, self.out)

    def pacing(self, waiting: int) -> Paced:
        """The limiter as it stands: the rates it admits at now (after any cut by 429s)."""
        pacer = self.limiter.pacer
        scale = pacer.rate_scale
        return Paced(self.model, self.name, pacer.rpm * scale, pacer.tpm * scale,
                     pacer.tpm / 60 * scale * pacer.burst_s, self.limiter.in_flight, waiting)

    def ready_in(self, cost: int, now: float) -> float:
        """Seconds until the limiter would admit `cost` (inf: every slot is taken)."""
        if self.limiter.in_flight >= self.limiter.max_in_flight:
            return math.inf
        return self.limiter.pacer.delay(cost, now)

    async def admit(self, job: Job, now: float) -> Ticket | None:
        """Admission, in one place: today's daily budget, then the per-minute limits (Gate.admit,
        which waits; one atomic step with Redis). None: today's budget cannot cover the job
        (nothing is held). Cancelled while waiting, the gate gives the reservation back whole.
        Raises SharedStateError when the shared state cannot be used."""
        if self._follows:
            self._start_from_ledger()
        job.charged = self.calibration.charge(job.size.visible)
        admitted = await self.gate.admit(job.charged, now)
        if admitted is None:
            job.day = None
            return None
        job.day, ticket = admitted
        return ticket

    async def settle(self, job: Job, ticket: Ticket, outcome: Outcome) -> None:
        """An attempt's answer gives back what admission took, in one place (Gate.settle): the
        slot, with what the server's headers taught, and the daily reservation replaced by what
        was billed."""
        server = outcome.server
        tpm = taught_tpm(outcome)
        if tpm is not None:  # the limiter adopts it; queued requests are checked against it
            server = replace(server or ServerState(), limit_tokens=tpm)
        assert job.day is not None
        await self.gate.settle(job.day, ticket, job.cost, outcome, server)
        learn(self.calibration, job.size, outcome)
        self.record_accounting(moved_by=RECORD_MOVE)
        self.settled.set()

    def _start_from_ledger(self) -> None:
        """Start from what an earlier run or another host learned of this key and model, so
        the charge is not learned again from 429s (or never, on a server that answers none)."""
        learned = self.budget.accounting()
        if learned is not None and learned != self._recorded:
            self.calibration.start(learned)
            self._recorded = learned

    def record_accounting(self, moved_by: float = 0.0) -> None:
        """Write the calibration's fit to the ledger when it differs from what the ledger
        holds by more than `moved_by` (the engine writes the last word with 0 at the end)."""
        learned = self.calibration.learned()
        if learned is None:
            return
        held = self._recorded
        if held is not None and held.basis == learned.basis and abs(
                learned.k / held.k - 1) <= moved_by:
            return
        self.budget.record_accounting(learned)
        self._recorded = learned

    def exhaust(self, job: Job, server_message: str = "") -> None:
        """The API said the day's budget is spent (a per-day 429): for the day the job's
        reservation was made on (DailyBudget.exhaust)."""
        assert job.day is not None  # admit set it
        self.budget.exhaust(job.day, server_message)

    def rate_limited(self, ticket: Ticket, hint_s: float | None) -> float:
        """A per-minute 429: the limiter's one shared pause (Limiter.rate_limited)."""
        return self.limiter.rate_limited(ticket, hint_s)

    def request_for(self, request: Request) -> Request:
        """The request as this endpoint names the model (an Azure deployment, an alias)."""
        name = self.upstream.deployment(self.model)
        if name == request.model:
            return request
        return replace(request, body={**request.body, "model": name})


def learn(calibration: Calibration, size: Size, outcome: Outcome) -> None:
    """Feed one answer's evidence of the server's accounting to its route's calibration."""
    if outcome.server_requested_tokens is not None:
        calibration.observe(Source.EXACT, size.visible, outcome.server_requested_tokens)
    elif outcome.kind is Kind.OK and outcome.usage_known:
        prompt, _ = outcome.usage
        calibration.observe(Source.USAGE, size.visible, prompt)


class Lane:
    """The FIFO queue of one model, and the routes that take from it."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.routes: list[Route] = []
        self.pending: deque[Job] = deque()
        self.retries: deque[Job] = deque()
        self.outstanding = 0  # accepted from the reader, not yet written
        self.changed = asyncio.Event()
        self.space = asyncio.Event()
        self.mean_output = float(INITIAL_OUTPUT_GUESS)
        self.seen_output = False

    def peek(self) -> Job | None:
        if self.retries:
            return self.retries[0]
        return self.pending[0] if self.pending else None

    def next_job(self) -> Job | None:
        if self.retries:
            return self.retries.popleft()
        if self.pending:
            self.space.set()
            return self.pending.popleft()
        return None

    def learn_output(self, tokens_out: int) -> None:
        if not self.seen_output:
            self.mean_output, self.seen_output = float(tokens_out), True
        else:
            self.mean_output = 0.95 * self.mean_output + 0.05 * tokens_out
