"""The report's time axis (#26): UTC seconds to pixels, with long idle stretches drawn as breaks.

A job of three days spends its nights waiting for 00:00 UTC with nothing to draw. A linear axis
would give those nights most of the width and squeeze the work into slivers, so every stretch of
at least IDLE_GAP in which nothing happened (no series row, no Batch API part running) becomes a
break of fixed width, labelled with how long it lasted; the stretches where something happened
share the rest of the width in proportion to their length. Every chart of one report uses the
same axis, so a moment sits at the same x in all of them.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

IDLE_GAP = 15 * 60
BREAK_PX = 30.0
MAX_BREAKS = 40
# Nice tick steps in seconds, and the least room a tick label needs.
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
              43200, 86400)
TICK_PX = 90.0


@dataclass(frozen=True)
class Break:
    left: float
    right: float
    start: int
    seconds: int

    @property
    def label(self) -> str:
        """Its length, to the minute once it is long: a night is "8 h 12 min", not to the s."""
        return fmt_duration(self.seconds if self.seconds < 600 else round(self.seconds / 60) * 60)


@dataclass(frozen=True)
class TimeAxis:
    spans: tuple[tuple[int, int], ...]  # the active stretches, [start, end) in epoch seconds
    left: float
    width: float

    @property
    def break_px(self) -> float:
        gaps = len(self.spans) - 1
        # Many breaks must not eat the chart: together they take at most a third of it.
        return min(BREAK_PX, self.width / 3 / gaps) if gaps else 0.0

    @cached_property
    def _pixels(self) -> list[tuple[float, float]]:
        total = sum(end - start for start, end in self.spans)
        room = self.width - self.break_px * (len(self.spans) - 1)
        out, x = [], self.left
        for start, end in self.spans:
            px = room * (end - start) / total
            out.append((x, x + px))
            x += px + self.break_px
        return out

    @cached_property
    def _ends(self) -> list[int]:
        return [end for _, end in self.spans]

    def x(self, t: float) -> float:
        """Where t is drawn; inside a break, proportionally across it, so a bar that crosses it
        stays one bar."""
        if t <= self.spans[0][0]:
            return self.left
        i = bisect.bisect_left(self._ends, t)  # the first span that ends at or after t
        if i == len(self.spans):
            return self.left + self.width
        (start, end), (x0, x1) = self.spans[i], self._pixels[i]
        if t < start:  # in the break before span i (i > 0: t is after the first span's start)
            before, x_before = self.spans[i - 1][1], self._pixels[i - 1][1]
            return x_before + (x0 - x_before) * (t - before) / (start - before)
        return x0 + (x1 - x0) * (t - start) / (end - start)

    def breaks(self) -> list[Break]:
        pixels = self._pixels
        return [Break(pixels[i][1], pixels[i + 1][0], self.spans[i][1],
                      self.spans[i + 1][0] - self.spans[i][1])
                for i in range(len(self.spans) - 1)]

    def ticks(self) -> list[tuple[float, str]]:
        """UTC tick labels, each span its own; a label shows the date when it is the first one
        or the day changed since the last label."""
        out: list[tuple[float, str]] = []
        last_day = ""
        last_x = -1e9
        for (start, end), (x0, x1) in zip(self.spans, self._pixels, strict=True):
            step = tick_step(end - start, x1 - x0)
            first = -(-start // step) * step
            times = list(range(first, end + 1, step)) or [start]
            for t in times:
                x = self.x(t)
                if x - last_x < TICK_PX * 0.8:
                    continue
                moment = dt.datetime.fromtimestamp(t, dt.UTC)
                day = moment.strftime("%b %-d")
                clock = moment.strftime("%H:%M:%S" if step < 60 else "%H:%M")
                out.append((x, f"{day} {clock}" if day != last_day else clock))
                last_day, last_x = day, x
        return out


def tick_step(seconds: int, px: float) -> int:
    fits = max(1.0, px / TICK_PX)
    return next((s for s in TICK_STEPS if seconds / s <= fits), TICK_STEPS[-1])


def active_spans(intervals: Iterable[tuple[int, int]], gap: int = IDLE_GAP
                 ) -> tuple[tuple[int, int], ...]:
    """The stretches where something happened: intervals merged across idle time shorter than
    gap, doubling gap while that leaves more than MAX_BREAKS breaks (a trickle of work every
    20 minutes for a month keeps only its longest waits as breaks). No interval at all gives
    one second at 0, so an empty report still has an axis."""
    ordered = sorted((start, max(end, start + 1)) for start, end in intervals)
    while True:
        merged: list[list[int]] = []
        for start, end in ordered:
            if merged and start - merged[-1][1] < gap:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        if len(merged) <= MAX_BREAKS + 1:
            return tuple((s, e) for s, e in merged) or ((0, 1),)
        gap *= 2


def fmt_duration(seconds: float) -> str:
    """3 d 4 h, 7 h 12 min, 4 min 10 s, 12 s: the two largest units."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if s >= size or parts:
            count, s = divmod(s, size)
            parts.append(f"{count} {name}")
        if len(parts) == 2:
            break
    return " ".join(p for p in parts if not p.startswith("0 ")) or "0 s"


def fmt_utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
