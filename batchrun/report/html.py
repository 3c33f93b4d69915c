"""The report as one self-contained HTML file (#26): what `batchrun report -o` writes.

One page, inline CSS and inline SVG, no script and nothing it loads (no font, image or link),
so it opens offline, prints, and can be mailed. It draws the document of
`batchrun.report.document` (REPORT-SCHEMA): the sentence of where the time went as the headline,
a summary, then every chart on one time axis (svg_axis: long idle stretches drawn as labelled
breaks). A field the document lacks is drawn as empty, never an error; every string from it is
escaped (paths and names may hold <, & and quotes).
"""

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
    share_bar,
    time_chart,
)
from batchrun.report.svg_axis import TimeAxis, active_spans, fmt_duration, fmt_utc
from batchrun.report.svg_series import Row, added, bucket_for, gauge, num, peak_of, per_minute

WIDTH, HALF = 1100.0, 540.0
PAD_R = 24.0
NOT_RUNNING = "#e9e9e9"
TIME_COLOURS = {
    "paced at the RPM limit": "#1f4e9c",
    "paced at the TPM limit": "#6a3d9a",
    "in 429 cooldowns": "#d55e00",
    "waiting for the daily reset": "#56b4e9",
    "waiting for the Batch API": "#009e73",
    "sending below the limits": "#e69f00",
    "not running": "#bdbdbd",
}
OTHER_COLOURS = ("#8c564b", "#7f7f7f", "#bcbd22", "#17becf")
STATE_COLOURS = {"validating": "#d9d9d9", "in_progress": "#56b4e9", "finalizing": "#009e73",
                 "cancelling": "#e69f00"}
TERMINAL = {"completed": "✓", "failed": "✕", "expired": "✕", "cancelled": "✕"}
SESSION_COLOURS = {"done": "#cfe3f6", "killed": "#f4c7c3"}
KINDS = (("429 of another kind", Pen("#7f7f7f", fill=0.55)),
         ("too large for the limit", Pen("#332288", fill=0.85)),
         ("daily limit", Pen("#56b4e9", fill=0.85)),
         ("per-minute limit", Pen("#d55e00", fill=0.85)))

CSS = """
@page { size: landscape; margin: 10mm; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       color: #222; background: #fff; max-width: 1160px; margin: 0 auto; padding: 20px 28px; }
h1 { font-size: 22px; margin: 0 0 2px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 26px 0 6px; break-after: avoid; page-break-after: avoid; }
.meta { color: #555; margin: 0 0 12px; overflow-wrap: anywhere; }
.headline { font-size: 24px; font-weight: 650; margin: 6px 0 10px; line-height: 1.3; }
svg.chart, svg.share { display: block; width: 100%; height: auto; }
figure { margin: 0 0 18px; break-inside: avoid; page-break-inside: avoid; }
figcaption { font-weight: 600; margin-bottom: 2px; }
figcaption span { font-weight: 400; color: #555; }
.cols { display: grid; grid-template-columns: 1fr 1fr; gap: 8px 28px; }
ul.shares { list-style: none; padding: 0; margin: 8px 0 0; display: flex; flex-wrap: wrap;
            gap: 2px 26px; }
.sw { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px;
      border: 1px solid #555; }
table { border-collapse: collapse; width: 100%; }
th { white-space: nowrap; font-weight: 600; }
th, td { text-align: left; padding: 3px 10px 3px 0; border-bottom: 1px solid #e4e4e4;
         vertical-align: top; overflow-wrap: anywhere; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #555; }
footer { color: #777; font-size: 12px; margin-top: 24px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  .headline { font-size: 19px; }
  h2 { margin-top: 14px; }
}
"""


def render(doc: dict[str, Any]) -> str:
    job = _dict(doc.get("job"))
    rows = _rows(doc.get("series"))
    spans = active_spans(_activity(doc, rows))
    body = [_header(job, spans), _headline(doc), _tables(doc, job, rows),
            _timeline(doc, spans, rows), _breakdowns(doc, job, spans)]
    title = esc(f"batchrun report: {_name(job)}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(part for part in body if part)
            + "\n<footer>Made by batchrun report. Times in UTC. Long stretches where nothing "
              "happened are drawn narrow and labelled with their length.</footer>"
              "\n</body></html>\n")


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _rows(value: object) -> list[Row]:
    return [r for r in _list(value) if isinstance(r, dict) and isinstance(r.get("t"), int)]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _name(job: dict[str, Any]) -> str:
    output = str(job.get("output") or job.get("id") or "job")
    return output.rsplit("/", 1)[-1] or output


def _activity(doc: dict[str, Any], rows: list[Row]) -> list[tuple[int, int]]:
    """Where something happened: rows (the breakdowns' too), Batch API parts from their first
    state to their last, and the moments sessions began and ended."""
    out = [(int(r["t"]), int(r["t"]) + max(1, int(num(r, "step") or 1))) for r in rows]
    for group in _dict(doc.get("by")).values():
        for series in _dict(group).values():
            out += [(int(r["t"]), int(r["t"]) + 1) for r in _rows(series)]
    for part in _list(doc.get("batch_parts")):
        times = [t for t in (_int(s.get("t")) for s in _states(part)) if t is not None]
        if times:
            out.append((min(times), max(times) + 1))
    for session in _list(doc.get("sessions")):
        for key in ("start", "end"):
            t = _int(_dict(session).get(key))
            if t is not None:
                out.append((t, t + 1))
    return out


def _states(part: object) -> list[dict[str, Any]]:
    return [s for s in _list(_dict(part).get("states")) if isinstance(s, dict)]


def _axis(spans: tuple[tuple[int, int], ...], width: float) -> TimeAxis:
    return TimeAxis(spans, PAD_L, width - PAD_L - PAD_R)


def _header(job: dict[str, Any], spans: tuple[tuple[int, int], ...]) -> str:
    facts = [f"job {job.get('id', '?')}", str(job.get("state", "")),
             f"via {job['via']}" if job.get("via") else ""]
    if spans != ((0, 1),):
        facts.append(f"{fmt_utc(spans[0][0])} to {fmt_utc(spans[-1][1])}")
    return (f"<header><h1>batchrun report: {esc(_name(job))}</h1>"
            f"<p class=\"meta\">{esc(' · '.join(f for f in facts if f))}</p></header>")


def _headline(doc: dict[str, Any]) -> str:
    sentence = str(doc.get("sentence") or "No time was recorded for this job.")
    shares = [(str(_dict(p).get("what", "?")), num(_dict(p), "share"), num(_dict(p), "seconds"))
              for p in _list(doc.get("time"))]
    shares = [s for s in shares if s[1] > 0]
    colours = _time_colours([what for what, _, _ in shares])
    out = ["<section><h2>Where the time went</h2>",
           f"<p class=\"headline\">{esc(sentence)}</p>"]
    if shares:
        out.append(share_bar([(w, s, colours[w]) for w, s, _ in shares], WIDTH))
        out.append("<ul class=\"shares\">" + "".join(
            f"<li><span class=\"sw\" style=\"background:{colours[w]}\"></span>"
            f"{esc(w)}: {share * 100:.0f} % ({esc(fmt_duration(sec))})</li>"
            for w, share, sec in shares) + "</ul>")
    out.append("</section>")
    return "".join(out)


def _time_colours(names: list[str]) -> dict[str, str]:
    spare = iter(OTHER_COLOURS * (len(names) // len(OTHER_COLOURS) + 1))
    return {n: TIME_COLOURS.get(n) or next(spare) for n in names}


def _tables(doc: dict[str, Any], job: dict[str, Any], rows: list[Row]) -> str:
    s = _dict(doc.get("summary"))
    kinds = {k: sum(num(r, f) for r in rows) for k, f in
             (("minute", "rate_limited_minute"), ("day", "rate_limited_day"),
              ("large", "too_large"))}
    limited = _count(s, "rate_limited")
    if any(kinds.values()):
        limited += (f" (per-minute limit {fmt_num(kinds['minute'])}, daily limit "
                    f"{fmt_num(kinds['day'])}, too large {fmt_num(kinds['large'])})")
    busy = num(s, "busy_seconds")
    summary = [
        ("Requests", _count(s, "requests")),
        ("Answered by the server", _count(s, "ok")),
        ("Answered from the cache", _count(s, "cached")),
        ("Failed", _count(s, "failed")),
        ("429 answers", limited),
        ("Tokens billed", _count(s, "tokens")),
        ("Tokens charged against the limits", _count(s, "tokens_charged")),
        ("Wall-clock time", fmt_duration(num(s, "wall_seconds")) if "wall_seconds" in s else "–"),
        ("Busy time", fmt_duration(busy) if "busy_seconds" in s else "–"),
        ("Requests per busy minute",
         fmt_num(num(s, "requests") * 60 / busy) if busy and "requests" in s else "–"),
    ]
    if isinstance(job.get("cost_usd"), int | float):
        cost = float(job["cost_usd"])
        dollars = f"${cost:,.4f}" if cost < 1 else f"${cost:,.2f}"
        asof = f" at list prices of {job['prices_as_of']}" if job.get("prices_as_of") else ""
        summary.append(("Cost", dollars + asof))
    facts = [("Input", job.get("input")), ("Output", job.get("output")),
             ("Models", ", ".join(map(str, _list(job.get("models"))))),
             ("Endpoints", ", ".join(map(str, _list(job.get("endpoints"))))),
             ("Sessions", _sessions_fact(_list(doc.get("sessions")))),
             ("Batch API parts", len(_list(doc.get("batch_parts"))) or None)]
    facts += [(f"Limits of {model}", _limits_text(_dict(lim)))
              for model, lim in _dict(job.get("limits")).items()]
    return ("<section class=\"cols\"><div><h2>Summary</h2><table class=\"summary\">"
            + "".join(f"<tr><th>{esc(k)}</th><td class=\"n\">{esc(v)}</td></tr>"
                      for k, v in summary)
            + "</table></div><div><h2>Job</h2><table class=\"job\">"
            + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                      for k, v in facts if v not in (None, ""))
            + "</table></div></section>")


def _count(summary: dict[str, Any], key: str) -> str:
    return fmt_num(num(summary, key)) if key in summary else "–"


def _sessions_fact(sessions: list[Any]) -> str:
    ended = [str(_dict(s).get("ended", "?")) for s in sessions]
    return f"{len(ended)}: " + ", ".join(ended) if ended else ""


def _limits_text(lim: dict[str, Any]) -> str:
    parts = [f"{fmt_num(num(lim, k))} {k.upper()}" for k in ("rpm", "tpm", "rpd", "tpd")
             if num(lim, k) > 0]
    return ", ".join(parts) or "none set"


def _single_limits(job: dict[str, Any]) -> dict[str, Any]:
    """The limits the whole job's charts are read against: those of its one model (several
    models have one each, drawn in their own charts)."""
    limits = _dict(job.get("limits"))
    return _dict(next(iter(limits.values()))) if len(limits) == 1 else {}


def _limit(lim: dict[str, Any], key: str) -> list[Limit]:
    value = num(lim, key)
    return [Limit(value, f"limit {fmt_num(value)} {key.upper()}")] if value > 0 else []


def _not_running(doc: dict[str, Any]) -> list[Band]:
    sessions = sorted((_int(_dict(s).get("start")), _int(_dict(s).get("end")))
                      for s in _list(doc.get("sessions"))
                      if _int(_dict(s).get("start")) is not None)
    return [Band(end, nxt, NOT_RUNNING) for (_, end), (nxt, _) in itertools.pairwise(sessions)
            if end is not None and nxt is not None and nxt > end]


def _timeline(doc: dict[str, Any], spans: tuple[tuple[int, int], ...], rows: list[Row]) -> str:
    job = _dict(doc.get("job"))
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
                Line("limiter's rate", gauge(rows, "rate_rpm", axis, b), GREEN)],
               _limit(lim, "rpm"), shades, empty)),
        ("Tokens per minute", "charged as the limiter counts them, billed as the server reports",
         Chart("Tokens per minute", "tokens / min",
               [Line("charged", per_minute(rows, "tokens_charged", axis, b), BLUE),
                Line("billed (usage)", per_minute(rows, "tokens", axis, b), ORANGE),
                Line("limiter's rate", gauge(rows, "rate_tpm", axis, b), GREEN)],
               _limit(lim, "tpm"), shades, empty)),
        ("429 answers per minute", "by kind, stacked", _rate_limited(rows, axis, b, shades)),
        ("Requests in flight", "the most at once in each step",
         Chart("Requests in flight", "in flight",
               [Line("in flight", gauge(rows, "in_flight", axis, b, peak=True),
                     Pen(BLUE.colour, fill=0.3))], [], shades, empty, height=180)),
    ]
    for title, sub, chart in charts:
        out.append(_figure(title, sub, time_chart(chart, axis, WIDTH)))
    out.append(_budget(rows, lim, spans, shades))
    out.append("</section>")
    return "".join(out)


def _figure(title: str, sub: str, svg: str) -> str:
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
        figures.append(_figure(f"Daily budget: {unit}", "used today (UTC day)",
                               time_chart(chart, axis, HALF)))
    if not figures:
        return "<p class=\"note\">No daily limit applied to this job.</p>"
    return "<div class=\"cols\">" + "".join(figures) + "</div>"


def _lanes(doc: dict[str, Any], axis: TimeAxis) -> str:
    lanes: list[Lane] = []
    sessions = [_dict(s) for s in _list(doc.get("sessions"))]
    bands = []
    for i, session in enumerate(sessions, 1):
        start, end = _int(session.get("start")), _int(session.get("end"))
        if start is None:
            continue
        ended = str(session.get("ended", ""))
        killed = "kill" in ended or "crash" in ended
        colour = SESSION_COLOURS["killed" if killed else "done"] if killed or ended == "done" \
            else "#fde6b0"
        bands.append(Band(start, end if end is not None else start, colour, f"{i} · {ended}",
                          "✕ killed" if killed else ""))
    if bands:
        lanes.append(Lane("sessions", bands))
    last = max((e for s, e in axis.spans), default=0)
    for part in _list(doc.get("batch_parts")):
        lanes.append(_part_lane(_dict(part), last))
    if not lanes:
        return ""
    legend = [("running", Pen(SESSION_COLOURS["done"], fill=1.0)),
              ("killed", Pen(SESSION_COLOURS["killed"], fill=1.0))]
    if doc.get("batch_parts"):
        legend += [(state.replace("_", " "), Pen(colour, fill=1.0))
                   for state, colour in STATE_COLOURS.items()]
    title = "Sessions and Batch API parts" if doc.get("batch_parts") else "Sessions"
    return _figure(title, "each run or resume, and each part's batch by state",
                   lanes_chart(title, lanes, axis, WIDTH, legend))


def _part_lane(part: dict[str, Any], last: int) -> Lane:
    states = sorted((t, str(s.get("state", "?"))) for s in _states(part)
                    if (t := _int(s.get("t"))) is not None)
    requests = _int(part.get("requests"))
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


def _breakdowns(doc: dict[str, Any], job: dict[str, Any],
                spans: tuple[tuple[int, int], ...]) -> str:
    """Small multiples: per model (requests and tokens against its limits), per endpoint
    (requests and 429s)."""
    by = _dict(doc.get("by"))
    limits = _dict(job.get("limits"))
    axis = _axis(spans, HALF)
    b = bucket_for(axis, axis.width)
    shades = _not_running(doc)
    out = []
    models = _dict(by.get("model"))
    if len(models) > 1:
        out.append("<section><h2>Per model</h2><div class=\"cols\">")
        for model, series in models.items():
            rows, lim = _rows(series), _dict(limits.get(model))
            for unit, field, key in (("requests", "sent", "rpm"), ("tokens", "tokens_charged",
                                                                    "tpm")):
                chart = Chart(f"{model}: {unit} per minute", f"{unit} / min",
                              [Line(f"{unit} sent" if unit == "requests" else "tokens charged",
                                    per_minute(rows, field, axis, b), BLUE)],
                              _limit(lim, key), shades, "" if rows else "nothing recorded",
                              height=200)
                out.append(_figure(f"{model}", f"{unit} per minute",
                                   time_chart(chart, axis, HALF)))
        out.append("</div></section>")
    endpoints = _dict(by.get("endpoint"))
    if endpoints:
        out.append("<section><h2>Per endpoint</h2><div class=\"cols\">")
        for name, series in endpoints.items():
            rows = _rows(series)
            chart = Chart(f"{name}: requests and 429s per minute", "per min",
                          [Line("sent", per_minute(rows, "sent", axis, b), BLUE),
                           Line("answered", per_minute(rows, "ok", axis, b), ORANGE),
                           Line("429s", per_minute(rows, "rate_limited", axis, b),
                                Pen("#d55e00", fill=0.5))],
                          [], shades, "" if rows else "nothing recorded", height=200)
            out.append(_figure(f"{name}", "requests and 429 answers per minute",
                               time_chart(chart, axis, HALF)))
        out.append("</div></section>")
    return "".join(out)

