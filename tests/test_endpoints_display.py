"""What a user watches with --endpoints: a gauge line per endpoint, one line when one is out."""

from __future__ import annotations

import io

from rich.console import Console

from batchrun.display.progress import ProgressDisplay
from batchrun.events import (
    BudgetUsed,
    JobStarted,
    RequestFinished,
    RequestSent,
    RouteChanged,
    StateChanged,
    Stats,
    Throttled,
    emit_all,
)
from batchrun.policy.tiers import Limits
from batchrun.report.tally import EndpointTally
from batchrun.routing.rules import BACK
from tests.test_progress import FakeClock


def test_each_endpoint_has_a_gauge_line_and_going_out_and_back_is_one_line_each() -> None:
    stream = io.StringIO()
    console = Console(file=stream, width=200, force_terminal=False)
    stats, tally = Stats(), EndpointTally()
    display = ProgressDisplay(stats, stream, console=console, clock=FakeClock(),
                              endpoints=tally)
    listener = emit_all(stats, tally, display)
    listener(JobStarted("jobs.jsonl", "out.jsonl", 30, 0, 0, {"gpt-4o-mini": Limits(1800)},
                        "http://east/v1", {"gpt-4o-mini": 30},
                        endpoints={"east": "east:443", "west": "west:443"}))
    listener(StateChanged("running"))
    for i in range(30):
        name = "east" if i < 10 else "west"
        listener(RequestSent("gpt-4o-mini", 20, name))
        listener(RequestFinished(f"q{i}", "gpt-4o-mini", True, 12, 8, 1, "", name))
    listener(Throttled("gpt-4o-mini", 1.0, "west"))
    listener(BudgetUsed("gpt-4o-mini", 200, 200, 10, 0, "east"))
    listener(RouteChanged("east", "gpt-4o-mini", "spent for the day", "200 of 200 tokens"))
    listener(StateChanged("done"))
    text = stream.getvalue()
    assert "  sending to east (east:443), west (west:443)" in text
    assert ("endpoint east is out for gpt-4o-mini: spent for the day (200 of 200 tokens)"
            in text)
    last = text.rstrip().splitlines()[-2:]
    assert last[0] == ("  east: 10 req · 200 tok last minute · 10 done · 0 429s · today "
                       "200/200 tok 100% · out (gpt-4o-mini: spent for the day)")
    assert last[1] == "  west: 20 req · 400 tok last minute · 20 done · 1 429s"
    summary = tally.summary()
    assert summary["east"]["requests"] == 10 and summary["west"]["rate_limited_429"] == 1
    assert summary["west"]["tokens"] == {"input": 240, "cached_input": 0, "output": 160}
    listener(RouteChanged("east", "gpt-4o-mini", BACK))
    assert "endpoint east is back in rotation for gpt-4o-mini" in stream.getvalue()
    assert tally.summary()["east"]["out"] == {}
