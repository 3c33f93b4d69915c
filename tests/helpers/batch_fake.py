"""A scripted Batch API for the orchestrator's tests: no HTTP and no clock. A batch moves one
step per retrieve (validating → in_progress → its outcome), so a test that sleeps nothing still
sees every status. `outcome` decides, per created batch (1-based), how it ends."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from batchrun.backends.batch.api import Transient


class Crash(BaseException):
    """Stands in for kill -9: nothing after it runs (no except Exception catches it)."""


@dataclass
class Outcome:
    status: str = "completed"  # completed | expired | failed | cancelled
    finish: int | None = None  # expired/cancelled: how many lines finished first
    # custom_id -> HTTP status (4xx/5xx), or (status, error code)
    errors: dict[str, int | tuple[int, str]] = field(default_factory=dict)
    validation: list[dict[str, Any]] = field(default_factory=list)  # failed: its errors.data


def answer(cid: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{cid}", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"re {cid}"}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


class FakeBatchApi:
    def __init__(self, outcome: Callable[[int], Outcome] = lambda n: Outcome(),
                 azure: bool = False, steps: int = 2) -> None:
        self.outcome = outcome
        self.steps = steps  # retrieves until a batch ends: 1 ends it at the first
        self.azure = azure
        self.files: dict[str, bytes] = {}
        self.by_id: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []  # batch ids, oldest first
        self.calls: list[str] = []
        self.transient: dict[str, int] = {}  # op -> how many times it fails first
        self.crash: tuple[str, int, str] | None = None  # (op, nth call, "before"|"after")
        self.counts: dict[str, int] = {}
        self.entered = 0
        self.naps = 0  # the harness counts its naps here
        self.naps_at_create: list[int] = []

    async def __aenter__(self) -> FakeBatchApi:
        self.entered += 1
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def batch_endpoint(self, url: str) -> str:
        return url.removeprefix("/v1") if self.azure else url

    def _enter(self, op: str) -> None:
        self.calls.append(op)
        self.counts[op] = self.counts.get(op, 0) + 1
        if self.transient.get(op):
            self.transient[op] -= 1
            raise Transient(f"HTTP 503 on {op}")
        if self.crash and self.crash[:2] == (op, self.counts[op]) and self.crash[2] == "before":
            raise Crash(op)

    def _leave(self, op: str) -> None:
        if self.crash and self.crash[:2] == (op, self.counts[op]) and self.crash[2] == "after":
            raise Crash(op)

    async def upload(self, path: Path, name: str) -> dict[str, Any]:
        self._enter("upload")
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = path.read_bytes()  # noqa: ASYNC240 - a small test file
        self._leave("upload")
        return {"id": fid, "object": "file", "purpose": "batch", "filename": name}

    async def create(self, input_file_id: str, endpoint: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        self._enter("create")
        self.naps_at_create.append(self.naps)
        bid = f"batch_{len(self.order) + 1}"
        lines = [orjson.loads(x) for x in self.files[input_file_id].splitlines()]
        self.by_id[bid] = {
            "id": bid, "object": "batch", "endpoint": endpoint, "status": "validating",
            "input_file_id": input_file_id, "completion_window": "24h", "metadata": metadata,
            "output_file_id": None, "error_file_id": None, "errors": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines, "_n": len(self.order) + 1, "_cancel": False, "_polls": 0,
        }
        self.order.append(bid)
        self._leave("create")
        return self._public(bid)

    def _public(self, bid: str) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.by_id[bid].items()
                if not k.startswith("_")}

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        self._enter("retrieve")
        b = self.by_id[batch_id]
        b["_polls"] += 1
        if b["status"] in ("validating", "in_progress") and b["_polls"] < self.steps and not (
                b["_cancel"]):
            b["status"] = "in_progress"
        elif b["status"] in ("validating", "in_progress", "cancelling"):
            self._finish(b)
        self._leave("retrieve")
        return self._public(batch_id)

    def _finish(self, b: dict[str, Any]) -> None:
        out = self.outcome(b["_n"])
        status = "cancelled" if b["_cancel"] else out.status
        if status == "failed":
            b["status"], b["errors"] = "failed", {"object": "list", "data": out.validation}
            return
        lines = b["_lines"]
        finish = len(lines) if status == "completed" else (
            out.finish if out.finish is not None else len(lines) // 2)
        ok, err = [], []
        for i, line in enumerate(lines):
            cid = line["custom_id"]
            if i >= finish:
                code = "batch_expired" if status == "expired" else "batch_cancelled"
                err.append({"id": f"batch_req_{cid}", "custom_id": cid, "response": None,
                            "error": {"code": code, "message": f"This request {code}"}})
            elif cid in out.errors:
                given = out.errors[cid]
                st, code = given if isinstance(given, tuple) else (given, f"code_{given}")
                err.append({"id": f"batch_req_{cid}", "custom_id": cid, "response": {
                    "status_code": st, "request_id": f"req_{cid}", "body": {"error": {
                        "message": f"error {st}", "type": "invalid_request_error",
                        "code": code}}}, "error": None})
            else:
                ok.append({"id": f"batch_req_{cid}", "custom_id": cid, "response": {
                    "status_code": 200, "request_id": f"req_{cid}", "body": answer(cid)},
                    "error": None})
        b["status"] = status
        b["request_counts"].update(completed=len(ok), failed=len(err))
        if ok:
            b["output_file_id"] = self._file(ok)
        if err:
            b["error_file_id"] = self._file(err)

    def _file(self, rows: list[dict[str, Any]]) -> str:
        fid = f"file-{len(self.files) + 1}"
        self.files[fid] = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        return fid

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        self._enter("cancel")
        b = self.by_id[batch_id]
        if b["status"] in ("completed", "failed", "expired", "cancelled", "finalizing"):
            # OpenAI answers 409 Conflict "Cannot cancel a batch with status 'completed'."
            # (see tests/helpers/batch_server.py), which the real BatchClient raises as Transient.
            raise Transient(f"HTTP 409: Cannot cancel a batch with status '{b['status']}'.")
        b["status"], b["_cancel"] = "cancelling", True
        return self._public(batch_id)

    async def batches(self, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        self._enter("list")
        for bid in reversed(self.order):
            yield self._public(bid)

    async def download(self, file_id: str, dest: Path) -> None:
        self._enter("download")
        dest.write_bytes(self.files[file_id])  # noqa: ASYNC240 - a small test file
        self._leave("download")

    def created_parts(self) -> list[str]:
        """The part key of every batch created, in order: no key may appear twice."""
        return [b["metadata"]["batchrun_part"] for b in map(self.by_id.get, self.order)
                if b is not None]
