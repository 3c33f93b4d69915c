"""One ending, one sentence: the library's `job.message` is the line the CLI prints for the same
job (its last stderr line, or the summary's line of failures to send again) and the CLI's
`--json` "message", for each way a job can end."""

from __future__ import annotations

import datetime as dt
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import batchrun
import batchrun.files.checkpoint
from batchrun.files import ledger
from batchrun.simulator import SimConfig
from tests.conftest import FAKE_KEY, RunningSim, run_cli, write_jsonl

NOON = dt.datetime(2026, 3, 2, 12, 0, 7, tzinfo=dt.UTC)  # the daily stop names the wait to 00:00


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(n)]


@pytest.fixture(autouse=True)
def fixed_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setattr(ledger, "utc_now", lambda: NOON)


@pytest.fixture
def disk_full_after_three_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Each call starts a run whose output takes three lines, then reports a full disk."""
    writes = [0]
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        writes[0] += 1
        if writes[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(batchrun.files.checkpoint.os, "write", write)

    def again() -> None:
        writes[0] = 0
    yield again


def cli_line(code: int, stdout: str, stderr: str) -> str:
    """The sentence the CLI ends with: why it stopped (stderr), else the failures to send again
    (the summary's line), else none."""
    if code not in (0, 1):
        return stderr.strip().splitlines()[-1]
    return next((line for line in stdout.splitlines() if "failed for good" in line), "")


def same_words(text: str, job: str, folder: Path) -> str:
    """Two jobs' sentences compared: each names its own id and folder."""
    return text.replace(job, "JOB").replace(str(folder), "DIR")


Ending = tuple[str, list[dict[str, Any]], dict[str, Any], int]
ENDINGS: list[Ending] = [
    ("done", prompts(3), {}, 0),
    ("some failed", [*prompts(2), {"id": "bad", "nothing": 1}], {"on_bad_line": "skip"}, 1),
    ("paused-daily", [{"id": f"d{i}", "prompt": "hello there", "max_tokens": 40}
                      for i in range(20)], {"tpd": 300, "concurrency": 1}, 3),
    ("local I/O failure", prompts(20), {"concurrency": 1, "rpm": 0, "tpm": 0}, 5),
]


def flags(options: dict[str, Any]) -> list[str]:
    return [part for name, value in options.items()
            for part in (f"--{name.replace('_', '-')}", str(value))]


def both_ways(folder: Path, rows: list[dict[str, Any]], options: dict[str, Any],
              base_url: str, monkeypatch: pytest.MonkeyPatch,
              before_each: Callable[[], None] = lambda: None,
              ) -> tuple[int, str, str, batchrun.Job, str]:
    """The same job run by the CLI (twice: as text and as --json) and by the library, each in a
    folder and $BATCHRUN_HOME of its own (so a daily budget is each one's alone); their
    sentences with the ids and folders made alike."""
    sentences = []
    codes = []
    for way in ("cli", "json"):
        (folder / way).mkdir()
        monkeypatch.setenv("BATCHRUN_HOME", str(folder / way / "home"))
        jobs = write_jsonl(folder / way / "jobs.jsonl", rows)
        before_each()
        run = run_cli("submit", str(jobs), "--base-url", base_url, "-q", *flags(options),
                      *(["--json"] if way == "json" else []))
        codes.append(run.code)
        if way == "cli":
            job_id = orjson.loads(run_cli("status", "--json").stdout)["jobs"][0]["job_id"]
            sentences.append(same_words(cli_line(run.code, run.stdout, run.stderr), job_id,
                                        folder / way))
        else:
            said = orjson.loads(run.stdout)
            sentences.append(same_words(said["message"], said["job"], folder / way))
    (folder / "api").mkdir()
    monkeypatch.setenv("BATCHRUN_HOME", str(folder / "api" / "home"))
    jobs = write_jsonl(folder / "api" / "jobs.jsonl", rows)
    before_each()
    job = batchrun.submit(jobs, base_url=base_url, **options)
    assert codes[0] == codes[1] == job.exit_code
    return job.exit_code, sentences[0], sentences[1], job, same_words(
        job.message, job.id, folder / "api")


@pytest.mark.parametrize(("ending", "rows", "options", "code"), ENDINGS,
                         ids=[e[0] for e in ENDINGS])
def test_job_message_is_the_cli_s_line_for_the_same_ending(
        ending: str, rows: list[dict[str, Any]], options: dict[str, Any], code: int,
        sim: RunningSim, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    before_each: Callable[[], None] = (
        request.getfixturevalue("disk_full_after_three_lines")
        if ending == "local I/O failure" else lambda: None)
    exit_code, printed, json_said, _, message = both_ways(
        tmp_path, rows, options, sim.base_url, monkeypatch, before_each)
    assert exit_code == code
    assert message == printed == json_said
    assert (message == "") is (ending == "done")


def test_job_message_is_the_cli_s_line_when_the_api_refuses_the_key(
        sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sim_factory(SimConfig(api_key="sk-the-real-key-0000000000"))
    exit_code, printed, json_said, job, message = both_ways(tmp_path, prompts(3), {},
                                                            sim.base_url, monkeypatch)
    assert (exit_code, job.state) == (4, batchrun.JobState.STOPPED)
    assert message == printed == json_said
    assert "$OPENAI_API_KEY" in message
