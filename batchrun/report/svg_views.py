"""The report's charts (#26): which of the document's series each chart draws, against which
limit, on the job's one time axis: sessions and Batch API parts as lanes, requests, tokens, 429s
by kind, in flight, the daily budget, and small multiples per model and per endpoint."""

from __future__ import annotations

import itertools
from typing import Any

from batchrun.report.svg import (
    BLUE,
    GREEN,
    ORANGE,
    PAD_L,
    Band,
    Chart,
    Lane,
    Limit,
    Line,
    Pen,
    esc,
    fmt_num,
    lanes_chart,
    time_chart,
)
from batchrun.report.svg_axis import TimeAxis
from batchrun.report.svg_series import (
    Row,
    added,
    as_dict,
    as_list,
    bucket_for,
    gauge,
    int_or_none,
    num,
    peak_of,
    per_minute,
    rows_of,
)

WIDTH, HALF = 1100.0, 540.0  # a full-width chart's viewBox, and a small multiple's
PAD_R = 24.0
NOT_RUNNING = "#e9e9e9"
STATE_COLOURS = {"validating": "#d9d9d9", "in_progress": "#56b4e9", "finalizing": "#009e73",
                 "cancelling": "#e69f00"}
TERMINAL = {"completed": "✓", "failed": "✕", "expired": "✕", "cancelled": "✕"}
SESSIONS = {"done": "#cfe3f6", "stopped early": "#fde6b0", "killed": "#f4c7c3"}
KINDS = (("429 of another kind", Pen("#7f7f7f", fill=0.55)),
         ("too large for the limit", Pen("#332288", fill=0.85)),
         ("daily limit", Pen("#56b4e9", fill=0.85)),
         ("per-minute limit", Pen("#d55e00", fill=0.85)))


def activity(doc: dict[str, Any], rows: list[Row]) -> list[tuple[int, int]]:
    """Where something happened: rows (the breakdowns' too), Batch API parts from their first
    state to their last, and the moments sessions began and ended."""
    out = [(int(r["t"]), int(r["t"]) + max(1, int(num(r, "step") or 1))) for r in rows]
    for group in as_dict(doc.get("by")).values():
        for series in as_dict(group).values():
            out += [(int(r["t"]), int(r["t"]) + 1) for r in rows_of(series)]
    for part in as_list(doc.get("batch_parts")):
        times = [t for t in (int_or_none(s.get("t")) for s in _states(part)) if t is not None]
        if times:
            out.append((min(times), max(times) + 1))
    for session in as_list(doc.get("sessions")):
        for key in ("start", "end"):
            t = int_or_none(as_dict(session).get(key))
            if t is not None:
                out.append((t, t + 1))
    return out


def _states(part: object) -> list[dict[str, Any]]:
    return [s for s in as_list(as_dict(part).get("states")) if isinstance(s, dict)]


def _axis(spans: tuple[tuple[int, int], ...], width: float) -> TimeAxis:
    return TimeAxis(spans, PAD_L, width - PAD_L - PAD_R)


def _single_limits(job: dict[str, Any]) -> dict[str, Any]:
    """The limits the whole job's charts are read against: those of its one model (several
    models have one each, drawn in their own charts)."""
    limits = as_dict(job.get("limits"))
    return as_dict(next(iter(limits.values()))) if len(limits) == 1 else {}


def _limit(lim: dict[str, Any], key: str) -> list[Limit]:
    value = num(lim, key)
    return [Limit(value, f"limit {fmt_num(value)} {key.upper()}")] if value > 0 else []


def _not_running(doc: dict[str, Any]) -> list[Band]:
    sessions = sorted((int_or_none(as_dict(s).get("start")), int_or_none(as_dict(s).get("end")))
                      for s in as_list(doc.get("sessions"))
                      if int_or_none(as_dict(s).get("start")) is not None)
    return [Band(end, nxt, NOT_RUNNING) for (_, end), (nxt, _) in itertools.pairwise(sessions)
            if end is not None and nxt is not None and nxt > end]


def over_time(doc: dict[str, Any], spans: tuple[tuple[int, int], ...], rows: list[Row]) -> str:
    job = as_dict(doc.get("job"))
    lim = _single_limits(job)
    axis = _axis(spans, WIDTH)
    b = bucket_for(axis, axis.width)
    shades = _not_running(doc)
    empty = "" if rows else "nothing recorded"
    out = ["<section><h2>Over time</h2>", _lanes(doc, axis)]
    charts = [
        ("Requests per minute", "the limiter's admitting rate, and the RPM limit",
         Chart("Requests per minute", "requests / min",
               [Line("sent (HTTP attempts)", per_minute(rows, "sent", axis, b), BLUE),
                Line("answered", per_minute(rows, "ok", axis, b), ORANGE),
                *_rate(rows, "rate_rpm", axis, b)],
               _limit(lim, "rpm"), shades, empty)),
        ("Tokens per minute", "charged as the limiter counts them, billed as the server reports",
         Chart("Tokens per minute", "tokens / min",
               [Line("charged", per_minute(rows, "tokens_charged", axis, b), BLUE),
                Line("billed (usage)", per_minute(rows, "tokens", axis, b), ORANGE),
                *_rate(rows, "rate_tpm", axis, b)],
               _limit(lim, "tpm"), shades, empty)),
        ("429 answers per minute", "by kind, stacked", _rate_limited(rows, axis, b, shades)),
        ("Requests in flight", "the most at once in each step",
         Chart("Requests in flight", "in flight",
               [Line("in flight", gauge(rows, "in_flight", axis, b, peak=True),
                     Pen(BLUE.colour, fill=0.3))], [], shades, empty, height=180)),
    ]
    for title, sub, chart in charts:
        out.append(figure(title, sub, time_chart(chart, axis, WIDTH)))
    out.append(_budget(rows, lim, spans, shades))
    out.append("</section>")
    return "".join(out)


def _rate(rows: list[Row], field: str, axis: TimeAxis, b: int) -> list[Line]:
    """The limiter's admitting rate, unless it never had one (0 is how an unlimited limiter
    reports it)."""
    steps = gauge(rows, field, axis, b)
    return [Line("limiter's rate", steps, GREEN)] if peak_of([steps]) else []


def figure(title: str, sub: str, svg: str) -> str:
    sub_html = f" <span>{esc(sub)}</span>" if sub else ""
    return f"<figure><figcaption>{esc(title)}{sub_html}</figcaption>{svg}</figure>"


def _rate_limited(rows: list[Row], axis: TimeAxis, b: int, shades: list[Band]) -> Chart:
    minute = per_minute(rows, "rate_limited_minute", axis, b)
    day = added(minute, per_minute(rows, "rate_limited_day", axis, b))
    large = added(day, per_minute(rows, "too_large", axis, b))
    total = per_minute(rows, "rate_limited", axis, b)
    layers = [total, large, day, minute]
    lines = []
    below = 0.0
    # Drawn back to front, each from zero: what shows of a layer is its own kind's share.
    for (label, pen), steps in zip(reversed(KINDS), reversed(layers), strict=True):
        if peak_of([steps]) > below:
            lines.append(Line(label, steps, pen))
        below = max(below, peak_of([steps]))
    note = "" if peak_of([total]) else ("no 429 answers" if rows else "nothing recorded")
    return Chart("429 answers per minute", "429s / min", list(reversed(lines)), [], shades, note,
                 height=190)


def _budget(rows: list[Row], lim: dict[str, Any], spans: tuple[tuple[int, int], ...],
            shades: list[Band]) -> str:
    """Today's daily budget (it restarts at 00:00 UTC) against the daily limits, when the job
    has one or recorded any use."""
    axis = _axis(spans, HALF)
    b = bucket_for(axis, axis.width)
    figures = []
    for field, key, unit in (("budget_requests", "rpd", "requests"),
                             ("budget_tokens", "tpd", "tokens")):
        steps = gauge(rows, field, axis, b)
        if not _limit(lim, key) and not peak_of([steps]):
            continue
        chart = Chart(f"Daily {unit} used", f"{unit} today", [Line(f"{unit} used today",
                      steps, Pen(BLUE.colour, fill=0.3))], _limit(lim, key), shades, height=200)
        figures.append(figure(f"Daily budget: {unit}", "used today (UTC day)",
                               time_chart(chart, axis, HALF)))
    if not figures:
        return "<p class=\"note\">No daily limit applied to this job.</p>"
    return "<div class=\"cols\">" + "".join(figures) + "</div>"


def _lanes(doc: dict[str, Any], axis: TimeAxis) -> str:
    lanes: list[Lane] = []
    bands, looks = [], set()
    for i, session in enumerate((as_dict(s) for s in as_list(doc.get("sessions"))), 1):
        start, end = int_or_none(session.get("start")), int_or_none(session.get("end"))
        if start is None:
            continue
        ended = str(session.get("ended", ""))
        look = session_look(ended)
        looks.add(look)
        bands.append(Band(start, end if end is not None else start, SESSIONS[look],
                          f"{i} · {ended}", "✕ killed" if look == "killed" else ""))
    if bands:
        lanes.append(Lane("sessions", bands))
    last = max((e for s, e in axis.spans), default=0)
    for part in as_list(doc.get("batch_parts")):
        lanes.append(_part_lane(as_dict(part), last))
    if not lanes:
        return ""
    legend = [(look, Pen(colour, fill=1.0)) for look, colour in SESSIONS.items() if look in looks]
    if doc.get("batch_parts"):
        legend += [(state.replace("_", " "), Pen(colour, fill=1.0))
                   for state, colour in STATE_COLOURS.items()]
    title = "Sessions and Batch API parts" if doc.get("batch_parts") else "Sessions"
    return figure(title, "each run or resume, and each part's batch by state",
                  lanes_chart(title, lanes, axis, WIDTH, legend))


def session_look(ended: str) -> str:
    """How a session's band looks, from how it ended: a killed one (or one that crashed, which
    is how a kill -9 reads afterwards) stands out from one that stopped on its own."""
    if "kill" in ended or "crash" in ended:
        return "killed"
    return "done" if ended == "done" else "stopped early"


def _part_lane(part: dict[str, Any], last: int) -> Lane:
    states = sorted((t, str(s.get("state", "?"))) for s in _states(part)
                    if (t := int_or_none(s.get("t"))) is not None)
    requests = int_or_none(part.get("requests"))
    bands = []
    nexts: list[tuple[int, str] | None] = [*states[1:], None]
    for (t, state), nxt in zip(states, nexts[:len(states)], strict=True):
        if state in TERMINAL:
            continue
        end = nxt[0] if nxt else last
        mark = f"{TERMINAL[nxt[1]]} {nxt[1]}" if nxt and nxt[1] in TERMINAL else ""
        text = state.replace("_", " ")
        if state == "in_progress" and requests is not None:
            text += f" · {fmt_num(requests)} requests"
        bands.append(Band(t, end, STATE_COLOURS.get(state, "#cccccc"), text, mark))
    return Lane(f"part {part.get('part', '?')}", bands)


def breakdowns(doc: dict[str, Any], job: dict[str, Any],
                spans: tuple[tuple[int, int], ...]) -> str:
    """Small multiples: per model (requests and tokens against its limits), per endpoint
    (requests and 429s)."""
    by = as_dict(doc.get("by"))
    limits = as_dict(job.get("limits"))
    axis = _axis(spans, HALF)
    b = bucket_for(axis, axis.width)
    shades = _not_running(doc)
    out = []
    models = as_dict(by.get("model"))
    if len(models) > 1:
        out.append("<section><h2>Per model</h2><div class=\"cols\">")
        for model, series in models.items():
            rows, lim = rows_of(series), as_dict(limits.get(model))
            for unit, field, key in (("requests", "sent", "rpm"), ("tokens", "tokens_charged",
                                                                    "tpm")):
                chart = Chart(f"{model}: {unit} per minute", f"{unit} / min",
                              [Line(f"{unit} sent" if unit == "requests" else "tokens charged",
                                    per_minute(rows, field, axis, b), BLUE)],
                              _limit(lim, key), shades, "" if rows else "nothing recorded",
                              height=200)
                out.append(figure(f"{model}", f"{unit} per minute",
                                   time_chart(chart, axis, HALF)))
        out.append("</div></section>")
    endpoints = as_dict(by.get("endpoint"))
    if endpoints:
        out.append("<section><h2>Per endpoint</h2><div class=\"cols\">")
        for name, series in endpoints.items():
            rows = rows_of(series)
            chart = Chart(f"{name}: requests and 429s per minute", "per min",
                          [Line("sent", per_minute(rows, "sent", axis, b), BLUE),
                           Line("answered", per_minute(rows, "ok", axis, b), ORANGE),
                           Line("429s", per_minute(rows, "rate_limited", axis, b),
                                Pen("#d55e00", fill=0.5))],
                          [], shades, "" if rows else "nothing recorded", height=200)
            out.append(figure(f"{name}", "requests and 429 answers per minute",
                               time_chart(chart, axis, HALF)))
        out.append("</div></section>")
    return "".join(out)

