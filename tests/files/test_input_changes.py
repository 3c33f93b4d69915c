"""The input must not change under a running job, and a finished job whose input changed is not
"finished" with it. A rewrite in place (same inode, same size, lines shuffled) used to be read by
the check pass's line numbers, so ids were sent and billed twice; a cut input ended `done` with
requests never sent."""

from __future__ import annotations

import dataclasses
import os
import random
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun.backends.stop import Stop
from batchrun.backends.sync.engine import Engine, JobSpec
from batchrun.cli import commands as cli
from batchrun.errors import StateError
from batchrun.files.jobs import check_input, read_jobs
from batchrun.files.jobstore import JobStore
from batchrun.files.ledger import DailyBudget, Ledger, Scope
from batchrun.http.client import Endpoint
from batchrun.policy.request import Request
from batchrun.policy.tiers import Limits
from tests.helpers.cli import FAKE_KEY, Run
from tests.helpers.jsonl import read_results, write_jsonl
from tests.helpers.scripted_server import Server
from tests.helpers.scripted_server import ok as ok_outcome
from tests.helpers.served_app import UNLIMITED, ServedApp, ok
from tests.helpers.virtual_time import VirtualClock, run_virtual

# Past the engine's read-ahead (1,024 queued per model, plus those in flight), so part of the
# file is read after the server has seen its first request.
LINES = 1500
AN_HOUR_AGO = 3600


def write_old(path: Path, rows: list[dict[str, Any]]) -> Path:
    """An input last written an hour ago, as inputs usually are: any write now moves its mtime
    (file systems keep it to a few ms, so a file written this instant may not show one)."""
    write_jsonl(path, rows)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - AN_HOUR_AGO * 10**9))
    return path


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"q{i:05d}", "prompt": f"Question {i:05d}", "max_tokens": 5} for i in range(n)]


def shuffle_in_place(path: Path) -> None:
    """Same inode, same size, same lines in another order: what `sort -o` or an editor's save
    in place does."""
    lines = path.read_bytes().splitlines(keepends=True)
    random.Random(1).shuffle(lines)
    with path.open("r+b") as f:
        f.write(b"".join(lines))


def cut_in_half(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(b"".join(lines[: len(lines) // 2]))


def cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    code = cli.run(list(args))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


class ChangingServer(ServedApp):
    """Answers every request; the moment the `at`-th arrives, `change(input)` is done to the
    job's input. Counts every prompt it is sent, so a request billed twice shows."""

    def __init__(self, jobs: Path, change: Any, at: int = 1) -> None:
        self._lock = threading.Lock()
        self.jobs, self.change, self.at = jobs, change, at

        async def answer(body: dict[str, Any], n: int) -> web.Response:
            with self._lock:
                if self.received == self.at:
                    self.change(self.jobs)
            return ok(body)

        super().__init__(answer)

    def twice(self) -> list[str]:
        return [prompt for prompt, n in self.attempts.items() if n > 1]


def job_state() -> dict[str, Any]:
    [manifest] = JobStore().all()
    return dataclasses.asdict(manifest)


# -- the reader ------------------------------------------------------------------------------


def test_the_reader_gives_no_line_it_read_after_an_in_place_rewrite(tmp_path: Path) -> None:
    original = rows(LINES)
    jobs = write_old(tmp_path / "jobs.jsonl", original)
    given: list[Request] = []
    items = read_jobs(jobs, "gpt-4o-mini")
    with pytest.raises(StateError, match="changed while batchrun read it") as caught:
        for item in items:
            assert isinstance(item, Request)
            given.append(item)
            if len(given) == 1:
                shuffle_in_place(jobs)
    assert "it was rewritten in place" in caught.value.message
    # What it gave before noticing is the file as it was, line for line.
    assert 0 < len(given) < LINES
    assert [r.custom_id for r in given] == [row["id"] for row in original[: len(given)]]


def test_an_input_replaced_by_another_file_is_noticed_by_its_inode(tmp_path: Path) -> None:
    jobs = write_old(tmp_path / "jobs.jsonl", rows(LINES))
    twin = tmp_path / "twin.jsonl"
    twin.write_bytes(jobs.read_bytes())
    st = jobs.stat()
    os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only the inode
    items = read_jobs(jobs, "gpt-4o-mini")
    next(items)
    os.replace(twin, jobs)
    with pytest.raises(StateError, match="replaced by another file"):
        list(items)


def test_an_input_cut_while_it_is_read_is_noticed_by_its_size(tmp_path: Path) -> None:
    jobs = write_old(tmp_path / "jobs.jsonl", rows(LINES))
    reads = iter(read_jobs(jobs, "gpt-4o-mini"))
    next(reads)
    cut_in_half(jobs)
    with pytest.raises(StateError, match="its size went from"):
        list(reads)


# -- a running job ---------------------------------------------------------------------------


def test_an_input_rewritten_in_place_mid_run_stops_the_job_and_bills_no_id_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    original = rows(LINES)
    jobs = write_old(tmp_path / "jobs.jsonl", original)
    saved, saved_mtime = jobs.read_bytes(), jobs.stat().st_mtime_ns
    out = tmp_path / "jobs.results.jsonl"
    with ChangingServer(jobs, shuffle_in_place) as app:
        run = cli_run(capsys, "submit", str(jobs), "--base-url", app.base_url, "-q",
                      "--concurrency", "4", *UNLIMITED)
        assert app.twice() == []
        sent = app.received
        assert run.code == 5, run.stderr
        changed = f"The input {jobs} changed while the job ran (it was rewritten in place"
        assert changed in run.stderr
        assert "nothing read after the change was sent" in run.stderr
        assert "with its modification time (cp -p), and continue with: batchrun resume jobs-" \
            in run.stderr
        assert len(read_results(out)) == sent < LINES  # no id twice
        assert job_state()["state"] == "stopped"

        # Put back as it was (a copy that keeps its times, as `cp -p` makes): the job goes on.
        restored = tmp_path / "restored.jsonl"
        restored.write_bytes(saved)
        os.utime(restored, ns=(saved_mtime, saved_mtime))
        os.replace(restored, jobs)
        resumed = cli_run(capsys, "resume", "-q")
        assert resumed.code == 0, resumed.stderr
        assert app.twice() == [] and app.received == LINES
    assert set(read_results(out)) == {row["id"] for row in original}
    assert job_state()["state"] == "done"


def test_an_input_cut_in_half_mid_run_is_not_recorded_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    original = rows(LINES)
    jobs = write_old(tmp_path / "jobs.jsonl", original)
    full = jobs.stat().st_size
    with ChangingServer(jobs, cut_in_half) as app:
        run = cli_run(capsys, "submit", str(jobs), "--base-url", app.base_url, "-q",
                      "--concurrency", "4", *UNLIMITED)
        assert app.twice() == []
    assert run.code == 5, run.stderr
    assert f"its size went from {full:,} to {jobs.stat().st_size:,} bytes" in run.stderr
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert set(results) <= {row["id"] for row in original}
    assert all(r["error"] is None for r in results.values())  # no invented bad line
    assert job_state()["state"] == "stopped"
    # A bare resume finds it, and says why it will not go on as it is.
    refused = cli_run(capsys, "resume")
    assert refused.code == 2
    assert "changed since job" in refused.stderr and "--force" in refused.stderr


def test_lines_it_was_never_given_keep_a_job_from_being_done(tmp_path: Path) -> None:
    """Whatever the reason the reader gave fewer lines than the check counted, the engine says
    the job is unfinished instead of done."""
    jobs = write_old(tmp_path / "jobs.jsonl", rows(3))
    spec = JobSpec(input=jobs, output=tmp_path / "out.jsonl", overrides=dict.fromkeys(
        ("rpm", "tpm", "rpd", "tpd"), 0), endpoint=Endpoint.make("http://127.0.0.1:9/v1", None,
                                                                 None))
    report = check_input(jobs, spec.model, set())
    report.total += 2  # the check counted two lines the sending pass never got
    server = Server(lambda request, attempt, now: (0.1, ok_outcome()))

    async def main(clock: VirtualClock) -> Stop | None:
        ledger = Ledger(tmp_path / "ledger.sqlite3", clock.now_utc)

        def budget_for(model: str, limits: Limits) -> DailyBudget:
            return DailyBudget(ledger, Scope("h", "k", model), 0, 0)

        try:
            return await Engine(spec, report, set(), FAKE_KEY, lambda event: None, budget_for,
                                client=server, now_utc=clock.now_utc).run()
        finally:
            ledger.close()

    stop = run_virtual(main)
    assert len(read_results(tmp_path / "out.jsonl")) == 3
    assert stop is not None and (stop.done, stop.total) == (3, 5)


# -- a finished job --------------------------------------------------------------------------


async def _answer(body: dict[str, Any], n: int) -> web.Response:
    return ok(body)


def test_a_finished_job_whose_input_changed_runs_again_only_when_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    original = rows(3)
    jobs = write_old(tmp_path / "jobs.jsonl", original)
    with ServedApp(_answer) as app:
        first = cli_run(capsys, "submit", str(jobs), "--base-url", app.base_url, "-q",
                        *UNLIMITED)
        assert first.code == 0, first.stderr
        job = job_state()["job_id"]
        with jobs.open("ab") as f:
            f.write(b'{"id": "new", "prompt": "one more", "max_tokens": 5}\n')

        refused = cli_run(capsys, "resume", job)
        assert refused.code == 2
        assert "changed since job" in refused.stderr and "size went from" in refused.stderr
        assert "is finished" not in refused.stdout

        forced = cli_run(capsys, "resume", job, "--force", "-q", "--json")
        assert forced.code == 0, forced.stderr
        assert app.received == 4  # only the new id was sent
    summary = orjson.loads(forced.stdout)
    assert summary["requests"]["ok"] == 1 and summary["requests"]["already_done"] == 3
    results = read_results(tmp_path / "jobs.results.jsonl")
    assert set(results) == {*(r["id"] for r in original), "new"}
    state = job_state()
    assert state["state"] == "done" and state["total"] == state["done"] == 4
