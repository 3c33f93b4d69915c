"""Errors a new user meets: Redis down says what to do next, and `--json` answers every error
with an object on stdout (issue 21, item 18)."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.helpers.cli import run_cli
from tests.helpers.jsonl import prompts, write_jsonl

DOWN = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def test_redis_down_at_the_start_says_what_to_do_next(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--simulate", "--state", DOWN, "-q")
    assert run.code == 5
    assert f"The shared state at {DOWN} is unavailable" in run.stderr
    assert "Nothing was sent." in run.stderr
    assert f"redis-cli -u {DOWN} ping" in run.stderr
    assert "then run the same command again" in run.stderr


def test_redis_down_on_resume_leaves_the_job_as_it_was(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "2", "-q")
    assert first.code == 3, first.stderr
    job = first.stderr.rsplit("batchrun resume ", 1)[1].split()[0]
    run = run_cli("resume", job, "--state", DOWN)
    assert run.code == 5
    assert "then run the same command again" in run.stderr
    # Nothing ran: not "crashed", which would say a bug ended it.
    [shown] = orjson.loads(run_cli("status", "--json").stdout)["jobs"]
    assert shown["state"] == "paused-daily"


def test_status_with_redis_down_says_how_to_see_the_local_ledger() -> None:
    run = run_cli("status", "--state", DOWN)
    assert run.code == 5
    assert "without --state" in run.stderr


def test_json_answers_a_refused_start_with_an_error_object(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    run = run_cli("submit", str(jobs), "--simulate", "--state", DOWN, "--json")
    assert run.code == 5
    answer = orjson.loads(run.stdout)
    assert set(answer) == {"job", "state", "exit_code", "message"}
    assert answer["job"].startswith("jobs-") and answer["exit_code"] == 5
    assert answer["state"] is None  # refused before the job was recorded
    assert f"The shared state at {DOWN} is unavailable" in answer["message"]


def test_json_answers_an_error_of_a_recorded_job_with_its_state(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    first = run_cli("submit", str(jobs), "--simulate", "--rpd", "2", "-q")
    job = first.stderr.rsplit("batchrun resume ", 1)[1].split()[0]
    run = run_cli("resume", job, "--state", DOWN, "--json")
    assert run.code == 5
    assert orjson.loads(run.stdout) == {
        "job": job, "state": "paused-daily", "exit_code": 5,
        "message": orjson.loads(run.stdout)["message"]}


def test_json_answers_bad_input_and_bad_usage(tmp_path: Path) -> None:
    missing = run_cli("submit", str(tmp_path / "nope.jsonl"), "--simulate", "--json")
    assert missing.code == 2
    answer = orjson.loads(missing.stdout)
    assert answer["job"].startswith("nope-") and answer["state"] is None
    assert answer["exit_code"] == 2
    assert "no such file" in answer["message"]
    usage = run_cli("status", "--json", "--no-such-option")
    assert usage.code == 2
    assert "--no-such-option" in orjson.loads(usage.stdout)["message"]
    unknown = run_cli("resume", "no-such-job", "--json")
    assert unknown.code == 2 and "no job 'no-such-job'" in orjson.loads(unknown.stdout)["message"]


def test_json_answers_resume_of_a_finished_job_with_an_object(tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    assert run_cli("submit", str(jobs), "--simulate", "-q").code == 0
    again = run_cli("resume", str(tmp_path / "jobs.results.jsonl"), "--json")
    assert again.code == 0
    answer = orjson.loads(again.stdout)
    assert answer["state"] == "done" and answer["exit_code"] == 0
    assert "is finished: 2 of 2 requests have a result" in answer["message"]
