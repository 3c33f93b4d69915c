"""What a user watches: the live display at 80 columns, plain lines when not a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from batchrun.display.progress import ProgressDisplay, compact, eta_s
from batchrun.events import (
    AttemptEnded,
    BudgetUsed,
    JobStarted,
    Listener,
    RequestFinished,
    RequestSent,
    StateChanged,
    Stats,
    Throttled,
    emit_all,
)
from batchrun.policy.tiers import Limits
from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.fake_clock import FakeClock
from tests.helpers.jsonl import prompts, write_jsonl
from tests.helpers.sim import RunningSim

PLAIN_LINE = re.compile(
    r"^\[[\d,]+/[\d,]+\] (running · ETA [\dhms?]+|paused-daily · resumes 00:00 UTC, in .+|"
    r"done|draining|stopped) · in flight \d+ · failed \d+ · 429s \d+ · "
    r"last minute: .+ req.* · .+ tok"
)


def feed(display: ProgressDisplay, stats: Stats) -> None:
    listener = emit_all(stats, display)
    listener(JobStarted("jobs.jsonl", "jobs.results.jsonl", 1000, 0, 0,
                        {"gpt-4o-mini": Limits(500, 200_000, 10_000, 2_000_000)},
                        "https://api.openai.com/v1", {"gpt-4o-mini": 1000}))
    listener(StateChanged("running"))
    for i in range(120):
        listener(RequestSent("gpt-4o-mini", 200))
        if i < 100:
            listener(AttemptEnded("gpt-4o-mini", "ok"))
            listener(RequestFinished(f"r{i}", "gpt-4o-mini", True, 150, 50, 1))
    listener(AttemptEnded("gpt-4o-mini", "rate_minute"))
    listener(Throttled("gpt-4o-mini", 1.6))
    listener(BudgetUsed("gpt-4o-mini", 1_234_567, 2_000_000, 100, 10_000))


def test_live_display_reads_well_at_80_columns() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    stats = Stats()
    with ProgressDisplay(stats, io.StringIO(), console=console) as display:
        assert display.live_mode
        feed(display, stats)
        screen = Console(file=io.StringIO(), width=80, record=True)
        screen.print(display.render())
    text = screen.export_text()
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    assert all(len(line) <= 80 for line in lines), lines
    assert any("100/1000" in line and "10%" in line for line in lines)
    # 900 left at 500 RPM (200 tokens each fit 1,000 a minute under the TPM): 1m48s.
    assert "running · ETA 1m48s · in flight 19 · failed 0 · 429s 1" in lines
    assert "cooling down 1.6s after a 429 (rate limit)" in lines
    assert any(line.startswith("last minute: 100/500 req 20% · 20K/200K tok 10% · today "
                               "1.2M/2M tok 62%") for line in lines)
    printed = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", console.file.getvalue())  # type: ignore[attr-defined]
    assert "gpt-4o-mini: 500 RPM · 200K TPM · 10K RPD · 2M TPD" in printed


def test_plain_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    stats = Stats()
    with ProgressDisplay(stats, stream) as display:
        assert not display.live_mode
        feed(display, stats)
        emit_all(stats, display)(StateChanged("done"))
    out = stream.getvalue()
    assert "\x1b[" not in out
    status_lines = [line for line in out.splitlines() if line.startswith("[")]
    assert status_lines and all(PLAIN_LINE.match(line) for line in status_lines), status_lines
    assert status_lines[-1].startswith("[100/1,000] done · in flight")


def test_cli_progress_on_a_pipe_has_no_escape_codes(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(30))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url,
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    assert "\x1b[" not in run.stderr + run.stdout
    status_lines = [line for line in run.stderr.splitlines() if line.startswith("[")]
    assert status_lines[-1].startswith("[30/30] done")
    assert all(PLAIN_LINE.match(line) for line in status_lines), status_lines


def test_quiet_prints_no_progress(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q",
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0 and run.stderr == ""
    assert "5 ok · 0 failed" in run.stdout


@pytest.mark.parametrize(("left", "limits", "mean", "observed", "weight", "expected"), [
    (900, Limits(500, 200_000), 200.0, None, 0.0, 108.0),  # RPM binds: 500/min
    (900, Limits(500, 200_000), 1000.0, None, 0.0, 270.0),  # TPM binds: 200 req/min
    (900, Limits(500, 200_000), 200.0, 1.0, 1.0, 900.0),  # latency holds it to 1/s
    (900, Limits(500, 200_000), 200.0, 100.0, 1.0, 108.0),  # a burst never beats the limit
    (900, Limits(500, 200_000), 200.0, 1.0, 0.5, 900 / (0.5 * 500 / 60 + 0.5)),
    (900, Limits(), None, None, 0.0, None),  # no limits and nothing seen: unknown
    (900, Limits(), None, 2.0, 0.1, 450.0),  # no limits: what it achieves
    (0, Limits(500), None, None, 0.0, 0.0),
])
def test_eta_from_the_limits_then_the_observed_rate(
    left: int, limits: Limits, mean: float | None, observed: float | None, weight: float,
    expected: float | None,
) -> None:
    got = eta_s(left, limits, mean, observed, weight)
    assert got == (None if expected is None else pytest.approx(expected))


def screen_lines(display: ProgressDisplay, width: int = 80) -> list[str]:
    screen = Console(file=io.StringIO(), width=width, record=True)
    screen.print(display.render())
    return [line.rstrip() for line in screen.export_text().splitlines() if line.strip()]


def live(clock: FakeClock) -> tuple[ProgressDisplay, Stats, Listener]:
    console = Console(file=io.StringIO(), force_terminal=True, width=80)
    stats = Stats()
    display = ProgressDisplay(stats, io.StringIO(), console=console, clock=clock)
    return display, stats, emit_all(stats, display)


def test_the_eta_of_the_opening_seconds_is_not_fooled_by_the_burst() -> None:
    clock = FakeClock()
    display, _, listener = live(clock)
    listener(JobStarted("j", "o", 3000, 0, 0, {"m": Limits(rpm=600)}, "u", {"m": 3000}))
    listener(StateChanged("running"))
    for i in range(600):  # a whole minute's budget in the first 2 s
        listener(RequestSent("m", 10))
        listener(AttemptEnded("m", "ok"))
        listener(RequestFinished(f"r{i}", "m", True, 5, 5, 1))
    clock.now += 2
    # 2,400 left at 600/min is 4 minutes, whatever the burst did.
    assert any("ETA 4m00s" in line for line in screen_lines(display))


def test_a_paused_job_shows_when_it_resumes_and_no_stale_eta() -> None:
    clock = FakeClock()
    display, _, listener = live(clock)
    listener(JobStarted("j", "o", 10, 0, 0, {"m": Limits(rpm=60)}, "u", {"m": 10}))
    listener(StateChanged("paused-daily", "Daily token budget reached"))
    [state] = [line for line in screen_lines(display) if line.startswith("paused-daily")]
    assert "resumes 00:00 UTC, in " in state and "ETA" not in state
    listener(StateChanged("stopped"))
    [state] = [line for line in screen_lines(display) if line.startswith("stopped")]
    assert "ETA" not in state


def test_the_cooldown_line_goes_when_the_cooldown_ends() -> None:
    clock = FakeClock()
    display, _, listener = live(clock)
    listener(JobStarted("j", "o", 10, 0, 0, {"m": Limits(rpm=60)}, "u", {"m": 10}))
    listener(StateChanged("running"))
    listener(Throttled("m", 1.5))
    clock.now += 1.0
    assert "cooling down 0.5s after a 429 (rate limit)" in screen_lines(display)
    clock.now += 0.6
    assert not [line for line in screen_lines(display) if "cooling" in line]


def test_several_models_get_a_gauge_line_each_the_busiest_first() -> None:
    clock = FakeClock()
    display, _, listener = live(clock)
    limits = {"gpt-4o-mini": Limits(500, 200_000, 0, 300_000),
              "text-embedding-3-small": Limits(3000, 1_000_000, 0, 3_000_000)}
    listener(JobStarted("j", "o", 2000, 0, 0, limits, "u",
                        {"gpt-4o-mini": 1500, "text-embedding-3-small": 500}))
    listener(StateChanged("running"))
    for i in range(493):
        listener(RequestSent("gpt-4o-mini", 100))
        listener(RequestFinished(f"c{i}", "gpt-4o-mini", True, 80, 20, 1))
    for i in range(300):
        listener(RequestSent("text-embedding-3-small", 10))
        listener(RequestFinished(f"e{i}", "text-embedding-3-small", True, 10, 0, 1))
    listener(BudgetUsed("gpt-4o-mini", 299_742, 300_000, 0, 0))
    lines = screen_lines(display)
    at = next(i for i, line in enumerate(lines) if line.startswith("last minute"))
    assert lines[at].split() == ["last", "minute", "requests", "tokens", "today"]
    assert lines[at + 1].split() == ["gpt-4o-mini", "493/500", "99%", "49.3K/200K", "25%",
                                     "299.7K/300K", "100%"]
    assert lines[at + 2].split()[:5] == ["text-embedding-3-small", "300/3K", "10%", "3K/1M",
                                         "0%"]
    assert all(len(line) <= 80 for line in lines), lines


def test_the_header_names_the_proxy_without_its_password() -> None:
    stream = io.StringIO()
    with ProgressDisplay(Stats(), stream) as display:
        display(JobStarted("j", "o", 1, 0, 0, {}, "https://api.openai.com/v1",
                           proxy="http://***@proxy.corp:3128"))
    assert "sending to https://api.openai.com/v1 via proxy http://***@proxy.corp:3128" in (
        stream.getvalue())


def test_the_last_today_gauge_is_what_status_says(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--tpd", "100000",
                  env={"OPENAI_API_KEY": FAKE_KEY})
    assert run.code == 0, run.stderr
    last = [line for line in run.stderr.splitlines() if line.startswith("[")][-1]
    [usage] = orjson.loads(run_cli("status", "--json").stdout)["usage"]
    assert f"today {compact(usage['tokens'])}/100K tok" in last


def test_a_model_with_no_preset_and_no_limits_is_named_in_the_header() -> None:
    stream = io.StringIO()
    with ProgressDisplay(Stats(), stream) as display:
        display(JobStarted("j", "o", 1, 0, 0, {"gpt-9-ultra": Limits(), "gpt-4o-mini": Limits()},
                           "https://api.example.com/v1"))
    text = stream.getvalue()
    assert "no preset limits for gpt-9-ultra" in text and "--rpm/--tpm/--tpd" in text
    assert "no preset limits for gpt-4o-mini" not in text  # known model, limits lifted by hand
