"""The job's events counted as Prometheus reads them: counters that only grow, gauges that
say how things stand now, per (model, endpoint). Pure: no I/O, no prometheus_client."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from batchrun.events import (
    AttemptEnded,
    BatchPart,
    BudgetUsed,
    Event,
    JobStarted,
    Paced,
    RequestFinished,
    RequestSent,
    StateChanged,
    Stats,
    rate_limited_kind,
)

# (model, endpoint): the endpoint is its name in --endpoints, "" without.
Lane = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Pace:
    rpm: float
    tpm: float
    burst_tokens: float


@dataclass(frozen=True, slots=True)
class Budget:
    tokens: int
    tpd: int
    requests: int
    rpd: int


@dataclass(slots=True)
class LaneCounts:
    """One (model, endpoint)'s counters; attributes, not tuple-keyed Counters: a job of 2,000
    requests a second sends three events per request through here."""

    sent: int = 0
    charged: int = 0  # tokens against the per-minute limit
    in_flight: int = 0
    answered: Counter[str] = field(default_factory=Counter)  # by the classifier's kind
    requests: Counter[str] = field(default_factory=Counter)  # ok, failed, cached
    rate_limited: Counter[str] = field(default_factory=Counter)  # minute, day, too_large
    billed: Counter[str] = field(default_factory=Counter)  # input, output, cached_input
    pace: Pace | None = None
    budget: Budget | None = None


@dataclass(slots=True)
class MetricsTally:
    """A Listener: everything /metrics shows, counted from one job's events."""

    job: str
    state: str = "starting"
    total: int = 0  # requests in the job's file
    already_done: int = 0  # answered by earlier runs
    # Every (model, endpoint) that sent, answered or reported: each shows all its counters from
    # 0 on, so rate() and increase() see a series begin at 0 rather than at its first value.
    lanes: dict[Lane, LaneCounts] = field(default_factory=dict)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (rpm, tpm)
    parts: dict[int, str] = field(default_factory=dict)  # Batch API part -> its batch's state
    # The summary's own arithmetic for the cost at list prices (sync, Batch API, flex).
    stats: Stats = field(default_factory=Stats)

    def lane(self, model: str, endpoint: str) -> LaneCounts:
        counts = self.lanes.get((model, endpoint))
        if counts is None:
            counts = self.lanes[model, endpoint] = LaneCounts()
        return counts

    def __call__(self, event: Event) -> None:
        self.stats(event)
        match event:
            case RequestSent():
                lane = self.lane(event.model, event.endpoint)
                lane.sent += 1
                lane.charged += event.cost
                lane.in_flight += 1
            case AttemptEnded(kind=kind):
                lane = self.lane(event.model, event.endpoint)
                lane.in_flight -= 1
                lane.answered[kind] += 1
                if (limited := rate_limited_kind(event)) is not None:
                    lane.rate_limited[limited] += 1
            case RequestFinished():
                self._finished(event)
            case Paced():
                self.lane(event.model, event.endpoint).pace = Pace(
                    event.rate_rpm, event.rate_tpm, event.burst_tokens)
            case BudgetUsed():
                self.lane(event.model, event.endpoint).budget = Budget(
                    event.tokens, event.tpd, event.requests, event.rpd)
            case JobStarted():
                self.total, self.already_done = event.total, event.already_done
                self.limits = {m: (lim.rpm, lim.tpm) for m, lim in event.limits.items()}
            case StateChanged(state=state):
                self.state = state
            case BatchPart(part=part, state=state):
                self.parts[part] = state

    def _finished(self, event: RequestFinished) -> None:
        lane = self.lane(event.model, event.endpoint)
        # The response cache's answers (#25) carry from_cache: billed when first asked, not now.
        if event.from_cache:
            lane.requests["cached"] += 1
            return
        lane.requests["ok" if event.ok else "failed"] += 1
        lane.billed["input"] += event.tokens_in
        lane.billed["output"] += event.tokens_out
        lane.billed["cached_input"] += event.cached_in

    @property
    def cost_usd(self) -> float | None:
        """This run's cost at list prices so far; None when no model sent has a price."""
        cost: float | None = self.stats.summary()["cost_usd"]
        return cost

    @property
    def batch_parts(self) -> Counter[str]:
        return Counter(self.parts.values())
