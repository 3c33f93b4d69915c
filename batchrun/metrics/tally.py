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
)
from batchrun.policy.classify import Kind

# (model, endpoint): the endpoint is its name in --endpoints, "" without.
Lane = tuple[str, str]
# The 429s of AttemptEnded's kinds, as the metric's `kind` label says them.
RATE_LIMITED = {Kind.RATE_MINUTE.value: "minute", Kind.RATE_DAY.value: "day"}


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
class MetricsTally:
    """A Listener: everything /metrics shows, counted from one job's events."""

    job: str
    state: str = "starting"
    total: int = 0  # requests in the job's file
    already_done: int = 0  # answered by earlier runs
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + outcome
    sent: Counter[Lane] = field(default_factory=Counter)
    answered: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + kind
    rate_limited: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + kind
    billed: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # + kind
    charged: Counter[Lane] = field(default_factory=Counter)
    in_flight: Counter[Lane] = field(default_factory=Counter)
    pace: dict[Lane, Pace] = field(default_factory=dict)
    budget: dict[Lane, Budget] = field(default_factory=dict)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # model -> (rpm, tpm)
    parts: dict[int, str] = field(default_factory=dict)  # Batch API part -> its batch's state
    # Every (model, endpoint) that sent or answered: each shows all its counters from 0 on, so
    # rate() and increase() see a series begin at 0 rather than at its first value.
    lanes: set[Lane] = field(default_factory=set)
    # The summary's own arithmetic for the cost at list prices (sync, Batch API, flex).
    stats: Stats = field(default_factory=Stats)

    def __call__(self, event: Event) -> None:
        self.stats(event)
        match event:
            case RequestSent(model=model, endpoint=endpoint):
                self.lanes.add((model, endpoint))
                self.sent[model, endpoint] += 1
                self.charged[model, endpoint] += event.cost
                self.in_flight[model, endpoint] += 1
            case AttemptEnded(model=model, endpoint=endpoint, kind=kind):
                self.in_flight[model, endpoint] -= 1
                self.answered[model, endpoint, kind] += 1
                if kind in RATE_LIMITED:
                    self.rate_limited[model, endpoint, RATE_LIMITED[kind]] += 1
            case RequestFinished():
                self._finished(event)
            case Paced(model=model, endpoint=endpoint):
                self.pace[model, endpoint] = Pace(event.rate_rpm, event.rate_tpm,
                                                  event.burst_tokens)
            case BudgetUsed(model=model, endpoint=endpoint):
                self.budget[model, endpoint] = Budget(event.tokens, event.tpd, event.requests,
                                                      event.rpd)
            case JobStarted():
                self.total, self.already_done = event.total, event.already_done
                self.limits = {m: (lim.rpm, lim.tpm) for m, lim in event.limits.items()}
            case StateChanged(state=state):
                self.state = state
            case BatchPart(part=part, state=state):
                self.parts[part] = state

    def _finished(self, event: RequestFinished) -> None:
        model, endpoint = event.model, event.endpoint
        self.lanes.add((model, endpoint))
        # The response cache's answers (#25) carry from_cache: billed when first asked, not now.
        if getattr(event, "from_cache", False):
            self.requests[model, endpoint, "cached"] += 1
            return
        self.requests[model, endpoint, "ok" if event.ok else "failed"] += 1
        if server_too_large(event):
            self.rate_limited[model, endpoint, "too_large"] += 1
        self.billed[model, endpoint, "input"] += event.tokens_in
        self.billed[model, endpoint, "output"] += event.tokens_out
        self.billed[model, endpoint, "cached_input"] += event.cached_in

    @property
    def cost_usd(self) -> float | None:
        """This run's cost at list prices so far; None when no model sent has a price."""
        cost: float | None = self.stats.summary()["cost_usd"]
        return cost

    @property
    def batch_parts(self) -> Counter[str]:
        return Counter(self.parts.values())


def server_too_large(event: RequestFinished) -> bool:
    """The server's 429 "Request too large …" (final for the request, so the engine reports
    it as a failed request, not as an attempt of its own kind). A request batchrun itself
    knew could never fit was never sent: no attempt, no 429."""
    return (not event.ok and event.attempts > 0
            and event.error.lower().startswith("request too large"))
