"""What `estimate` says of the response cache: how many lines it would answer, what that
saves at list prices, and how many distinct requests would be sent for the rest (identical
lines are sent once).

Read-only: the cache is asked with a peek that counts no use (`peek_many`), so estimating a
file does not keep its answers from being evicted. Savings are each stored answer's own usage
priced as the engine bills it (policy/prices.request_cost), at the request's model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchrun.policy.cachekey import cache_key
from batchrun.policy.classify import reported_cached, reported_usage
from batchrun.policy.prices import Via, request_cost
from batchrun.policy.request import Request

PeekMany = Callable[[list[bytes]], dict[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """Whose cache and where: each (server, key digest) the job would ask, as the engine names
    them (backends/cacheflow.server_name, policy/cachekey.key_digest): one, or every endpoint
    of --endpoints, the first naming a request for the job's dedup; and a read that counts no
    use."""

    askers: tuple[tuple[str, bytes], ...]
    where: str
    peek_many: PeekMany


def job_rate(via: str, service_tier: str | None) -> Via:
    """The rate a job sent `via` would pay, as its engine counts what the cache saved: --via
    auto sends what it can at the per-minute rate, so its saving is not overstated."""
    if via == "batch":
        return Via.BATCH
    return Via.FLEX if service_tier == "flex" else Via.SYNC


def _saving(request: Request, body: bytes, rate: Via) -> float | None:
    """What the stored answer would be billed at list price at the job's rate (None: its
    model has no price)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0.0
    usage = reported_usage(answer)
    if usage is None:
        return 0.0
    return request_cost(request.model, usage[0], usage[1], reported_cached(answer), rate)


@dataclass(slots=True)
class CacheTally:
    lookup: CacheLookup
    rate: Via = Via.SYNC  # the job's: what it saves is what it would pay (cacheflow.saved_usd)
    lines: int = 0
    answered: int = 0
    saved_usd: float = 0.0
    unpriced: set[str] = field(default_factory=set)
    # The first 8 bytes of each key still to send: a million lines in tens of MB, and two
    # requests whose keys share 64 bits are not met in practice.
    to_send: set[int] = field(default_factory=set)

    def add(self, requests: Iterable[Request]) -> None:
        look = self.lookup
        keyed = [(r, [cache_key(server, key, r.url, r.body) for server, key in look.askers])
                 for r in requests]
        found = look.peek_many(list(dict.fromkeys(k for _, keys in keyed for k in keys)))
        for request, keys in keyed:
            self.lines += 1
            body = next((found[k] for k in keys if k in found), None)
            if body is None:
                self.to_send.add(int.from_bytes(keys[0][:8], "big"))
                continue
            self.answered += 1
            saved = _saving(request, body, self.rate)
            if saved is None:
                self.unpriced.add(request.model)
            else:
                self.saved_usd += saved

    def result(self) -> dict[str, Any]:
        sent = len(self.to_send)
        return {"looked_up": True, "where": self.lookup.where, "lines": self.lines,
                "answered": self.answered, "saved_usd": round(self.saved_usd, 6),
                "unpriced_models": sorted(self.unpriced), "requests_sent": sent,
                "identical_lines": self.lines - self.answered - sent}


def not_looked_up(why: str) -> dict[str, Any]:
    return {"looked_up": False, "why": why}


def describe(cache: dict[str, Any], prices_as_of: str) -> str:
    """The line `estimate` prints."""
    if not cache["looked_up"]:
        return f"cache: not looked up ({cache['why']})"
    lines, answered = cache["lines"], cache["answered"]
    text = f"cache: {answered:,} of {lines:,} lines answered from the cache"
    if answered:
        text += f", saving ${cache['saved_usd']:,.4f} at list prices of {prices_as_of}"
        if cache["unpriced_models"]:
            text += f" (no list price for {', '.join(cache['unpriced_models'])})"
    rest = lines - answered
    text += (f"; {cache['requests_sent']:,} distinct requests to send for the other "
             f"{rest:,} lines" if answered else
             f"; {cache['requests_sent']:,} distinct requests to send")
    if cache["identical_lines"]:
        text += f" (identical lines are sent once: {cache['identical_lines']:,} fewer)"
    return text
