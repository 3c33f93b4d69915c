"""The tally as Prometheus text on http://127.0.0.1:PORT/metrics while the job runs.

A registry of the job's own (never prometheus_client's global one: two jobs in one Python
process would collide there) with one collector that reads the tally at each scrape, served
by aiohttp on the job's loop, so a scrape reads the counts between two events, never in the
middle of one, and the server ends with the job."""

from __future__ import annotations

import contextlib
import errno
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from batchrun.errors import InputError
from batchrun.metrics.tally import Lane, LaneCounts, MetricsTally

# Metrics tell how a job spends its account: only this machine may read them.
LOOPBACK = "127.0.0.1"
LANE = ["model", "endpoint"]
OUTCOMES = ("ok", "failed", "cached")
RATE_LIMIT_KINDS = ("minute", "day", "too_large")
TOKEN_KINDS = ("input", "output", "cached_input")
F = TypeVar("F", CounterMetricFamily, GaugeMetricFamily)


class TallyCollector(Collector):
    def __init__(self, tally: MetricsTally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        lanes = sorted(self.tally.lanes.items())
        yield from _job(self.tally)
        yield _counter("batchrun_requests", "Requests finished by this run, by outcome (cached: "
                       "answered from the response cache, not sent)", "outcome", OUTCOMES,
                       [(lane, c.requests) for lane, c in lanes])
        yield _lane_family(CounterMetricFamily, "batchrun_http_attempts", "HTTP requests sent "
                           "(each retry is one more)", [(lane, c.sent) for lane, c in lanes])
        ended = CounterMetricFamily("batchrun_http_attempts_ended", "HTTP attempts that came "
                                    "back, by the classifier's verdict (ok, retry, rate_minute, "
                                    "rate_day, refused, fail, flex_unavailable)",
                                    labels=[*LANE, "kind"])
        for lane, counts in lanes:
            for kind, n in sorted(counts.answered.items()):
                ended.add_metric([*lane, kind], n)
        yield ended
        yield _counter("batchrun_rate_limited", "429 answers: per-minute limit, daily limit, "
                       "request too large", "kind", RATE_LIMIT_KINDS,
                       [(lane, c.rate_limited) for lane, c in lanes])
        yield _counter("batchrun_tokens_billed", "Tokens the API billed (its usage), "
                       "cached_input a part of input", "kind", TOKEN_KINDS,
                       [(lane, c.billed) for lane, c in lanes])
        yield _lane_family(CounterMetricFamily, "batchrun_tokens_charged", "Tokens charged "
                           "against the per-minute limit at admission (prompt + max output)",
                           [(lane, c.charged) for lane, c in lanes])
        yield from _now(self.tally, lanes)


def _job(t: MetricsTally) -> Iterator[Metric]:
    # job_id, not job: Prometheus gives every scrape a `job` label of its own (the scrape
    # job's name) and would rename ours exported_job.
    info = GaugeMetricFamily("batchrun_job_info", "The job this process runs, and its state "
                             "(running, cooling, draining, paused-daily, stopped, done)",
                             labels=["job_id", "state"])
    info.add_metric([t.job, t.state], 1)
    yield info
    yield GaugeMetricFamily("batchrun_job_requests", "Requests in the job's input file",
                            value=t.total)
    yield GaugeMetricFamily("batchrun_job_requests_done_before", "Requests answered by "
                            "earlier runs of the job", value=t.already_done)
    cost = t.cost_usd
    if cost is not None:  # a model without a list price: no number rather than a wrong one
        yield GaugeMetricFamily("batchrun_cost_usd", "This run's cost so far at list prices, "
                                "US dollars", value=cost)
    parts = GaugeMetricFamily("batchrun_batch_parts", "Batch API parts by their batch's state",
                              labels=["state"])
    for state, n in sorted(t.batch_parts.items()):
        parts.add_metric([state], n)
    yield parts


def _now(t: MetricsTally, lanes: list[tuple[Lane, LaneCounts]]) -> Iterator[Metric]:
    """The gauges: how things stand at this scrape."""
    yield _lane_family(GaugeMetricFamily, "batchrun_in_flight_requests", "HTTP requests sent "
                       "and not answered yet", [(lane, c.in_flight) for lane, c in lanes])
    paced = [(lane, c.pace) for lane, c in lanes if c.pace is not None]
    yield _lane_family(GaugeMetricFamily, "batchrun_limiter_requests_per_minute", "The rate "
                       "the limiter admits requests at now", [(lane, p.rpm) for lane, p in paced])
    yield _lane_family(GaugeMetricFamily, "batchrun_limiter_tokens_per_minute", "The rate the "
                       "limiter admits tokens (the server's charge) at now",
                       [(lane, p.tpm) for lane, p in paced])
    yield _lane_family(GaugeMetricFamily, "batchrun_limiter_burst_tokens", "The burst the "
                       "limiter allows now", [(lane, p.burst_tokens) for lane, p in paced])
    limits = sorted(t.limits.items())
    for name, at in (("requests", 0), ("tokens", 1)):
        family = GaugeMetricFamily(f"batchrun_limit_{name}_per_minute", f"The job's per-minute "
                                   f"{name} limit per model (0: unlimited)", labels=["model"])
        for model, pair in limits:
            family.add_metric([model], pair[at])
        yield family
    budgets = [(lane, c.budget) for lane, c in lanes if c.budget is not None]
    yield _lane_family(GaugeMetricFamily, "batchrun_daily_tokens_used", "Today's tokens used "
                       "of the daily budget (UTC day)", [(lane, b.tokens) for lane, b in budgets])
    yield _lane_family(GaugeMetricFamily, "batchrun_daily_tokens_limit", "The daily token "
                       "budget (0: unlimited)", [(lane, b.tpd) for lane, b in budgets])
    yield _lane_family(GaugeMetricFamily, "batchrun_daily_requests_used", "Today's requests "
                       "used of the daily budget", [(lane, b.requests) for lane, b in budgets])
    yield _lane_family(GaugeMetricFamily, "batchrun_daily_requests_limit", "The daily request "
                       "budget (0: unlimited)", [(lane, b.rpd) for lane, b in budgets])


def _counter(name: str, doc: str, label: str, values: Iterable[str],
             lanes: list[tuple[Lane, Counter[str]]]) -> CounterMetricFamily:
    """A counter per lane and label value, every value shown (0 until it happens)."""
    family = CounterMetricFamily(name, doc, labels=[*LANE, label])
    for lane, counts in lanes:
        for value in values:
            family.add_metric([*lane, value], counts[value])
    return family


def _lane_family(kind: type[F], name: str, doc: str, values: list[tuple[Lane, float]]) -> F:
    family = kind(name, doc, labels=LANE)
    for lane, value in values:
        family.add_metric(list(lane), value)
    return family


def registry_of(tally: MetricsTally) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(TallyCollector(tally))
    return registry


def exposition(tally: MetricsTally) -> bytes:
    """What a scrape of /metrics answers."""
    return generate_latest(registry_of(tally))


@contextlib.asynccontextmanager
async def serving(tally: MetricsTally, port: int) -> AsyncIterator[None]:
    """Serve /metrics on 127.0.0.1:`port` for the life of the block. A port that cannot be
    had is refused before the block runs: nothing is sent."""
    registry = registry_of(tally)

    async def metrics(request: web.Request) -> web.Response:
        # The format the scraper asks for (Prometheus' text format, or OpenMetrics), as the
        # library's own servers negotiate it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, LOOPBACK, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise InputError(port_refused(port, exc)) from None
    try:
        yield
    finally:
        await runner.cleanup()


def port_refused(port: int, exc: OSError) -> str:
    """Why the port cannot be had, in the user's terms (asyncio's own text names the address
    tuple and wraps the system's words)."""
    if exc.errno == errno.EADDRINUSE:
        why = "another program is listening there"
    elif exc.errno == errno.EACCES:
        why = "this user may not listen there (ports below 1024 need root)"
    else:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
    return (f"--metrics-port {port}: cannot serve metrics on {LOOPBACK}:{port}: {why}. Give "
            "another port, or drop --metrics-port. Nothing was sent.")
