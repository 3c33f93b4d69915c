"""Splitting a job's pending requests into Batch API parts, and the enqueued-token gate. Pure:
no I/O, no clock, so the rules are tested on their own.

A part holds requests of one url and one model (the API takes one endpoint per batch and
validates one model per batch), at most `max_requests` of them, at most `max_bytes` of uploaded
lines, and at most the model's enqueued-token limit of prompt tokens (a part over the limit
fails validation however long it waits). Parts that would push the tokens in progress past the
limit wait until earlier ones finish (`QueueGate`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Item:
    """One request as the planner sees it: where it goes, and what it costs the part."""

    line_no: int  # in our input file, 1-based
    custom_id: str
    url: str
    model: str
    size: int  # bytes of its uploaded line, newline included
    tokens: int  # prompt tokens: what the enqueued-token limit counts
    line: bytes = field(default=b"", compare=False)  # the line to upload
    worst_usd: float = 0.0  # --max-cost: its most possible bill at Batch API prices


@dataclass(slots=True)
class Draft:
    """A part being filled."""

    url: str
    model: str
    items: list[Item] = field(default_factory=list)
    size: int = 0
    tokens: int = 0
    worst_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class PartLimits:
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    queue_tokens: int = 0  # the model's enqueued-token limit; 0 = unlimited
    # --max-cost: what the job may still spend when it plans, so a part is never so large
    # that its worst case could not fit under the cap; 0 = no cap
    max_usd: float = 0.0

    def fits(self, draft: Draft, item: Item) -> bool:
        if not draft.items:
            return True  # a lone request over a limit still goes: the API is the judge
        return (len(draft.items) < self.max_requests
                and draft.size + item.size <= self.max_bytes
                and (not self.queue_tokens or draft.tokens + item.tokens <= self.queue_tokens)
                and (not self.max_usd or draft.worst_usd + item.worst_usd <= self.max_usd))


def split(items: Iterable[Item],
          limits_for: PartLimits | dict[str, PartLimits]) -> Iterator[Draft]:
    """The parts; each (url, model)'s in input order, one open part per (url, model).
    `limits_for`: one PartLimits for every model, or one per model (the queue limit is per
    model)."""
    open_: dict[tuple[str, str], Draft] = {}
    for item in items:
        limits = limits_for if isinstance(limits_for, PartLimits) else limits_for.get(
            item.model, PartLimits())
        key = (item.url, item.model)
        draft = open_.get(key)
        if draft is not None and not limits.fits(draft, item):
            yield draft
            draft = None
        if draft is None:
            draft = open_[key] = Draft(item.url, item.model)
        draft.items.append(item)
        draft.size += item.size
        draft.tokens += item.tokens
        draft.worst_usd += item.worst_usd
    yield from open_.values()


@dataclass(frozen=True, slots=True)
class QueueGate:
    """May a part of `tokens` start while `in_progress` tokens of its model are enqueued?
    A part always may when nothing of its model is in progress: it alone was planned to fit."""

    limit: int  # 0 = unlimited

    def admits(self, in_progress: int, tokens: int) -> bool:
        return not self.limit or not in_progress or in_progress + tokens <= self.limit
