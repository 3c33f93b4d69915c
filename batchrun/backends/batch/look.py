"""`status JOB`'s look at a job's batches: one short call per open batch (and one download per
file of a finished one), made without the output's lock, so `resume` and `cancel` never wait
on a status that waits on the network. What it fetched is merged afterwards, under the lock,
by `Fetched.api()` standing in for the API: local work only."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.backends.batch.api import ApiCallFailed, Transient
from batchrun.backends.batch.parts import SUBMITTED, TERMINAL, BatchBook, Part, PartFiles
from batchrun.backends.batch.remote import Api, text
from batchrun.errors import BatchrunError, StateError
from batchrun.files.jobstore import Manifest


@dataclass(slots=True)
class Fetched:
    """The batch objects a look got (by part number), the files it downloaded (by file id,
    staged beside the part's files under names no run uses), and why it stopped early."""

    batches: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    trouble: str | None = None
    unknown: bool = False  # the trouble is a 404: asking again later, with this key, cannot help

    def finished(self, part: Part) -> bool:
        """Were part's batch object and every file it names fetched?"""
        batch = self.batches.get(part.n)
        return batch is not None and text(batch.get("id")) == part.batch_id

    def api(self) -> _Offline:
        return _Offline(self)

    def discard(self) -> None:
        """The staged downloads a merge did not take."""
        for path in self.files.values():
            path.unlink(missing_ok=True)


def _lookable(part: Part) -> bool:
    return part.state == SUBMITTED and part.batch_id is not None


async def look(api: Api, host: str, manifest: Manifest, home: Path) -> Fetched:
    """One try per open batch (the caller bounds each call); the first that fails ends the
    look: a server that does not answer one batch answers no other."""
    book = BatchBook.load(manifest.batch, manifest.job_id)
    files = PartFiles(home, manifest.job_id)
    fetched = Fetched()
    for part in filter(_lookable, book.parts):
        assert part.batch_id is not None
        try:
            batch = ({"id": part.batch_id} if part.finished
                     else await api.retrieve(part.batch_id))
            status = text(batch.get("status")) or part.api_status
            if status in TERMINAL:
                await _download(api, files, part, batch, fetched)
        except Transient as exc:
            fetched.trouble = (f"The Batch API at {host} did not answer "
                               f"({exc.message})")
            break
        except ApiCallFailed as exc:
            fetched.unknown = exc.status == 404
            fetched.trouble = (
                f"The Batch API does not know batch {part.batch_id} under this key (HTTP 404): "
                f"was job {manifest.job_id} started with another key or project? It may still "
                "run under that one" if fetched.unknown else
                f"The Batch API refused checking batch {part.batch_id}: {exc.message}")
            break
        except BatchrunError as exc:  # a refusal: the run that meets it says what to do
            fetched.trouble = (f"The Batch API refused checking batch {part.batch_id}: "
                               f"{exc.message}")
            break
        fetched.batches[part.n] = batch
    return fetched


async def _download(api: Api, files: PartFiles, part: Part, batch: dict[str, Any],
                    fetched: Fetched) -> None:
    for which in ("output", "error"):
        file_id = text(batch.get(f"{which}_file_id")) or getattr(part, f"{which}_file_id")
        if file_id is None:
            continue
        files.ensure()
        # A name of this look's own: two `status` calls at once (no lock is held while they
        # download) would otherwise write, rename and merge one another's half files.
        staged = files.download_path(part.n, which).with_suffix(
            f".status-{os.getpid()}-{secrets.token_hex(4)}")
        fetched.files[file_id] = staged
        await api.download(file_id, staged)


class _Offline:
    """The API as the look saw it: what a merge under the lock asks of it is answered from
    what was fetched, and nothing goes over the network."""

    def __init__(self, fetched: Fetched) -> None:
        self._fetched = fetched

    def batch_endpoint(self, url: str) -> str:
        return url

    async def upload(self, path: Path, name: str) -> dict[str, Any]:
        raise AssertionError("a status submits nothing")

    async def create(self, input_file_id: str, endpoint: str,
                     metadata: dict[str, str]) -> dict[str, Any]:
        raise AssertionError("a status submits nothing")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        raise AssertionError("a status cancels nothing")

    async def batches(self, page_size: int = 100) -> AsyncIterator[dict[str, Any]]:
        raise AssertionError("a status lists nothing")
        yield {}  # pragma: no cover  (makes this an async generator, as the protocol's)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        for batch in self._fetched.batches.values():
            if text(batch.get("id")) == batch_id:
                return batch
        return {"id": batch_id}  # not looked at: nothing changes

    async def download(self, file_id: str, dest: Path) -> None:
        staged = self._fetched.files.pop(file_id, None)
        if staged is None:
            raise StateError(f"file {file_id} was not fetched by this status.")
        try:
            os.replace(staged, dest)
        except OSError as exc:
            raise StateError(f"cannot move {staged} to {dest}: {exc.strerror}.") from None
