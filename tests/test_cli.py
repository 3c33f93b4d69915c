"""The command line itself: help that reads at 80 columns, --version, forgiving names, and the
one place every error becomes a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from batchrun import __version__
from batchrun.cli import commands as cli
from batchrun.errors import InputError
from batchrun.files.fsutil import FileLock
from tests.conftest import RunningSim, read_results, run_cli, write_jsonl
from tests.test_resume import prompts


def command_info(name: str) -> Any:
    return next(c for c in cli.app.registered_commands if c.callback.__name__ == name)


def test_version() -> None:
    run = run_cli("--version")
    assert run.code == 0 and run.stdout.strip() == f"batchrun {__version__}"


@pytest.mark.parametrize("command", ["submit", "resume", "estimate", "status"])
def test_help_fits_80_columns_and_cuts_nothing(command: str) -> None:
    result = CliRunner().invoke(cli.app, [command, "--help"], env={"COLUMNS": "80"},
                                prog_name="batchrun")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "…" not in result.output  # nothing truncated
    assert "╭" not in result.output  # plain text, no boxes squeezing descriptions


def test_submit_help_names_its_flags_plainly() -> None:
    text = CliRunner().invoke(cli.app, ["submit", "--help"], env={"COLUMNS": "80"},
                              prog_name="batchrun").output
    assert "Usage: batchrun submit [OPTIONS] {JOBS}" in text  # typer's braces: required
    assert "JOBS.results.jsonl" in text
    for flag in ("--simulate ", "--insecure ", "--force "):
        assert flag in text
    assert "--no-simulate" not in text and "--no-force" not in text


def test_tier_names_are_not_case_sensitive(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    run = run_cli("estimate", str(jobs), "--tier", "Tier1", "--json")
    assert run.code == 0, run.stderr
    assert '"tier":"tier1"' in run.stdout


def test_escape_sequences_in_a_message_never_reach_the_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def status() -> None:
        raise InputError("server said: \x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J done\ttab\nnext line")

    monkeypatch.setattr(command_info("status"), "callback", status)
    code = cli.run(["status"])
    err = capsys.readouterr().err
    assert code == 2
    assert "\x1b" not in err and "\x07" not in err
    assert "tab\nnext line" in err and "done" in err and "[2J" not in err  # rich expands tabs


def test_a_bug_is_one_clear_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def status() -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(command_info("status"), "callback", status)
    code = cli.run(["status"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_INTERNAL
    assert "Traceback" not in err
    assert "internal error: ZeroDivisionError: division by zero" in err
    assert "BATCHRUN_DEBUG=1" in err
    monkeypatch.setenv("BATCHRUN_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        cli.run(["status"])


def test_max_response_mb_fails_bigger_answers_and_resume_can_raise_it(
    sim: RunningSim, tmp_path: Path
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    small = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--max-response-mb",
                    "0.0001", "-q", env=env)  # 104 bytes: every answer is bigger
    assert small.code == 1, small.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert {r["error"]["code"] for r in results.values()} == {"response_too_large"}
    again = run_cli("resume", "--retry-failed", "--max-response-mb", "1", "-q", env=env)
    assert again.code == 0, again.stderr
    assert all(r["error"] is None for r in read_results(tmp_path / "jobs.results.jsonl").values())


def test_bad_lines_skipped_point_to_the_path_that_works(sim: RunningSim, tmp_path: Path) -> None:
    rows: list[Any] = [{"id": "a", "prompt": "hi"}, {"id": "b", "prompt": ""}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    first = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--on-bad-line", "skip",
                    "-q", env=env)
    assert first.code == 1, first.stderr
    [hint] = [line for line in first.stdout.splitlines() if "bad input lines" in line
              and "--force" in line]
    job = hint.rsplit("batchrun resume ", 1)[1].split()[0]
    rows[1]["prompt"] = "fixed"
    write_jsonl(jobs, rows)
    again = run_cli("resume", job, "--retry-failed", "--force", "-q", env=env)
    assert again.code == 0, again.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert set(results) == {"a", "b"} and all(r["error"] is None for r in results.values())


def test_json_summary_says_why_it_stopped_and_where_the_results_are(
    sim: RunningSim, tmp_path: Path
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(30))
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "--tpd", "300",
                  "--concurrency", "1", "--json", env={"OPENAI_API_KEY": "sk-test-0123456789ab"})
    assert run.code == 3, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["state"] == "paused-daily"
    assert summary["message"].startswith("Daily token budget reached for gpt-4o-mini")
    assert summary["results"] == str(tmp_path / "jobs.results.jsonl")


def test_forget_removes_a_job_from_status_and_keeps_its_results(
    sim: RunningSim, tmp_path: Path
) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    assert run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q", env=env).code == 0
    [job] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    forgot = run_cli("forget", job["job_id"][:6])
    assert forgot.code == 0, forgot.stderr
    assert f"Forgot job {job['job_id']}" in forgot.stdout
    assert orjson.loads(run_cli("status", "--json").stdout)["jobs"] == []
    assert len(read_results(tmp_path / "jobs.results.jsonl")) == 3
    assert run_cli("forget", "nothing-like-it").code == 2


def test_a_running_job_cannot_be_forgotten(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    assert run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q", env=env).code == 0
    lock = FileLock(tmp_path / "jobs.results.jsonl")  # what a running job holds
    try:
        refused = run_cli("forget", str(tmp_path / "jobs.results.jsonl"))
    finally:
        lock.release()
    assert refused.code == 2 and "is running" in refused.stderr
    assert len(orjson.loads(run_cli("status", "--json").stdout)["jobs"]) == 1


def test_submit_of_a_finished_job_says_so_without_starting(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    env = {"OPENAI_API_KEY": "sk-test-0123456789abcdef"}
    assert run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q", env=env).code == 0
    received = sim.stats.received
    again = run_cli("submit", str(jobs), "--base-url", sim.base_url, env=env)
    assert again.code == 0, again.stderr
    assert "is finished: 3 of 3 requests have a result (0 failed)" in again.stdout
    assert "sending to" not in again.stderr and sim.stats.received == received
    (tmp_path / "jobs.results.jsonl").unlink()  # the file decides, not the manifest
    rerun = run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q", env=env)
    assert rerun.code == 0 and "3 ok" in rerun.stdout


def test_one_model_without_a_price_leaves_the_others_cost_known(
    sim: RunningSim, tmp_path: Path
) -> None:
    rows = [{"id": "a", "prompt": "hi"}, {"id": "b", "prompt": "hi", "model": "gpt-9-ultra"}]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    run = run_cli("submit", str(jobs), "--base-url", sim.base_url, "-q",
                  env={"OPENAI_API_KEY": "sk-test-0123456789abcdef"})
    assert run.code == 0, run.stderr
    [line] = [x for x in run.stdout.splitlines() if x.startswith("tokens:")]
    assert "at list prices of 2026-11-01, plus gpt-9-ultra, which has no list price" in line


@pytest.mark.parametrize("command", ["submit", "estimate"])
def test_an_unknown_tier_is_refused_before_anything_runs(command: str, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(1))
    run = run_cli(command, str(jobs), "--tier", "gold", "--simulate" if command == "submit"
                  else "--json")
    assert run.code == 2
    assert "unknown tier 'gold'; choose one of free, tier1" in run.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()
