"""The one interface the engine admits and settles requests through, and its local form.

A Gate joins a model's daily budget and its per-minute admission:

    admit(cost, now)   -> (day, ticket) | None     budget for the day, then the rate limits
    settle(day, ticket, cost, outcome, server)     the answer came: free the slot, correct the
                                                   day's count, learn from the server

`LocalGate` is batchrun as it was before shared state: the SQLite DailyBudget, then the
evidence-based Limiter, in that order and with the same undo when a stop cancels a request
waiting for admission. The Redis gate (batchrun.state._redis) takes both in one atomic step
on the Redis server and keeps only a local in-flight cap (`SlotLimiter`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from batchrun.errors import StateError
from batchrun.files.ledger import DailyBudget, Scope
from batchrun.pacing.calibrate import Learned
from batchrun.pacing.limiter import Limiter, ServerState, Ticket
from batchrun.policy.classify import Kind, Outcome
from batchrun.policy.decide import billed
from batchrun.policy.tiers import Limits


class SharedStateError(StateError):
    """The shared state (Redis) cannot be used: the engine stops admitting, drains what is in
    flight and exits 5 with the checkpoint, instead of failing every task at once."""


class Budget(Protocol):
    """What the engine reads of a model's daily budget besides admitting and settling."""

    tpd: int
    rpd: int

    @property
    def limited(self) -> bool: ...

    def used_today(self) -> tuple[int, int]: ...

    def release(self) -> None: ...

    def describe(self, server_message: str = "") -> str: ...

    def exhaust(self, day: dt.date, server_message: str = "") -> None: ...

    def record_accounting(self, learned: Learned) -> None: ...

    def accounting(self) -> Learned | None: ...


class Gate(Protocol):
    @property
    def limiter(self) -> Limiter: ...

    @property
    def budget(self) -> Budget: ...

    async def admit(self, cost: int, now: float) -> tuple[dt.date, Ticket] | None:
        """Wait until a request of this cost may go and take its budget; None when today's
        daily budget cannot cover it. Raises StateError when the shared state is unusable."""

    async def settle(self, day: dt.date, ticket: Ticket, cost: int, outcome: Outcome,
                     server: ServerState | None) -> None:
        """An attempt came back: free its slot, settle its reservation made on `day` to what
        the server billed, and learn from the server (`server`: its rate headers, if any)."""


class SharedBudget(Budget, Protocol):
    """A budget kept elsewhere that makes its own gate (the Redis one)."""

    scope: Scope

    @property
    def spent(self) -> Mapping[dt.date, int]:
        """The tokens this run was billed, by UTC day: the job's, for its manifest."""

    def gate(self, limits: Limits, concurrency: int | None, clock: Callable[[], float],
             sleep: Callable[[float], Awaitable[None]]) -> Gate: ...


class LocalGate:
    """The SQLite ledger's DailyBudget, then the local Limiter: batchrun without --state."""

    def __init__(self, budget: DailyBudget, limiter: Limiter) -> None:
        self.budget, self.limiter = budget, limiter

    async def admit(self, cost: int, now: float) -> tuple[dt.date, Ticket] | None:
        day = self.budget.reserve(cost, now)
        if day is None:
            return None
        try:
            ticket = await self.limiter.acquire(cost)
        except asyncio.CancelledError:
            # A stop caught it waiting for admission (_halt cancels the dispatchers): it was
            # never sent, so its daily reservation goes back whole, tokens and request.
            self.budget.unreserve(day, cost)
            raise
        return day, ticket

    async def settle(self, day: dt.date, ticket: Ticket, cost: int, outcome: Outcome,
                     server: ServerState | None) -> None:
        kind = outcome.kind
        self.limiter.release(ticket, None if kind is Kind.RATE_MINUTE else server,
                             ok=kind is Kind.OK)
        if not outcome.sent:
            # Nothing left this machine (a refused connection, a proxy refusing the tunnel):
            # the server counted no request and no charge, so the day gets both back.
            self.budget.unreserve(day, cost)
            return
        self.budget.settle(day, cost, billed(outcome, cost))


def open_gate(budget: DailyBudget | SharedBudget, limits: Limits, concurrency: int | None,
              clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]) -> Gate:
    """The gate of one model: `budget` is what the runner's budget_for made for it."""
    if isinstance(budget, DailyBudget):
        return LocalGate(budget, Limiter(limits.rpm, limits.tpm, concurrency, clock, sleep))
    return budget.gate(limits, concurrency, clock, sleep)
