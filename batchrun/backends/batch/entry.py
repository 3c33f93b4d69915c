"""The Batch API path's entry points for the runner: run a job's pending requests through it
(Ctrl-C and SIGTERM end the wait, never the batches), and cancel a job's batches."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from batchrun.backends.batch.api import ApiCallFailed, BatchClient, Transient
from batchrun.backends.batch.look import Fetched, look
from batchrun.backends.batch.parts import BatchBook, PartFiles
from batchrun.backends.batch.remote import cancel_interruptibly
from batchrun.backends.batch.run import BatchJob, Options
from batchrun.backends.cacheflow import CacheFlow, server_name
from batchrun.backends.costcap import CostCap
from batchrun.backends.signals import on_signals
from batchrun.backends.stop import Stop
from batchrun.errors import BatchrunError, StateError
from batchrun.events import Listener
from batchrun.files.jobs import InputReport
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.policy.cachekey import key_digest
from batchrun.policy.classify import secret_forms
from batchrun.routing.spec import JobSpec

# `status JOB`: how long one files or batches call may wait. A status is a look, not a run.
STATUS_TIMEOUT_S = 5.0


async def drive(job: BatchJob, announce: bool = True) -> Stop | None:
    """Run with Ctrl-C and SIGTERM ending the wait (never the batches)."""
    return await on_signals(job.interrupt, job.run(announce))



async def run_batch(spec: JobSpec, manifest: Manifest, store: JobStore, api_key: str,
                    listener: Listener, report: InputReport, done: set[str], *,
                    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                    notify: Callable[[str], None] = lambda message: None,
                    announce: bool = True, collect_only: bool = False,
                    cost: CostCap | None = None, cache: CacheFlow | None = None) -> Stop | None:
    """The job's pending requests through the Batch API, into its output (already locked by
    the caller); why it stopped, or None when every request has a line. `collect_only`: wait
    for the batches on the server and merge them; None when none is left open. `cache`: the
    response cache (None: --no-cache)."""
    options = Options(spec.poll_max_s, spec.detach, spec.max_retries, collect_only)
    if cache is not None:
        cache.serve([cache.asker(server_name(spec.endpoint), key_digest(api_key))])
    async with BatchClient(spec.endpoint, api_key, spec.timeout_s) as api:
        job = BatchJob(spec, manifest, store, api, listener, report, done, options, sleep=sleep,
                       notify=notify, secrets=secret_forms(api_key), cost=cost, cache=cache)
        return await drive(job, announce)


def ids_on_server(manifest: Manifest, store: JobStore) -> set[str]:
    """The requests in the job's batches that exist (or may: their create was asked) and are
    not collected: no other path may send them."""
    book = BatchBook.load(manifest.batch, manifest.job_id)
    files = PartFiles(store.home, manifest.job_id)
    return {cid for part in book.parts if part.active for cid in files.ids(part.n)}


async def look_at_batches(spec: JobSpec, manifest: Manifest, store: JobStore,
                          api_key: str) -> Fetched:
    """`status JOB`, without the output's lock: one short try per open batch."""
    async with BatchClient(spec.endpoint, api_key, STATUS_TIMEOUT_S) as api:
        return await look(api, spec.endpoint.host, manifest, store.home)


async def collect_fetched(spec: JobSpec, manifest: Manifest, store: JobStore, api_key: str,
                          listener: Listener, report: InputReport, done: set[str],
                          fetched: Fetched) -> None:
    """`status JOB`, under the output's lock: merge what the look fetched; no network."""
    job = BatchJob(spec, manifest, store, fetched.api(), listener, report, done, Options(),
                   secrets=secret_forms(api_key))
    await job.collect(fetched)


async def cancel_job(spec: JobSpec, manifest: Manifest, store: JobStore,
                     api_key: str, force: bool = False) -> tuple[int, int]:
    """`batchrun cancel`: (batches cancelled, parts not yet submitted that were dropped)."""
    book = BatchBook.load(manifest.batch, manifest.job_id)

    def save() -> None:
        manifest.batch = book.dump()
        store.save(manifest)

    async with BatchClient(spec.endpoint, api_key, spec.timeout_s) as api:
        try:
            return await cancel_interruptibly(book, api, manifest.job_id, save, force)
        except Transient as exc:
            raise StateError(f"The Batch API at {spec.endpoint.host} did not answer ({exc.message})"
                             f"; run batchrun cancel {manifest.job_id} again.") from None
        except ApiCallFailed as exc:
            raise BatchrunError(f"The Batch API refused to cancel: {exc.message}.") from None
