"""Report documents built by hand to the schema (/work/wt/REPORT-SCHEMA.md, issue 26), for the
HTML renderer's tests: a short job, and a long one (a million requests over three days, per
second for its first 6 hours, per minute after, nights waiting for 00:00 UTC)."""

from __future__ import annotations

import copy
from typing import Any

START = 1_765_000_800  # 2025-12-06 06:00:00 UTC

SENTENCE = ("71 % paced at the TPM limit, 24 % waiting for the daily reset, "
            "5 % in 429 cooldowns.")


def row(t: int, step: int = 1, **counts: float) -> dict[str, Any]:
    base: dict[str, Any] = {"t": t, "step": step, "sent": 0, "ok": 0, "cached": 0, "failed": 0,
                            "rate_limited": 0, "rate_limited_minute": 0, "rate_limited_day": 0,
                            "too_large": 0, "tokens": 0, "tokens_charged": 0, "in_flight": 0,
                            "rate_rpm": 500.0, "rate_tpm": 200000.0, "burst_tokens": 3333.0,
                            "budget_tokens": 0, "budget_requests": 0}
    base.update(counts)
    return base


def short_job() -> dict[str, Any]:
    """Five minutes at 500 RPM with a burst of 429s in its second minute."""
    series = []
    for i in range(300):
        limited = 3 if 60 <= i < 70 else 0
        series.append(row(START + i, sent=8 + limited, ok=8, rate_limited=limited,
                          rate_limited_minute=limited, tokens=1520, tokens_charged=1800,
                          in_flight=12, budget_requests=8 * (i + 1)))
    return {
        "version": 1,
        "job": {"id": "j-20251206-abc", "input": "/data/jobs.jsonl",
                "output": "/data/jobs.results.jsonl", "state": "done", "via": "sync",
                "models": ["gpt-4o-mini"], "endpoints": [],
                "limits": {"gpt-4o-mini": {"rpm": 500, "tpm": 200000, "rpd": 10000, "tpd": 0}},
                "prices_as_of": "2026-11-01", "cost_usd": 0.0123},
        "step": 1,
        "sessions": [{"start": START, "end": START + 300, "ended": "done"}],
        "series": series,
        "by": {"model": {}, "endpoint": {}},
        "batch_parts": [],
        "summary": {"requests": 2400, "ok": 2400, "cached": 0, "failed": 0, "rate_limited": 30,
                    "tokens": 456000, "tokens_charged": 540000, "wall_seconds": 300.0,
                    "busy_seconds": 300.0},
        "time": [{"what": "paced at the TPM limit", "seconds": 213.0, "share": 0.71},
                 {"what": "waiting for the daily reset", "seconds": 72.0, "share": 0.24},
                 {"what": "in 429 cooldowns", "seconds": 15.0, "share": 0.05}],
        "sentence": SENTENCE,
    }


def with_job(doc: dict[str, Any], **job: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    out["job"].update(job)
    return out


def long_job(requests: int = 1_000_000, days: int = 3) -> dict[str, Any]:
    """A job that sends 600 requests a minute from 06:00 UTC until the day's 340,000 requests
    run out around 15:30, waits for 00:00 UTC, and goes on for `days` days; killed on its
    first afternoon and resumed. Two models, two endpoints, two Batch API parts."""
    series: list[dict[str, Any]] = []
    by_model: dict[str, list[dict[str, Any]]] = {"gpt-4o-mini": [], "gpt-4o": []}
    by_endpoint: dict[str, list[dict[str, Any]]] = {"east": [], "west": []}
    sent = 0
    per_day = 340_000
    busy = 0
    for day in range(days):
        day_start = START - 6 * 3600 + day * 86400
        t = START if day == 0 else day_start
        used = 0
        while used < per_day and sent < requests:
            first_hours = t - START < 6 * 3600
            step = 1 if first_hours else 60
            n = 10 if first_hours else 600
            limited = 1 if (t // step) % 7 == 0 else 0
            r = row(t, step, sent=n + limited, ok=n, rate_limited=limited,
                    rate_limited_minute=limited, tokens=n * 190, tokens_charged=n * 225,
                    in_flight=40 + (t // step) % 9, budget_requests=used + n,
                    budget_tokens=(used + n) * 225)
            series.append(r)
            half = {k: (v // 2 if isinstance(v, int) and k not in ("t", "step") else v)
                    for k, v in r.items()}
            for group in (by_model, by_endpoint):
                for rows in group.values():
                    rows.append(half)
            used += n
            sent += n
            busy += step
            t += step
    last = series[-1]["t"] + 60
    sessions = [{"start": START, "end": START + 9 * 3600, "ended": "killed"},
                {"start": START + 9 * 3600 + 1200, "end": last, "ended": "done"}]
    parts = [{"part": i, "batch_id": f"batch_{i:04d}", "requests": 50_000,
              "states": [{"t": START + 3600 * (2 + 5 * i), "state": "validating"},
                         {"t": START + 3600 * (2 + 5 * i) + 300, "state": "in_progress"},
                         {"t": START + 3600 * (6 + 5 * i), "state": "finalizing"},
                         {"t": START + 3600 * (6 + 5 * i) + 600, "state": "completed"}]}
             for i in (1, 2)]
    doc = short_job()
    doc.update(series=series, sessions=sessions, batch_parts=parts, step=60,
               by={"model": by_model, "endpoint": by_endpoint})
    doc["job"].update(models=list(by_model), endpoints=list(by_endpoint),
                      limits={"gpt-4o-mini": {"rpm": 1000, "tpm": 200000, "rpd": 340000,
                                              "tpd": 0},
                              "gpt-4o": {"rpm": 500, "tpm": 100000, "rpd": 0, "tpd": 0}})
    doc["summary"].update(requests=sent, ok=sent, wall_seconds=float(last - START),
                          busy_seconds=float(busy))
    return doc


def showcase() -> dict[str, Any]:
    """A day and a night: 150,000 requests at 480 a minute against a
    limit of 200,000 tokens a minute and 100,000 requests a day, on two endpoints; killed at
    08:10, resumed at 08:40, out of its day at 09:58, done at 01:44 the next day."""
    per_day, total = 100_000, 150_000
    kill, resume = START + 130 * 60, START + 160 * 60
    series: list[dict[str, Any]] = []
    east: list[dict[str, Any]] = []
    west: list[dict[str, Any]] = []
    sent = used = limited_all = 0
    t = START
    while sent < total:
        if kill <= t < resume:
            t = resume
        if used >= per_day:  # the day's requests are spent: the next come at 00:00 UTC
            series.append(row(t, sent=3, rate_limited=3, rate_limited_day=3,
                              budget_requests=used, budget_tokens=used * 400))
            t, used = t - t % 86400 + 86400, 0
        step = 1 if t - START < 6 * 3600 else 60
        n = 8 * step
        burst = t in (START, resume)
        limited = (4 if (t - START) % 300 < 3 and step == 1 else 0) + (6 if burst else 0)
        cool = (t - START) % 300 < 30 and step == 1
        r = row(t, step, sent=n + limited, ok=n - (1 if t % 997 == 0 else 0),
                failed=1 if t % 997 == 0 else 0, rate_limited=limited,
                rate_limited_minute=limited, tokens=n * 340, tokens_charged=n * 400,
                in_flight=20 + (t // 600) % 7, rate_rpm=500.0, rate_tpm=170000.0 if cool
                else 200000.0, budget_requests=used + n, budget_tokens=(used + n) * 400)
        series.append(r)
        share = {k: (round(v * 0.6) if isinstance(v, int) and k not in ("t", "step") else v)
                 for k, v in r.items()}
        east.append({**share, "rate_limited": limited})
        west.append({k: (r[k] - share[k] if isinstance(v, int) and k not in ("t", "step")
                         else v) for k, v in share.items()} | {"rate_limited": 0})
        sent, used, limited_all = sent + n, used + n, limited_all + limited
        t += step
    end = series[-1]["t"] + 60
    wall = end - START
    waits = {"paced at the TPM limit": 0.0, "waiting for the daily reset": 0.0,
             "not running": float(resume - kill), "in 429 cooldowns": 0.0,
             "sending below the limits": 0.0}
    night = series[-1]["t"] - series[-1]["t"] % 86400
    reset_wait = night - next(r["t"] for r in series if r["rate_limited_day"])
    waits["waiting for the daily reset"] = float(reset_wait)
    waits["in 429 cooldowns"] = float(30 * (6 * 3600 // 300) * 0.4)
    waits["sending below the limits"] = 420.0
    waits["paced at the TPM limit"] = wall - sum(waits.values())
    parts = sorted(waits.items(), key=lambda kv: -kv[1])
    time = [{"what": w, "seconds": s, "share": round(s / wall, 2)} for w, s in parts]
    sentence = ", ".join(f"{round(s / wall * 100)} % {w}" for w, s in parts
                         if round(s / wall * 100)) + "."
    ok = sum(r["ok"] for r in series)
    failed = sum(r["failed"] for r in series)
    doc = short_job()
    doc["job"].update(id="j-20251206-7f3a", input="/data/prompts.jsonl",
                      output="/data/prompts.results.jsonl", endpoints=["east", "west"],
                      limits={"gpt-4o-mini": {"rpm": 500, "tpm": 200000, "rpd": per_day,
                                              "tpd": 0}}, cost_usd=11.42)
    doc.update(series=series, step=60, by={"model": {}, "endpoint": {"east": east,
                                                                      "west": west}},
               sessions=[{"start": START, "end": kill, "ended": "killed"},
                         {"start": resume, "end": end, "ended": "done"}],
               time=time, sentence=sentence[0].upper() + sentence[1:])
    doc["summary"] = {"requests": ok + failed, "ok": ok, "cached": 0, "failed": failed,
                      "rate_limited": limited_all, "tokens": ok * 340,
                      "tokens_charged": sent * 400, "wall_seconds": float(wall),
                      "busy_seconds": float(wall - reset_wait - (resume - kill))}
    return doc
