"""The report as one self-contained HTML file (#26): what `batchrun report -o` writes.

One page, inline CSS and inline SVG, no script and nothing it loads (no font, image or link),
so it opens offline, prints, and can be mailed. It draws the document of
`batchrun.report.document` (REPORT-SCHEMA): the sentence of where the time went as the headline,
a summary, then the charts (svg_views) on one time axis (svg_axis: long idle stretches drawn as
labelled breaks). A field the document lacks is drawn as empty, never an error; every string
from it is escaped (paths and names may hold <, & and quotes).
"""

from __future__ import annotations

from typing import Any

from batchrun.report.svg import esc, fmt_num, share_bar
from batchrun.report.svg_axis import active_spans, fmt_duration, fmt_utc
from batchrun.report.svg_series import Row, as_dict, as_list, num, rows_of
from batchrun.report.svg_views import WIDTH, activity, breakdowns, over_time

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
    job = as_dict(doc.get("job"))
    rows = rows_of(doc.get("series"))
    spans = active_spans(activity(doc, rows))
    body = [_header(job, spans), _headline(doc), _tables(doc, job, rows),
            over_time(doc, spans, rows), breakdowns(doc, job, spans)]
    title = esc(f"batchrun report: {_name(job)}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(part for part in body if part)
            + "\n<footer>Made by batchrun report. Times in UTC. Long stretches where nothing "
              "happened are drawn narrow and labelled with their length.</footer>"
              "\n</body></html>\n")


def _name(job: dict[str, Any]) -> str:
    output = str(job.get("output") or job.get("id") or "job")
    return output.rsplit("/", 1)[-1] or output


def _header(job: dict[str, Any], spans: tuple[tuple[int, int], ...]) -> str:
    facts = [f"job {job.get('id', '?')}", str(job.get("state", "")),
             f"via {job['via']}" if job.get("via") else ""]
    if spans != ((0, 1),):
        facts.append(f"{fmt_utc(spans[0][0])} to {fmt_utc(spans[-1][1])}")
    return (f"<header><h1>batchrun report: {esc(_name(job))}</h1>"
            f"<p class=\"meta\">{esc(' · '.join(f for f in facts if f))}</p></header>")


def _headline(doc: dict[str, Any]) -> str:
    sentence = str(doc.get("sentence") or "No time was recorded for this job.")
    parts = [as_dict(p) for p in as_list(doc.get("time"))]
    shares = [(str(p.get("what", "?")), num(p, "share"), num(p, "seconds")) for p in parts
              if num(p, "share") > 0]
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
    s = as_dict(doc.get("summary"))
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
             ("Models", ", ".join(map(str, as_list(job.get("models"))))),
             ("Endpoints", ", ".join(map(str, as_list(job.get("endpoints"))))),
             ("Sessions", _sessions_fact(as_list(doc.get("sessions")))),
             ("Batch API parts", len(as_list(doc.get("batch_parts"))) or None)]
    facts += [(f"Limits of {model}", _limits_text(as_dict(lim)))
              for model, lim in as_dict(job.get("limits")).items()]
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
    ended = [str(as_dict(s).get("ended", "?")) for s in sessions]
    return f"{len(ended)}: " + ", ".join(ended) if ended else ""


def _limits_text(lim: dict[str, Any]) -> str:
    parts = [f"{fmt_num(num(lim, k))} {k.upper()}" for k in ("rpm", "tpm", "rpd", "tpd")
             if num(lim, k) > 0]
    return ", ".join(parts) or "none set"


