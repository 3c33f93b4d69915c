"""The response cache on the Batch API path (#25): lines it answers are written before any part
is planned (never uploaded), identical lines are uploaded once, and the answers a part brings
are stored. A copy of a request in a part gets its line when that part is collected: the next
planning finds its answer in the cache."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

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


class Uploaded:
    """Identical lines uploaded once in one planning: the keys seen so far, as 8-byte prefixes
    (a few tens of bytes each, not a whole digest and its object). Two keys that share one are
    only a copy held back until the next planning, where the cache answers it by its whole key
    or it is uploaded then: never a wrong answer."""

    def __init__(self, key: Callable[[Request], bytes]) -> None:
        self._key = key
        self._seen: set[int] = set()

    def first(self, request: Request) -> bool:
        """True for the first line of its body (uploaded); False for a copy (it waits)."""
        mark = int.from_bytes(self._key(request)[:8], "big")
        if mark in self._seen:
            return False
        self._seen.add(mark)
        return True


async def store_answers(cache: CacheFlow, files: PartFiles, part: Part,
                        answers: dict[str, bytes]) -> None:
    """The answers a part brought, each under its request as uploaded (`answers` emptied)."""
    if not answers:
        return
    asker = cache.primary
    for cid, body in _uploaded(files, part, answers):
        await cache.store(Request(0, cid, part.url, body), asker, answers[cid])
    answers.clear()


def _uploaded(files: PartFiles, part: Part, answers: dict[str, bytes],
              ) -> Iterable[tuple[str, dict[str, object]]]:
    return ((cid, body) for cid, body in files.requests(part.n) if cid in answers)
