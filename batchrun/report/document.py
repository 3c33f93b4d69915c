"""The report document (#26): a job's manifest and timeline as one dict, what `batchrun report
--json` prints and `report.html.render` draws. Its shape is REPORT-SCHEMA (docs/report.md);
beyond it every row has `waiting` (requests queued for admission) and the document has
`recorded` (False for a job from before timelines) and `note`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from batchrun.files.jobstore import Manifest
from batchrun.report.bill import job_bill
from batchrun.report.timeline import CHARGED, COUNTS, GAUGES, RL, SENT, Session, Timeline

VERSION = 1
# The limiter's admitted rate within this share of its limit, with work queued: the limit, not
# the tool or the network, held the job back. A 60 s window of whole seconds at 10 RPM is
# already 10 % off when one request falls outside it.
PACED_SHARE = 0.9
WINDOW_S = 60
BELOW = "sending below the limits"
PACED_RPM, PACED_TPM = "paced at the RPM limit", "paced at the TPM limit"
COOLDOWN = "in 429 cooldowns"
DAILY = "waiting for the daily reset"
BATCH = "waiting for the Batch API"
NOT_RUNNING = "not running"
# Later ones win where two overlap: a cooldown during pacing is a cooldown.
PRIORITY = (BELOW, PACED_RPM, PACED_TPM, BATCH, COOLDOWN, DAILY)
BATCH_WAITING = {"uploaded", "creating", "submitted", "validating", "in_progress", "finalizing",
                 "cancelling"}

Span = tuple[float, float, str]  # [start, end) and what the time went to


def build(manifest: Manifest, timeline: Timeline | None, state: str) -> dict[str, Any]:
    """The document of one job; `state` is its state as `status` shows it."""
    tl = timeline or Timeline()
    keys = sorted({(m, e) for _, m, e in (*tl.counts, *tl.gauges, *tl.budget)})
    models = sorted({m for m, _ in keys} | set(tl.limits) | _billed_models(manifest))
    endpoints = sorted({e for _, e in keys if e})
    bill = job_bill(manifest.billed)
    series = _series(tl, lambda m, e: True)
    sessions = [{"start": s.start, "end": s.end, "ended": s.ended} for s in tl.sessions]
    spent = time_spent(tl.sessions, _spans(tl), paced_moments(tl, keys), tl.minutes_from)
    shares = shares_of(spent)
    doc: dict[str, Any] = {
        "version": VERSION,
        "job": {"id": manifest.job_id, "input": manifest.input, "output": manifest.output,
                "state": state, "via": str(manifest.options.get("via") or "sync"),
                "models": models, "endpoints": endpoints,
                "limits": {m: dict(zip(("rpm", "tpm", "rpd", "tpd"), v, strict=True))
                           for m, v in sorted(tl.limits.items())},
                "prices_as_of": bill["prices_as_of"], "cost_usd": bill["cost_usd"]},
        "step": 1,
        "sessions": sessions,
        "series": series,
        "by": {"model": {m: _series(tl, _of_model(m)) for m in models}
               if len(models) > 1 else {},
               "endpoint": {x: _series(tl, _of_endpoint(x)) for x in endpoints}},
        "batch_parts": _parts(tl),
        "summary": _summary(manifest, series, tl.sessions),
        "time": shares,
        "sentence": sentence(shares),
        "recorded": timeline is not None,
    }
    if timeline is None:
        doc["note"] = (f"job {manifest.job_id} has no timeline (it ran before batchrun recorded "
                       "them): the report shows what its manifest knows.")
    return doc


def _billed_models(manifest: Manifest) -> set[str]:
    return {m for models in manifest.billed.values() for m in models}


# -- series ---------------------------------------------------------------------------------------


def _of_model(model: str) -> Callable[[str, str], bool]:
    return lambda m, e: m == model


def _of_endpoint(endpoint: str) -> Callable[[str, str], bool]:
    return lambda m, e: e == endpoint


def _series(tl: Timeline, chosen: Callable[[str, str], bool]) -> list[dict[str, Any]]:
    """The rows of the chosen (model, endpoint) keys added up: counts of each row, gauges as
    each key last stood (a key's gauge holds until it moves)."""
    at: dict[int, list[tuple[str, tuple[str, str], Any]]] = {}
    for (t, m, e), counts in tl.counts.items():
        if chosen(m, e):
            at.setdefault(t, []).append(("c", (m, e), counts))
    for (t, m, e), gauges in tl.gauges.items():
        if chosen(m, e):
            at.setdefault(t, []).append(("g", (m, e), gauges))
    for (t, m, e), budget in tl.budget.items():
        if chosen(m, e):
            at.setdefault(t, []).append(("b", (m, e), budget))
    gauges_now: dict[tuple[str, str], Any] = {}
    budget_now: dict[tuple[str, str], tuple[int, int]] = {}
    rows = []
    for t in sorted(at):
        counts = [0] * len(COUNTS)
        for what, key, values in at[t]:
            if what == "c":
                counts = [a + b for a, b in zip(counts, values, strict=True)]
            elif what == "g":
                gauges_now[key] = values
            else:
                budget_now[key] = values
        row: dict[str, Any] = {"t": t, "step": tl.step(t)}
        row |= dict(zip(COUNTS, counts, strict=True))
        for i, name in enumerate(GAUGES):
            total = sum(g[i] if i < len(g) else 0 for g in gauges_now.values())
            row[name] = int(total) if name in ("in_flight", "waiting") else float(round(total, 1))
        row["budget_tokens"] = sum(b[0] for b in budget_now.values())
        row["budget_requests"] = sum(b[1] for b in budget_now.values())
        rows.append(row)
    return rows


def _parts(tl: Timeline) -> list[dict[str, Any]]:
    parts: dict[int, dict[str, Any]] = {}
    for t, n, batch_id, state, requests in tl.parts:
        part = parts.setdefault(n, {"part": n, "batch_id": "", "requests": requests,
                                    "states": []})
        part["batch_id"] = batch_id or part["batch_id"]
        part["requests"] = requests
        if not part["states"] or part["states"][-1]["state"] != state:
            part["states"].append({"t": t, "state": state})
    return [parts[n] for n in sorted(parts)]


def _summary(manifest: Manifest, series: list[dict[str, Any]],
             sessions: list[Session]) -> dict[str, Any]:
    """The job's counts from its manifest (every run, timeline or not); 429s and tokens from
    the timeline."""
    def total(name: str) -> int:
        return sum(int(row[name]) for row in series)

    # The first start to the last end, in whatever order a clock set back (NTP) wrote them.
    wall = max(s.end for s in sessions) - min(s.start for s in sessions) if sessions else 0
    return {"requests": manifest.total, "ok": manifest.done - manifest.failed,
            "cached": total("cached"), "failed": manifest.failed,
            "rate_limited": total(COUNTS[RL]), "tokens": total("tokens"),
            "tokens_charged": total("tokens_charged"), "wall_seconds": float(wall),
            "busy_seconds": float(sum(s.end - s.start for s in sessions))}


# -- where the time went ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Moment:
    """From `t` on (until the next Moment) the job was paced at a limit (`what`), or not (None)."""

    t: int
    what: str | None


def paced_moments(tl: Timeline, keys: Iterable[tuple[str, str]]) -> list[Moment]:
    """When the job was paced at a limit: some (model, endpoint) admitted within PACED_SHARE of
    its limiter's rate over the last minute while requests of it waited."""
    starts = [s.start for s in tl.sessions]
    per_key = {key: _key_paced(tl, key, starts) for key in keys}
    changes = sorted({t for moments in per_key.values() for t, _ in moments})
    now: dict[tuple[str, str], str | None] = {}
    cursor = dict.fromkeys(per_key, 0)
    moments: list[Moment] = []
    for t in changes:
        for key, own in per_key.items():
            i = cursor[key]
            while i < len(own) and own[i][0] <= t:
                now[key] = own[i][1]
                i += 1
            cursor[key] = i
        states = set(now.values())
        what = PACED_TPM if PACED_TPM in states else PACED_RPM if PACED_RPM in states else None
        if not moments or moments[-1].what != what:
            moments.append(Moment(t, what))
    return moments


def _key_paced(tl: Timeline, key: tuple[str, str],
               starts: list[int]) -> list[tuple[int, str | None]]:
    m, e = key
    times = sorted({t for t, mm, ee in (*tl.counts, *tl.gauges) if (mm, ee) == key})
    gauges: list[Any] = []
    window: list[tuple[int, int, int]] = []  # (t, sent, charged) of the last minute
    out: list[tuple[int, str | None]] = []
    row_end: int | None = None
    for t in times:
        if row_end is not None and out and out[-1][1] is not None:
            # No row in between: nothing was admitted, so the last minute's rate falls.
            out.extend(_fading(window, gauges, row_end, t, starts))
        gauges = tl.gauges.get((t, m, e), gauges)
        counts = tl.counts.get((t, m, e))
        if counts is not None:
            window.append((t, counts[SENT], counts[CHARGED]))
        row_end = t + tl.step(t)
        window = _last_minute(window, t, row_end, starts)
        out.append((t, _verdict(window, row_end, t, starts, gauges)))
    if row_end is not None and out and out[-1][1] is not None:  # after the key's last row
        out.extend(_fading(window, gauges, row_end, row_end + WINDOW_S + 1, starts))
    return out


def _fading(window: list[tuple[int, int, int]], gauges: list[Any], start: int, stop: int,
            starts: list[int]) -> list[tuple[int, str | None]]:
    """The seconds from `start` to `stop` had no row: paced until the last minute's rate, its
    rows ageing out, falls below the limit (a stall of the server is not the limit's)."""
    for x in range(start, min(stop, start + WINDOW_S + 1)):
        if _verdict(_last_minute(window, x, x + 1, starts), x + 1, x, starts, gauges) is None:
            return [(x, None)]
    return []


def _since(t: int, starts: list[int]) -> int:
    """The start of the session second `t` is in."""
    return starts[max(0, bisect.bisect_right(starts, t) - 1)] if starts else t


def _span(t: int, end: int, starts: list[int]) -> int:
    return max(1, end - t, min(WINDOW_S, end - _since(t, starts)))


def _last_minute(window: list[tuple[int, int, int]], t: int, end: int,
                 starts: list[int]) -> list[tuple[int, int, int]]:
    span = _span(t, end, starts)
    return [w for w in window if w[0] >= end - span]


def _verdict(window: list[tuple[int, int, int]], end: int, t: int, starts: list[int],
             gauges: list[Any]) -> str | None:
    span = _span(t, end, starts)
    sent, charged = sum(w[1] for w in window), sum(w[2] for w in window)
    return pace_verdict(sent * 60 / span, charged * 60 / span, gauges)


def pace_verdict(rpm: float, tpm: float, gauges: list[Any]) -> str | None:
    """Paced at which limit, given the admitted per-minute rates and the key's gauges
    (in_flight, rate_rpm, rate_tpm, burst_tokens, waiting); None: not at a limit."""
    if len(gauges) < 5 or not gauges[4]:
        return None  # nothing waited: the limits held nothing back
    by_rpm = rpm / gauges[1] if gauges[1] else 0.0
    by_tpm = tpm / gauges[2] if gauges[2] else 0.0
    if max(by_rpm, by_tpm) < PACED_SHARE:
        return None
    return PACED_TPM if by_tpm >= by_rpm else PACED_RPM


def _spans(tl: Timeline) -> list[Span]:
    """Daily waits, cooldowns and Batch API waits, as the timeline marks them."""
    # A cooldown's own length: rounding it to whole seconds made a job meeting many "try again
    # in 0.3s" 429s read as mostly cooling down.
    spans: list[Span] = [(t, t + pause, COOLDOWN) for t, _, _, pause in tl.cooldowns
                         if pause > 0]
    ends = [s.end for s in tl.sessions]
    daily_from: int | None = None
    for t, state in tl.states:
        if state == "paused-daily" and daily_from is None:
            daily_from = t
        elif state != "paused-daily" and daily_from is not None:
            spans.append((daily_from, t, DAILY))
            daily_from = None
    if daily_from is not None:
        spans.append((daily_from, max([daily_from, *ends]), DAILY))
    spans.extend(_batch_spans(tl.parts, max(ends, default=0)))
    return spans


def _batch_spans(parts: list[tuple[int, int, str, str, int]], end: int) -> list[Span]:
    """While any part's batch is on the server, not finished."""
    state: dict[int, str] = {}
    spans: list[Span] = []
    since: int | None = None
    for t, n, _, s, _ in sorted(parts, key=lambda p: p[0]):
        state[n] = s
        waiting = any(v in BATCH_WAITING for v in state.values())
        if waiting and since is None:
            since = t
        elif not waiting and since is not None:
            spans.append((since, t, BATCH))
            since = None
    if since is not None:
        spans.append((since, max(since, end), BATCH))
    return spans


def time_spent(sessions: list[Session], spans: list[Span], paced: list[Moment],
               minutes_from: int) -> dict[str, float]:
    """Seconds of the job's wall-clock time by what held it (pure): inside each session the
    marked spans and pacing, by PRIORITY, else BELOW; between sessions NOT_RUNNING. Slots are
    seconds, and minutes after `minutes_from`, as the rows are; a mark covering part of a slot
    (a 0.3 s cooldown) takes that part, the rest goes to the next reason down."""
    spent: dict[str, float] = {}
    for i, session in enumerate(sessions):
        if i and session.start > sessions[i - 1].end:
            spent[NOT_RUNNING] = spent.get(NOT_RUNNING, 0.0) + session.start - sessions[i - 1].end
        slots = _slots(session.start, session.end, minutes_from)
        if not slots:
            continue
        covered = _covered(slots, [*spans, *_paced_spans(paced, session)])
        for j, (_, step) in enumerate(slots):
            left = float(step)
            for what in reversed(PRIORITY[1:]):
                part = min(left, covered.get(what, {}).get(j, 0.0))
                if part > 0:
                    spent[what] = spent.get(what, 0.0) + part
                    left -= part
            if left > 0:
                spent[BELOW] = spent.get(BELOW, 0.0) + left
    return spent


def _covered(slots: list[tuple[int, int]], marks: list[Span]) -> dict[str, dict[int, float]]:
    """Per reason, how much of each slot (by index) its marks cover, overlaps counted once."""
    times = [t for t, _ in slots]
    covered: dict[str, dict[int, float]] = {}
    for what in {m[2] for m in marks}:
        own = covered.setdefault(what, {})
        for a, b in _merged(sorted((a, b) for a, b, w in marks if w == what and b > a)):
            for j in range(max(0, bisect.bisect_right(times, a) - 1), len(slots)):
                t, step = slots[j]
                if t >= b:
                    break
                part = min(b, t + step) - max(a, t)
                if part > 0:
                    own[j] = own.get(j, 0.0) + part
    return covered


def _merged(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted intervals with the overlapping ones joined (two 429s' cooldowns at once)."""
    out: list[tuple[float, float]] = []
    for a, b in intervals:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _paced_spans(paced: list[Moment], session: Session) -> list[Span]:
    spans: list[Span] = []
    for i, moment in enumerate(paced):
        if moment.what is None:
            continue
        end = paced[i + 1].t if i + 1 < len(paced) else session.end
        start, end = max(moment.t, session.start), min(end, session.end)
        if start < end:
            spans.append((start, end, moment.what))
    return spans


def _slots(start: int, end: int, minutes_from: int) -> list[tuple[int, int]]:
    """(t, length) of each second, then minute, of [start, end)."""
    slots = [(t, 1) for t in range(start, min(end, minutes_from))]
    t = max(start, minutes_from)
    while t < end:
        step = min(60 - (t - minutes_from) % 60, end - t)
        slots.append((t, step))
        t += step
    return slots


def shares_of(spent: dict[str, float]) -> list[dict[str, Any]]:
    """The non-zero ones, biggest first, with their share of the whole."""
    total = sum(spent.values())
    if total <= 0:
        return []
    return [{"what": what, "seconds": round(seconds, 1), "share": round(seconds / total, 2)}
            for what, seconds in sorted(spent.items(), key=lambda kv: -kv[1]) if seconds > 0]


def sentence(shares: list[dict[str, Any]]) -> str:
    """'71 % paced at the TPM limit, 24 % waiting for the daily reset, 5 % in 429 cooldowns.'"""
    if not shares:
        return "No time was recorded for this job."
    parts = [f"{_percent(s['share'])} {s['what']}" for s in shares]
    return ", ".join(parts) + "."


def _percent(share: float) -> str:
    return "<1 %" if round(share * 100) < 1 else f"{round(share * 100)} %"
