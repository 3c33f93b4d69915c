"""A job through the Batch API: plan parts → upload → create → poll → download → merge, with
the manifest recording each step the moment the API answers (see `parts`), so a resume after a
crash at any point picks up every part where it was and never creates a part's batch twice.

Requests a batch left unfinished (expired, cancelled, 5xx) go into new parts, up to
`--max-retries`; request-level 4xx are final (see `outcome`). Ctrl-C stops waiting, never the
batches: they go on running on the server and `batchrun resume` collects them. How the API is
called (retries, Ctrl-C) is `calls`; which requests go into new parts is `pending`; what
the user is told is `words`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson

from batchrun.backends.batch import words
from batchrun.backends.batch.api import ApiCallFailed, Transient
from batchrun.backends.batch.cached import (
    Copies,
    Uploaded,
    answer_from_cache,
    note_failures,
    store_answers,
)
from batchrun.backends.batch.calls import FIRST_POLL_S, Caller, CallInterrupted
from batchrun.backends.batch.collect import Collector, Merged
from batchrun.backends.batch.done import DoneIds
from batchrun.backends.batch.look import Fetched
from batchrun.backends.batch.outcome import PartSettler, QueueSeen, describe
from batchrun.backends.batch.parts import DOCUMENTED, DROPPED, SUBMITTED, BatchBook, Part, PartFiles
from batchrun.backends.batch.pending import Pending, queue_limit
from batchrun.backends.batch.plan import Draft, PartLimits, QueueGate, split
from batchrun.backends.batch.remote import Api, adopt, find_batch, text, validation_errors
from batchrun.backends.cacheflow import CacheFlow
from batchrun.backends.costcap import CostCap
from batchrun.backends.stop import Stop
from batchrun.errors import (
    ApiRefused,
    BatchrunError,
    Interrupted,
    StateError,
)
from batchrun.events import BatchPart, JobStarted, Listener, StateChanged
from batchrun.files.checkpoint import OutputWriter
from batchrun.files.jobs import InputReport
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.pacing.backoff import backoff_s
from batchrun.policy.stopkind import StopKind
from batchrun.routing.spec import JobSpec

# How long the run waits, in its own poll naps, while the API refuses a model's batches for
# the enqueued-token queue and none of the job's own batches of that model is in it: nothing
# the job does frees that queue.
QUEUE_WAIT_MAX_S = 3600.0


class _Gone(BatchrunError):
    """A file the API no longer has. Control flow: _download catches it at once and records
    the part's requests as failed (a BatchrunError only because Caller.call's `refused` hook
    returns one)."""


class Detached(BatchrunError):
    """`--detach`: the batches are on the server; not an error."""

    exit_code = 0


@dataclass(slots=True)
class QueueFull:
    """A model whose batches the API refuses for the queue with none of the job's in it:
    since when (in the run's napped seconds), how often, and what the API said last."""

    since_s: float
    refused: int = 0
    said: str = ""
    part: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Options:
    poll_max_s: float = 60.0
    detach: bool = False
    max_retries: int = 8
    collect_only: bool = False  # `resume --via sync`: wait for the open batches, submit nothing


def _queue_refusal(part: Part) -> str | None:
    """What the API said if part's batch failed for the enqueued-token limit."""
    if part.api_status != "failed":
        return None
    for error in part.errors:
        _, code, message = orjson.loads(error)
        if code == "token_limit_exceeded":
            return str(message)
    return None


class BatchJob:
    def __init__(self, spec: JobSpec, manifest: Manifest, store: JobStore, api: Api,
                 listener: Listener, report: InputReport, done: set[str], options: Options, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 notify: Callable[[str], None] = lambda message: None,
                 secrets: tuple[str, ...] = (), cost: CostCap | None = None,
                 cache: CacheFlow | None = None) -> None:
        self.spec, self.manifest, self.store, self.api = spec, manifest, store, api
        self._cache = cache  # the response cache in the job's mode (None: --no-cache)
        self._copies = Copies()  # identical lines held back across plannings (the cache on)
        self._secrets = secrets  # the key's forms, kept out of what the output records
        self._emit, self._report, self._opt = listener, report, options
        self._done = DoneIds(done)
        self._notify = notify
        self.book = BatchBook.load(manifest.batch, manifest.job_id)
        self.files = PartFiles(store.home, manifest.job_id)
        self._calls = Caller(spec.endpoint.host, options.max_retries, self._resume_hint, sleep)
        self._replan = True
        self._queue = QueueSeen()
        self._odd: dict[int, int] = {}  # part -> polls answered with an undocumented status
        self._napped_s = 0.0  # the run's own waiting, the queue bound's clock
        self._full: dict[str, QueueFull] = {}
        self._cost = cost  # --max-cost (and the job's spend record) at Batch API prices
        self._over_cap: Part | None = None  # a part the cap kept from being created this pass
        self._capped: Stop | None = None
        self._told: dict[int, str] = {}  # part -> the state its last BatchPart event gave

    # -- public ---------------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._calls.interrupt()

    async def run(self, announce: bool = True) -> Stop | None:
        """The job's pending requests through the Batch API (a stop.Backend): why it stopped
        early, None when every request has a line. `announce=False`: the sync path already
        started this run (`--via auto`), so its counts go on rather than starting again."""
        said = await self._run(announce)
        if self._capped is not None:
            return self._capped
        if said is None:
            return None
        return Stop(StopKind.DETACHED if isinstance(said, Detached) else StopKind.BATCH,
                    said=said)

    async def _run(self, announce: bool) -> BatchrunError | None:
        report = self._report
        if announce:
            self._announce(report)
        self._save()
        self._emit(StateChanged("running"))
        writer = OutputWriter(self.spec.output)
        try:
            self.collector = Collector(writer, self._done, self._emit, self._secrets)
            if self._cache is not None:
                self.collector.answers = {}
                if self._cache.looks:
                    self.collector.failures = {}
            self._outcome = PartSettler(self.book, self.files, self.collector, self._done,
                                    self.spec.input, self._queue, self._notify)
            return await self._loop()
        except CallInterrupted:
            return self._stopped()
        finally:
            writer.close()

    async def collect(self, fetched: Fetched) -> None:
        """`status JOB`, under the output's lock: take what a look fetched of each part's
        batch and merge the finished ones. Local work only: `fetched` stands in for the API."""
        writer = OutputWriter(self.spec.output)
        try:
            self.collector = Collector(writer, self._done, self._emit, self._secrets)
            self._outcome = PartSettler(self.book, self.files, self.collector, self._done,
                                    self.spec.input, self._queue, self._notify)
            for part in self.book.parts:
                if part.state != SUBMITTED or not fetched.finished(part):
                    continue  # collected, cancelled or re-planned since the look
                batch = fetched.batches[part.n]
                if adopt(part, batch) and part.api_status == "failed":
                    part.errors = [describe(e, self._secrets) for e in validation_errors(batch)]
                self._save()
                if part.finished:
                    await self._collect(part)
        finally:
            writer.close()

    def _announce(self, report: InputReport) -> None:
        self._emit(JobStarted(
            input=str(self.spec.input), output=str(self.spec.output), total=report.total,
            already_done=len(self._done), bad_lines=report.bad_total,
            limits={}, base_url=self.spec.endpoint.base_url + " (Batch API)",
            models=dict(report.models)))

    # -- the loop -------------------------------------------------------------------------------

    async def _loop(self) -> BatchrunError | None:
        calls = self._calls
        interval = FIRST_POLL_S
        while True:
            changed = await self._poll_and_collect()
            if changed:
                self._show()
            if calls.interrupted:
                return self._stopped()
            # Judged after a look at the batch made before the last wait, not before it: a
            # queue that freed as the bound came let that batch in.
            stuck = self._queue_stuck()
            if stuck is not None:
                return stuck
            planned = self._replan
            if self._opt.collect_only:
                created = await self._settle_creating()
            else:
                if self._replan:
                    self._replan = False
                    await self._plan()
                created = await self._submit()
                if self._stuck_on_cost():
                    if self._capped is not None:
                        return None
                    continue
            if calls.interrupted:
                return self._stopped()
            if created and not self._full:  # a refused queue is asked at the longest interval
                interval = FIRST_POLL_S
            if not any(p.open for p in self.book.parts):
                # Collecting only: what the batches left goes by the caller's sync path.
                if self._opt.collect_only or len(self._done) >= self._report.total:
                    return None
                if planned:  # the input gave none of the rest: never "done" with ids missing
                    return StateError(words.incomplete(self.manifest.job_id, len(self._done),
                                                       self._report.total, self.spec.input))
                self._replan = True
                continue
            if self._opt.detach:
                return self._detached()
            if created:
                self._show()
            await calls.nap(interval)
            self._napped_s += interval
            self._queue.held.clear()
            if calls.interrupted:
                return self._stopped()
            interval = min(interval * 2, max(FIRST_POLL_S, self._opt.poll_max_s))

    # -- planning -------------------------------------------------------------------------------

    def _queue_limit(self, model: str) -> int:
        return queue_limit(self.spec, model, self._queue.limits.get(model))

    async def _plan(self) -> None:
        """Parts for every request that has no result line and is in no open part (and whose
        answer the response cache does not hold)."""
        cache = self._cache if self._cache is not None and self._cache.looks else None
        if cache is not None:
            in_parts = {cid for p in self.book.parts if p.open for cid in self.files.ids(p.n)}
            await answer_from_cache(cache, self.spec, self._report, self._done, in_parts,
                                    self.collector)
        pending = Pending(self.spec, self._report, self.book, self.files, self._done,
                          self.collector, self.api.batch_endpoint, self._opt.max_retries,
                          self._cost.request_worst if self._cost is not None else None,
                          Uploaded(cache.key, self._copies) if cache is not None else None)
        # Under a cap, no part is planned larger than what the cap leaves now.
        left = self._cost.remaining() if self._cost is not None else 0.0
        max_usd = 0.0 if left == float("inf") else max(left, 1e-12)
        limits = {m: PartLimits(queue_tokens=self._queue_limit(m), max_usd=max_usd)
                  for m in self._report.models}
        for draft in split(pending.items(), limits):
            self._add_part(draft, pending.attempts)
            await asyncio.sleep(0)

    def _add_part(self, draft: Draft, attempts: dict[str, int]) -> None:
        n = self.book.next_n()
        self.files.write_part(n, [i.line for i in draft.items], [i.line_no for i in draft.items])
        attempt = max((attempts.get(i.custom_id, 1) for i in draft.items), default=1)
        key = f"{self.manifest.job_id}/{n}/{os.urandom(4).hex()}"
        self.book.parts.append(Part(n, key, draft.url, draft.model, len(draft.items),
                                    draft.tokens, attempt, worst_usd=draft.worst_usd))
        self._save()
        # The part is on disk now: its lines (7 MB for 50,000 short requests) need not live
        # on while the planner fills the next one.
        draft.items.clear()

    # -- submitting -----------------------------------------------------------------------------

    def _in_progress(self, model: str) -> int:
        return sum(p.tokens for p in self.book.parts if p.active and p.model == model)

    async def _submit(self) -> int:
        """Upload and create every part the queue and the spend cap admit; how many batches
        were created."""
        created = 0
        self._over_cap = None
        for part in self.book.parts:
            if self._calls.interrupted:
                break
            if part.state == "creating":
                created += await self._create(part)
            elif part.state in ("planned", "uploaded") and part.model not in self._queue.held:
                gate = QueueGate(self._queue_limit(part.model))
                if not gate.admits(self._in_progress(part.model), part.tokens):
                    continue
                if self._cost is not None and not self._cost.hold_part(part.key,
                                                                       part.worst_usd):
                    self._over_cap = self._over_cap or part
                    continue
                if part.state == "planned":
                    await self._upload(part)
                if part.state == "uploaded" and not self._calls.interrupted:
                    created += await self._create(part)
        return created

    async def _upload(self, part: Part) -> None:
        path = self.files.lines_path(part.n)
        name = f"{self.manifest.job_id}-part{part.n}.jsonl"
        answer = await self._calls.call(f"uploading part {part.n}",
                                        lambda: self.api.upload(path, name),
                                        self._calls.no_batch_api(self.manifest.job_id))
        file_id = text(answer.get("id"))
        if file_id is None:
            raise StateError(f"the API's answer to uploading part {part.n} names no file id.")
        part.file_id, part.state = file_id, "uploaded"
        self._save()

    async def _create(self, part: Part) -> int:
        """Create part's batch, unless a batch with its key exists: a create whose answer was
        lost (a crash, a dropped connection) may have made it."""
        assert part.file_id is not None
        for attempt in range(self._calls.retries + 1):
            if part.state == "creating":
                found = await self._find(part)
                if found is not None:
                    adopt(part, found)
                    self._save()
                    return 1
            part.state = "creating"
            self._save()
            try:
                batch = await self._calls.interruptible(self.api.create(
                    part.file_id, self.api.batch_endpoint(part.url),
                    part.metadata(self.manifest.job_id)))
            except Transient as exc:
                if attempt == self._calls.retries:
                    raise self._calls.unreachable(f"creating the batch of part {part.n}",
                                                  exc) from None
                await self._calls.nap(backoff_s(attempt + 1, first_s=FIRST_POLL_S))
                continue
            except ApiCallFailed as exc:
                part.state = "uploaded"  # refused: no batch exists
                self._save()
                raise BatchrunError(f"The API refused to create the batch of part {part.n}: "
                                    f"{exc.message}. {self._resume_hint()}") from None
            if text(batch.get("id")) is None:
                raise StateError(f"the API's answer to creating part {part.n}'s batch names no "
                                 "batch id.")
            adopt(part, batch)
            self._save()
            return 1
        return 0

    async def _settle_creating(self) -> int:
        """Collecting only: a part whose create was asked is its batch if the API made one,
        else dropped (the sync path sends its requests). How many batches were found."""
        found = 0
        for part in self.book.parts:
            if part.state == "creating" and not self._calls.interrupted:
                batch = await self._find(part)
                if batch is None:
                    part.state = DROPPED
                else:
                    adopt(part, batch)
                    found += 1
                self._save()
        return found

    async def _find(self, part: Part) -> dict[str, Any] | None:
        return await self._calls.call(f"looking up part {part.n}'s batch",
                                      lambda: find_batch(self.api, self.manifest.job_id, part))

    # -- polling and collecting -----------------------------------------------------------------

    async def _poll_and_collect(self) -> bool:
        changed = False
        for part in self.book.parts:
            if self._calls.interrupted:
                break
            if part.state != SUBMITTED:
                continue
            if not part.finished or part.output_tries:  # a fresh output_file_id, maybe
                assert part.batch_id is not None
                batch = await self._retrieve(part)
                if adopt(part, batch):
                    changed = True
                    self._save()
                self._check_documented(part)
                if part.api_status == "failed":
                    part.errors = [describe(e, self._secrets) for e in validation_errors(batch)]
            if part.finished and not self._calls.interrupted:
                if part.api_status == "failed" and not part.errors:
                    batch = await self._retrieve(part)
                    part.errors = [describe(e, self._secrets) for e in validation_errors(batch)]
                await self._collect(part)
                changed = True
        return changed

    def _check_documented(self, part: Part) -> None:
        """An undocumented status is shown and waited on, a bounded number of polls."""
        status = part.api_status or ""
        if status in DOCUMENTED:
            self._odd.pop(part.n, None)
            return
        seen = self._odd[part.n] = self._odd.get(part.n, 0) + 1
        batch_id = part.batch_id or ""
        if seen == 1:
            self._notify(words.unknown_status(batch_id, part.n, status))
        if seen >= words.UNKNOWN_POLLS:
            raise ApiRefused(words.unknown_status_stop(self.manifest.job_id, batch_id, part.n,
                                                       status, seen))

    async def _retrieve(self, part: Part) -> dict[str, Any]:
        batch_id, job = part.batch_id or "", self.manifest.job_id

        def refused(exc: ApiCallFailed) -> BatchrunError:
            if exc.status != 404:
                return self._calls.refused(f"checking batch {batch_id}", exc)
            # Asking again cannot help, and sending its requests again could bill them twice.
            return StateError(
                f"The Batch API does not know batch {batch_id} of part {part.n} (HTTP 404): "
                f"was job {job} started with another key or project, or the batch deleted? "
                "Run it again with that key, or, if the batch is truly gone, stop waiting "
                f"for it with: batchrun cancel {job} --force (its requests are then recorded "
                "as failed; resume --retry-failed sends them again, billed again if the batch "
                "did run).")

        return await self._calls.call(f"checking batch {batch_id}",
                                      partial(self.api.retrieve, batch_id), refused)

    async def _collect(self, part: Part) -> None:
        refusal = _queue_refusal(part)
        alone = not any(p.active and p.model == part.model and p is not part
                        for p in self.book.parts)
        ids = self.files.ids(part.n)
        id_set = set(ids)
        self._done.collecting(dict(zip(ids, self.files.line_nos(part.n), strict=True)))
        merged = Merged()
        gone: str | None = None
        for which, file_id in (("output", part.output_file_id), ("error", part.error_file_id)):
            if file_id is None:
                continue
            dest = self.files.download_path(part.n, which)
            if await self._download(part, which, file_id, dest):
                self.collector.merge(dest, id_set, part.model, part.attempt, merged)
            else:
                gone = file_id
        if self._cache is not None and self.collector.answers is not None:
            await store_answers(self._cache, self.files, part, self.collector.answers)
        if self._cache is not None and self.collector.failures is not None:
            note_failures(self._cache, self.files, part, self.collector.failures, self._copies)
        unread = self._outcome.unread(part, ids, merged) if gone is None else []
        if unread and self._outcome.read_again(part, unread):
            self._save()
            return
        if self._cost is not None:  # before the part is recorded collected: see files.spend
            self._cost.settle_part(part.key, part.model, merged.billed, part.worst_usd)
        self._outcome.settle(part, ids, merged, gone)
        self._save()
        self._note_queue(part, refusal, alone)
        self._outcome.tidy(part)
        if merged.left:
            self._replan = True
        if merged.refused is not None:
            code, message = merged.refused
            raise ApiRefused(
                f"The API refused requests of batch {part.batch_id} for the account: {message} "
                f"({code}). Check ${self.spec.endpoint.key_env}, the account's billing and quota, "
                f"then continue with: batchrun resume {self.manifest.job_id} (the "
                f"{len(self._done):,} finished results in {self.spec.output} are kept).")

    def _stuck_on_cost(self) -> bool:
        """A part the cap kept back, with no batch of the job on the server whose collection
        could give room back. A part of several requests is planned again at what the cap
        leaves (True: look again); one request that does not fit stops the job (True, with
        `_capped` set). False: not stuck."""
        part, cost = self._over_cap, self._cost
        if part is None or cost is None or any(p.active for p in self.book.parts):
            return False
        if part.count > 1:
            for each in self.book.parts:
                if each.state in ("planned", "uploaded"):
                    each.state = DROPPED  # never created: its requests are planned again
            self._save()
            self._replan = True
            return True
        assert cost.cap is not None  # only a cap keeps a part back
        self._capped = Stop(StopKind.COST, done=len(self._done), total=self._report.total,
                            spent_usd=cost.spent + cost.journal.held_usd, cap_usd=cost.cap,
                            need_usd=part.worst_usd)
        return True

    def _note_queue(self, part: Part, refusal: str | None, alone: bool) -> None:
        """A refusal with the job's own batches in the queue ends when they finish; one
        without starts (or goes on) the wait that `QUEUE_WAIT_MAX_S` bounds. A batch of the
        model that got in ends it."""
        if refusal is None:
            self._full.pop(part.model, None)
        elif alone:
            full = self._full.setdefault(part.model, QueueFull(self._napped_s))
            full.refused += 1
            full.said, full.part, full.tokens = refusal, part.n, part.tokens

    def _queue_stuck(self) -> ApiRefused | None:
        for model, full in self._full.items():
            waited = self._napped_s - full.since_s
            if waited >= QUEUE_WAIT_MAX_S:
                return ApiRefused(words.queue_full(self.manifest.job_id, model, waited,
                                                   full.refused, full.said, full.part,
                                                   full.tokens))
        return None

    async def _download(self, part: Part, which: str, file_id: str, dest: Path) -> bool:
        """The file into dest; False if the API no longer has it (deleted, past retention),
        which every later try would meet too."""
        def refused(exc: ApiCallFailed) -> BatchrunError:
            return _Gone(exc.message) if exc.status == 404 else self._calls.refused(what, exc)

        what = f"downloading {which} file {file_id} of batch {part.batch_id}"
        try:
            await self._calls.call(what, partial(self.api.download, file_id, dest), refused)
        except _Gone:
            self._notify(f"The {which} file {file_id} of batch {part.batch_id} (part {part.n}) "
                         "is gone from the API (HTTP 404): its requests are recorded as failed.")
            return False
        except StateError as exc:  # our disk: the batch's files wait on the server
            raise StateError(f"{exc.message}. {self._resume_hint()}") from None
        return True

    # -- messages, state ------------------------------------------------------------------------

    def _submitted(self) -> int:
        return sum(1 for p in self.book.parts if p.active)

    def _resume_hint(self) -> str:
        return words.resume_hint(self.manifest.job_id, self._submitted())

    def _stopped(self) -> Interrupted:
        return Interrupted(words.stopped(self.manifest.job_id, self._submitted(),
                                         len(self._done), self._report.total, self.spec.output))

    def _detached(self) -> Detached:
        waiting = sum(1 for p in self.book.parts if p.state in ("planned", "uploaded"))
        return Detached(words.detached(self.manifest.job_id, self._submitted(), waiting))

    def _show(self) -> None:
        line = words.progress(self.book.parts, self._in_progress, self._queue_limit)
        if line is not None:
            self._emit(StateChanged("batch", line))

    def _save(self) -> None:
        self.manifest.batch = self.book.dump()
        self.store.save(self.manifest)
        self._tell_parts()

    def _tell_parts(self) -> None:
        """A BatchPart event for each part whose state moved since the last one: every change
        of a part is saved, so this sees each (the API's status once its batch exists)."""
        for part in self.book.parts:
            state = part.api_status if part.state == SUBMITTED and part.api_status else part.state
            if self._told.get(part.n) != state:
                self._told[part.n] = state
                self._emit(BatchPart(part.n, part.batch_id or "", state, part.count))
