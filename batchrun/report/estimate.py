"""batchrun estimate: tokens, cost and time to finish under the tier, before sending anything.

Exact where exactness is possible (prompt tokens: tiktoken + the chat formula; request counts),
and explicit where it is not (output tokens: the requests' max_tokens, or a stated assumption).
"""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.backends.batch.plan import MAX_REQUESTS
from batchrun.errors import BadLine, BadLinesError
from batchrun.files.jobs import read_jobs
from batchrun.pacing.calibrate import CHARS, Learned
from batchrun.policy.prices import PRICES_AS_OF, Via, price
from batchrun.policy.request import CHAT_URL, Request
from batchrun.policy.sizing import Size, never_fits, never_fits_batch
from batchrun.policy.tiers import (
    Limits,
    batch_queue_tokens,
    daily,
    daily_source,
    family,
    preset,
)
from batchrun.policy.tokens import choices, prompt_tokens_many
from batchrun.report.cache_share import PrefixCache
from batchrun.report.estimate_cache import CacheLookup, CacheTally, job_rate, not_looked_up
from batchrun.routing.config import EndpointConfig
from batchrun.routing.plan import plan
from batchrun.routing.rules import combined

DEFAULT_ASSUMED_OUTPUT = 256
CHUNK = 4096  # requests tokenized per batch
SHOWN = 20
MINUTES_PER_DAY = 24 * 60
# Why a request of this size can never run for this model under these limits, or None.
Fits = Callable[[Size, str, Limits], str | None]


@dataclass(frozen=True, slots=True)
class Today:
    """What the ledger knows of one key and model: today's usage, whether the server's per-day
    429 said today is spent, and the server's learned accounting (its rate-limit charge of a
    prompt), if any."""

    tokens: int = 0
    requests: int = 0
    spent_on: str = ""  # the UTC date, when the server said that day (today) is spent
    accounting: Learned | None = None


def nothing_known(model: str) -> Today:
    return Today()


def known_today(rows: list[dict[str, object]], day: dt.date, host: str, key_fingerprint: str,
                accountings: dict[str, Learned]) -> Callable[[str], Today]:
    """Today per model for one key at one host, from the ledger's usage rows of `day` and its
    learned accountings (a model's snapshots share their family's, as the ledger books them)."""
    mine = {str(r["model"]): r for r in rows
            if r["host"] == host and r["key_fingerprint"] == key_fingerprint}

    def today(model: str) -> Today:
        name = family(model) or model
        r = mine.get(name)
        return Today(int(r["tokens"]), int(r["requests"]),  # type: ignore[call-overload]
                     day.isoformat() if r["exhausted"] else "",
                     accountings.get(name)) if r else Today(accounting=accountings.get(name))

    return today


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    prompt_tokens: int = 0
    max_output_tokens: int = 0  # from requests that set a maximum
    requests_without_max: int = 0
    assumed_output_tokens: int = 0  # for the requests that set none
    charge_tokens: int = 0  # what the per-minute limiter counts
    chars_tokens: int = 0  # the characters estimate of the prompts, ceil(characters / 4)
    output_charged_tokens: int = 0  # the output part of charge_tokens
    cached_tokens: int = 0  # predicted: prompt tokens a shared prefix has in the server's cache

    def server_charge(self, learned: Learned) -> int:
        """The server's charge as learned: its prompt charge, the output as the requests set
        it (calibrate.Learned)."""
        basis = self.chars_tokens if learned.basis == CHARS else self.prompt_tokens
        return round(learned.k * basis) + self.output_charged_tokens

    @property
    def output_tokens(self) -> int:
        return self.max_output_tokens + self.assumed_output_tokens


@dataclass(slots=True)
class _Report:
    tallies: dict[str, _Tally] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)
    bad_total: int = 0
    never: list[dict[str, Any]] = field(default_factory=list)
    never_total: int = 0


def _chunks(path: Path, model: str, report: _Report) -> Iterator[list[Request]]:
    chunk: list[Request] = []
    for item in read_jobs(path, model):
        if isinstance(item, BadLine):
            report.bad_total += 1
            if len(report.bad) < BadLinesError.SHOWN:
                report.bad.append(item)
            continue
        chunk.append(item)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _never_runs(report: _Report, request: Request, reason: str) -> None:
    report.never_total += 1
    if len(report.never) < SHOWN:
        report.never.append({"line": request.line_no, "id": request.custom_id, "reason": reason})


def _tally(path: Path, model: str, limits_for: Callable[[str], Limits],
           assumed_output: int, fits: Fits, answers: CacheTally | None = None) -> _Report:
    report = _Report()
    cache = PrefixCache()
    limits_for = functools.cache(limits_for)
    for chunk in _chunks(path, model, report):
        if answers is not None:
            answers.add(chunk)
        counts = prompt_tokens_many([(r.url, r.body) for r in chunk])
        for request, prompt in zip(chunk, counts, strict=True):
            size = Size.of(request, prompt, assumed_output)
            lim = limits_for(request.model)
            reason = fits(size, request.model, lim)
            if reason is not None:
                # Recorded as failed without being sent: no tokens, cost or time.
                _never_runs(report, request, reason)
                continue
            t = report.tallies.setdefault(request.model, _Tally())
            out = size.max_output
            if out is None and request.url == CHAT_URL:
                t.requests_without_max += 1
                t.assumed_output_tokens += assumed_output * choices(request.body)
            t.requests += 1
            t.prompt_tokens += prompt
            if request.url == CHAT_URL:
                t.cached_tokens += min(prompt, cache.predict(request.model,
                                                             request.body.get("messages")))
            t.max_output_tokens += out or 0
            t.charge_tokens += size.charge
            t.chars_tokens += size.chars
            t.output_charged_tokens += size.output_charged
    return report


def _accounting(t: _Tally, learned: Learned | None) -> dict[str, Any]:
    """Which count the time to finish used: the server's learned charge or our own estimate.
    `ratio`: the server's charge of the whole job per token of ours; `prompt`: what it was
    learned to charge a prompt (k x `basis`: "chars", characters/4, or "tokens", tiktoken's)."""
    ours = t.charge_tokens
    if learned is None:
        return {"used": "ours", "ratio": None, "prompt": None, "server_charge_tokens": ours}
    server = t.server_charge(learned)
    return {"used": "learned", "ratio": round(server / ours, 4) if ours else None,
            "prompt": {"basis": learned.basis, "k": round(learned.k, 4)},
            "server_charge_tokens": server}


def _batch_plan(t: _Tally, queue: int) -> dict[str, Any]:
    """Through the Batch API: the enqueued-token limit lets `queue` prompt tokens be in progress
    at once, so the job runs in `rounds` waves, each within the 24 h completion window."""
    rounds = math.ceil(t.prompt_tokens / queue) if queue and t.prompt_tokens else 1
    return {"queue_tokens": queue, "rounds": rounds,
            "parts_by_count": math.ceil(t.requests / MAX_REQUESTS) if t.requests else 0,
            "hours_at_most": rounds * 24}


def estimate(
    path: Path,
    model: str,
    tier: str,
    overrides: dict[str, int | None],
    concurrency: int | None = None,
    latency_s: float = 2.0,
    assumed_output: int = DEFAULT_ASSUMED_OUTPUT,
    on_bad_line: str = "fail",
    today: Callable[[str], Today] = nothing_known,
    today_known: bool = False,
    endpoints: tuple[EndpointConfig, ...] = (),
    via: str = "sync",
    batch_queue: int | None = None,
    service_tier: str | None = None,
    cache: CacheLookup | str = "no cache given",
) -> dict[str, Any]:
    """The estimate as a plain dict (the --json schema). Sends nothing. With `endpoints`, each
    model's limits are those of every priority-1 endpoint serving it together. `cache`: the
    response cache to ask which lines it would answer, or why it is not asked."""

    def limits_for(m: str) -> Limits:
        if endpoints:
            serving = [c for c in endpoints if c.serves(m)]
            first = [c for c in serving if c.priority == 1] or serving
            return combined([c.limits_for(m) for c in first])
        return (preset(m, tier) or Limits()).override(**overrides)

    def queue_for(m: str) -> int:
        return batch_queue if batch_queue is not None else batch_queue_tokens(m, tier)

    def fits(size: Size, m: str, lim: Limits) -> str | None:
        if via == "batch":  # the Batch API's one limit is its queue
            return never_fits_batch(size, m, queue_for(m))
        return never_fits(size, m, lim.tpm, lim.tpd)

    answers = CacheTally(cache, job_rate(via, service_tier)) \
        if isinstance(cache, CacheLookup) else None
    report = _tally(path, model, limits_for, assumed_output, fits, answers)
    if report.bad_total and on_bad_line == "fail":
        raise BadLinesError(str(path), report.bad, report.bad_total)
    models: list[dict[str, Any]] = []
    for name, t in sorted(report.tallies.items()):
        lim = limits_for(name)
        p = price(name)
        cached = t.cached_tokens
        rate = Via.FLEX if service_tier == "flex" else Via.SYNC  # flex: Batch API rates
        cost = None if p is None else {
            "input": round(p.cost(t.prompt_tokens, 0, cached, rate), 6),
            "output": round(p.cost(0, t.output_tokens, via=rate), 6),
            "total": round(p.cost(t.prompt_tokens, t.output_tokens, cached, rate), 6),
            "batch_api_total": round(
                p.cost(t.prompt_tokens, t.output_tokens, cached, Via.BATCH), 6),
        }
        known_today = today(name)
        # The server's charge, when the ledger has learned how it counts: what TPM paces.
        learned = known_today.accounting
        charge = t.charge_tokens if learned is None else t.server_charge(learned)
        minutes = {
            "by_rpm": round(t.requests / lim.rpm, 2) if lim.rpm else None,
            "by_tpm": round(charge / lim.tpm, 2) if lim.tpm else None,
            "by_concurrency": round(t.requests * latency_s / concurrency / 60, 2)
            if concurrency else None,
        }
        rows: list[dict[str, Any]] = []
        if endpoints:
            # Several endpoints each bound by their own limit: slower than the summed limits
            # when one is RPM-bound and another TPM-bound.
            minutes["by_endpoints"], rows = plan(endpoints, name, t.requests, charge)
        known = {k: v for k, v in minutes.items() if v is not None}
        binding = max(known, key=lambda k: known[k]).removeprefix("by_") if known else None
        total_minutes = max(known.values(), default=0.0)
        day = daily(lim, t.prompt_tokens + t.output_tokens, t.requests,
                    (known_today.tokens, known_today.requests),
                    spent_on=known_today.spent_on)
        days = max(day.days, math.ceil(total_minutes / MINUTES_PER_DAY) if total_minutes else 1)
        models.append({
            "model": name,
            "known_model": p is not None,
            "requests": t.requests,
            "prompt_tokens": t.prompt_tokens,
            "predicted_cached_input_tokens": t.cached_tokens,
            "max_output_tokens": t.max_output_tokens,
            "requests_without_max": t.requests_without_max,
            "assumed_output_tokens_per_request": assumed_output,
            "output_tokens": t.output_tokens,
            "limit_tokens": t.charge_tokens,
            "accounting": _accounting(t, known_today.accounting),
            "cost_usd": cost,
            "limits": {"rpm": lim.rpm, "tpm": lim.tpm, "rpd": lim.rpd, "tpd": lim.tpd},
            "minutes": minutes,
            "binding": binding,
            "minutes_to_finish": round(total_minutes, 2),
            "used_today": {"tokens": known_today.tokens, "requests": known_today.requests,
                           "known": today_known},
            "daily": {"binds": day.binds, "limit": day.limit, "source": day.source,
                      "days_by_tokens": day.days_by_tokens,
                      "days_by_requests": day.days_by_requests,
                      "sources": {k: daily_source(lim, k) for k in ("tpd", "rpd")}},
            "days": days,
            **({"endpoints": rows} if endpoints else {}),
            "batch": _batch_plan(t, queue_for(name)),
        })
    costs = [m["cost_usd"] for m in models]
    return {
        "input": str(path),
        "tier": tier,
        "via": via,
        "prices_as_of": PRICES_AS_OF,
        "requests": sum(m["requests"] for m in models),
        "bad_lines": report.bad_total,
        "models": models,
        "cost_usd": None if None in costs else round(sum(c["total"] for c in costs if c), 6),
        "batch_api_cost_usd": None if None in costs else round(
            sum(c["batch_api_total"] for c in costs if c), 6),
        # Each model has its own limits and runs in parallel: the slowest decides.
        "minutes_to_finish": max((m["minutes_to_finish"] for m in models), default=0.0),
        "days": max((m["days"] for m in models), default=1),
        "never_run": report.never,
        "never_run_total": report.never_total,
        "cache": answers.result() if answers is not None else not_looked_up(str(cache)),
    }
