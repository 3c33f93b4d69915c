"""`status JOB` against a Batch API that is down or never answers (issue 21 item 4): one short
try per open batch, the job's recorded state left as it was, and no lock held while it waits, so
`resume` and `cancel` go on meanwhile. The bound is passed in (`entry.STATUS_TIMEOUT_S`); that
the command ends while the server still hangs is what shows it returned promptly."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchrun import job
from batchrun.backends.batch import entry as batch_entry
from batchrun.backends.batch.api import ApiCallFailed, BatchClient
from batchrun.backends.batch.run import Detached
from batchrun.errors import BatchrunError
from batchrun.events import Stats
from batchrun.files.outputlock import is_held
from tests.helpers.batch_fake import FakeBatchApi
from tests.helpers.batch_harness import Harness
from tests.helpers.cli import run_cli, wait_for


class HangingBatches:
    """A Batch API on loopback that accepts every GET and never answers it (until the test
    ends); a cancel is answered at once."""

    def __init__(self) -> None:
        self.arrived = 0  # GETs received
        self.answered = 0  # GETs answered
        self.cancels: list[str] = []
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _app(self) -> web.Application:
        app = web.Application()

        async def hang(request: web.Request) -> web.Response:
            self.arrived += 1
            await self._released.wait()
            self.answered += 1
            return web.Response(status=503)

        async def cancel(request: web.Request) -> web.Response:
            batch_id = request.match_info["batch_id"]
            self.cancels.append(batch_id)
            return web.json_response({"id": batch_id, "object": "batch",
                                      "status": "cancelling"})

        app.router.add_get("/{tail:.*}", hang)
        app.router.add_post("/v1/batches/{batch_id}/cancel", cancel)
        return app

    def release(self) -> None:
        self._loop.call_soon_threadsafe(self._released.set)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._released = asyncio.Event()
        app_runner = web.AppRunner(self._app())
        self._loop.run_until_complete(app_runner.setup())
        site = web.TCPSite(app_runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.base_url = f"http://127.0.0.1:{app_runner.addresses[0][1]}/v1"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(app_runner.cleanup())
        self._loop.close()

    def __enter__(self) -> HangingBatches:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def detached_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str,
                 n: int = 3) -> Harness:
    """A job whose batch runs on the server (submitted by the scripted API), then the real
    client for whatever comes next."""
    h = Harness(tmp_path, FakeBatchApi(steps=3), monkeypatch, n=n, base_url=base_url)
    assert isinstance(h.submit(detach=True), Detached)
    monkeypatch.setattr(batch_entry, "BatchClient", BatchClient)
    return h


@pytest.mark.timeout(60)  # before the fix: 6 tries with backoff of the 600 s request timeout
def test_status_of_a_batch_whose_api_never_answers_ends_while_the_server_still_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_entry, "STATUS_TIMEOUT_S", 0.5)
    with HangingBatches() as server:
        h = detached_job(tmp_path, monkeypatch, server.base_url)
        before = h.manifest()
        run = run_cli("status", h.job_id)
        assert server.answered == 0  # status ended on its own bound, not on an answer
        assert server.arrived == 1  # one short try, not retries
    assert run.code == 0, run.stderr
    assert "Not collected now" in run.stderr and "did not answer" in run.stderr
    assert h.job_id in run.stdout and "submitted" in run.stdout
    after = h.manifest()
    assert (after.state, after.message) == (before.state, before.message)
    assert after.batch == before.batch


@pytest.mark.timeout(60)
def test_status_with_the_api_down_says_so_at_once_and_records_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h = detached_job(tmp_path, monkeypatch, closed_port_url())
    before = h.manifest()
    run = run_cli("status", h.job_id)
    assert run.code == 0, run.stderr
    assert "Not collected now" in run.stderr and "did not answer" in run.stderr
    assert "submitted" in run.stdout
    after = h.manifest()
    assert (after.state, after.message, after.batch) == (before.state, before.message,
                                                         before.batch)


@pytest.mark.timeout(60)
def test_cancel_goes_on_while_a_status_waits_for_the_api(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A status waiting on the network held the output's lock: resume and cancel were refused
    # as "running in another batchrun process" for as long as it waited.
    monkeypatch.setattr(batch_entry, "STATUS_TIMEOUT_S", 50.0)
    with HangingBatches() as server:
        h = detached_job(tmp_path, monkeypatch, server.base_url)
        stale = h.manifest()
        ended: list[BatchrunError] = []

        def look() -> None:
            try:
                asyncio.run(job.collect_finished(stale, h.store, Stats()))
            except BatchrunError as exc:  # the server's 503 once released
                ended.append(exc)

        status = threading.Thread(target=look)
        status.start()
        try:
            wait_for(lambda: server.arrived == 1)
            assert not is_held(h.output)  # what resume and cancel check before they start
            run = run_cli("cancel", h.job_id)
            after_cancel = h.manifest().batch
        finally:
            server.release()
            status.join(30)
    assert run.code == 0, run.stderr
    assert "Cancelled 1 batch" in run.stdout and server.cancels == ["batch_1"]
    # The status that read the manifest before the cancel does not save its copy over it.
    assert not status.is_alive() and "did not answer" in ended[0].message
    assert after_cancel["cancelled"] is True
    assert h.manifest().batch == after_cancel


def test_status_under_another_projects_key_says_so_not_try_again_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeBatchApi(steps=3)
    h = Harness(tmp_path, fake, monkeypatch, n=2)
    assert isinstance(h.submit(detach=True), Detached)
    batch_id = h.manifest().batch["parts"][0]["batch_id"]

    async def unknown(batch_id: str) -> dict[str, Any]:
        raise ApiCallFailed(f"HTTP 404: No such Batch object: {batch_id}", 404, "")

    monkeypatch.setattr(fake, "retrieve", unknown)
    run = run_cli("status", h.job_id)
    assert run.code == 0, run.stderr
    assert batch_id in run.stderr and "another key" in run.stderr
    assert "again later" not in run.stderr
    assert h.manifest().batch["parts"][0]["state"] == "submitted"
