"""The response cache on the Batch API path (#25): lines it answers are written before any part
is planned (never uploaded), identical lines are uploaded once, and the answers a part brings
are stored. A copy of a request in a part gets its line when that part is collected: the next
planning finds its answer in the cache, or, when that request failed for good, records the
same failure (`Copies`) instead of being uploaded and billed again."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batchrun.backends.batch.collect import Collector
from batchrun.backends.batch.done import DoneIds
from batchrun.backends.batch.parts import Part, PartFiles
from batchrun.backends.cacheflow import CacheFlow, cached_line, from_cache
from batchrun.errors import BadLine
from batchrun.files.jobs import InputReport, Reading, read_jobs
from batchrun.policy.prices import Via
from batchrun.policy.request import Request
from batchrun.routing.spec import JobSpec


async def answer_from_cache(cache: CacheFlow, spec: JobSpec, report: InputReport,
                            done: DoneIds, in_parts: set[str], collector: Collector) -> None:
    """Write the line of every request with no result and in no open part whose answer the
    cache holds."""
    reading = read_jobs(spec.input, spec.model, report.ids.replay(), end=report.size,
                        reading=Reading(report.stamp))
    for n, item in enumerate(reading):
        if n % 256 == 0:
            await asyncio.sleep(0)  # a long file must not hold the loop (Ctrl-C, the display)
        if isinstance(item, BadLine) or item.custom_id in in_parts or \
                done.has(item.custom_id, item.line_no):
            continue
        hit = await cache.lookup(item)
        if hit is not None:
            collector.cached(item.custom_id, cached_line(item.custom_id, hit),
                             from_cache(item.custom_id, item.model, hit, Via.BATCH))


# A failure line's parts as the Collector writes them: status, body, code, message, attempts.
Failure = tuple[int | None, Any, str, str, int]


def _mark(key: bytes) -> int:
    """A key's first 8 bytes: a few tens of bytes in a set, not a whole digest and its object."""
    return int.from_bytes(key[:8], "big")


@dataclass(slots=True)
class Copies:
    """What a job's plannings share about identical lines: the requests whose copies were held
    back for them (`waited`), and the failure of each of those that failed for good, which its
    copies record in the next planning. Only requests with copies are kept: a job where every
    line fails keeps no record of each."""

    waited: set[int] = field(default_factory=set)
    failed: dict[int, Failure] = field(default_factory=dict)


class Uploaded:
    """Identical lines uploaded once in one planning: the keys seen so far, as 8-byte prefixes.
    Two keys that share one are only a copy held back until the next planning, where the cache
    answers it by its whole key or it is uploaded then: never a wrong answer. (A copy given a
    failure by a shared prefix gets a failure line: `--retry-failed` sends it.)"""

    def __init__(self, key: Callable[[Request], bytes], copies: Copies | None = None) -> None:
        self._key = key
        self._seen: set[int] = set()
        self._copies = copies if copies is not None else Copies()

    def first(self, request: Request) -> bool:
        """True for the first line of its body (uploaded); False for a copy (it waits)."""
        mark = _mark(self._key(request))
        if mark in self._seen:
            self._copies.waited.add(mark)
            return False
        self._seen.add(mark)
        return True

    def failure(self, request: Request) -> Failure | None:
        """How the request its copies waited for failed for good (None: it did not)."""
        return self._copies.failed.get(_mark(self._key(request))) if self._copies.failed \
            else None

    def failed(self, request: Request, failure: Failure) -> None:
        """`request` failed for good: the copies that wait for it record `failure`."""
        mark = _mark(self._key(request))
        if mark in self._copies.waited:
            self._copies.failed[mark] = failure


async def store_answers(cache: CacheFlow, files: PartFiles, part: Part,
                        answers: dict[str, bytes]) -> None:
    """The answers a part brought, each under its request as uploaded (`answers` emptied)."""
    if not answers:
        return
    asker = cache.primary
    for cid, body in _uploaded(files, part, answers):
        await cache.store(Request(0, cid, part.url, body), asker, answers[cid])
    answers.clear()


def note_failures(cache: CacheFlow, files: PartFiles, part: Part,
                  failures: dict[str, Failure], copies: Copies) -> None:
    """The requests of a part that failed for good (`failures` emptied), for their copies."""
    if not failures:
        return
    uploaded = Uploaded(cache.key, copies)
    for cid, body in _uploaded(files, part, failures):
        uploaded.failed(Request(0, cid, part.url, body), failures[cid])
    failures.clear()


def _uploaded(files: PartFiles, part: Part, wanted: dict[str, Any],
              ) -> Iterable[tuple[str, dict[str, object]]]:
    return ((cid, body) for cid, body in files.requests(part.n) if cid in wanted)
