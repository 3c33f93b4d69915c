"""One model's share of a run: its queue, limiter and daily budget, and the requests in it."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections import deque
from dataclasses import dataclass, field

from batchrun.classify import Outcome
from batchrun.decide import Tries
from batchrun.jobs import Request
from batchrun.limiter import Limiter
from batchrun.sizing import Size
from batchrun.state import Budget
from batchrun.tiers import Limits

# Until we have seen real answers, a request that sets no max_tokens is charged this much output.
INITIAL_OUTPUT_GUESS = 256


@dataclass(slots=True)
class Job:
    request: Request
    size: Size
    tries: Tries = field(default_factory=Tries)
    last: Outcome | None = None
    day: dt.date | None = None  # the UTC day its budget reservation was made on

    @property
    def cost(self) -> int:
        return self.size.charge


class Lane:
    """The queue, limiter and budget of one model."""

    def __init__(self, model: str, limits: Limits, limiter: Limiter, budget: Budget) -> None:
        self.model = model
        self.limits = limits
        self.limiter = limiter
        self.budget = budget
        self.pending: deque[Job] = deque()
        self.retries: deque[Job] = deque()
        self.outstanding = 0  # accepted from the reader, not yet written
        self.changed = asyncio.Event()
        self.space = asyncio.Event()
        self.settled = asyncio.Event()  # an attempt came back and its reservation settled
        self.budget_reported = -math.inf
        self.mean_output = float(INITIAL_OUTPUT_GUESS)
        self.seen_output = False

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
