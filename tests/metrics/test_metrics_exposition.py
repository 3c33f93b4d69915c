"""The job's events as /metrics shows them: each metric fed by the event it reads, with the
names, labels and types Prometheus expects (parsed by prometheus_client's own parser)."""

from __future__ import annotations

import errno

from batchrun.events import (
    AttemptEnded,
    BatchPart,
    BudgetUsed,
    JobStarted,
    Paced,
    RequestFinished,
    RequestSent,
    StateChanged,
)
from batchrun.metrics import MetricsTally
from batchrun.metrics.exposition import exposition, port_refused
from batchrun.policy.tiers import Limits
from tests.helpers.metrics import samples, value

M = "gpt-4o-mini"
LANE = {"model": M, "endpoint": ""}
TOO_LARGE = ("Request too large for gpt-4o-mini in organization org-x on tokens per min (TPM): "
             "Limit 200000, Requested 250000.")


def shown(tally: MetricsTally) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(exposition(tally).decode())


def started(tally: MetricsTally) -> None:
    tally(JobStarted("in.jsonl", "out.jsonl", 10, 3, 0, {M: Limits(500, 200_000, 10_000)},
                     "https://api.openai.com/v1"))
    tally(StateChanged("running"))


def test_requests_attempts_429s_and_tokens_count_what_the_events_say() -> None:
    tally = MetricsTally("job-1")
    started(tally)
    # q1: a per-minute 429, then an answer; q2: a 400; q3: the server's "request too large"
    # (kind, status, code) as the engine reports each attempt
    for kind, status, code in (("rate_minute", 429, "rate_limit_exceeded"), ("ok", 200, ""),
                               ("fail", 400, "model_not_found"),
                               ("fail", 429, "request_too_large"),
                               ("rate_day", 429, "rate_limit_exceeded")):
        tally(RequestSent(M, 120))
        tally(AttemptEnded(M, kind, "", status, code))
    tally(RequestFinished("q1", M, True, 100, 20, 2, cached_in=64))
    tally(RequestFinished("q2", M, False, 0, 0, 1, "invalid model"))
    tally(RequestFinished("q3", M, False, 0, 0, 1, TOO_LARGE))
    found = shown(tally)
    assert value(found, "batchrun_requests_total", **LANE, outcome="ok") == 1
    assert value(found, "batchrun_requests_total", **LANE, outcome="failed") == 2
    assert value(found, "batchrun_requests_total", **LANE, outcome="cached") == 0
    assert value(found, "batchrun_http_attempts_total", **LANE) == 5
    assert value(found, "batchrun_http_attempts_ended_total", **LANE, kind="fail") == 2
    assert value(found, "batchrun_rate_limited_total", **LANE, kind="minute") == 1
    assert value(found, "batchrun_rate_limited_total", **LANE, kind="day") == 1
    assert value(found, "batchrun_rate_limited_total", **LANE, kind="too_large") == 1
    assert value(found, "batchrun_tokens_billed_total", **LANE, kind="input") == 100
    assert value(found, "batchrun_tokens_billed_total", **LANE, kind="cached_input") == 64
    assert value(found, "batchrun_tokens_billed_total", **LANE, kind="output") == 20
    assert value(found, "batchrun_tokens_charged_total", **LANE) == 600
    assert value(found, "batchrun_in_flight_requests", **LANE) == 0
    assert value(found, "batchrun_job_info", job_id="job-1", state="running") == 1
    assert value(found, "batchrun_job_requests") == 10
    assert value(found, "batchrun_job_requests_done_before") == 3
    # gpt-4o-mini at $0.15 / $0.075 cached / $0.60 per 1M tokens, to the micro-dollar as the
    # summary prints it
    assert value(found, "batchrun_cost_usd") == round(
        (36 * 0.15 + 64 * 0.075 + 20 * 0.60) / 1e6, 6)


def test_a_too_large_request_batchrun_never_sent_is_no_429() -> None:
    tally = MetricsTally("job-1")
    tally(RequestFinished("big", M, False, 0, 0, 0, "Request too large: 300,000 tokens, "
                                                    "more than the 200,000 TPM limit"))
    assert value(shown(tally), "batchrun_rate_limited_total", **LANE, kind="too_large") == 0


def test_in_flight_is_sent_minus_answered_per_model_and_endpoint() -> None:
    tally = MetricsTally("job-1")
    for endpoint in ("east", "east", "west"):
        tally(RequestSent(M, 10, endpoint))
    tally(AttemptEnded(M, "ok", "east"))
    found = shown(tally)
    assert value(found, "batchrun_in_flight_requests", model=M, endpoint="east") == 1
    assert value(found, "batchrun_in_flight_requests", model=M, endpoint="west") == 1


def test_the_limiter_rate_budget_limits_and_batch_parts_are_the_last_events_values() -> None:
    tally = MetricsTally("job-1")
    started(tally)
    tally(Paced(M, "", 480.0, 150_000.0, 2_500.0, 4))
    tally(Paced(M, "", 240.0, 90_000.0, 1_500.0, 2))  # fell back to even pacing after a 429
    tally(BudgetUsed(M, 1_200_000, 2_000_000, 4_000, 10_000))
    tally(BatchPart(1, "batch_a", "in_progress", 50_000))
    tally(BatchPart(2, "batch_b", "validating", 10_000))
    tally(BatchPart(1, "batch_a", "completed", 50_000))
    found = shown(tally)
    assert value(found, "batchrun_limiter_requests_per_minute", **LANE) == 240
    assert value(found, "batchrun_limiter_tokens_per_minute", **LANE) == 90_000
    assert value(found, "batchrun_limiter_burst_tokens", **LANE) == 1_500
    assert value(found, "batchrun_limit_requests_per_minute", model=M) == 500
    assert value(found, "batchrun_limit_tokens_per_minute", model=M) == 200_000
    assert value(found, "batchrun_daily_tokens_used", **LANE) == 1_200_000
    assert value(found, "batchrun_daily_tokens_limit", **LANE) == 2_000_000
    assert value(found, "batchrun_daily_requests_used", **LANE) == 4_000
    assert value(found, "batchrun_daily_requests_limit", **LANE) == 10_000
    assert value(found, "batchrun_batch_parts", state="completed") == 1
    assert value(found, "batchrun_batch_parts", state="validating") == 1


def test_no_limiter_rate_is_shown_before_the_limiter_reports_one() -> None:
    tally = MetricsTally("job-1")
    started(tally)
    tally(RequestSent(M, 10))
    names = {name for name, _ in shown(tally)}
    assert "batchrun_limiter_tokens_per_minute" not in names
    assert "batchrun_requests_total" in names  # every counter of a lane from 0 on


def test_an_answer_from_the_response_cache_is_counted_cached_and_bills_nothing() -> None:
    tally = MetricsTally("job-1")
    tally(RequestFinished("q1", M, True, 100, 20, 0, from_cache=True))
    found = shown(tally)
    assert value(found, "batchrun_requests_total", **LANE, outcome="cached") == 1
    assert value(found, "batchrun_requests_total", **LANE, outcome="ok") == 0
    assert value(found, "batchrun_tokens_billed_total", **LANE, kind="input") == 0


def test_every_job_has_its_own_registry() -> None:
    """Two jobs in one Python process (two notebook cells) show their own counts, and
    prometheus_client's global registry is left alone."""
    from prometheus_client import REGISTRY

    first, second = MetricsTally("job-1"), MetricsTally("job-2")
    first(RequestSent(M, 10))
    assert value(shown(first), "batchrun_http_attempts_total", **LANE) == 1
    assert ("batchrun_http_attempts_total", tuple(sorted(LANE.items()))) not in shown(second)
    assert not [m for m in REGISTRY.collect() if m.name.startswith("batchrun")]


def test_a_port_this_user_may_not_listen_on_is_said_so() -> None:
    """(The tests run as root, where no port is refused for it: the sentence, on its own.)"""
    said = port_refused(80, OSError(errno.EACCES, "Permission denied"))
    assert said == ("--metrics-port 80: cannot serve metrics on 127.0.0.1:80: this user may not "
                    "listen there (ports below 1024 need root). Give another port, or drop "
                    "--metrics-port. Nothing was sent.")
