"""The daily budget as a new user meets it (issue 21, item 13): each simulated job has its own
ledger row, and the daily-stop message gives the true usage and how much other jobs took."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers.cli import FAKE_KEY, run_cli
from tests.helpers.jsonl import count_lines, prompts, write_jsonl
from tests.helpers.sim import RunningSim


def _used(stderr: str) -> tuple[int, int]:
    found = re.search(r"([\d,]+) of ([\d,]+) tokens used on", stderr)
    assert found is not None, stderr
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


def test_each_simulated_job_has_its_own_daily_budget_which_holds_on_resume(
        tmp_path: Path) -> None:
    first = write_jsonl(tmp_path / "first.jsonl", prompts(40))
    a = run_cli("submit", str(first), "--simulate", "--tpd", "300", "-q")
    assert a.code == 3, a.stderr
    done_a = count_lines(tmp_path / "first.results.jsonl")
    assert 0 < done_a < 40
    # Another simulated job the same day starts with the whole of its own budget.
    second = write_jsonl(tmp_path / "second.jsonl", prompts(40, "s"))
    # (Its prompts are the first job's: --no-cache, so that it sends them.)
    b = run_cli("submit", str(second), "--simulate", "--tpd", "300", "-q", "--no-cache")
    assert b.code == 3, b.stderr
    # (With one row for every simulated run, it started with the first job's day spent: 0.)
    assert 0 < count_lines(tmp_path / "second.results.jsonl") < 40
    assert "by other jobs" not in b.stderr
    # The first job's stop holds on resume: its row is the job's, not the run's.
    again = run_cli("resume", str(tmp_path / "first.results.jsonl"), "-q")
    assert again.code == 3, again.stderr
    assert count_lines(tmp_path / "first.results.jsonl") == done_a
    assert "by other jobs" not in again.stderr  # its first run was the job's own


def test_the_daily_stop_gives_the_true_usage_and_what_other_jobs_used(
        sim: RunningSim, tmp_path: Path) -> None:
    env = {"OPENAI_API_KEY": FAKE_KEY}
    other = write_jsonl(tmp_path / "other.jsonl", prompts(30, "o"))
    done = run_cli("submit", str(other), "--base-url", sim.base_url, "--tpd", "0", "-q", env=env)
    assert done.code == 0, done.stderr
    # 30 requests of the same key used more than this job's whole budget before it started.
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--tpd", "300", "-q",
                  "--no-cache", env=env)  # its prompts were answered by the other job
    assert run.code == 3, run.stderr
    used, budget = _used(run.stderr)
    assert budget == 300 and used > 300  # the ledger's count, not one capped at the budget
    assert "all of them by other jobs on this key" in run.stderr
    # On resume the job's own earlier run is not counted as another job's.
    again = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--tpd", str(used + 60),
                    "-q", env=env)
    assert again.code == 3, again.stderr
    used_now, _ = _used(again.stderr)
    mine = used_now - used
    assert mine > 0 and f"{used:,} of them by other jobs on this key" in again.stderr
