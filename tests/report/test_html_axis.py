"""The report's time axis and its series as drawn (#26): idle stretches become breaks, sparse
rows become per-minute steps, gauges hold their last value."""

from __future__ import annotations

import pytest

from batchrun.report.svg_axis import BREAK_PX, TimeAxis, active_spans, fmt_duration
from batchrun.report.svg_series import bucket_for, gauge, per_minute
from tests.helpers.report_docs import START, row


def values(steps: list[list[tuple[int, int, float]]]) -> dict[int, float]:
    return {start: v for run in steps for start, _, v in run}


def test_idle_shorter_than_a_quarter_hour_stays_on_the_axis_and_longer_becomes_a_break() -> None:
    assert active_spans([(0, 10), (800, 810)]) == ((0, 810),)
    assert active_spans([(0, 10), (2000, 2010), (2005, 2100)]) == ((0, 10), (2000, 2100))
    assert active_spans([]) == ((0, 1),)


def test_a_break_is_narrow_and_says_how_long_nothing_happened() -> None:
    axis = TimeAxis(((0, 3600), (3600 + 8 * 3600, 2 * 3600 + 8 * 3600)), 0, 1030)

    [gap] = axis.breaks()
    assert gap.right - gap.left == BREAK_PX
    assert fmt_duration(gap.seconds) == "8 h"
    # Both hours of work share the rest of the width equally; the night sits inside the break.
    assert axis.x(3600) == pytest.approx(500) and axis.x(2 * 3600 + 8 * 3600) == 1030
    assert 500 < axis.x(6 * 3600) < 530


def test_tick_labels_are_utc_and_name_the_day_when_it_changes() -> None:
    midnight = START - 6 * 3600 + 86400  # 2025-12-07 00:00 UTC
    axis = TimeAxis(((midnight - 3600, midnight + 3600),), 0, 1000)

    labels = [label for _, label in axis.ticks()]
    assert labels[0].startswith("Dec 6 23:")
    assert "Dec 7 00:00" in labels


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0 s"), (59, "59 s"), (60, "1 min"), (250, "4 min 10 s"), (3600, "1 h"),
    (7260, "2 h 1 min"), (90000, "1 d 1 h"), (3 * 86400 + 59, "3 d")])
def test_durations_read_in_their_two_largest_units(seconds: int, shown: str) -> None:
    assert fmt_duration(seconds) == shown


def test_eight_a_second_reads_480_a_minute_once_a_minute_has_passed() -> None:
    rows = [row(START + i, sent=8) for i in range(120)]
    axis = TimeAxis(((START, START + 120),), 0, 1000)

    by_second = values(per_minute(rows, "sent", axis, 1))
    assert by_second[START + 9] == 80  # the first ten seconds of the minute
    assert by_second[START + 59] == by_second[START + 119] == 480
    assert set(values(per_minute(rows, "sent", axis, 60)).values()) == {480}


def test_a_per_minute_row_read_by_the_second_is_spread_over_its_minute() -> None:
    rows = [row(START, 60, sent=600), row(START + 60, 60, sent=600)]
    axis = TimeAxis(((START, START + 120),), 0, 1000)

    by_second = values(per_minute(rows, "sent", axis, 1))
    assert by_second[START + 29] == pytest.approx(300)
    assert by_second[START + 89] == pytest.approx(600)


def test_a_gauge_holds_its_last_value_over_seconds_without_a_row() -> None:
    rows = [row(START, in_flight=5), row(START + 10, in_flight=2), {"t": START + 20}]
    axis = TimeAxis(((START, START + 60),), 0, 1000)

    held = values(gauge(rows, "in_flight", axis, 1))
    assert (held[START + 5], held[START + 15], held[START + 40]) == (5, 2, 2)
    assert values(gauge(rows, "in_flight", axis, 60, peak=True)) == {START: 5}


def test_the_bucket_keeps_a_line_to_its_chart_width() -> None:
    three_days = TimeAxis(((START, START + 3 * 86400),), 0, 1000)

    b = bucket_for(three_days, 1000)
    assert b == 300 and 3 * 86400 / b <= 1000
    assert bucket_for(TimeAxis(((START, START + 300),), 0, 1000), 1000) == 1


def test_a_month_of_rows_twenty_minutes_apart_is_not_two_thousand_breaks() -> None:
    """Breaks are for the long waits; when there are too many, only the longest ones stay
    breaks (a report of a trickling job would otherwise be mostly break marks)."""
    every_20_min = [(START + i * 1200, START + i * 1200 + 1) for i in range(2_000)]
    nights = [(START + d * 86400, START + d * 86400 + 3600) for d in range(30)]

    assert len(active_spans(every_20_min)) <= 41
    assert len(active_spans(nights)) == 30  # 29 nights, each its own break
