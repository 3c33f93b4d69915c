"""What the engine tells the world. The progress display and the summary subscribe to these;
the engine knows nothing about terminals."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from batchrun.policy.classify import TOO_LARGE_CODE, Kind
from batchrun.policy.prices import PRICES_AS_OF, Via, request_cost
from batchrun.policy.tiers import Limits


@dataclass(frozen=True, slots=True)
class JobStarted:
    input: str
    output: str
    total: int
    already_done: int
    bad_lines: int
    limits: dict[str, Limits]
    base_url: str
    # Requests per model in the file (bad lines excluded), for a per-model ETA.
    models: dict[str, int] = field(default_factory=dict)
    proxy: str | None = None  # the HTTP(S) proxy requests go through, credentials masked
    endpoints: dict[str, str] = field(default_factory=dict)  # --endpoints: name -> host
    via: Via = Via.SYNC  # how the per-minute path is billed: Via.FLEX with --service-tier flex


@dataclass(frozen=True, slots=True)
class RequestSent:
    model: str
    cost: int = 0  # tokens charged against the per-minute limit (prompt + max output)
    endpoint: str = ""  # its name in --endpoints; "" without


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """One HTTP attempt came back (any outcome); `kind` is the classifier's verdict."""

    model: str
    kind: str
    endpoint: str = ""
    status: int | None = None  # the HTTP status (None: no answer), so 429s count as the server's
    code: str = ""  # the error code: "request_too_large" tells that 429 from the per-minute kind


_RATE_KINDS = {Kind.RATE_MINUTE.value: "minute", Kind.RATE_DAY.value: "day"}


def rate_limited_kind(event: AttemptEnded) -> str | None:
    """Which 429 an attempt met, as the timeline and the metrics both name it: "minute",
    "day" or "too_large" (the server's "Request too large", which fails the request); None for
    any other answer."""
    if event.code == TOO_LARGE_CODE:
        return "too_large"
    return _RATE_KINDS.get(event.kind)


@dataclass(frozen=True, slots=True)
class RequestFinished:
    custom_id: str
    model: str
    ok: bool
    tokens_in: int
    tokens_out: int
    attempts: int
    error: str = ""
    endpoint: str = ""  # the endpoint that gave the last answer ("" without --endpoints)
    batch: bool = False  # through the Batch API: billed at half the list price
    # The part of tokens_in the server served from its prompt cache, billed at the cached price.
    cached_in: int = 0
    # Answered from batchrun's response cache (#25): nothing sent, its tokens 0, and what its
    # stored usage would have cost at the job's rate.
    from_cache: bool = False
    saved_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class Throttled:
    """A per-minute 429: the limiter pauses for `pause_s`."""

    model: str
    pause_s: float
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class BudgetUsed:
    """Today's usage of one model's daily budget (sent at most about once a second)."""

    model: str
    tokens: int
    tpd: int
    requests: int
    rpd: int
    endpoint: str = ""


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: str  # running | cooling | draining | paused-daily | stopped | done
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RouteChanged:
    """--endpoints: an endpoint was taken out of rotation for a model (spent for the day,
    refused the key, unreachable, failing), or came back."""

    endpoint: str
    model: str
    state: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Note:
    """A sentence for the user about the run (failed results dropped for --retry-failed, the
    rest handed to the Batch API...): the CLI prints it on stderr; the library passes it on."""

    text: str


@dataclass(frozen=True, slots=True)
class Paced:
    """One (model, endpoint)'s limiter as it stands, sent about once a second while the job
    runs: what the timeline and the metrics draw beside the limits."""

    model: str
    endpoint: str
    rate_rpm: float  # the requests per minute the limiter admits at now
    rate_tpm: float  # the tokens per minute it admits at now (the server's charge)
    burst_tokens: float  # the burst it allows now
    in_flight: int
    waiting: int = 0  # requests of the model queued for admission: was work held back?


@dataclass(frozen=True, slots=True)
class BatchPart:
    """--via batch/auto: one part's batch changed state (uploaded, validating, in_progress,
    finalizing, completed, failed, expired, cancelled...) as the API reported it."""

    part: int
    batch_id: str
    state: str
    requests: int


Event = (
    JobStarted | RequestSent | AttemptEnded | RequestFinished | Throttled | BudgetUsed
    | StateChanged | RouteChanged | Note | Paced | BatchPart
)


class Listener(Protocol):
    def __call__(self, event: Event) -> None: ...


@dataclass(slots=True)
class Stats:
    """Counts everything needed for the summary; a Listener."""

    started: float = field(default_factory=time.monotonic)
    total: int = 0
    already_done: int = 0
    bad_lines: int = 0
    ok: int = 0
    failed: int = 0
    sent: int = 0
    throttled: int = 0
    in_flight: int = 0
    tokens_in: Counter[str] = field(default_factory=Counter)
    tokens_out: Counter[str] = field(default_factory=Counter)
    cached_in: Counter[str] = field(default_factory=Counter)  # a part of tokens_in
    # The part of tokens_in/out that went through the Batch API, which bills half.
    batch_in: Counter[str] = field(default_factory=Counter)
    batch_out: Counter[str] = field(default_factory=Counter)
    batch_cached: Counter[str] = field(default_factory=Counter)
    limits: dict[str, Limits] = field(default_factory=dict)
    sync_via: Via = Via.SYNC  # the per-minute path's rate (flex: Batch API rates)
    state: str = "starting"
    batch_requests: int = 0  # of ok + failed: the ones the Batch API answered
    from_cache: int = 0  # of ok: answered from the response cache, not sent
    saved_usd: float = 0.0

    def __call__(self, event: Event) -> None:
        match event:
            case RequestSent():
                self.sent += 1
                self.in_flight += 1
            case AttemptEnded():
                self.in_flight -= 1
            case RequestFinished(ok=ok, model=model, tokens_in=tin, tokens_out=tout):
                self.ok += ok
                self.failed += not ok
                self.tokens_in[model] += tin
                self.tokens_out[model] += tout
                self.cached_in[model] += event.cached_in
                self.from_cache += event.from_cache
                self.saved_usd += event.saved_usd
                if event.batch:
                    self.batch_requests += 1
                    self.batch_in[model] += tin
                    self.batch_out[model] += tout
                    self.batch_cached[model] += event.cached_in
            case Throttled():
                self.throttled += 1
            case JobStarted():
                self.started = time.monotonic()
                self.total, self.already_done = event.total, event.already_done
                self.bad_lines, self.limits = event.bad_lines, event.limits
                self.sync_via = event.via
            case StateChanged(state=state):
                self.state = state

    @property
    def done(self) -> int:
        return self.already_done + self.ok + self.failed

    def summary(self) -> dict[str, Any]:
        wall = max(1e-9, time.monotonic() - self.started)
        # Limits are per minute: a job shorter than a minute is measured against one minute.
        minutes = max(1.0, wall / 60)
        sync = Tokens(self.tokens_in - self.batch_in, self.tokens_out - self.batch_out,
                      self.cached_in - self.batch_cached)
        batch = Tokens(self.batch_in, self.batch_out, self.batch_cached)
        sync_cost, sync_unpriced = sync.cost(self.sync_via)
        batch_cost, batch_unpriced = batch.cost(Via.BATCH)
        costs = [c for c in (sync_cost, batch_cost) if c is not None]
        unpriced = sorted(set(sync_unpriced) | set(batch_unpriced))
        tokens_in, tokens_out = sum(self.tokens_in.values()), sum(self.tokens_out.values())
        return {
            "state": self.state,
            "requests": {
                "total": self.total,
                "ok": self.ok,
                "failed": self.failed,
                "bad_lines": self.bad_lines,
                "already_done": self.already_done,
                "not_done": self.total - self.done,
            },
            "tokens": {"input": tokens_in, "cached_input": sum(self.cached_in.values()),
                       "output": tokens_out},
            "cost_usd": _known(sum(costs) if costs else None, unpriced),
            "prices_as_of": PRICES_AS_OF,
            "unpriced_models": unpriced,
            "wall_seconds": round(wall, 3),
            "achieved": {
                "requests_per_min": round((self.ok + self.failed) / minutes, 1),
                "tokens_per_min": round((tokens_in + tokens_out) / minutes, 1),
            },
            "limits": {
                m: {"rpm": lim.rpm, "tpm": lim.tpm, "rpd": lim.rpd, "tpd": lim.tpd}
                for m, lim in self.limits.items()
            },
            "rate_limited_429": self.throttled,
            "cache": {"answered": self.from_cache, "saved_usd": round(self.saved_usd, 6)},
            # --via auto sends part of a job each way, at two prices: what went where.
            "via": {
                "sync": sync.way(self.ok + self.failed - self.batch_requests - self.from_cache,
                                 _known(sync_cost, sync_unpriced)),
                "batch": batch.way(self.batch_requests, _known(batch_cost, batch_unpriced)),
            },
        }


@dataclass(frozen=True, slots=True)
class Tokens:
    """The tokens of the requests that went one way (sync or Batch API), per model."""

    input: Counter[str]
    output: Counter[str]
    cached_input: Counter[str]  # a part of input

    def cost(self, via: Via) -> tuple[float | None, list[str]]:
        """The cost at list prices of the models that have one (None when no model sent has
        one), and the models that have none (named instead: one such model leaves the others'
        cost known)."""
        cost: float | None = None
        unpriced: list[str] = []
        for model in sorted(set(self.input) | set(self.output)):
            if not self.input[model] and not self.output[model]:
                continue  # bad lines and failures cost nothing
            usd = request_cost(model, self.input[model], self.output[model],
                               self.cached_input[model], via)
            if usd is None:
                unpriced.append(model)
            else:
                cost = (cost or 0.0) + usd
        return cost, unpriced

    def way(self, requests: int, cost: float | None) -> dict[str, Any]:
        return {"requests": requests,
                "tokens": {"input": sum(self.input.values()),
                           "cached_input": sum(self.cached_input.values()),
                           "output": sum(self.output.values())},
                "cost_usd": cost}


def _known(cost: float | None, unpriced: list[str]) -> float | None:
    """A cost to print: None (unknown) only when every model sent has no list price; nothing
    sent costs 0."""
    if cost is None:
        return None if unpriced else 0.0
    return round(cost, 6)


def emit_all(*listeners: Listener) -> Listener:
    def fan_out(event: Event) -> None:
        for listener in listeners:
            listener(event)

    return fan_out
