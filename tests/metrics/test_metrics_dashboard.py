"""docs/grafana-dashboard.json, the sample Grafana dashboard: a dashboard Grafana imports
(panels placed on its grid, each query on the dashboard's Prometheus variable) that asks only
for metrics batchrun exposes, so a renamed metric cannot leave its panel empty unnoticed."""

from __future__ import annotations

import re
from typing import Any

import orjson

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
from batchrun.metrics.exposition import exposition
from batchrun.policy.tiers import Limits
from tests.helpers.cli import REPO
from tests.helpers.metrics import samples

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
M = "gpt-4o-mini"
GRID_COLUMNS = 24


def dashboard() -> dict[str, Any]:
    found: dict[str, Any] = orjson.loads(DASHBOARD.read_bytes())
    return found


def exposed() -> set[str]:
    """Every sample name /metrics can show: a job fed one event of each kind."""
    tally = MetricsTally("job-1")
    for event in (
        JobStarted("in.jsonl", "out.jsonl", 4, 0, 0, {M: Limits(500, 200_000, 10_000, 0)}, ""),
        StateChanged("running"), RequestSent(M, 50), AttemptEnded(M, "ok"),
        RequestFinished("q1", M, True, 10, 5, 1), Paced(M, "", 500.0, 200_000.0, 3_000.0, 0),
        BudgetUsed(M, 15, 0, 1, 10_000), BatchPart(1, "batch_1", "in_progress", 4),
    ):
        tally(event)
    return {name for name, _ in samples(exposition(tally).decode())}


def queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def test_every_metric_the_dashboard_queries_is_one_batchrun_exposes() -> None:
    asked = {name for expr in queries() for name in re.findall(r"\bbatchrun_\w+", expr)}
    assert asked, "the dashboard asks for no batchrun metric"
    assert asked - exposed() == set()


def test_it_draws_what_the_issue_asks_for() -> None:
    """requests/s by outcome, tokens/min against the limit, 429s, in flight, daily budget."""
    text = " ".join(queries())
    for name in ("batchrun_requests_total", "batchrun_tokens_charged_total",
                 "batchrun_limit_tokens_per_minute", "batchrun_rate_limited_total",
                 "batchrun_in_flight_requests", "batchrun_daily_tokens_used",
                 "batchrun_daily_tokens_limit"):
        assert name in text


def test_it_is_a_dashboard_grafana_imports() -> None:
    board = dashboard()
    assert isinstance(board["title"], str) and board["title"]
    assert 8 <= len(board["uid"]) <= 40 and isinstance(board["schemaVersion"], int)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["h"] > 0
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
