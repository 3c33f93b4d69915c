"""The report's series as drawable steps (#26): sparse rows to one value per bucket.

A row exists only for a second (or, later in a long job, a minute) in which something happened;
a missing second is zero for a count and unchanged for a gauge. The renderer never draws more
than one bucket per pixel: the bucket is the smallest nice number of seconds that keeps the
active time within the chart's width, so a three-day job draws as many points as a five-minute
one and the report stays small.

Counts are drawn per minute, the unit of the limits they are read against: over a bucket of a
minute or more, the bucket's count scaled to a minute; over a shorter bucket, the count of the
minute that ends with it (a trailing window), so a per-second job does not show 60-fold spikes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from batchrun.report.svg_axis import TimeAxis

BUCKETS = (1, 2, 3, 5, 10, 15, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200,
           10800, 21600, 43200, 86400)

Row = Mapping[str, Any]
# One run of buckets inside one active span: (start, end, value) each.
Steps = list[tuple[int, int, float]]


def bucket_for(axis: TimeAxis, max_points: float) -> int:
    active = sum(end - start for start, end in axis.spans)
    return next((b for b in BUCKETS if active / b <= max_points), BUCKETS[-1])


def num(row: Row, field: str) -> float:
    """The row's number, 0 for anything else (a bool, a string, null): a document from another
    version draws as empty rather than failing."""
    value = row.get(field, 0)
    kind = type(value)  # exact types: bool is an int subclass, and this runs ~10⁶ times
    return float(value) if kind is int or kind is float else 0.0


def _bucket_sums(rows: Iterable[Row], field: str, b: int) -> dict[int, float]:
    sums: dict[int, float] = defaultdict(float)
    for row in rows:
        value = num(row, field)
        if not value:
            continue
        t, step = int(row.get("t", 0)), max(1, int(row.get("step", 1) or 1))
        if step <= b:
            sums[t // b] += value
            continue
        # A per-minute row read at buckets under a minute: its count spread over its minute.
        for i in range(t // b, (t + step - 1) // b + 1):
            overlap = min(t + step, (i + 1) * b) - max(t, i * b)
            sums[i] += value * overlap / step
    return sums


def per_minute(rows: Sequence[Row], field: str, axis: TimeAxis, b: int) -> list[Steps]:
    """A count as a rate per minute, one Steps per active span."""
    sums = _bucket_sums(rows, field, b)
    window = max(1, 60 // b)
    out: list[Steps] = []
    for start, end in axis.spans:
        steps: Steps = []
        for i in range(start // b, (end - 1) // b + 1):
            if b >= 60:
                value = sums.get(i, 0.0) * 60 / b
            else:
                value = sum(sums.get(j, 0.0) for j in range(i - window + 1, i + 1))
            steps.append((max(start, i * b), min(end, (i + 1) * b), value))
        out.append(steps)
    return out


def gauge(rows: Sequence[Row], field: str, axis: TimeAxis, b: int, peak: bool = False
          ) -> list[Steps]:
    """A gauge at the end of each bucket (its highest value in the bucket when peak), carried
    over the seconds without a row; 0 before its first value."""
    known = sorted((int(r.get("t", 0)), num(r, field)) for r in rows if field in r)
    out: list[Steps] = []
    k, last = 0, 0.0
    for start, end in axis.spans:
        steps: Steps = []
        for i in range(start // b, (end - 1) // b + 1):
            top = last
            while k < len(known) and known[k][0] < (i + 1) * b:
                last = known[k][1]
                top = max(top, last)
                k += 1
            steps.append((max(start, i * b), min(end, (i + 1) * b), top if peak else last))
        out.append(steps)
    return out


def added(a: list[Steps], b: list[Steps]) -> list[Steps]:
    """Two step series on the same buckets, summed (for stacking)."""
    return [[(s, e, v + w) for (s, e, v), (_, _, w) in zip(x, y, strict=True)]
            for x, y in zip(a, b, strict=True)]


def peak_of(series: Iterable[list[Steps]]) -> float:
    return max((v for steps in series for run in steps for _, _, v in run), default=0.0)


def as_dict(value: object) -> dict[str, Any]:
    """A part of the document that should be an object, or {} (a document from another
    version, or a hand-edited one, draws as empty rather than failing)."""
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def rows_of(value: object) -> list[Row]:
    """The rows of a series that have a time; any other entry is left out."""
    return [r for r in as_list(value) if isinstance(r, dict) and isinstance(r.get("t"), int)]


def int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
