"""`batchrun.submit` and `resume` from Python, against the simulator on loopback: what a library
user sees is the returned Job (state, exit code, message, counts), the results, and silence."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest

import batchrun
import batchrun.files.checkpoint
from batchrun.events import Event, JobStarted, Note, RequestFinished
from batchrun.files.jobstore import DamagedManifest
from batchrun.simulator import SimConfig, SimLimits
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.sim import RunningSim

UNLIMITED = {"rpm": 0, "tpm": 0, "rpd": 0, "tpd": 0}


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def prompts(n: int, prefix: str = "p") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(n)]


def test_submit_blocks_and_returns_the_finished_job_printing_nothing(
        sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(20))
    job = batchrun.submit(jobs, base_url=sim.base_url, **UNLIMITED)
    assert (job.state, job.exit_code, job.message) == (batchrun.JobState.DONE, 0, "")
    assert job.output == tmp_path / "jobs.results.jsonl"
    assert (job.counts.total, job.counts.done, job.counts.failed) == (20, 20, 0)
    assert job.tokens.input > 0 and job.cost_usd is not None and job.cost_usd > 0
    lines = list(job.results())
    assert sorted(line["custom_id"] for line in lines) == sorted(f"p{i}" for i in range(20))
    assert all(line["response"]["status_code"] == 200 for line in lines)
    assert capsys.readouterr() == ("", "")
    assert {job: "kept"}[job] == "kept"  # a Job can key a dict (its summary is left out)


async def test_the_blocking_submit_works_inside_a_running_event_loop(
        sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.get_running_loop()  # as in a notebook cell
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    job = batchrun.submit(jobs, base_url=sim.base_url, **UNLIMITED)
    assert (job.state, job.exit_code, job.counts.done) == ("done", 0, 10)
    assert capsys.readouterr() == ("", "")


async def test_submit_async_is_awaited(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(10))
    job = await batchrun.submit_async(jobs, base_url=sim.base_url, **UNLIMITED)
    assert (job.state, job.exit_code) == (batchrun.JobState.DONE, 0)
    assert len(read_results(job.output)) == 10


def test_submitting_a_finished_job_again_sends_nothing(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    batchrun.submit(jobs, base_url=sim.base_url, **UNLIMITED)
    sent = sim.stats.received
    again = batchrun.submit(jobs, base_url=sim.base_url, **UNLIMITED)
    assert (again.state, again.exit_code) == ("done", 0)
    assert "is finished: 5 of 5 requests have a result" in again.message
    assert sim.stats.received == sent


def test_the_daily_budget_returns_a_paused_job_with_exit_3(sim: RunningSim,
                                                           tmp_path: Path) -> None:
    rows = [{"id": f"d{i}", "prompt": f"hello there {i}", "max_tokens": 40} for i in range(30)]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)
    job = batchrun.submit(jobs, base_url=sim.base_url, tpd=300, concurrency=1)
    assert (job.state, job.exit_code) == (batchrun.JobState.PAUSED_DAILY, 3)
    assert "Daily token budget reached for gpt-4o-mini" in job.message
    assert 0 < job.counts.done < 30 and job.counts.not_done == 30 - job.counts.done


def test_the_api_refusing_the_key_returns_a_stopped_job_with_exit_4(sim_factory: Any,
                                                                    tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(api_key="sk-the-real-key-0000000000"))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(5))
    job = batchrun.submit(jobs, base_url=sim.base_url)
    assert (job.state, job.exit_code) == (batchrun.JobState.STOPPED, 4)
    assert "$OPENAI_API_KEY" in job.message and FAKE_KEY not in job.message


def test_a_bad_input_line_raises_input_error_and_sends_nothing(sim: RunningSim,
                                                               tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", [*prompts(3), {"id": "x", "nothing": 1}])
    with pytest.raises(batchrun.InputError) as raised:
        batchrun.submit(jobs, base_url=sim.base_url)
    assert isinstance(raised.value, batchrun.errors.BadLinesError)
    assert "line 4" in raised.value.message
    assert sim.stats.received == 0
    assert batchrun.status()["jobs"] == []


@pytest.mark.parametrize("options", [{"tier": "tier9"}, {"rpm": -1}, {"via": "carrier"},
                                     {"no_such_option": 1}, {"concurrency": 0}])
def test_bad_options_raise_input_error_before_anything_runs(options: dict[str, Any],
                                                            tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(2))
    with pytest.raises(batchrun.InputError):
        batchrun.submit(jobs, simulate=True, **options)
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_on_event_receives_the_typed_events(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(8))
    heard: list[Event] = []
    batchrun.submit(jobs, base_url=sim.base_url, on_event=heard.append, **UNLIMITED)
    started = [e for e in heard if isinstance(e, JobStarted)]
    assert len(started) == 1 and started[0].total == 8
    assert sorted(e.custom_id for e in heard if isinstance(e, RequestFinished)) == sorted(
        f"p{i}" for i in range(8))


class CallbackBug(Exception):
    pass


def test_an_on_event_that_raises_stops_the_job_resumably_and_raises_its_own_error(
        sim_factory: Any, tmp_path: Path) -> None:
    sim = sim_factory(SimConfig(latency_s=0.05))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(60))

    def buggy(event: Event) -> None:
        if isinstance(event, RequestFinished):
            raise CallbackBug("the user's own bug")

    with pytest.raises(CallbackBug, match="the user's own bug"):
        batchrun.submit(jobs, base_url=sim.base_url, concurrency=2, on_event=buggy, **UNLIMITED)
    [row] = batchrun.status()["jobs"]
    assert row["state"] == "interrupted"
    assert sim.stats.received < 60  # it stopped sending: nothing more paid for a broken hook
    job = batchrun.resume(row["job_id"])
    assert (job.state, job.counts.done) == ("done", 60)
    assert sim.stats.received == 60  # what the stopped run answered is not paid twice


def test_simulate_needs_no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    job = batchrun.submit(jobs, simulate=True)
    assert (job.state, job.counts.done) == ("done", 3)


async def test_ctrl_c_in_a_notebook_leaves_an_interrupted_job_that_resume_finishes(
        sim_factory: Any, tmp_path: Path) -> None:
    # The kernel's interrupt is a SIGINT to the process while the cell's call blocks.
    sim = sim_factory(SimConfig(SimLimits(rpm=600), latency_s=0.2))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(200))
    pressed: list[bool] = []

    def press_ctrl_c_after_the_first_result(event: Event) -> None:
        if isinstance(event, RequestFinished) and not pressed:
            pressed.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    job = batchrun.submit(jobs, base_url=sim.base_url, rpm=600,
                          on_event=press_ctrl_c_after_the_first_result)
    assert (job.state, job.exit_code) == (batchrun.JobState.INTERRUPTED, 130)
    assert "Interrupted" in job.message
    assert 0 < job.counts.done < 200
    finished = batchrun.resume(job, rpm=0)
    assert (finished.state, finished.exit_code, finished.counts.done) == ("done", 0, 200)
    assert len(read_results(jobs.with_name("jobs.results.jsonl"))) == 200


def test_a_local_write_failure_returns_a_stopped_job_with_exit_5(
        sim: RunningSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writes = 0
    real_write = os.write

    def write(fd: int, data: Any) -> int:
        nonlocal writes
        # os.write is the process's: only result lines count here, not the job's spend record
        writes += bytes(data).startswith(b"{")
        if writes > 3 and bytes(data).startswith(b"{"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(40))
    monkeypatch.setattr(batchrun.files.checkpoint.os, "write", write)
    job = batchrun.submit(jobs, base_url=sim.base_url, concurrency=1, **UNLIMITED)
    assert (job.state, job.exit_code) == (batchrun.JobState.STOPPED, 5)
    assert "No space left on device" in job.message
    assert job.counts.done == 3


def test_progress_shows_the_display_on_stderr_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    batchrun.submit(jobs, simulate=True, progress=True)
    shown = capsys.readouterr()
    assert shown.out == "" and "gpt-4o-mini" in shown.err


def test_status_lists_the_job_as_it_ended(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    job = batchrun.submit(jobs, base_url=sim.base_url, **UNLIMITED)
    [row] = batchrun.status()["jobs"]
    assert (row["job_id"], row["state"], row["done"]) == (job.id, "done", 4)
    assert batchrun.status(job)["jobs"][0]["output"] == str(job.output)


def test_the_run_s_notes_reach_on_event(sim: RunningSim, tmp_path: Path) -> None:
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(4))
    job = batchrun.submit(jobs, base_url=sim.base_url, tpd=30, concurrency=1)
    assert job.state == "paused-daily"
    heard: list[Event] = []
    batchrun.resume(job, retry_failed=True, tpd=0, on_event=heard.append)
    assert f"No failed results in {job.output} to send again." in [
        e.text for e in heard if isinstance(e, Note)]


def test_a_damaged_manifest_is_named_each_time_and_leaves_the_output_free(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A notebook cannot restart its process to drop a lock the library forgot to release.
    home = tmp_path / "home"
    monkeypatch.setenv("BATCHRUN_HOME", str(home))
    jobs = write_jsonl(tmp_path / "jobs.jsonl", prompts(3))
    batchrun.submit(jobs, simulate=True, tpd=1)
    (manifest,) = (home / "jobs").glob("*.json")
    data = orjson.loads(manifest.read_bytes())
    data["options"]["overrides"]["rpm"] = 1.5
    manifest.write_bytes(orjson.dumps(data))
    for _ in range(2):
        with pytest.raises(DamagedManifest):
            batchrun.submit(jobs, simulate=True, tpd=1)
