"""Which requests a planning puts into new parts: every one with no result line and in no open
part, read afresh from the input (the job's file may be far bigger than memory), each knowing
which try it is on. Requests past --max-retries, or of a cancelled job, fail here instead."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from batchrun.backends.batch.cached import Uploaded
from batchrun.backends.batch.collect import Collector
from batchrun.backends.batch.done import DoneIds
from batchrun.backends.batch.parts import COLLECTED, BatchBook, PartFiles
from batchrun.backends.batch.plan import Item
from batchrun.errors import BadLine
from batchrun.files.jobs import InputReport, Reading, read_jobs
from batchrun.policy.request import Request
from batchrun.policy.tiers import batch_queue_tokens
from batchrun.policy.tokens import prompt_tokens_many
from batchrun.routing.spec import JobSpec

TOKEN_CHUNK = 4096


def queue_limit(spec: JobSpec, model: str, seen: int | None) -> int:
    """The model's enqueued-token limit: the preset's (or --batch-queue-tokens), or less if a
    refusal showed the queue holds less (another job shares it)."""
    given = spec.batch_queue_tokens
    limit = given if given is not None else batch_queue_tokens(model, spec.tier)
    return min(limit, seen) if seen and limit else seen or limit


class Pending:
    """`attempts` fills as `items` is read: the try each request read so far is on, for
    those that are not on their first."""

    def __init__(self, spec: JobSpec, report: InputReport, book: BatchBook, files: PartFiles,
                 done: DoneIds, collector: Collector, endpoint: Callable[[str], str],
                 max_retries: int,
                 worst: Callable[[str, str, dict[str, Any], int], float] | None = None,
                 uploaded: Uploaded | None = None) -> None:
        """`worst(model, url, body, prompt tokens)`: a request's worst case under --max-cost.
        `uploaded`: identical lines go once (the response cache on); None: every line goes."""
        self._spec, self._report, self._book, self._files = spec, report, book, files
        self._done, self._collector, self._endpoint = done, collector, endpoint
        self._max_retries = max_retries
        self._worst = worst
        self._uploaded = uploaded
        self.attempts: dict[str, int] = {}

    def _in_parts(self) -> set[str]:
        in_parts: set[str] = set()
        for p in self._book.parts:
            if p.open:
                in_parts.update(self._files.ids(p.n))
        return in_parts

    def _tried(self) -> dict[str, tuple[int, str, str]]:
        """What collected parts left unfinished: each request's latest try and why."""
        tried: dict[str, tuple[int, str, str]] = {}
        for p in self._book.parts:
            if p.state == COLLECTED and p.n >= self._book.tries_from:
                for cid, code, message in self._files.left(p.n):
                    if cid not in tried or tried[cid][0] <= p.attempt:
                        tried[cid] = (p.attempt, code, message)
        return tried

    def items(self) -> Iterator[Item]:
        in_parts, tried = self._in_parts(), self._tried()
        report, cancelled = self._report, self._book.cancelled
        reading = read_jobs(self._spec.input, self._spec.model, report.ids.replay(),
                            end=report.size, reading=Reading(report.stamp))
        batch: list[Request] = []
        for item in reading:
            if isinstance(item, BadLine):
                if item.output_id not in self._done:
                    self._collector.fail(item.output_id, "?", "invalid_request_line",
                                         item.reason, 0)
                continue
            cid = item.custom_id
            if self._done.has(cid, item.line_no):
                continue
            if cid in in_parts:
                if self._uploaded is not None:
                    self._uploaded.first(item)  # its copies wait for that part
                continue
            if self._uploaded is not None and (
                    failure := self._uploaded.failure(item)) is not None:
                status, body, code, message, attempt = failure
                self._collector.fail(cid, item.model, code, message, attempt, status, body)
                continue  # a copy of a request that failed for good: its failure, not a try
            if cid in tried:
                attempt, code, message = tried[cid]
                if cancelled or attempt > self._max_retries:
                    self._collector.fail(cid, item.model, code, message, attempt)
                    if self._uploaded is not None:
                        self._uploaded.failed(item, (None, None, code, message, attempt))
                    continue
                self.attempts[cid] = attempt + 1
            elif cancelled:
                self._collector.fail(cid, item.model, "batch_cancelled",
                                     "not sent: the job's batches were cancelled with "
                                     "batchrun cancel", 0)
                continue
            if self._uploaded is not None and not self._uploaded.first(item):
                continue  # a copy: the cache answers it once its first is collected
            batch.append(item)
            if len(batch) >= TOKEN_CHUNK:
                yield from self._as_items(batch)
                batch = []
        yield from self._as_items(batch)

    def _as_items(self, requests: list[Request]) -> Iterator[Item]:
        counts = prompt_tokens_many([(r.url, r.body) for r in requests])
        for r, tokens in zip(requests, counts, strict=True):
            line = orjson.dumps({"custom_id": r.custom_id, "method": "POST",
                                 "url": self._endpoint(r.url), "body": r.body}) + b"\n"
            worst = self._worst(r.model, r.url, r.body, tokens) if self._worst else 0.0
            yield Item(r.line_no, r.custom_id, r.url, r.model, len(line), tokens, line, worst)
