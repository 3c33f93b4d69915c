"""The timeline a job records beside its manifest, on a fake clock: per-second rows, per-minute
after 6 hours, sessions (a killed one too), bounded in size."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from batchrun.events import (
    AttemptEnded,
    BatchPart,
    JobStarted,
    Paced,
    RequestFinished,
    RequestSent,
    StateChanged,
    Throttled,
)
from batchrun.report.timeline import PER_SECOND_S, Recorder, read
from tests.helpers.fake_clock import FakeClock

START = 1_765_000_000.0  # 2025-12-06 05:46:40 UTC


def started() -> JobStarted:
    return JobStarted(input="in.jsonl", output="out.jsonl", total=10, already_done=0,
                      bad_lines=0, limits={}, base_url="http://x")


def one_request(rec: Recorder, model: str = "m", endpoint: str = "", status: int = 200,
                kind: str = "ok") -> None:
    rec(RequestSent(model, 30, endpoint))
    rec(AttemptEnded(model, kind, endpoint, status))
    if kind == "ok":
        rec(RequestFinished("id", model, True, 10, 5, 1, endpoint=endpoint))


def test_seconds_with_nothing_in_them_have_no_row_and_counts_add_up(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    for _ in range(3):
        one_request(rec)
    clock.now += 5.5  # four quiet seconds
    one_request(rec, status=429, kind="rate_minute")
    rec(Throttled("m", 2.0))
    rec(AttemptEnded("m", "rate_day", "", 429))
    rec.close("done")
    tl = read(path)
    assert tl is not None
    # sent, ok, cached, failed, 429 minute, day, too large, all 429s, tokens billed, charged
    assert tl.counts == {(1_765_000_000, "m", ""): [3, 3, 0, 0, 0, 0, 0, 0, 45, 90],
                         (1_765_000_005, "m", ""): [1, 0, 0, 0, 1, 1, 0, 2, 0, 30]}
    assert [(s.start, s.end, s.ended) for s in tl.sessions] == [
        (1_765_000_000, 1_765_000_005, "done")]
    assert tl.cooldowns == [(1_765_000_005, "m", "", 2.0)]


def test_after_six_hours_rows_count_whole_minutes(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    clock.now = START + PER_SECOND_S - 120
    for _ in range(240):  # one request a second across the six-hour mark
        one_request(rec)
        clock.now += 1
    rec.close("done")
    tl = read(path)
    assert tl is not None
    times = sorted(t for t, _, _ in tl.counts)
    seconds = [t for t in times if tl.step(t) == 1]
    minutes = [t for t in times if tl.step(t) == 60]
    assert seconds and minutes and max(seconds) < min(minutes)
    assert all(t % 60 == 0 for t in minutes)
    assert all(tl.counts[t, "m", ""][0] == 1 for t in seconds)
    assert all(tl.counts[t, "m", ""][0] == 60 for t in minutes[:-1])
    assert sum(tl.counts[t, "m", ""][0] for t in times) == 240  # nothing lost in the rollup


def test_a_session_that_never_ended_was_killed_and_ends_at_its_last_row(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    first = Recorder(path, clock)
    first(started())
    one_request(first)
    clock.now += 7
    one_request(first)
    first.flush()  # what the timer had written before the kill -9; then nothing more
    clock.now += 100
    second = Recorder(path, clock)
    second(started())
    one_request(second)
    second.close("done")
    tl = read(path)
    assert tl is not None
    assert [(s.start - int(START), s.end - int(START), s.ended) for s in tl.sessions] == [
        (0, 7, "killed"), (107, 107, "done")]
    running = read(path.with_name("none.timeline"))
    assert running is None


def test_a_refused_run_leaves_no_timeline(tmp_path: Path) -> None:
    path = tmp_path / "j.timeline"
    rec = Recorder(path, FakeClock())
    rec(StateChanged("running"))
    rec.flush()
    assert not path.exists()


def test_states_pacing_and_batch_parts_are_marked(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    rec(Paced("m", "east", 500.0, 200_000.0, 3333.3, 4, 12))
    rec(StateChanged("paused-daily", "spent"))
    rec(StateChanged("paused-daily", "spent, later"))  # the same state: one mark
    rec(BatchPart(1, "batch_1", "validating", 50))
    clock.now += 1
    rec(StateChanged("running"))
    rec.close("done")
    tl = read(path)
    assert tl is not None
    assert tl.states == [(1_765_000_000, "paused-daily"), (1_765_000_001, "running")]
    assert tl.parts == [(1_765_000_000, 1, "batch_1", "validating", 50)]
    assert tl.gauges[1_765_000_000, "m", "east"] == [0, 500.0, 200_000.0, 3333.3, 12]


@pytest.mark.slow
def test_a_million_request_timeline_is_a_few_mb(tmp_path: Path) -> None:
    """1,000,000 requests at 500 RPM (33 h): what the timeline of such a job weighs."""
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    n = 1_000_000
    for i in range(n):
        one_request(rec)
        if i % 8 == 0:  # once a second, the queue draining as it goes: a gauge row each time
            rec(Paced("m", "", 500.0, 200_000.0, 3333.3, i % 7, n - i))
        if i % 3 == 0:
            rec(RequestSent("m", 30, ""))  # requests in flight move every second too
        clock.now += 60 / 500
    rec.close("done")
    size = os.path.getsize(path)
    print(f"timeline of 1,000,000 requests over 33 h: {size:,} bytes")  # noqa: T201
    assert size < 4_000_000
    tl = read(path)
    assert tl is not None
    assert sum(c[1] for c in tl.counts.values()) == n


def test_a_quiet_wait_is_recorded_so_a_kill_during_it_ends_the_session_late(
        tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    one_request(rec)
    for _ in range(10):  # the engine's once-a-minute word while it waits for 00:00 UTC
        clock.now += 60
        rec(StateChanged("paused-daily", "spent"))
        rec(Paced("m", "", 500.0, 200_000.0, 3333.3, 0, 5))
    # kill -9: no close
    tl = read(path)
    assert tl is not None
    [session] = tl.sessions
    assert (session.ended, session.end - int(START)) == ("killed", 600)


def test_a_resume_after_a_torn_last_line_still_starts_its_own_session(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    first = Recorder(path, clock)
    first(started())
    one_request(first)
    clock.now += 3
    one_request(first)
    first.flush()
    with path.open("ab") as f:
        f.write(b"[1765000004,0,1,1")  # kill -9 in the middle of a write
    clock.now += 100
    second = Recorder(path, clock)
    second(started())
    one_request(second)
    second.close("done")
    tl = read(path)
    assert tl is not None
    assert [(s.start - int(START), s.end - int(START), s.ended) for s in tl.sessions] == [
        (0, 3, "killed"), (103, 103, "done")]


@pytest.mark.parametrize("garbage", [
    b"", b"\x00\xff\xfe", b"not json\n", b'[]\n["E"]\n["S", 5, 1]\n["E", 6]\n[7]\n[true, 1]\n',
    b'["S", "x", 1]\n[1, 0, "a", "b"]\n["K", 0]\n["L", 1, 2]\n["G", 1, 0, "x"]\n{"a": 1}\n',
    b'["S", 1765000000, 1]\n["K", 0, "m", ""]\n[1765000000, 0, 1, 1, null]\n["E", null, 1]\n',
])
def test_a_damaged_timeline_reads_as_what_it_can_without_raising(tmp_path: Path,
                                                                  garbage: bytes) -> None:
    path = tmp_path / "j.timeline"
    path.write_bytes(garbage)
    tl = read(path)
    assert tl is not None
    assert all(isinstance(s.start, int) and s.end >= s.start for s in tl.sessions)


def test_a_clock_that_jumps_back_gives_no_session_that_ends_before_it_starts(
        tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = START
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(started())
    one_request(rec)
    clock.now -= 3600  # NTP sets the clock an hour back
    one_request(rec)
    rec.close("done")
    tl = read(path)
    assert tl is not None
    assert [(s.start - int(START), s.end - int(START), s.ended) for s in tl.sessions] == [
        (0, 0, "done")]
    assert sum(c[0] for c in tl.counts.values()) == 2
