"""A job through the Batch API: plan parts → upload → create → poll → download → merge, with
the manifest recording each step the moment the API answers (see `parts`), so a resume after a
crash at any point picks up every part where it was and never creates a part's batch twice.

Requests a batch left unfinished (expired, cancelled, 5xx) go into new parts, up to
`--max-retries`; request-level 4xx are final. Ctrl-C stops waiting, never the batches: they go
on running on the server and `batchrun resume` collects them. All waiting uses the injected
`sleep`, so tests run on virtual time.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import orjson

from batchrun.batch.api import ApiCallFailed, Transient
from batchrun.batch.collect import Collector, Merged
from batchrun.batch.parts import (
    COLLECTED,
    DROPPED,
    TERMINAL,
    BatchBook,
    Part,
    PartFiles,
)
from batchrun.batch.plan import Draft, Item, Limits, QueueGate, split
from batchrun.batch.remote import Api, adopt, find_batch, text, validation_errors
from batchrun.checkpoint import OutputWriter
from batchrun.errors import (
    ApiRefused,
    BadLine,
    BatchrunError,
    Interrupted,
    StateError,
    redact,
)
from batchrun.events import JobStarted, Listener, StateChanged
from batchrun.jobs import InputReport, Reading, Request, read_jobs
from batchrun.jobstore import JobStore, Manifest
from batchrun.spec import JobSpec
from batchrun.tiers import batch_queue_tokens
from batchrun.tokens import prompt_tokens_many

T = TypeVar("T")
FIRST_POLL_S = 1.0
MAX_BACKOFF_S = 60.0
TOKEN_CHUNK = 4096
MIN_CALL_RETRIES = 5
SHOWN_ERRORS = 20


# The limit an enqueued-token refusal names: OpenAI's "Limit: 2,000,000 enqueued tokens",
# Azure's "the configured limit of 2,000,000".
_LIMIT = re.compile(r"[Ll]imit(?::| of)\s*(\d[\d,]*)")


def _stated_limit(message: str) -> int | None:
    found = _LIMIT.search(message)
    return int(found.group(1).replace(",", "")) or None if found else None


class _Stop(Exception):
    """Ctrl-C ended a files or batches call: the run stops where a kill -9 would have, which
    the manifest's order of saves makes safe to resume from."""


class _Gone(BatchrunError):
    """A file the API no longer has."""


class Detached(BatchrunError):
    """`--detach`: the batches are on the server; not an error."""

    exit_code = 0


@dataclass(frozen=True, slots=True)
class Options:
    poll_max_s: float = 60.0
    detach: bool = False
    max_retries: int = 8
    collect_once: bool = False  # `status JOB`: poll and collect what finished, nothing more


class BatchJob:
    def __init__(self, spec: JobSpec, manifest: Manifest, store: JobStore, api: Api,
                 listener: Listener, report: InputReport, done: set[str], options: Options, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 notify: Callable[[str], None] = lambda message: None,
                 secrets: tuple[str, ...] = ()) -> None:
        self.spec, self.manifest, self.store, self.api = spec, manifest, store, api
        self._secrets = secrets  # the key's forms, kept out of what the output records
        self._emit, self._report, self._done, self._opt = listener, report, done, options
        self._sleep, self._notify = sleep, notify
        self.book = BatchBook.load(manifest.batch, manifest.job_id)
        self.files = PartFiles(store.home, manifest.job_id)
        self._interrupted = False
        self._napping: asyncio.Task[None] | None = None
        self._calling: asyncio.Future[Any] | None = None  # the files or batches call in flight
        self._replan = True
        # A files or batches call is asked again at least this often: a --max-retries 0 meant
        # for requests must not end a day-long wait at the first 502 of a poll.
        self._call_retries = max(options.max_retries, MIN_CALL_RETRIES)
        # After an enqueued-token refusal: models whose parts wait for the next poll, and the
        # queue each model was seen to hold (less than the preset: another job shares it).
        self._held: set[str] = set()
        self._seen_limit: dict[str, int] = {}

    # -- public ---------------------------------------------------------------------------------

    def interrupt(self) -> None:
        self._interrupted = True
        if self._napping is not None:
            self._napping.cancel()
        if self._calling is not None:
            self._calling.cancel()

    async def run(self, announce: bool = True) -> BatchrunError | None:
        """`announce=False`: the sync path already started this run (`--via auto`), so its
        counts go on rather than starting again."""
        report = self._report
        if announce:
            self._announce(report)
        self._save()
        self._emit(StateChanged("running"))
        writer = OutputWriter(self.spec.output)
        try:
            self.collector = Collector(writer, self._done, self._emit, self._secrets)
            return await self._loop()
        except _Stop:
            return self._stopped()
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
        interval = FIRST_POLL_S
        while True:
            changed = await self._poll_and_collect()
            if changed:
                self._show()
            if self._interrupted:
                return self._stopped()
            if self._opt.collect_once:
                return self._collected()
            if self._replan:
                self._replan = False
                await self._plan()
            created = await self._submit()
            if self._interrupted:
                return self._stopped()
            if created:
                interval = FIRST_POLL_S
            if not any(p.open for p in self.book.parts):
                return None
            if self._opt.detach:
                return self._detached()
            if created:
                self._show()
            await self._nap(interval)
            self._held.clear()
            if self._interrupted:
                return self._stopped()
            interval = min(interval * 2, max(FIRST_POLL_S, self._opt.poll_max_s))

    async def _interruptible(self, call: Awaitable[T]) -> T:
        """A files or batches call that Ctrl-C ends at once, not when the server answers."""
        if self._interrupted:
            if asyncio.iscoroutine(call):
                call.close()  # never to run: closed, so no "never awaited" warning
            raise _Stop
        task: asyncio.Future[T] = asyncio.ensure_future(call)
        self._calling = task
        try:
            return await task
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
            raise _Stop from None
        finally:
            self._calling = None

    async def _nap(self, seconds: float) -> None:
        self._napping = asyncio.ensure_future(self._sleep(seconds))
        try:
            await self._napping
        except asyncio.CancelledError:
            if not self._interrupted:
                raise
        finally:
            self._napping = None

    # -- planning -------------------------------------------------------------------------------

    def _queue_limit(self, model: str) -> int:
        given = self.spec.batch_queue_tokens
        limit = given if given is not None else batch_queue_tokens(model, self.spec.tier)
        seen = self._seen_limit.get(model)
        return min(limit, seen) if seen and limit else seen or limit

    async def _plan(self) -> None:
        """Parts for every request that has no result line and is in no open part."""
        in_parts: set[str] = set()
        for p in self.book.parts:
            if p.open:
                in_parts.update(self.files.ids(p.n))
        tried: dict[str, tuple[int, str, str]] = {}
        for p in self.book.parts:
            if p.state == COLLECTED and p.n >= self.book.tries_from:
                for cid, code, message in self.files.left(p.n):
                    if cid not in tried or tried[cid][0] <= p.attempt:
                        tried[cid] = (p.attempt, code, message)
        limits = {m: Limits(queue_tokens=self._queue_limit(m)) for m in self._report.models}
        attempts: dict[str, int] = {}
        drafts = split(self._items(in_parts, tried, attempts), limits)
        for draft in drafts:
            self._add_part(draft, attempts)
            await asyncio.sleep(0)

    def _items(self, in_parts: set[str], tried: dict[str, tuple[int, str, str]],
               attempts: dict[str, int]) -> Iterator[Item]:
        report = self._report
        reading = read_jobs(self.spec.input, self.spec.model, report.ids.replay(),
                            end=report.size, reading=Reading(report.stamp))
        batch: list[Request] = []
        for item in reading:
            if isinstance(item, BadLine):
                if item.output_id not in self._done:
                    self.collector.fail(item.output_id, "?", "invalid_request_line", item.reason,
                                        0)
                continue
            cid = item.custom_id
            if cid in self._done or cid in in_parts:
                continue
            if cid in tried:
                attempt, code, message = tried[cid]
                if self.book.cancelled or attempt > self._opt.max_retries:
                    self.collector.fail(cid, item.model, code, message, attempt)
                    continue
                attempts[cid] = attempt + 1
            elif self.book.cancelled:
                self.collector.fail(cid, item.model, "batch_cancelled",
                                    "not sent: the job's batches were cancelled with "
                                    "batchrun cancel", 0)
                continue
            batch.append(item)
            if len(batch) >= TOKEN_CHUNK:
                yield from self._as_items(batch)
                batch = []
        yield from self._as_items(batch)

    def _as_items(self, requests: list[Request]) -> Iterator[Item]:
        counts = prompt_tokens_many([(r.url, r.body) for r in requests])
        for r, tokens in zip(requests, counts, strict=True):
            line = orjson.dumps({"custom_id": r.custom_id, "method": "POST",
                                 "url": self.api.batch_endpoint(r.url), "body": r.body}) + b"\n"
            yield Item(r.line_no, r.custom_id, r.url, r.model, len(line), tokens, line)

    def _add_part(self, draft: Draft, attempts: dict[str, int]) -> None:
        n = self.book.next_n()
        self.files.write_part(n, [i.line for i in draft.items], [i.line_no for i in draft.items])
        attempt = max((attempts.get(i.custom_id, 1) for i in draft.items), default=1)
        key = f"{self.manifest.job_id}/{n}/{os.urandom(4).hex()}"
        self.book.parts.append(Part(n, key, draft.url, draft.model, len(draft.items),
                                    draft.tokens, attempt))
        self._save()

    # -- submitting -----------------------------------------------------------------------------

    def _in_progress(self, model: str) -> int:
        return sum(p.tokens for p in self.book.parts if p.active and p.model == model)

    async def _submit(self) -> int:
        """Upload and create every part the queue admits; how many batches were created."""
        created = 0
        for part in self.book.parts:
            if self._interrupted:
                break
            if part.state == "creating":
                created += await self._create(part)
            elif part.state in ("planned", "uploaded") and part.model not in self._held:
                gate = QueueGate(self._queue_limit(part.model))
                if not gate.admits(self._in_progress(part.model), part.tokens):
                    continue
                if part.state == "planned":
                    await self._upload(part)
                if part.state == "uploaded" and not self._interrupted:
                    created += await self._create(part)
        return created

    async def _upload(self, part: Part) -> None:
        path = self.files.lines_path(part.n)
        name = f"{self.manifest.job_id}-part{part.n}.jsonl"
        answer = await self._call(f"uploading part {part.n}",
                                  lambda: self.api.upload(path, name), self._no_batch_api)
        file_id = text(answer.get("id"))
        if file_id is None:
            raise StateError(f"the API's answer to uploading part {part.n} names no file id.")
        part.file_id, part.state = file_id, "uploaded"
        self._save()

    async def _create(self, part: Part) -> int:
        """Create part's batch, unless a batch with its key exists: a create whose answer was
        lost (a crash, a dropped connection) may have made it."""
        assert part.file_id is not None
        delay = FIRST_POLL_S
        for attempt in range(self._call_retries + 1):
            if part.state == "creating":
                found = await self._find(part)
                if found is not None:
                    adopt(part, found)
                    self._save()
                    return 1
            part.state = "creating"
            self._save()
            try:
                batch = await self._interruptible(self.api.create(
                    part.file_id, self.api.batch_endpoint(part.url),
                    part.metadata(self.manifest.job_id)))
            except Transient as exc:
                if attempt == self._call_retries:
                    raise self._unreachable(f"creating the batch of part {part.n}", exc) from None
                await self._nap(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
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

    async def _find(self, part: Part) -> dict[str, Any] | None:
        return await self._call(f"looking up part {part.n}'s batch",
                                lambda: find_batch(self.api, self.manifest.job_id, part))

    # -- polling and collecting -----------------------------------------------------------------

    async def _poll_and_collect(self) -> bool:
        changed = False
        for part in self.book.parts:
            if self._interrupted:
                break
            if not part.active or part.state in ("creating", COLLECTED):
                continue
            if part.state not in TERMINAL:
                assert part.batch_id is not None
                batch = await self._retrieve(part)
                if adopt(part, batch):
                    changed = True
                    self._save()
                if part.state == "failed":
                    part.errors = [self._describe(part, e) for e in validation_errors(batch)]
            if part.state in TERMINAL and not self._interrupted:
                if part.state == "failed" and not part.errors:
                    batch = await self._retrieve(part)
                    part.errors = [self._describe(part, e) for e in validation_errors(batch)]
                await self._collect(part)
                changed = True
        return changed

    async def _retrieve(self, part: Part) -> dict[str, Any]:
        batch_id, job = part.batch_id or "", self.manifest.job_id

        def refused(exc: ApiCallFailed) -> BatchrunError:
            if exc.status != 404:
                return BatchrunError(f"The Batch API refused checking batch {batch_id}: "
                                     f"{exc.message}. {self._resume_hint()}")
            # Asking again cannot help, and sending its requests again could bill them twice.
            return StateError(
                f"The Batch API does not know batch {batch_id} of part {part.n} (HTTP 404): "
                f"was job {job} started with another key or project, or the batch deleted? "
                f"Run it again with that key, or stop waiting for the batch with: batchrun "
                f"cancel {job} (its requests are then recorded as failed; resume "
                "--retry-failed sends them again, billed again if the batch did run).")

        return await self._call(f"checking batch {batch_id}",
                                partial(self.api.retrieve, batch_id), refused)

    def _describe(self, part: Part, error: tuple[int | None, str, str]) -> str:
        line, code, message = error  # the server's words, which may quote the key
        return orjson.dumps([line, *(redact(x, *self._secrets) for x in (code, message))]).decode()

    async def _collect(self, part: Part) -> None:
        ids = self.files.ids(part.n)
        id_set = set(ids)
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
        if part.state == "failed":
            self._failed_validation(part, ids, merged)
        reason = {"expired": ("batch_expired", "the batch expired before this request ran"),
                  "cancelled": ("batch_cancelled", "the batch was cancelled before this "
                                "request ran")}.get(part.state,
                                                    ("batch_incomplete", "the batch returned "
                                                     "no result for this request"))
        if gone is not None:
            # They ran (and were billed), but their results are lost: not sent again unasked.
            for cid in ids:
                if cid not in merged.left:
                    self.collector.fail(
                        cid, part.model, "output_file_missing",
                        f"the result file {gone} of batch {part.batch_id} is gone from the API "
                        "(HTTP 404); resume --retry-failed sends the request again",
                        part.attempt)
        for cid in ids:
            if cid not in self._done and cid not in merged.left:
                merged.left[cid] = reason
        if merged.refused is not None:
            # Tried afresh once the account is fixed: these leftovers count no try.
            part.attempt = 0
        self.files.write_left(part.n, merged.left)
        part.state = COLLECTED
        self._save()
        # Only what it left unfinished is needed from now on (the next planning reads it).
        for path in (self.files.download_path(part.n, "output"),
                     self.files.download_path(part.n, "error"),
                     self.files.lines_path(part.n), self.files.map_path(part.n)):
            self.files.remove(path)
        if merged.left:
            self._replan = True
        if merged.refused is not None:
            code, message = merged.refused
            raise ApiRefused(
                f"The API refused requests of batch {part.batch_id} for the account: {message} "
                f"({code}). Check ${self.spec.endpoint.key_env}, the account's billing and quota, "
                f"then continue with: batchrun resume {self.manifest.job_id} (the "
                f"{len(self._done):,} finished results in {self.spec.output} are kept).")

    async def _download(self, part: Part, which: str, file_id: str, dest: Path) -> bool:
        """The file into dest; False if the API no longer has it (deleted, past retention),
        which every later try would meet too."""
        def refused(exc: ApiCallFailed) -> BatchrunError:
            return _Gone(exc.message) if exc.status == 404 else BatchrunError(
                f"The Batch API refused {what}: {exc.message}. {self._resume_hint()}")

        what = f"downloading {which} file {file_id} of batch {part.batch_id}"
        try:
            await self._call(what, partial(self.api.download, file_id, dest), refused)
        except _Gone:
            self._notify(f"The {which} file {file_id} of batch {part.batch_id} (part {part.n}) "
                         "is gone from the API (HTTP 404): its requests are recorded as failed.")
            return False
        return True

    def _failed_validation(self, part: Part, ids: list[str], merged: Merged) -> None:
        """A batch that failed validation: the lines it names fail for good with its reason;
        the rest are fine and go into a new part. With no line named, the whole part fails
        with the reason, except an enqueued-token refusal, which waits and tries again."""
        line_nos = self.files.line_nos(part.n)
        errors = [orjson.loads(e) for e in part.errors]
        shown = []
        named = False
        for line, code, message in errors:
            if line is not None and 1 <= line <= len(ids):
                named = True
                cid, ours = ids[line - 1], line_nos[line - 1]
                self.collector.fail(cid, part.model, code,
                                    f"{message} (line {ours} of {self.spec.input})", part.attempt)
                shown.append(f"line {ours} of {self.spec.input} (id {cid!r}): {code}: {message}")
            else:
                shown.append(f"{code}: {message}")
        refusal = next((m for _, code, m in errors if code == "token_limit_exceeded"), None)
        waits = refusal is not None and not self._queue_refused(part, ids, refusal)
        if named or waits:
            # What is left did not run (other lines were at fault, or the queue was full):
            # not a try, its requests keep their tries.
            part.attempt -= 1
        if not named and all(code != "token_limit_exceeded" for _, code, _ in errors):
            _, code, message = errors[0]
            for cid in ids:
                self.collector.fail(cid, part.model, code, message, part.attempt)
        left = ((errors[0][1], errors[0][2]) if not named else
                ("batch_failed", "its batch failed validation because of other lines"))
        for cid in ids:
            if cid not in self._done:
                merged.left.setdefault(cid, left)
        more = f"\n  … and {len(shown) - SHOWN_ERRORS} more" if len(shown) > SHOWN_ERRORS else ""
        self._notify(f"Batch {part.batch_id} (part {part.n}, {part.count:,} requests) failed "
                     "validation:\n  " + "\n  ".join(shown[:SHOWN_ERRORS]) + more)

    def _queue_refused(self, part: Part, ids: list[str], message: str) -> bool:
        """An enqueued-token refusal: hold the model's parts until the next poll, and learn
        how big a part may be. Whether it counts as one of the requests' tries: only when
        the API's answer cannot tell a queue other jobs fill from a part that never fits."""
        self._held.add(part.model)
        others = sum(p.tokens for p in self.book.parts
                     if p.active and p.model == part.model and p is not part)
        if others:
            self._seen_limit[part.model] = others
            return False
        limit = _stated_limit(message)
        if limit is None:
            return True
        if part.tokens <= limit // 2:
            return False  # no count is that far from the API's: other jobs hold the queue
        # Over nine tenths of the limit it cannot fit; below, our count of prompt tokens may
        # be under the API's (the simulator's runs 40 % higher on some text): halve.
        room = limit * 9 // 10 if part.tokens > limit * 9 // 10 else part.tokens // 2
        if part.count > 1:
            seen = self._seen_limit.get(part.model)
            self._seen_limit[part.model] = min(seen, room) if seen else room
            return False
        if part.tokens <= limit * 9 // 10:
            return True  # alone and maybe over: a try, so it ends at --max-retries
        self.collector.fail(
            ids[0], part.model, "token_limit_exceeded",
            f"this request alone has about {part.tokens:,} prompt tokens, too many for the "
            f"API's enqueued-token limit of {limit:,} for {part.model}: no batch can hold it. "
            "Send it with --via sync.", part.attempt)
        return False

    # -- calls, messages, state -----------------------------------------------------------------

    async def _call(self, what: str, call: Callable[[], Awaitable[T]],
                    refused: Callable[[ApiCallFailed], BatchrunError] | None = None) -> T:
        """`call`, again after a transient failure (with backoff), up to --max-retries."""
        delay = FIRST_POLL_S
        for attempt in range(self._call_retries + 1):
            try:
                return await self._interruptible(call())
            except Transient as exc:
                if attempt == self._call_retries:
                    raise self._unreachable(what, exc) from None
                await self._nap(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
            except ApiCallFailed as exc:
                if refused is not None:
                    raise refused(exc) from None
                raise BatchrunError(f"The Batch API refused {what}: {exc.message}. "
                                    f"{self._resume_hint()}") from None
        raise AssertionError("unreachable")

    def _no_batch_api(self, exc: ApiCallFailed) -> BatchrunError:
        """An upload refused: with a 404 or 405 the route itself is missing, and resuming
        meets the same answer."""
        hint = (f"Does {self.spec.endpoint.host} serve the Batch API (files and batches)? If "
                f"not, run the job with --via sync: batchrun resume {self.manifest.job_id} "
                "--via sync." if exc.status in (404, 405) else self._resume_hint())
        return BatchrunError(f"The Batch API refused uploading a part: {exc.message}. {hint}")

    def _unreachable(self, what: str, exc: Transient) -> StateError:
        return StateError(
            f"The Batch API at {self.spec.endpoint.host} failed {what} "
            f"{self._call_retries + 1} times (last: {exc.message}). {self._resume_hint()}")

    def _submitted(self) -> int:
        return sum(1 for p in self.book.parts if p.active)

    def _resume_hint(self) -> str:
        job = self.manifest.job_id
        running = self._submitted()
        on_server = (f"The {running} batch{'es' if running != 1 else ''} already submitted "
                     f"{'go' if running != 1 else 'goes'} on running on the server. "
                     if running else "")
        return f"{on_server}Continue with: batchrun resume {job}"

    def _stopped(self) -> Interrupted:
        job, n = self.manifest.job_id, self._submitted()
        many = n != 1
        batches = (f" The {n} batch{'es' if many else ''} submitted {'go' if many else 'goes'} "
                   f"on running on the server (Ctrl-C does not cancel {'them' if many else 'it'}"
                   f"): batchrun resume {job} collects the results, batchrun cancel {job} "
                   f"cancels {'them' if many else 'it'}." if n else
                   f" Continue with: batchrun resume {job}")
        return Interrupted(f"Interrupted. {len(self._done):,} of {self._report.total:,} "
                           f"requests are done and kept in {self.spec.output}.{batches}")

    def _collected(self) -> Detached | None:
        if len(self._done) >= self._report.total:
            return None
        job, n = self.manifest.job_id, self._submitted()
        return Detached(
            f"{len(self._done):,} of {self._report.total:,} requests have a result; "
            f"{n} batch{'es' if n != 1 else ''} still on the server. Collect the rest with: "
            f"batchrun resume {job}")

    def _detached(self) -> Detached:
        job, n = self.manifest.job_id, self._submitted()
        waiting = sum(1 for p in self.book.parts if p.state in ("planned", "uploaded"))
        wait = (f" {waiting} more part{'s' if waiting != 1 else ''} wait for the enqueued-token "
                "limit and are submitted by resume." if waiting else "")
        return Detached(
            f"Job {job} submitted, not finished: {n} batch{'es' if n != 1 else ''} running on "
            f"the server.{wait} Collect the results with: batchrun resume {job} (batchrun "
            f"status {job} collects what has finished and shows how far it got).")

    def _show(self) -> None:
        """Each part's state and counts (open parts first), and the tokens enqueued against
        each model's limit: the non-TTY line and the live display's detail."""
        parts = sorted((p for p in self.book.parts if p.state != DROPPED),
                       key=lambda p: (not p.open, p.n))
        if not parts:
            return
        shown = []
        for p in parts[:6]:
            what = {"planned": "waiting for the queue", "uploaded": "waiting for the queue",
                    COLLECTED: "done"}.get(p.state, p.state.replace("_", " "))
            counts = f" {p.completed + p.failed:,}/{p.count:,}" if p.batch_id else ""
            shown.append(f"part {p.n} {what}{counts}")
        models = sorted({p.model for p in parts})
        named = len(models) > 1  # each model has its own queue: say which is which
        queued = " · ".join(
            (f"{m} " if named else "") + (
                f"queued {self._in_progress(m):,}/{self._queue_limit(m):,} tok"
                if self._queue_limit(m) else f"queued {self._in_progress(m):,} tok")
            for m in models)
        more = f" · +{len(parts) - 6} parts" if len(parts) > 6 else ""
        self._emit(StateChanged("batch", " · ".join(shown) + more + " · " + queued))

    def _save(self) -> None:
        self.manifest.batch = self.book.dump()
        self.store.save(self.manifest)
