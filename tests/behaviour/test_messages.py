"""One ending, one sentence: the library's `job.message` is the line the CLI prints for the same
job (its last stderr line, the summary's line of failures to send again, or --detach's one
line) and the CLI's `--json` "message", for each way a job can end."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import batchrun
import batchrun.files.checkpoint
from batchrun.backends.batch import entry as batch_entry
from batchrun.files import ledger
from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.batch_fake import FakeBatchApi
from tests.helpers.cli import FAKE_KEY, run_cli, wait_for
from tests.helpers.jsonl import write_jsonl
from tests.helpers.sim import RunningSim

NOON = dt.datetime(2026, 3, 2, 12, 0, 7, tzinfo=dt.UTC)  # the daily stop names the wait to 00:00
During = Callable[[Path], contextlib.AbstractContextManager[None]]


def prompts(n: int) -> list[dict[str, Any]]:
    return [{"id": f"p{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(n)]


@pytest.fixture(autouse=True)
def fixed_day(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setattr(ledger, "utc_now", lambda: NOON)


@contextlib.contextmanager
def as_it_is(_results: Path) -> Iterator[None]:
    yield


@pytest.fixture
def disk_full_after_three_lines(monkeypatch: pytest.MonkeyPatch) -> During:
    """During a run, the output takes three lines, then reports a full disk."""
    writes = [0]
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        writes[0] += 1
        if writes[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(batchrun.files.checkpoint.os, "write", write)

    @contextlib.contextmanager
    def during(_results: Path) -> Iterator[None]:
        writes[0] = 0
        yield
    return during


@contextlib.contextmanager
def ctrl_c_after_the_first_result(results: Path) -> Iterator[None]:
    """Ctrl-C (a SIGINT to this process) once the results file holds a line."""
    def press() -> None:
        wait_for(lambda: results.exists() and results.read_bytes().count(b"\n") >= 1)
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    yield
    presser.join()


def cli_line(code: int, stdout: str, stderr: str) -> str:
    """The sentence the CLI ends with: why it stopped (stderr), else the failures to send again
    (the summary's line), or --detach's one line; else none."""
    if code not in (0, 1):
        return stderr.strip().splitlines()[-1]
    lines = stdout.splitlines()
    if len(lines) == 1:
        return lines[0]
    return next((line for line in lines if "failed for good" in line), "")


def same_words(text: str, job: str, folder: Path, counts: bool) -> str:
    """Two jobs' sentences compared: each names its own id and folder (and, after a Ctrl-C,
    its own counts: how far each got is the race between the key and the answers)."""
    text = text.replace(job, "JOB").replace(str(folder), "DIR")
    return text if counts else re.sub(r"\d[\d,]*", "N", text)


def flags(options: dict[str, Any]) -> list[str]:
    return [part for name, value in options.items()
            for part in ([f"--{name.replace('_', '-')}"]
                         + ([] if value is True else [str(value)]))]


def both_ways(folder: Path, rows: list[dict[str, Any]], options: dict[str, Any],
              base_url: str, monkeypatch: pytest.MonkeyPatch, during: During = as_it_is,
              counts: bool = True) -> tuple[list[int], list[str], batchrun.Job]:
    """The same job run by the CLI (as text and as --json) and by the library, each in a folder
    and $BATCHRUN_HOME of its own (so a daily budget is each one's alone): their exit codes and
    sentences (the CLI's line, its --json message, job.message) with ids and folders made
    alike."""
    codes, sentences = [], []
    for way in ("cli", "json", "api"):
        (folder / way).mkdir()
        monkeypatch.setenv("BATCHRUN_HOME", str(folder / way / "home"))
        jobs = write_jsonl(folder / way / "jobs.jsonl", rows)
        with during(folder / way / "jobs.results.jsonl"):
            if way == "api":
                job = batchrun.submit(jobs, base_url=base_url, **options)
            else:
                run = run_cli("submit", str(jobs), "--base-url", base_url, "-q",
                              *flags(options), *(["--json"] if way == "json" else []))
        if way == "api":
            codes.append(job.exit_code)
            sentences.append(same_words(job.message, job.id, folder / way, counts))
        elif way == "json":
            said = orjson.loads(run.stdout)
            codes.append(run.code)
            sentences.append(same_words(said["message"], said["job"], folder / way, counts))
        else:
            job_id = orjson.loads(run_cli("status", "--json").stdout)["jobs"][0]["job_id"]
            codes.append(run.code)
            sentences.append(same_words(cli_line(run.code, run.stdout, run.stderr), job_id,
                                        folder / way, counts))
    return codes, sentences, job


ENDINGS: list[tuple[str, list[dict[str, Any]], dict[str, Any], int]] = [
    ("done", prompts(3), {}, 0),
    ("some failed", [*prompts(2), {"id": "bad", "nothing": 1}], {"on_bad_line": "skip"}, 1),
    ("paused-daily", [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40}
                      for i in range(20)], {"tpd": 300, "concurrency": 1}, 3),
    ("local I/O failure", prompts(20), {"concurrency": 1, "rpm": 0, "tpm": 0}, 5),
]


@pytest.mark.parametrize(("ending", "rows", "options", "code"), ENDINGS,
                         ids=[e[0] for e in ENDINGS])
def test_job_message_is_the_cli_s_line_for_the_same_ending(
        ending: str, rows: list[dict[str, Any]], options: dict[str, Any], code: int,
        sim: RunningSim, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    during: During = (request.getfixturevalue("disk_full_after_three_lines")
                      if ending == "local I/O failure" else as_it_is)
    codes, sentences, _ = both_ways(tmp_path, rows, options, sim.base_url, monkeypatch, during)
    assert codes == [code] * 3
    assert sentences[2] == sentences[0] == sentences[1]
    assert (sentences[2] == "") is (ending == "done")


def test_job_message_is_the_cli_s_line_when_the_api_refuses_the_key(
        sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sim_factory(SimConfig(api_key="sk-the-real-key-0000000000"))
    codes, sentences, job = both_ways(tmp_path, prompts(3), {}, sim.base_url, monkeypatch)
    assert (codes, job.state) == ([4] * 3, batchrun.JobState.STOPPED)
    assert sentences[2] == sentences[0] == sentences[1]
    assert "$OPENAI_API_KEY" in sentences[2]


def test_job_message_is_the_cli_s_line_after_ctrl_c(
        sim_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sim = sim_factory(SimConfig(SimLimits(rpm=600), latency_s=0.2))
    codes, sentences, job = both_ways(tmp_path, prompts(200), {"rpm": 600}, sim.base_url,
                                      monkeypatch, ctrl_c_after_the_first_result, counts=False)
    assert (codes, job.state) == ([130] * 3, batchrun.JobState.INTERRUPTED)
    assert sentences[2] == sentences[0] == sentences[1]
    assert sentences[2].startswith("Interrupted. N of N requests are done")


def test_job_message_is_the_cli_s_line_when_detached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_entry, "BatchClient", lambda *a, **k: FakeBatchApi(steps=2))
    codes, sentences, job = both_ways(tmp_path, prompts(3), {"via": "batch", "detach": True},
                                      "https://api.example.test/v1", monkeypatch)
    assert (codes, job.state) == ([0] * 3, batchrun.JobState.SUBMITTED)
    assert sentences[2] == sentences[0] == sentences[1]
    assert sentences[2].startswith("Job JOB submitted, not finished")
