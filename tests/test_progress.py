"""What a user watches: the live display at 80 columns, plain lines when not a terminal."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from batchrun.events import (
    AttemptEnded,
    BudgetUsed,
    JobStarted,
    RequestFinished,
    RequestSent,
    StateChanged,
    Stats,
    Throttled,
    emit_all,
)
from batchrun.progress import ProgressDisplay
from batchrun.tiers import Limits
from tests.conftest import FAKE_KEY, RunningSim, run_cli, write_jsonl
from tests.test_resume import prompts

PLAIN_LINE = re.compile(
    r"^\[[\d,]+/[\d,]+\] (running|done|draining|paused-daily|stopped|cooling)[^·]* · "
    r"ETA [\dhms?]+ · in flight \d+ · failed \d+ · 429s \d+ · last minute: .+ req.* · .+ tok"
)


def feed(display: ProgressDisplay, stats: Stats) -> None:
    listener = emit_all(stats, display)
    listener(JobStarted("jobs.jsonl", "jobs.results.jsonl", 1000, 0, 0,
                        {"gpt-4o-mini": Limits(500, 200_000, 10_000, 2_000_000)},
                        "https://api.openai.com/v1"))
    listener(StateChanged("running"))
    for i in range(120):
        listener(RequestSent("gpt-4o-mini"))
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
    assert "running · ETA 9m00s · in flight 19 · failed 0 · 429s 1" in lines
    assert "cooling down 1.6s after a 429 (rate limit)" in lines
    assert any(line.startswith("last minute: 100/500 req (20%) · 20K/200K tok (10%) · today "
                               "1.2M/2M tok (62%)") for line in lines)
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
    assert status_lines[-1].startswith("[100/1,000] done · ETA 9m00s")


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
