"""The Batch API path run as `submit`/`resume` run it, against the scripted API (batch_fake),
the simulator's Batch API, or one that answers as a hostile server would."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from batchrun import job
from batchrun.backends.batch import entry as batch_entry
from batchrun.backends.batch.api import BatchClient
from batchrun.errors import BatchrunError
from batchrun.events import Stats
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.http.endpoint import Endpoint
from batchrun.routing.spec import JobSpec
from batchrun.simulator import BatchConfig, SimConfig
from tests.helpers.batch_fake import FakeBatchApi
from tests.helpers.cli import FAKE_KEY
from tests.helpers.jsonl import read_results, write_jsonl


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "prompt": f"question {i}", "max_tokens": 5} for i in range(1, n + 1)]


class Harness:
    def __init__(self, tmp_path: Path, fake: FakeBatchApi, monkeypatch: pytest.MonkeyPatch,
                 n: int = 5, base_url: str = "https://api.example.test/v1", **spec: Any) -> None:
        self.fake = fake
        monkeypatch.setattr(batch_entry, "BatchClient", lambda *a, **k: fake)
        monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
        self.input = write_jsonl(tmp_path / "jobs.jsonl", rows(n))
        self.output = tmp_path / "out.jsonl"
        self.spec = JobSpec(input=self.input, output=self.output,
                            endpoint=Endpoint.make(base_url, None, None),
                            **{"via": "batch", **spec})
        self.store = JobStore()
        self.naps: list[float] = []
        self.notes: list[str] = []
        self.job_id = ""
        self.stats = Stats()  # what the summary is made from

    async def _nap(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.fake.naps += 1
        await asyncio.sleep(0)

    def submit(self, **changes: Any) -> BatchrunError | None:
        from dataclasses import replace

        spec = replace(self.spec, **changes)
        manifest = job.prepare(spec, False, self.store)
        self.job_id = manifest.job_id
        return self._run(spec, manifest)

    def resume(self, **options: Any) -> BatchrunError | None:
        manifest = self.manifest()
        spec, _ = job.spec_from_manifest(manifest, dict(options))
        return self._run(spec, manifest)

    def _run(self, spec: JobSpec, manifest: Manifest) -> BatchrunError | None:
        self.stats = Stats()
        return asyncio.run(job.run(spec, manifest, self.store, FAKE_KEY, self.stats,
                                      "host", sleep=self._nap, notify=self.notes.append))

    def manifest(self) -> Manifest:
        m = self.store.get(self.job_id)
        assert m is not None
        return m

    def results(self) -> dict[str, dict[str, Any]]:
        return read_results(self.output)


def ok_ids(results: dict[str, dict[str, Any]]) -> set[str]:
    return {cid for cid, line in results.items() if line["error"] is None}


class SimHarness(Harness):
    """A Harness whose waits move the simulator's batch clock instead of passing real time."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sim: Any, n: int,
                 azure: bool = False, **spec: Any) -> None:
        self.now = [1_800_000_000.0]
        sim.sim.batch.clock = lambda: self.now[0]
        self.sim = sim
        super().__init__(tmp_path, None, monkeypatch, n=n, base_url=sim.base_url,  # type: ignore[arg-type]
                         **spec)
        monkeypatch.setattr(batch_entry, "BatchClient", BatchClient)  # the real client
        if azure:
            from dataclasses import replace

            from batchrun.http.endpoint import Endpoint

            monkeypatch.setenv("AZURE_OPENAI_API_KEY", FAKE_KEY)
            self.spec = replace(self.spec, endpoint=Endpoint.make(None, sim.azure_endpoint,
                                                                  None))

    async def _nap(self, seconds: float) -> None:
        self.naps.append(seconds)
        self.now[0] += seconds
        await asyncio.sleep(0)

    def runs(self) -> dict[str, int]:
        return dict(self.sim.stats.batch.runs)

    def parts_created(self) -> list[str]:
        return [m["batchrun_part"] for m in self.sim.stats.batch.created.values()]


class HostileBatches:
    """A Batch API on loopback whose batch finishes at once and whose output file is what the
    test scripts: `content(lines)` gets the uploaded lines and returns the response."""

    def __init__(self, content: Any, output_file_id: str = "file-out",
                 on_upload: Any = None) -> None:
        self.content, self.output_file_id = content, output_file_id
        self.on_upload = on_upload  # called as an upload arrives; then it never answers
        self.uploaded: list[dict[str, Any]] = []
        self.seen: list[str] = []  # path and Authorization of every request
        self.base_url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _app(self) -> web.Application:
        app = web.Application()

        async def upload(request: web.Request) -> web.Response:
            if self.on_upload is not None:
                self.on_upload()
                await self._stalled.wait()  # a stalled upload: no answer until the end
                return web.Response(status=500)
            form = await request.post()
            file = form["file"]
            assert isinstance(file, web.FileField)
            self.uploaded = [orjson.loads(x) for x in file.file.read().splitlines()]
            return web.json_response({"id": "file-in", "object": "file", "purpose": "batch"})

        def batch() -> dict[str, Any]:
            return {"id": "batch_1", "object": "batch", "status": "completed",
                    "output_file_id": self.output_file_id, "error_file_id": None,
                    "request_counts": {"total": 1, "completed": 1, "failed": 0}}

        async def create(request: web.Request) -> web.Response:
            return web.json_response(batch())

        async def retrieve(request: web.Request) -> web.Response:
            return web.json_response(batch())

        async def content(request: web.Request) -> web.StreamResponse:
            result = self.content(self.uploaded)
            if not isinstance(result, web.StreamResponse):  # it streams the answer itself
                result = await result(request)
            assert isinstance(result, web.StreamResponse)
            return result

        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.seen.append(f"{request.path_qs} {request.headers.get('Authorization')}")
            result: web.StreamResponse = await handler(request)
            return result

        app.middlewares.append(record)
        app.router.add_post("/v1/files", upload)
        app.router.add_post("/v1/batches", create)
        app.router.add_get("/v1/batches/batch_1", retrieve)
        app.router.add_get("/v1/files/{file_id:.*}", content)
        app.router.add_get("/{tail:.*}", content)
        return app

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._stalled = asyncio.Event()
        runner = web.AppRunner(self._app())
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self) -> HostileBatches:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._stalled.set)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def ok_line(cid: str) -> bytes:
    return orjson.dumps({"id": f"batch_req_{cid}", "custom_id": cid, "error": None,
                         "response": {"status_code": 200, "request_id": f"req_{cid}",
                                      "body": {"choices": [], "usage": {
                                          "prompt_tokens": 1, "completion_tokens": 1}}}}) + b"\n"


def batch_sim(sim_factory: Any, **config: Any) -> Any:
    """The simulator with its Batch API on a 10 s clock (or `config`)."""
    return sim_factory(SimConfig(batch=BatchConfig(**{"seconds": 10, **config})))
