"""What each endpoint of --endpoints did, counted from the engine's events: for the `--json`
summary, the final summary and the display. Events without an endpoint name (a job without
--endpoints) are not counted here."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from batchrun.events import Event, RequestFinished, RequestSent, RouteChanged, Throttled
from batchrun.policy.prices import Via, request_cost
from batchrun.routing.rules import BACK


@dataclass(slots=True)
class EndpointCounts:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    rate_limited: int = 0
    tokens_in: Counter[str] = field(default_factory=Counter)  # per model
    tokens_out: Counter[str] = field(default_factory=Counter)
    cached_in: Counter[str] = field(default_factory=Counter)  # a part of tokens_in
    out: dict[str, str] = field(default_factory=dict)  # model -> why it is out of rotation

    def cost(self) -> float | None:
        """List-price cost of what it answered; None if a model it answered has no price."""
        total = 0.0
        for model in set(self.tokens_in) | set(self.tokens_out):
            usd = request_cost(model, self.tokens_in[model], self.tokens_out[model],
                               self.cached_in[model], Via.SYNC)
            if usd is None:
                return None
            total += usd
        return round(total, 6)


def count_endpoint(counts: dict[str, dict[str, int]], endpoint: str, ok: bool) -> None:
    """One more result from `endpoint` in a manifest's per-endpoint counts."""
    row = counts.setdefault(endpoint, {"done": 0, "failed": 0})
    row["done"] += 1
    row["failed"] += not ok


def forget_failed(counts: dict[str, dict[str, int]]) -> None:
    """--retry-failed dropped every failed line of the output: so many fewer results from each
    endpoint (the requests are counted again where they are answered now)."""
    for name in list(counts):
        row = counts[name]
        row["done"] -= row["failed"]
        row["failed"] = 0
        if row["done"] <= 0:
            del counts[name]


class EndpointTally:
    """A Listener: counts per endpoint name."""

    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointCounts] = {}

    def _of(self, name: str) -> EndpointCounts:
        return self.endpoints.setdefault(name, EndpointCounts())

    def __call__(self, event: Event) -> None:
        match event:
            case RequestSent(endpoint=name) if name:
                self._of(name).sent += 1
            case RequestFinished(endpoint=name, ok=ok, model=model) if name:
                c = self._of(name)
                c.ok += ok
                c.failed += not ok
                c.tokens_in[model] += event.tokens_in
                c.tokens_out[model] += event.tokens_out
                c.cached_in[model] += event.cached_in
            case Throttled(endpoint=name) if name:
                self._of(name).rate_limited += 1
            case RouteChanged(endpoint=name, model=model, state=state):
                if state == BACK:
                    self._of(name).out.pop(model, None)
                else:
                    self._of(name).out[model] = state

    def summary(self) -> dict[str, Any]:
        return {name: {
            "requests": c.ok + c.failed, "ok": c.ok, "failed": c.failed, "sent": c.sent,
            "tokens": {"input": sum(c.tokens_in.values()),
                       "cached_input": sum(c.cached_in.values()),
                       "output": sum(c.tokens_out.values())},
            "rate_limited_429": c.rate_limited, "cost_usd": c.cost(), "out": c.out,
        } for name, c in sorted(self.endpoints.items())}
