"""What shapes one job run: input, output, endpoint, limits and policies."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from batchrun.files.ledger import ledger_host
from batchrun.http.endpoint import Endpoint
from batchrun.policy.classify import DEFAULT_MAX_RESPONSE_MB
from batchrun.policy.decide import DEFAULT_FLEX_WAIT_S
from batchrun.policy.prices import Price, price
from batchrun.policy.tiers import Limits, preset


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One endpoint of the file: where, whose key (the variable's name), which limits."""

    name: str
    endpoint: Endpoint
    tier: str = "tier1"
    priority: int = 1
    limits: dict[str, dict[str, int]] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    # The endpoint's own prices by the job's model (a reseller's, a negotiated rate); a model
    # not named here is priced from the list-price table.
    prices: dict[str, Price] = field(default_factory=dict)

    def price_for(self, model: str) -> Price | None:
        return self.prices.get(model) or price(model)

    def serves(self, model: str) -> bool:
        """A preset for the model, or a limits or models entry naming it."""
        return (model in self.limits or model in self.models
                or preset(model, self.tier) is not None)

    def limits_for(self, model: str) -> Limits:
        base = preset(model, self.tier) or Limits()
        return base.override(**self.limits.get(model, {}))

    def deployment(self, model: str) -> str:
        """The name this endpoint knows `model` by (an Azure deployment, another alias)."""
        return self.models.get(model, model)

    def quotas(self) -> set[tuple[str, str]]:
        """What one key's limits are kept for here: the host (one server, however its URL is
        spelled), and for Azure each deployment, which has a quota of its own."""
        host = ledger_host(self.endpoint.host)
        if not self.endpoint.azure:
            return {(host, "")}
        return {(host, self.deployment(m)) for m in (*self.limits, *self.models)} or {(host, "")}


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that shapes a run. Holds the key's env var name (in endpoint), never the key."""

    input: Path
    output: Path
    endpoint: Endpoint
    model: str = "gpt-4o-mini"
    tier: str = "tier1"
    overrides: dict[str, int | None] = field(default_factory=dict)
    concurrency: int | None = None
    max_retries: int = 8
    timeout_s: float = 600.0
    on_bad_line: str = "fail"
    drain_s: float = 10.0
    wait: bool = False  # at the daily limit: sleep until 00:00 UTC instead of stopping
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    # --endpoints: the file's endpoints (keys by variable name only); empty: `endpoint` alone
    endpoints: tuple[EndpointConfig, ...] = ()
    endpoints_file: str | None = None
    record_endpoint: bool = False  # --record-endpoint: name the endpoint in each output line
    via: str = "sync"  # sync | batch | auto (sync while today's budget lasts, then batch)
    poll_max_s: float = 60.0  # Batch API: the longest wait between two polls
    batch_queue_tokens: int | None = None  # Batch API: enqueued-token limit; None = preset
    detach: bool = False  # Batch API: submit, record, exit; resume collects
    cancel_batches: bool = False  # resume --via sync: cancel the job's batches, send the rest
    max_cost: float | None = None  # --max-cost: the job's spend cap in USD at list prices
    service_tier: str | None = None  # "flex": set in each chat body that sets none itself
    flex_wait_s: float = DEFAULT_FLEX_WAIT_S  # one request's total wait for flex capacity
    cache: str = "on"  # the response cache: on | off (--no-cache) | refresh (--cache-refresh)

    def limits_for(self, model: str) -> Limits:
        return (preset(model, self.tier) or Limits()).override(**self.overrides)
