"""What the Batch API holds of a job's parts: the calls the orchestrator makes (`Api`), how a
batch object updates a part's record, a failed batch's reasons, finding a batch whose create
answer was lost (by its metadata), and cancelling a job's batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol

from batchrun.backends.batch import words
from batchrun.backends.batch.api import ApiCallFailed, Transient
from batchrun.backends.batch.parts import (
    DROPPED,
    METADATA_JOB,
    METADATA_PART,
    SUBMITTED,
    UNSTOPPABLE,
    BatchBook,
    Part,
)
from batchrun.backends.signals import on_signals
from batchrun.errors import ApiRefused, Interrupted


class Api(Protocol):
    """What the orchestrator calls: BatchClient, or a scripted fake in tests."""

    def batch_endpoint(self, url: str) -> str: ...
    async def upload(self, path: Path, name: str) -> dict[str, Any]: ...
    async def create(self, input_file_id: str, endpoint: str,
                     metadata: dict[str, str]) -> dict[str, Any]: ...
    async def retrieve(self, batch_id: str) -> dict[str, Any]: ...
    async def cancel(self, batch_id: str) -> dict[str, Any]: ...
    def batches(self, page_size: int = 100) -> AsyncIterator[dict[str, Any]]: ...
    async def download(self, file_id: str, dest: Path) -> None: ...




def text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def count(value: Any) -> int:
    """A count the API gave, shown in progress only: anything but a count is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def adopt(part: Part, batch: dict[str, Any]) -> bool:
    """Take what the API says of part's batch; True if anything changed. The API's status goes
    into `api_status` only: whatever a server calls it, our own state is ours to set."""
    before = (part.state, part.api_status, part.batch_id, part.completed, part.failed,
              part.output_file_id, part.error_file_id)
    part.batch_id = text(batch.get("id")) or part.batch_id
    if part.batch_id is not None and part.state == "creating":
        part.state = SUBMITTED
    status = text(batch.get("status"))
    if status:
        part.api_status = status
    counts = batch.get("request_counts")
    if isinstance(counts, dict):
        part.completed = count(counts.get("completed"))
        part.failed = count(counts.get("failed"))
    part.output_file_id = text(batch.get("output_file_id")) or part.output_file_id
    part.error_file_id = text(batch.get("error_file_id")) or part.error_file_id
    return before != (part.state, part.api_status, part.batch_id, part.completed, part.failed,
                      part.output_file_id, part.error_file_id)


def validation_errors(batch: dict[str, Any]) -> list[tuple[int | None, str, str]]:
    """A failed batch's `errors`: (line in the uploaded file or None, code, message)."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    found = []
    for e in data if isinstance(data, list) else []:
        if isinstance(e, dict):
            line = e.get("line")
            found.append((line if isinstance(line, int) and not isinstance(line, bool) else None,
                          str(e.get("code") or "batch_failed"), str(e.get("message") or "")))
    return found or [(None, "batch_failed", "the batch failed and the API gave no reason")]


async def find_batch(api: Api, job_id: str, part: Part) -> dict[str, Any] | None:
    """The batch whose metadata names this attempt of part, if the API has one: every page of
    the list is read, since creating the part again when its batch exists bills it twice."""
    async for batch in api.batches():
        meta = batch.get("metadata")
        if (isinstance(meta, dict) and meta.get(METADATA_PART) == part.key
                and meta.get(METADATA_JOB) == job_id):
            return batch
    return None


async def cancel_interruptibly(book: BatchBook, api: Api, job_id: str,
                               save: Callable[[], None], force: bool = False) -> tuple[int, int]:
    """`cancel_parts`, with Ctrl-C and SIGTERM ending it at once and saying what it did: each
    part's record is saved as it goes, so only the cancels the API accepted are recorded."""
    task = asyncio.ensure_future(cancel_parts(book, api, job_id, save, force))

    def stop() -> None:
        task.cancel()

    try:
        return await on_signals(stop, task)
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
    save()
    raise Interrupted(words.cancel_interrupted(
        job_id, [p.batch_id or "?" for p in book.parts if p.cancel_asked],
        [p.batch_id or f"part {p.n}" for p in book.parts if _may_run(p)]))


def _may_run(part: Part) -> bool:
    return part.state == "creating" or (part.state == SUBMITTED and not part.cancel_asked
                                         and part.api_status not in UNSTOPPABLE)


async def cancel_parts(book: BatchBook, api: Api, job_id: str, save: Callable[[], None],
                       force: bool = False) -> tuple[int, int]:
    """Cancel every batch of the job still running; parts not yet created are dropped first,
    before any call that may fail, so nothing is created after a cancel (resume submits
    nothing new until --retry-failed). A part records the cancel only when the API accepted
    it, or said its batch is past cancelling. Returns (batches cancelled, parts dropped).

    A batch the API does not know (404) is most often one made under another project's key,
    where it still runs and bills: it stays open (a resume with that key collects it) and
    ApiRefused names it, unless `force` says the user knows it is gone."""
    book.cancelled = True
    dropped = _drop_unsent(book)
    save()
    cancelled, unknown = 0, list[str]()
    # Created parts first: a 404 among them means the list answers for another key too, so
    # a part whose create answer was lost cannot be called never created by its absence.
    for part in sorted(book.parts, key=lambda p: p.state == "creating"):
        if part.state == "creating":
            found = None if unknown and not force else await find_batch(api, job_id, part)
            if found is not None:
                adopt(part, found)
            elif not unknown or force:
                part.state, dropped = DROPPED, dropped + 1
        if part.state == SUBMITTED and _may_run(part):
            try:
                cancelled += await _cancel(api, part, force)
            except _Unknown:
                unknown.append(part.batch_id or f"part {part.n}")
        save()
    if unknown:
        raise ApiRefused(words.cancel_unknown(job_id, unknown, cancelled, dropped))
    return cancelled, dropped


class _Unknown(Exception):
    """The API answered 404 for the batch under this key. Control flow, outside the error
    tree: cancel_parts gathers every such batch into one ApiRefused that names them all."""


def _drop_unsent(book: BatchBook) -> int:
    unsent = [p for p in book.parts if p.state in ("planned", "uploaded")]
    for part in unsent:
        part.state = DROPPED
    return len(unsent)


async def _cancel(api: Api, part: Part, force: bool) -> int:
    """1 if the API accepted the cancel. A refusal (OpenAI answers 409 "Cannot cancel a batch
    with status 'completed'", whatever code another server uses) is asked about: a batch past
    cancelling is left for resume to collect; one still running makes the refusal stand."""
    assert part.batch_id is not None
    try:
        adopt(part, await api.cancel(part.batch_id))
    except ApiCallFailed as exc:
        if exc.status == 404:
            if not force:
                raise _Unknown from None
            # The user says it is gone (deleted): its requests end as a cancelled batch's.
            part.api_status, part.cancel_asked = "cancelled", True
            return 1
        if not await _past_cancelling(api, part):
            raise
        return 0
    except Transient:
        if not await _past_cancelling(api, part):
            raise
        return 0
    part.cancel_asked = True
    return 1


async def _past_cancelling(api: Api, part: Part) -> bool:
    assert part.batch_id is not None
    adopt(part, await api.retrieve(part.batch_id))
    return part.api_status in UNSTOPPABLE
