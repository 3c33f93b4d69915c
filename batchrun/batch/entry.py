"""The Batch API path's entry points for the runner: run a job's pending requests through it
(Ctrl-C and SIGTERM end the wait, never the batches), and cancel a job's batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from batchrun.batch.api import ApiCallFailed, BatchApi, Transient
from batchrun.batch.parts import BatchBook
from batchrun.batch.remote import cancel_interruptibly
from batchrun.batch.run import BatchJob, Options
from batchrun.classify import secret_forms
from batchrun.errors import BatchrunError, StateError
from batchrun.events import Listener
from batchrun.jobs import InputReport
from batchrun.jobstore import JobStore, Manifest
from batchrun.signals import on_signals
from batchrun.spec import JobSpec


async def drive(job: BatchJob, announce: bool = True) -> BatchrunError | None:
    """Run with Ctrl-C and SIGTERM ending the wait (never the batches)."""
    return await on_signals(job.interrupt, job.run(announce))



async def run_batch(spec: JobSpec, manifest: Manifest, store: JobStore, api_key: str,
                    listener: Listener, report: InputReport, done: set[str], *,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                    notify: Callable[[str], None] = lambda message: None,
                    announce: bool = True) -> BatchrunError | None:
    """The job's pending requests through the Batch API, into its output (already locked by
    the caller); why it stopped, or None when every request has a line."""
    options = Options(spec.poll_max_s, spec.detach, spec.max_retries, spec.collect_once)
    async with BatchApi(spec.endpoint, api_key, spec.timeout_s) as api:
        job = BatchJob(spec, manifest, store, api, listener, report, done, options, sleep=sleep,
                       notify=notify, secrets=secret_forms(api_key))
        return await drive(job, announce)


async def cancel_job(spec: JobSpec, manifest: Manifest, store: JobStore,
                     api_key: str) -> tuple[int, int]:
    """`batchrun cancel`: (batches cancelled, parts not yet submitted that were dropped)."""
    book = BatchBook.load(manifest.batch, manifest.job_id)

    def save() -> None:
        manifest.batch = book.dump()
        store.save(manifest)

    async with BatchApi(spec.endpoint, api_key, spec.timeout_s) as api:
        try:
            return await cancel_interruptibly(book, api, manifest.job_id, save)
        except Transient as exc:
            raise StateError(f"The Batch API at {spec.endpoint.host} did not answer ({exc.message})"
                             f"; run batchrun cancel {manifest.job_id} again.") from None
        except ApiCallFailed as exc:
            raise BatchrunError(f"The Batch API refused to cancel: {exc.message}.") from None
