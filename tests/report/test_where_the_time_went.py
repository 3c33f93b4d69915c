"""Where a job's time went: pure functions over the timeline's sessions, marks and pacing."""

from __future__ import annotations

from pathlib import Path

from batchrun.events import (
    AttemptEnded,
    JobStarted,
    Paced,
    RequestFinished,
    RequestSent,
    StateChanged,
    Throttled,
)
from batchrun.files.jobstore import Manifest
from batchrun.policy.tiers import Limits
from batchrun.report.document import (
    BATCH,
    BELOW,
    COOLDOWN,
    DAILY,
    NOT_RUNNING,
    PACED_RPM,
    PACED_TPM,
    Moment,
    build,
    pace_verdict,
    sentence,
    shares_of,
    time_spent,
)
from batchrun.report.timeline import Recorder, Session, Timeline, read
from tests.helpers.fake_clock import FakeClock

FAR = 10**12  # no per-minute rows


def test_paced_needs_the_rate_at_the_limit_and_work_waiting() -> None:
    # gauges: in flight, rate_rpm, rate_tpm, burst, waiting
    assert pace_verdict(498, 10_000, [3, 500.0, 200_000.0, 3333.0, 40]) == PACED_RPM
    assert pace_verdict(100, 196_000, [3, 500.0, 200_000.0, 3333.0, 40]) == PACED_TPM
    assert pace_verdict(498, 10_000, [3, 500.0, 200_000.0, 3333.0, 0]) is None  # nothing waited
    assert pace_verdict(300, 100_000, [3, 500.0, 200_000.0, 3333.0, 40]) is None  # below both
    assert pace_verdict(498, 0, [3, 0.0, 0.0, 0.0, 40]) is None  # no limits at all
    assert pace_verdict(498, 0, []) is None  # no gauges recorded


def test_each_second_goes_to_the_strongest_reason_and_gaps_are_not_running() -> None:
    sessions = [Session(0, 100, "paused-daily"), Session(160, 200, "done")]
    spans = [(10, 20, COOLDOWN), (50, 100, DAILY), (170, 180, BATCH)]
    paced = [Moment(0, PACED_TPM), Moment(15, None), Moment(30, PACED_RPM), Moment(40, None)]
    spent = time_spent(sessions, spans, paced, FAR)
    assert spent == {PACED_TPM: 10.0, COOLDOWN: 10.0, PACED_RPM: 10.0, DAILY: 50.0,
                     NOT_RUNNING: 60.0, BATCH: 10.0, BELOW: 20.0 + 30.0}
    assert sum(spent.values()) == 200  # the whole wall-clock time, once


def test_after_the_per_minute_mark_time_goes_by_minutes() -> None:
    spent = time_spent([Session(0, 300, "done")], [(200, 230, DAILY)], [], 120)
    assert spent == {BELOW: 270.0, DAILY: 30.0}  # a mark takes its part of a minute, not all
    paced = [Moment(130, PACED_RPM), Moment(150, None)]
    assert time_spent([Session(0, 300, "done")], [], paced, 120) == {BELOW: 280.0,
                                                                     PACED_RPM: 20.0}


def test_the_sentence_names_the_shares_biggest_first() -> None:
    shares = shares_of({COOLDOWN: 15.0, PACED_TPM: 213.0, DAILY: 72.0, BELOW: 0.0})
    assert [s["what"] for s in shares] == [PACED_TPM, DAILY, COOLDOWN]
    assert sentence(shares) == ("71 % paced at the TPM limit, 24 % waiting for the daily reset, "
                                "5 % in 429 cooldowns.")
    assert sentence(shares_of({PACED_RPM: 999.0, COOLDOWN: 1.0})) == (
        "100 % paced at the RPM limit, <1 % in 429 cooldowns.")
    assert sentence([]) == "No time was recorded for this job."


def test_by_endpoint_and_model_add_up_to_the_series(tmp_path: Path) -> None:
    clock = FakeClock()
    clock.now = 1_765_000_000.0
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(JobStarted(input="in", output="out", total=4, already_done=0, bad_lines=0,
                   limits={"a": Limits(rpm=60), "b": Limits(rpm=60)}, base_url="http://x"))
    for model, endpoint in (("a", "east"), ("a", "west"), ("b", "east"), ("b", "east")):
        rec(RequestSent(model, 10, endpoint))
        rec(AttemptEnded(model, "ok", endpoint, 200))
        rec(RequestFinished("x", model, True, 3, 2, 1, endpoint=endpoint))
        clock.now += 1
    rec.close("done")
    manifest = Manifest(job_id="j", input="in", output="out", fingerprint={}, options={},
                        total=4, done=4)
    doc = build(manifest, read(path), "done")
    assert doc["job"]["models"] == ["a", "b"] and doc["job"]["endpoints"] == ["east", "west"]
    for by in ("model", "endpoint"):
        parts = doc["by"][by].values()
        assert sum(r["ok"] for rows in parts for r in rows) == sum(r["ok"] for r in doc["series"])
    assert [sum(r["sent"] for r in rows) for rows in doc["by"]["endpoint"].values()] == [3, 1]
    assert doc["summary"]["tokens"] == 20


def test_a_cooldown_counts_its_own_length_not_the_whole_second_it_began_in(
        tmp_path: Path) -> None:
    # The server said "try again in 0.3s" three times and "in 2.5s" once, over a 10 s job: the
    # job cooled down 0.3 + 0.3 (two at once) + 0.3 + 2.5 s, not four whole seconds and more.
    clock = FakeClock()
    clock.now = 1_765_000_000.0
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(JobStarted(input="in", output="out", total=10, already_done=0, bad_lines=0,
                   limits={"m": Limits(rpm=600)}, base_url="http://x"))
    pauses = {2: [0.3, 0.3], 4: [0.3], 6: [2.5]}
    for second in range(10):
        rec(RequestSent("m", 10))
        rec(AttemptEnded("m", "ok", "", 200))
        rec(RequestFinished("x", "m", True, 3, 2, 1))
        for pause in pauses.get(second, []):
            rec(Throttled("m", pause))
        clock.now += 1
    rec.close("done")
    manifest = Manifest(job_id="j", input="in", output="out", fingerprint={}, options={},
                        total=10, done=10)
    spent = {part["what"]: part["seconds"] for part in build(manifest, read(path), "done")["time"]}
    assert spent == {COOLDOWN: 3.1, BELOW: 6.9}


def test_a_clock_set_back_between_sessions_gives_no_negative_time() -> None:
    # The second run started after NTP set the clock an hour back.
    tl = Timeline(sessions=[Session(10_000, 10_100, "stopped"), Session(6_500, 6_600, "done")])
    manifest = Manifest(job_id="j", input="in", output="out", fingerprint={}, options={},
                        total=1, done=1)
    doc = build(manifest, tl, "done")
    assert doc["summary"]["wall_seconds"] >= doc["summary"]["busy_seconds"] == 200.0
    assert all(part["seconds"] > 0 for part in doc["time"])


def test_a_stall_after_pacing_is_not_paced_once_the_last_minute_falls_below_the_limit(
        tmp_path: Path) -> None:
    # Two minutes admitted at the TPM limit (100 tokens a second of 6,000 a minute) with work
    # queued; a 429 that imposed 5 s; then the server stalls: nothing is sent or answered for
    # 5 minutes (no row: nothing moved); then the daily limit: --wait for 10 minutes, the
    # limiter speaking once a minute meanwhile; then one last second.
    clock = FakeClock()
    clock.now = 1_765_000_000.0
    path = tmp_path / "j.timeline"
    rec = Recorder(path, clock)
    rec(JobStarted(input="in", output="out", total=200, already_done=0, bad_lines=0,
                   limits={"m": Limits(rpm=0, tpm=6000)}, base_url="http://x"))
    for _ in range(120):
        rec(RequestSent("m", 100))
        rec(AttemptEnded("m", "ok", "", 200))
        rec(RequestFinished("x", "m", True, 90, 10, 1))
        rec(Paced("m", "", 0.0, 6000.0, 100.0, 0, 50))
        clock.now += 1
    rec(RequestSent("m", 100))
    rec(AttemptEnded("m", "rate_minute", "", 429))
    rec(Throttled("m", 5.0))
    clock.now += 300
    rec(StateChanged("paused-daily"))
    for _ in range(10):
        rec(Paced("m", "", 0.0, 6000.0, 100.0, 0, 50))
        clock.now += 60
        rec.flush()
    rec(StateChanged("running"))
    clock.now += 1
    rec.close("done")
    manifest = Manifest(job_id="j", input="in", output="out", fingerprint={}, options={},
                        total=200, done=120)
    doc = build(manifest, read(path), "done")
    spent = {part["what"]: part["seconds"] for part in doc["time"]}
    # Paced until the last minute's rate fell under 90 % of the limit (second 127), the 429's
    # 5 s inside it taken by the cooldown; the stall is the server's, not the limit's.
    assert spent == {DAILY: 600.0, BELOW: 293.0 + 1.0, PACED_TPM: 127.0 - 5.0, COOLDOWN: 5.0}
    assert doc["sentence"] == ("59 % waiting for the daily reset, 29 % sending below the "
                               "limits, 12 % paced at the TPM limit, <1 % in 429 cooldowns.")
