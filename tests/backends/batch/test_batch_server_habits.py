"""The Batch API path against a server that answers as the services document
(tests/helpers/batch_server.py), through the real client: Azure's 201 Created, OpenAI's 409 for
cancelling a finished batch, undocumented statuses, output files that are missing, not JSONL
or cut short."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchrun import job
from batchrun.backends.batch import entry as batch_entry
from batchrun.backends.batch import run as batch_run
from batchrun.backends.batch.api import BatchClient
from batchrun.errors import ApiRefused
from batchrun.http.endpoint import Endpoint
from tests.helpers.batch_harness import Harness, ok_ids
from tests.helpers.batch_server import BatchServer, ServerConfig
from tests.helpers.cli import FAKE_KEY, REPO, run_cli, wait_for
from tests.helpers.jsonl import write_jsonl


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[BatchServer]:
    config = getattr(request, "param", None) or ServerConfig()
    with BatchServer(config) as s:
        yield s


class ServerHarness(Harness):
    """A Harness whose job talks to `server` through the real BatchClient client."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer,
                 n: int = 3, **spec: Any) -> None:
        super().__init__(tmp_path, None, monkeypatch, n=n, base_url=server.url + "/v1",  # type: ignore[arg-type]
                         **spec)
        self.server = server
        monkeypatch.setattr(batch_entry, "BatchClient", BatchClient)
        if server.config.azure:
            monkeypatch.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
            self.spec = replace(self.spec, endpoint=Endpoint.make(None, server.url, None))

    async def _nap(self, seconds: float) -> None:
        self.naps.append(seconds)
        await asyncio.sleep(0)


def test_azure_201_created_on_upload_and_create_is_success(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    """Azure OpenAI documents Files - Upload (api-version 2024-10-21) as "201 Created" with a
    Location header (learn.microsoft.com/rest/api/azureopenai/files/upload), and Batch - Create
    as 201 in its 2025-01-01-preview spec (the 2024-10-21 page says 200): every 2xx is success."""
    h = ServerHarness(tmp_path, monkeypatch, server)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert server.stats.statuses[("upload", 201)] == 1
    assert server.stats.statuses[("create", 201)] == 1
    assert len(server.stats.created) == 1 and dict(server.stats.runs) == {
        "r1": 1, "r2": 1, "r3": 1}


@pytest.mark.parametrize("server", [ServerConfig(upload_status=200, create_status=201)],
                         indirect=True)
def test_a_create_answered_201_records_the_batch_so_resume_makes_no_second_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    h = ServerHarness(tmp_path, monkeypatch, server)
    assert isinstance(h.submit(detach=True), batch_run.Detached)
    part = h.manifest().batch["parts"][0]
    assert part["batch_id"] == "batch_1"
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert len(server.stats.created) == 1


@pytest.mark.parametrize("server", [ServerConfig(finished_status=s) for s in (
    "collected", "dropped", "uploaded", "archived")], indirect=True,
    ids=["collected", "dropped", "uploaded", "archived"])
def test_an_undocumented_status_is_waited_on_with_a_bound_never_ends_nor_recreates_the_part(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    """The Batch API documents validating, failed, in_progress, finalizing, completed,
    expired, cancelling, cancelled (SERVERS.md); a server saying anything else is shown and
    waited on, then the job stops resumable (exit 4) naming the batch and what it said."""
    status = server.config.finished_status
    h = ServerHarness(tmp_path, monkeypatch, server)
    with pytest.raises(ApiRefused) as refused:
        h.submit()
    stop = refused.value
    assert stop.exit_code == 4 and h.manifest().state == "stopped"
    assert "batch_1" in stop.message and repr(status) in stop.message
    assert f"batchrun resume {h.job_id}" in stop.message
    assert any(repr(status) in note for note in h.notes)  # shown while it waits
    assert len(server.stats.created) == 1
    assert not h.output.exists() or not h.results()
    server.config.finished_status = "completed"  # the server comes to its senses
    assert h.resume() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert len(server.stats.created) == 1 and dict(server.stats.runs) == {
        "r1": 1, "r2": 1, "r3": 1}


@pytest.mark.parametrize("server", [ServerConfig(output=o, bad_outputs=2) for o in (
    "null", "html", "cut")], indirect=True, ids=["null", "html", "cut"])
def test_an_unreadable_output_file_of_a_completed_batch_is_downloaded_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    # output_file_id null, a 200 HTML page, a file cut short: the batch ran every request (it
    # says completed), so its results are fetched again, never its requests sent again.
    h = ServerHarness(tmp_path, monkeypatch, server, n=4)
    assert h.submit() is None
    assert ok_ids(h.results()) == {"r1", "r2", "r3", "r4"}
    assert len(server.stats.created) == 1
    assert dict(server.stats.runs) == {"r1": 1, "r2": 1, "r3": 1, "r4": 1}


@pytest.mark.parametrize("server", [ServerConfig(output="html")], indirect=True)
def test_results_that_stay_unreadable_fail_as_unavailable_and_go_again_only_when_asked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    h = ServerHarness(tmp_path, monkeypatch, server, n=3)
    assert h.submit() is None
    results = h.results()
    assert {results[c]["error"]["code"] for c in results} == {"batch_output_unavailable"}
    assert len(results) == 3 and h.manifest().failed == 3
    assert "batch_1" in results["r1"]["error"]["message"]
    assert len(server.stats.created) == 1  # not re-submitted: they may have been billed
    assert h.resume() is None and len(server.stats.created) == 1
    server.config.output = "ok"
    stop = asyncio.run(job.run(*job.spec_from_manifest(h.manifest(), {})[:1],
                                  h.manifest(), h.store, FAKE_KEY, lambda e: None, "host",
                                  sleep=h._nap, retry_failed=True))
    assert stop is None and ok_ids(h.results()) == {"r1", "r2", "r3"}
    assert len(server.stats.created) == 2


def two_models(h: Harness) -> None:
    write_jsonl(h.input, [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y",
                                                       "model": "gpt-4o"}])


def interrupt_when(proc: subprocess.Popen[str], seen: Callable[[], bool]) -> tuple[str, str]:
    wait_for(seen)
    proc.send_signal(signal.SIGINT)
    return proc.communicate(timeout=30)


def cli_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batchrun", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=REPO)


@pytest.mark.parametrize("server", [ServerConfig(stall_cancels_after=1)], indirect=True)
def test_ctrl_c_during_cancel_says_what_was_cancelled_and_records_only_that(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    h = ServerHarness(tmp_path, monkeypatch, server)
    two_models(h)
    h.submit(detach=True)
    proc = cli_process("cancel", h.job_id)
    _, err = interrupt_when(proc, lambda: server.stats.cancel_calls >= 2)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "cancelled 1 batch" in err
    assert "batch_2" in err and f"batchrun cancel {h.job_id}" in err
    parts = h.manifest().batch["parts"]
    assert [p["cancel_asked"] for p in parts] == [True, False]
    forget = run_cli("forget", h.job_id)
    assert forget.code == 2 and "batches on the server" in forget.stderr


@pytest.mark.parametrize("server", [ServerConfig(stall_retrieves=True)], indirect=True)
def test_ctrl_c_during_status_says_what_happened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    h = ServerHarness(tmp_path, monkeypatch, server)
    h.submit(detach=True)
    before = h.manifest().batch
    proc = cli_process("status", h.job_id)
    _, err = interrupt_when(proc, lambda: server.stats.retrieve_calls >= 1)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and f"batchrun resume {h.job_id}" in err
    assert h.manifest().batch == before  # nothing recorded that did not happen


@pytest.mark.parametrize("server", [ServerConfig(finished_status=s, output="html")
                                    for s in ("expired", "cancelled")], indirect=True,
                         ids=["expired", "cancelled"])
def test_an_ended_batch_whose_output_cannot_be_read_sends_nothing_again_unasked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer) -> None:
    """An expired or cancelled batch delivers what it finished in its output file (SERVERS.md);
    when that file cannot be read, its request_counts still say how many ran and were billed:
    those are downloaded again, then failed as unavailable, never planned into a new batch."""
    h = ServerHarness(tmp_path, monkeypatch, server, n=3)
    assert h.submit() is None
    assert len(server.stats.created) == 1
    assert dict(server.stats.runs) == {"r1": 1, "r2": 1, "r3": 1}
    results = h.results()
    assert {results[c]["error"]["code"] for c in results} == {"batch_output_unavailable"}


@pytest.mark.parametrize("edit", [
    {"batch_id": None}, {"api_status": ["completed"]}, {"count": "3"}, {"state": "weird"},
    {"file_id": None, "state": "creating"}, {"n": 0}],
    ids=["no-batch-id", "status-list", "count-text", "state-unknown", "creating-no-file",
         "n-zero"])
def test_a_damaged_part_record_is_named_not_a_crash_nor_a_hang(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BatchServer,
        edit: dict[str, Any]) -> None:
    # A hand-edited or damaged manifest: exit 70 ("a bug in batchrun") from an assert or a
    # TypeError, or, for a state batchrun does not have, a resume that polled nothing for ever.
    h = ServerHarness(tmp_path, monkeypatch, server)
    h.submit(detach=True)
    path = h.store.home / "jobs" / f"{h.job_id}.json"
    data = orjson.loads(path.read_bytes())
    data["batch"]["parts"][0].update(edit)
    path.write_bytes(orjson.dumps(data))
    for command in ("resume", "status", "cancel"):
        run = run_cli(command, h.job_id)
        # status shows the job, and what it could not collect
        assert run.code == (0 if command == "status" else 5), (command, run.stderr)
        assert "damaged" in run.stderr and "dashboard" in run.stderr, run.stderr
        assert "internal error" not in run.stderr
