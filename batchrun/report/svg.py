"""The report's charts as inline SVG strings (#26): time charts, lanes, a share bar.

Every colour, dash and font is an attribute on the element, so a chart needs no stylesheet and
stays right when copied out of the page. Colours differ in lightness as well as hue and lines
differ in dash too, so a greyscale print still tells them apart; every chart's legend names them.
Every string from the document goes through esc().
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from batchrun.report.svg_axis import TimeAxis
from batchrun.report.svg_series import Steps, peak_of

FONT = 'font-family="system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif"'
INK, MUTED, GRID = "#222222", "#555555", "#dddddd"
PAD_L, PAD_T, PAD_B = 80.0, 36.0, 44.0
HALO = 'stroke="#ffffff" stroke-width="3" paint-order="stroke"'
CHAR_PX = 6.6  # a character of 12 px text, near enough to place labels without measuring


@dataclass(frozen=True)
class Pen:
    colour: str
    dash: str = ""
    width: float = 2.0
    fill: float = 0.0  # area opacity; 0 draws a line

    def attrs(self) -> str:
        dash = f' stroke-dasharray="{self.dash}"' if self.dash else ""
        if self.fill:
            return (f'fill="{self.colour}" fill-opacity="{self.fill}" stroke="{self.colour}" '
                    f'stroke-width="1"')
        return f'fill="none" stroke="{self.colour}" stroke-width="{self.width}"{dash}'


BLUE = Pen("#1f4e9c")
ORANGE = Pen("#e69f00", "7 4", 2.2)
GREEN = Pen("#009e73", "2 3", 2.0)
LIMIT = Pen("#b00020", "9 4", 1.6)


@dataclass(frozen=True)
class Line:
    label: str
    steps: list[Steps]
    pen: Pen


@dataclass(frozen=True)
class Limit:
    value: float
    label: str


@dataclass(frozen=True)
class Band:
    start: float
    end: float
    colour: str
    text: str = ""
    mark: str = ""  # drawn at the band's end (a killed session's ✕)


@dataclass(frozen=True)
class Chart:
    title: str
    y_label: str
    lines: list[Line]
    limits: list[Limit] = field(default_factory=list)
    shades: list[Band] = field(default_factory=list)  # not running: behind the plot
    note: str = ""  # shown in the middle when there is nothing to draw
    height: float = 230.0


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_num(value: float) -> str:
    """Thousands separators; a fraction only where it carries information."""
    if value == int(value) or abs(value) >= 100:
        return f"{round(value):,}"
    return f"{value:,.1f}"


def fmt_tick(value: float) -> str:
    """An axis label: 25 M rather than 25,000,000, which would crowd the axis's title."""
    for size, unit in ((1e9, "B"), (1e6, "M")):
        if abs(value) >= size:
            return f"{fmt_num(value / size)} {unit}"
    return fmt_num(value)


def nice_top(peak: float) -> tuple[float, float]:
    """A round top for the y axis above peak, and the step between its gridlines."""
    if peak <= 0:
        return 1.0, 0.25
    raw = peak * 1.08 / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(peak * 1.08 / step), step


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start",
          colour: str = INK, extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{colour}" {extra}>{esc(text)}</text>')


def _step_path(steps: Steps, axis: TimeAxis, y: Callable[[float], float],
               base: float | None) -> str:
    """One span's buckets as a step line (or, with base, a closed area down to it); runs of one
    value become one segment."""
    parts: list[str] = []
    last_v: float | None = None
    for start, end, value in steps:
        if value == last_v:
            parts[-1] = f"H{axis.x(end):.1f}"
            continue
        yy = y(value)
        if last_v is None:
            x0 = axis.x(start)
            parts.append(f"M{x0:.1f},{base:.1f}V{yy:.1f}" if base is not None
                         else f"M{x0:.1f},{yy:.1f}")
        else:
            parts.append(f"V{yy:.1f}")
        parts.append(f"H{axis.x(end):.1f}")
        last_v = value
    if base is not None and parts:
        parts.append(f"V{base:.1f}Z")
    return "".join(parts)


def _legend(items: list[tuple[str, Pen]], x: float, y: float) -> str:
    out = []
    for label, pen in items:
        swatch = (f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="22" height="10" {pen.attrs()}/>'
                  if pen.fill else
                  f'<path d="M{x:.1f},{y - 4:.1f}h22" {pen.attrs()}/>')
        out.append(swatch + _text(x + 27, y, label))
        x += 40 + CHAR_PX * len(label)
    return "".join(out)


def _frame(axis: TimeAxis, top: float, bottom: float, shades: list[Band] | None = None) -> str:
    """Breaks (long idle stretches, squeezed; labelled where there is room: "not running" when
    it falls between two sessions) and x-axis ticks in UTC."""
    out = []
    for brk in axis.breaks():
        mid = (brk.left + brk.right) / 2
        between = any(b.start <= brk.start + brk.seconds / 2 <= b.end for b in shades or [])
        label = f"{brk.label} {'not running' if between else 'idle'}"
        out.append(f'<rect x="{brk.left:.1f}" y="{top:.1f}" width="{brk.right - brk.left:.1f}" '
                   f'height="{bottom - top:.1f}" fill="#f3f3f3" stroke="#bbbbbb" '
                   f'stroke-dasharray="3 3"><title>{esc(label)}</title></rect>')
        if bottom - top < 90 or brk.right - brk.left < 12:  # no room for the words
            continue
        out.append(_text(mid + 4, (top + bottom) / 2, label,
                         size=10, anchor="middle", colour=MUTED,
                         extra=f'transform="rotate(-90 {mid + 4:.1f} {(top + bottom) / 2:.1f})"'))
    for x, label in axis.ticks():
        out.append(f'<path d="M{x:.1f},{bottom:.1f}v5" stroke="{MUTED}"/>')
        out.append(_text(x, bottom + 18, label, size=11, anchor="middle", colour=MUTED))
    return "".join(out)


def time_chart(chart: Chart, axis: TimeAxis, width: float) -> str:
    h = chart.height
    top, bottom = PAD_T, h - PAD_B
    peak = max([peak_of([ln.steps]) for ln in chart.lines] + [lim.value for lim in chart.limits],
               default=0.0)
    y_top, y_step = nice_top(peak)

    def y(v: float) -> float:
        return bottom - (bottom - top) * v / y_top

    right = axis.left + axis.width
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {h:.0f}" '
           f'class="chart" role="img" {FONT}><title>{esc(chart.title)}</title>']
    for band in chart.shades:
        x0, x1 = axis.x(band.start), axis.x(band.end)
        out.append(f'<rect x="{x0:.1f}" y="{top:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                   f'height="{bottom - top:.1f}" fill="{band.colour}"/>')
    ticks = round(y_top / y_step)
    for i in range(ticks + 1):
        yy = y(i * y_step)
        out.append(f'<path d="M{axis.left:.1f},{yy:.1f}H{right:.1f}" stroke="{GRID}"/>')
        out.append(_text(axis.left - 6, yy + 4, fmt_tick(i * y_step), size=11, anchor="end",
                         colour=MUTED))
    out.append(_frame(axis, top, bottom, chart.shades))
    for line in chart.lines:
        base = bottom if line.pen.fill else None
        d = "".join(_step_path(run, axis, y, base) for run in line.steps if run)
        if d:
            out.append(f'<path d="{d}" {line.pen.attrs()} stroke-linejoin="round"/>')
    for lim in chart.limits:
        yy = y(lim.value)
        out.append(f'<path d="M{axis.left:.1f},{yy:.1f}H{right:.1f}" {LIMIT.attrs()}/>')
        out.append(_text(right - 4, yy - 5, lim.label, anchor="end", colour=LIMIT.colour,
                         extra=f'font-weight="600" {HALO}'))
    if chart.note:
        out.append(_text((axis.left + right) / 2, (top + bottom) / 2, chart.note, size=14,
                         anchor="middle", colour=MUTED))
    out.append(f'<path d="M{axis.left:.1f},{top:.1f}V{bottom:.1f}H{right:.1f}" '
               f'stroke="{INK}" fill="none"/>')
    mid = (top + bottom) / 2
    out.append(_text(16, mid, chart.y_label, size=11, anchor="middle", colour=MUTED,
                     extra=f'transform="rotate(-90 16 {mid:.1f})"'))
    out.append(_text(right, h - 6, "time (UTC)", size=11, anchor="end", colour=MUTED))
    out.append(_legend([(ln.label, ln.pen) for ln in chart.lines], axis.left, 18))
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Lane:
    label: str
    bands: list[Band]


def lanes_chart(title: str, lanes: list[Lane], axis: TimeAxis, width: float,
                legend: list[tuple[str, Pen]]) -> str:
    """Horizontal lanes on the time axis: the sessions, the Batch API parts."""
    lane_h, top = 22.0, 30.0
    bottom = top + lane_h * len(lanes)
    h = bottom + PAD_B
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {h:.0f}" '
           f'class="chart" role="img" {FONT}><title>{esc(title)}</title>']
    out.append(_frame(axis, top, bottom))
    for i, lane in enumerate(lanes):
        y0 = top + i * lane_h + 3
        out.append(_text(axis.left - 6, y0 + 12, lane.label, size=11, anchor="end"))
        for band in lane.bands:
            x0, x1 = axis.x(band.start), axis.x(band.end)
            w = max(x1 - x0, 2.0)
            out.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" '
                       f'height="{lane_h - 6:.1f}" fill="{band.colour}" stroke="{INK}" '
                       f'stroke-width="0.5"/>')
            if band.text and w > CHAR_PX * len(band.text) * 0.9 + 6:
                out.append(_text(x0 + 4, y0 + 12, band.text, size=11))
    # Marks last, so the next band does not cover them.
    for i, lane in enumerate(lanes):
        for band in lane.bands:
            if band.mark:
                x0 = axis.x(band.start)
                x1 = max(axis.x(band.end), x0 + 2.0)
                # Inside the band's end when it has room, else just after it.
                inside = x1 - x0 > CHAR_PX * (len(band.mark) + len(band.text)) + 16
                out.append(_text(x1 - 4 if inside else x1 + 3, top + i * lane_h + 15, band.mark,
                                 size=11, anchor="end" if inside else "start",
                                 colour="#b00020", extra=f'font-weight="700" {HALO}'))
    out.append(f'<path d="M{axis.left:.1f},{bottom:.1f}H{axis.left + axis.width:.1f}" '
               f'stroke="{INK}"/>')
    out.append(_text(axis.left + axis.width, h - 6, "time (UTC)", size=11, anchor="end",
                     colour=MUTED))
    out.append(_legend(legend, axis.left, 18))
    out.append("</svg>")
    return "".join(out)


def share_bar(parts: list[tuple[str, float, str]], width: float) -> str:
    """One bar, its parts in proportion to their shares (label, share, colour), each part's
    share written inside it when it fits."""
    h, x, left = 34.0, 0.0, 0.0
    total = sum(share for _, share, _ in parts) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {h:.0f}" '
           f'class="share" role="img" {FONT}><title>where the time went</title>']
    for label, share, colour in parts:
        w = width * share / total
        out.append(f'<rect x="{left + x:.1f}" y="2" width="{w:.1f}" height="30" fill="{colour}" '
                   f'stroke="#ffffff" stroke-width="1"><title>{esc(label)}</title></rect>')
        pct = f"{share * 100:.0f} %"
        if w > CHAR_PX * 2 * len(pct):
            out.append(_text(left + x + w / 2, 22, pct, size=13, anchor="middle",
                             colour=_ink_on(colour), extra='font-weight="600"'))
        x += w
    out.append("</svg>")
    return "".join(out)


def _ink_on(colour: str) -> str:
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return INK if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"
