"""Several endpoints on virtual time: two or three scripted servers, each with its own limits,
latency and habits; every output line is read back to see which endpoint answered it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from batchrun.events import StateChanged
from batchrun.http.client import Kind, Outcome
from batchrun.policy.request import Request
from batchrun.policy.stopkind import StopKind
from batchrun.policy.tiers import Limits
from batchrun.routing.rules import BACK
from tests.helpers.endpoints import Ep, always, outs, run
from tests.helpers.jsonl import read_results
from tests.helpers.scripted_server import ok, status


def test_requests_split_by_capacity_and_leave_in_fifo_order(tmp_path: Path) -> None:
    a = Ep(always(0.1), Limits(rpm=600))
    b = Ep(always(0.1), Limits(rpm=1200))
    stop, _, end, by = run(tmp_path, 300, {"a": a, "b": b})
    assert stop is None and sum(by.values()) == 300
    # 30 requests/s together: about a third through a, two thirds through b.
    assert 85 <= by["a"] <= 115 and 185 <= by["b"] <= 215
    assert end < 300 / 20  # faster than b alone could have done it
    assert run.log == [f"q{i}" for i in range(300)]  # type: ignore[attr-defined]


def test_a_slow_endpoint_holds_up_only_its_own_slots(tmp_path: Path) -> None:
    fast = Ep(always(0.1))
    slow = Ep(always(1.0))  # ten times the latency
    stop, _, end, by = run(tmp_path, 240, {"fast": fast, "slow": slow}, concurrency=2)
    assert stop is None
    # Two slots each: fast finishes 20 a second, slow 2; fast alone would take 12 s.
    assert by["fast"] >= 200
    assert end <= 240 / 22 + 1.5


def test_when_one_endpoint_s_daily_budget_runs_out_the_rest_finishes_on_the_other(
    tmp_path: Path,
) -> None:
    a = Ep(always(0.1), Limits(rpm=600, tpd=400))  # 40 answers of 10 tokens
    b = Ep(always(0.1), Limits(rpm=600))
    stop, events, _, by = run(tmp_path, 100, {"a": a, "b": b})
    assert stop is None and sum(by.values()) == 100
    assert 30 <= by["a"] <= 40
    assert outs(events) == [("a", "spent for the day")]


def test_every_endpoint_spent_pauses_the_job_naming_each_budget(tmp_path: Path) -> None:
    a = Ep(always(0.1), Limits(tpd=200))
    b = Ep(always(0.1), Limits(tpd=200))
    stop, _, _, by = run(tmp_path, 100, {"a": a, "b": b})
    assert stop is not None and stop.kind is StopKind.DAILY
    assert stop.budget.startswith("a: Daily token budget reached for gpt-4o-mini")
    assert "; b: Daily token budget reached" in stop.budget
    assert stop.done == sum(by.values()) < 100


def test_an_endpoint_that_refuses_the_key_is_taken_out_and_the_job_finishes_elsewhere(
    tmp_path: Path,
) -> None:
    refused = status(401, Kind.REFUSED, "Incorrect API key provided")
    a = Ep(always(0.1, refused), Limits(rpm=600))
    b = Ep(always(0.1), Limits(rpm=600))
    stop, events, _, by = run(tmp_path, 50, {"a": a, "b": b})
    assert stop is None
    assert by == {"a": 0, "b": 50}
    assert outs(events) == [("a", "refused the key")]


def test_every_endpoint_refusing_stops_the_job_as_refused(tmp_path: Path) -> None:
    refused = status(401, Kind.REFUSED, "Incorrect API key provided")
    stop, _, _, by = run(tmp_path, 10, {"a": Ep(always(0.1, refused)),
                                        "b": Ep(always(0.1, refused))})
    assert stop is not None and stop.kind is StopKind.REFUSED and stop.status == 401
    assert by == {"a": 0, "b": 0}


def test_priority_two_serves_only_once_priority_one_is_out(tmp_path: Path) -> None:
    def good_then_refused(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (ok() if now < 2.0 else status(403, Kind.REFUSED, "quota"))

    main = Ep(good_then_refused, Limits(rpm=600))
    spare = Ep(always(0.1), Limits(rpm=6000), priority=2)
    stop, events, _, by = run(tmp_path, 60, {"main": main, "spare": spare})
    assert stop is None and sum(by.values()) == 60
    assert spare.server is not None and main.server is not None
    out_at = main.server.sent[-1][0]
    assert all(t >= 2.0 for t, _ in spare.server.sent)  # nothing went to the spare before
    assert by["main"] >= 15 and by["spare"] >= 1 and out_at >= 2.0
    assert outs(events) == [("main", "refused the key")]


def test_an_endpoint_that_keeps_failing_cools_off_and_its_requests_go_elsewhere(
    tmp_path: Path,
) -> None:
    broken = Ep(always(0.1, status(500, Kind.RETRY)), Limits(rpm=600))
    good = Ep(always(0.1), Limits(rpm=600))
    stop, events, _, by = run(tmp_path, 60, {"broken": broken, "good": good}, max_retries=2)
    assert stop is None
    assert by == {"broken": 0, "good": 60}  # none recorded as failed: each went elsewhere
    assert ("broken", "failing") in outs(events)


def test_every_endpoint_unreachable_stops_the_job_as_no_network(tmp_path: Path) -> None:
    down = Outcome(Kind.RETRY, code="connection_error", message="Cannot connect", sent=False)
    stop, events, _, by = run(tmp_path, 20, {"a": Ep(always(0.0, down)),
                                             "b": Ep(always(0.0, down))})
    assert stop is not None and stop.kind is StopKind.NO_NETWORK
    assert stop.host == "a.test, b.test"
    assert by == {"a": 0, "b": 0}  # nothing recorded as failed
    assert sorted(outs(events)) == [("a", "unreachable"), ("b", "unreachable")]


def test_when_every_endpoint_keeps_failing_requests_fail_after_max_retries(
    tmp_path: Path,
) -> None:
    broken = status(500, Kind.RETRY)
    stop, _, _, _ = run(tmp_path, 10, {"a": Ep(always(0.1, broken)),
                                       "b": Ep(always(0.1, broken))}, max_retries=2)
    assert stop is None
    results = read_results(tmp_path / "out.jsonl")
    assert len(results) == 10
    assert all(r["error"]["code"] == "http_500" for r in results.values())


def test_a_failing_endpoint_comes_back_after_its_cool_off(tmp_path: Path) -> None:
    def broken_for_20s(request: Request, attempt: int, now: float) -> tuple[float, Outcome]:
        return 0.1, (status(503, Kind.RETRY) if now < 20 else ok())

    flaky = Ep(broken_for_20s, Limits(rpm=30))
    steady = Ep(always(0.1), Limits(rpm=30))
    stop, events, _, by = run(tmp_path, 100, {"flaky": flaky, "steady": steady})
    assert stop is None and sum(by.values()) == 100
    assert outs(events) == [("flaky", "failing"), ("flaky", BACK)]
    assert flaky.server is not None
    back = next(t for t, _ in flaky.server.sent if t >= 20)
    assert back >= 30  # out for the first cool-off, 30 s
    assert by["flaky"] >= 10  # and it took its share again


def test_one_refusing_and_one_unreachable_stop_as_refused_with_the_refusal_s_words(
    tmp_path: Path,
) -> None:
    refused = status(401, Kind.REFUSED, "Incorrect API key provided")
    down = Outcome(Kind.RETRY, code="connection_error", message="Cannot connect", sent=False)
    stop, _, _, _ = run(tmp_path, 10, {"a": Ep(always(0.0, refused)),
                                       "b": Ep(always(0.5, down))})
    assert stop is not None and stop.kind is StopKind.REFUSED
    assert stop.server_message == "Incorrect API key provided" and stop.status == 401


def test_wait_sleeps_to_midnight_only_when_every_endpoint_is_spent_then_uses_them_all(
    tmp_path: Path,
) -> None:
    start = dt.datetime(2026, 11, 27, 23, 59, 0, tzinfo=dt.UTC)
    a = Ep(always(0.1), Limits(tpd=30))  # three answers of 10 tokens a day each
    b = Ep(always(0.1), Limits(tpd=30))
    stop, events, _, by = run(tmp_path, 10, {"a": a, "b": b}, start=start, wait=True)
    assert stop is None and sum(by.values()) == 10
    changes = outs(events)
    spent = [("a", "spent for the day"), ("b", "spent for the day")]
    assert sorted(changes[:2]) == spent and sorted(changes[2:4]) == [("a", BACK), ("b", BACK)]
    assert any(isinstance(e, StateChanged) and e.state == "paused-daily" for e in events)
    assert a.server is not None and b.server is not None
    # Both served before midnight (60 s after the start) and both again after it.
    for server in (a.server, b.server):
        assert any(t < 60 for t, _ in server.sent) and any(t >= 60 for t, _ in server.sent)
