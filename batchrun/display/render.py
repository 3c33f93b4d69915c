"""Tables for the commands that print a report: status and estimate (CLI side, rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from batchrun.display.progress import describe_limits
from batchrun.messages import count as _count
from batchrun.policy.prices import PRICES_AS_OF
from batchrun.policy.tiers import Limits


def _minutes(m: float) -> str:
    if m < 1:
        return f"{m * 60:.0f} s"
    if m < 120:
        return f"{m:,.1f} min"
    return f"{m / 60:,.1f} h"


def _time_row(m: dict[str, Any], parts: list[str]) -> str:
    """The time to finish by each limit and the one that binds; with none binding, no pace."""
    if not m["binding"]:
        unknown = (f" (no preset limits for {m['model']}: give --rpm/--tpm/--tpd to plan with "
                   "the server's limits)") if not m["known_model"] else ""
        return "no limit binds: as fast as the server answers" + unknown
    return (" · ".join(parts) + f" → {_minutes(m['minutes_to_finish'])}, "
            f"{_binds(m['binding'])} (at the steady rate; a full bucket at the start can save "
            "up to a minute)")


def render_estimate(console: Console, e: dict[str, Any]) -> None:
    console.print(f"{e['input']}: {_count(e['requests'], 'request')}, "
                  f"{_count(len(e['models']), 'model')} · {e['tier']} · list prices of "
                  f"{e['prices_as_of']}", markup=False)
    if e["bad_lines"]:
        console.print(f"{e['bad_lines']:,} bad lines skipped (they would be recorded as failed).")
    for m in e["models"]:
        table = Table(box=None, show_header=False, pad_edge=False, title=m["model"],
                      title_justify="left", title_style="bold")
        table.add_column(style="dim", no_wrap=True)
        table.add_column()
        table.add_row("requests", f"{m['requests']:,}")
        table.add_row("prompt tokens", f"{m['prompt_tokens']:,} (exact)")
        if m["predicted_cached_input_tokens"]:
            table.add_row("", f"predicted cached input {m['predicted_cached_input_tokens']:,} "
                          f"of {m['prompt_tokens']:,} (prefixes of 1,024+ tokens shared with "
                          "an earlier request, at the cached price; the server decides)")
        out = f"{m['max_output_tokens']:,} at most (max_tokens)"
        if m["requests_without_max"]:
            out = (f"{m['output_tokens']:,}: {m['max_output_tokens']:,} at most from max_tokens"
                   f" + {m['requests_without_max']:,} requests with no max, assumed "
                   f"{m['assumed_output_tokens_per_request']:,} each "
                   "(--assume-output-tokens)")
        table.add_row("output tokens", out)
        c = m["cost_usd"]
        if c is None:
            table.add_row("cost", f"unknown: no list price for {m['model']}")
        else:
            table.add_row("cost", f"${c['input']:,.4f} input + ${c['output']:,.4f} output = "
                          f"${c['total']:,.4f} · via the Batch API ${c['batch_api_total']:,.4f}")
        table.add_row("limits", describe_limits(Limits(**m["limits"])))
        mins = m["minutes"]
        parts = [f"{_minutes(v)} by {_limit_name(k.removeprefix('by_'))}"
                 for k, v in mins.items() if v is not None]
        table.add_row("time", _time_row(m, parts))
        table.add_row("counted as", _accounting(m["accounting"]))
        for ep in m.get("endpoints", []):
            rate = ep["requests_per_min"]
            pace = "unlimited" if rate is None else f"{rate:,.0f} req/min"
            role = (f"{ep['share']:.0%} of requests" if ep["share"] else
                    "spare (priority 2)" if ep["priority"] == 2 else "no share")
            binds = f", {ep['binding'].upper()} binds" if ep["binding"] else ""
            table.add_row(f"  {ep['name']}", f"{describe_limits(Limits(**ep['limits']))} → "
                          f"{pace}{binds} · {role}")
        used = m["used_today"]
        today = (f"{used['tokens']:,} tokens already used today" if used["known"]
                 else "today's usage at each endpoint is not looked up: counted as unused"
                 if m.get("endpoints")
                 else "today counted as unused: set the key's variable (--api-key-env) to "
                 "count its usage")
        days = "1 UTC day" if m["days"] == 1 else f"{m['days']} UTC days"
        table.add_row("days", f"{days} · {describe_daily(m['daily'], m['limits'])}; {today}")
        if e.get("via") == "batch":
            table.add_row("Batch API", _batch_row(m))
        console.print(table)
    if e["never_run_total"]:
        console.print(f"[bold red]{e['never_run_total']:,} requests can never run[/]:")
        for n in e["never_run"]:
            console.print(f"  line {n['line']} (id {n['id']!r}): {n['reason']}", markup=False)
        if e["never_run_total"] > len(e["never_run"]):
            console.print(f"  … and {e['never_run_total'] - len(e['never_run']):,} more")
    unpriced = [m["model"] for m in e["models"] if m["cost_usd"] is None]
    if unpriced and len(unpriced) < len(e["models"]):
        priced = sum(m["cost_usd"]["total"] for m in e["models"] if m["cost_usd"] is not None)
        console.print(f"total ${priced:,.4f} for the models with a list price; no list price "
                      f"for {', '.join(unpriced)}", markup=False)
    if e["cost_usd"] is not None and len(e["models"]) > 1:
        console.print(f"total ${e['cost_usd']:,.4f} (Batch API ${e['batch_api_cost_usd']:,.4f})"
                      f" · {_minutes(e['minutes_to_finish'])} · {e['days']} UTC day(s)")


def describe_daily(d: dict[str, Any], limits: dict[str, int]) -> str:
    """Which daily limit ends the job's days and where it came from, then the other one."""
    names = {"tpd": "tokens", "rpd": "requests"}
    spent = d["source"].startswith("the server's")
    parts = []
    if spent:
        parts.append(f"today is spent ({d['source']}): it starts tomorrow")
    for which in sorted(names, key=lambda k: k != d["binds"]):  # the binding one first
        limit = limits[which]
        if limit:
            source = d["source"] if which == d["binds"] and not spent else d["sources"][which]
            bound = " binds" if which == d["binds"] else ""
            parts.append(f"{limit:,} {names[which]} a day ({source}){bound}")
    if not limits["tpd"]:
        parts.append("no daily token limit (give --tpd to keep a budget)")
    return " · ".join(parts)


def _accounting(a: dict[str, Any]) -> str:
    if a["used"] == "learned":
        basis = "characters/4" if a["prompt"]["basis"] == "chars" else "tiktoken's count"
        return (f"{a['server_charge_tokens']:,} tokens: the server's charge as learned for "
                f"this key (a prompt at {a['prompt']['k']:.2f} x its {basis}, the output as "
                "set)")
    return (f"{a['server_charge_tokens']:,} tokens: our estimate of the server's charge "
            "(nothing learned for this key and model yet)")


def _batch_row(m: dict[str, Any]) -> str:
    b, c = m["batch"], m["cost_usd"]
    cost = f"${c['batch_api_total']:,.4f} (half the list price)" if c else "cost unknown"
    queue = (f"{b['rounds']:,} round{'s' if b['rounds'] != 1 else ''} of the "
             f"{b['queue_tokens']:,}-token enqueued limit" if b["queue_tokens"]
             else "no enqueued-token limit known (give --batch-queue-tokens)")
    return (f"{cost} · {queue} → at most {b['hours_at_most']:,} h (each round within its 24 h "
            "window, often much sooner) · no per-minute or daily limit")


def _part_line(p: dict[str, Any]) -> str:
    """One Batch API part of `status JOB`, as last recorded (resume polls and collects)."""
    said = str(p.get("api_status") if p["state"] == "submitted" else p["state"])
    state = {"planned": "waiting for the queue", "uploaded": "uploaded, waiting for the queue",
             "creating": "being created"}.get(p["state"], said.replace("_", " "))
    ids = " · ".join(x for x in (p.get("batch_id"), p.get("file_id")) if x)
    counts = (f" · {p.get('completed', 0):,} completed, {p.get('failed', 0):,} failed"
              if p.get("batch_id") else "")
    return (f"  part {p['n']}  {p['count']:,} requests ({p['model']}) · {state}{counts}"
            + (f" · {ids}" if ids else ""))


# Through a pipe or into a file nothing is cut: rows are as wide as their contents.
UNBOUNDED = 10_000


def render_status(console: Console, jobs: list[dict[str, Any]], usage: list[dict[str, Any]],
                  day: str, detail: bool) -> None:
    """`batchrun status`: the jobs, then today's usage against the daily budgets.

    In a terminal, cells that don't fit fold onto a second line; elsewhere (a pipe, a file, a
    script's grep) rows are never cut or folded.
    """
    if not console.is_terminal:
        saved, console.width = console.width, UNBOUNDED
        try:
            _render_status(console, jobs, usage, day, detail)
        finally:
            console.width = saved
    else:
        _render_status(console, jobs, usage, day, detail)


def _render_status(console: Console, jobs: list[dict[str, Any]], usage: list[dict[str, Any]],
                   day: str, detail: bool) -> None:
    if not jobs:
        console.print("No jobs yet. Start one with: batchrun submit JOBS.jsonl")
    elif detail:
        j = jobs[0]
        console.print(f"[bold]{j['job_id']}[/bold] · {j['state']}")
        console.print(f"  input   {j['input']}", markup=False)
        console.print(f"  output  {j['output']}", markup=False)
        console.print(f"  done    {j['done']:,} of {j['total']:,} ({j['failed']:,} failed)")
        console.print(f"  updated {j['updated']}")
        if "cost_usd" in j:
            console.print(f"  cost    {_job_cost(j)}", markup=False)
        if j.get("job_cost_usd") or j.get("max_cost_usd") is not None:
            cap = j.get("max_cost_usd")
            console.print(f"  spent   ${j.get('job_cost_usd') or 0:,.4f}"
                          + (f" of the --max-cost ${cap:,.4f}," if cap is not None else "")
                          + f" at list prices of {PRICES_AS_OF}", markup=False)
        if j["message"]:
            console.print(f"  last    {j['message']}", markup=False)
        for name, counts in j.get("endpoints", {}).items():
            console.print(f"  via {name}: {counts['done']:,} results ({counts['failed']:,} "
                          "failed)", markup=False)
        for p in (j.get("batch") or {}).get("parts", []):
            console.print(_part_line(p), markup=False)
        if j["state"] != "done":
            console.print(f"  resume  {j['resume']}", markup=False)
    else:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for name in ("job", "state", "done", "failed", "updated (UTC)", "output"):
            # Numbers, states and times never break; names fold when the terminal is narrow.
            table.add_column(name, overflow="fold", no_wrap=name not in ("job", "output"),
                             justify="right" if name in ("done", "failed") else "left")
        for j in jobs:
            table.add_row(j["job_id"], j["state"], f"{j['done']:,}/{j['total']:,}",
                          f"{j['failed']:,}", j["updated"][:16].replace("T", " "),
                          Path(j["output"]).name)
        console.print(table)
        unfinished = [j for j in jobs if j["state"] != "done"]
        if unfinished:
            console.print(f"Continue the latest unfinished job with: {unfinished[0]['resume']}")
    for host in sorted({u["host"] for u in usage}):
        table = Table(title=f"Usage on {day} (UTC) at {host}", box=box.SIMPLE_HEAD,
                      pad_edge=False, title_justify="left")
        for name in ("key", "model", "tokens", "of budget", "requests", "of budget "):
            table.add_column(name, justify="left" if name in ("key", "model") else "right",
                             overflow="fold", no_wrap=name != "model")
        for u in (u for u in usage if u["host"] == host):
            table.add_row(
                u["key_fingerprint"], u["model"], f"{u['tokens']:,}",
                "spent" if u["exhausted"] else (f"{u['tpd']:,}" if u["tpd"] else "-"),
                f"{u['requests']:,}", f"{u['rpd']:,}" if u["rpd"] else "-",
            )
        console.print(table)


def _job_cost(j: dict[str, Any]) -> str:
    """'$0.0003 at list prices of DATE (3,000 tokens in, 2,816 cached, 40 out)'."""
    t, unpriced = j["tokens"], ", ".join(j["unpriced_models"])
    tokens = (f"({t['input']:,} tokens in, {t['cached_input']:,} cached, {t['output']:,} out)")
    if j["cost_usd"] is None:
        return f"unknown: no list price for {unpriced} {tokens}"
    plus = f", plus {unpriced}, which has no list price" if unpriced else ""
    return f"${j['cost_usd']:,.4f} at list prices of {j['prices_as_of']} {tokens}{plus}"


def _limit_name(key: str) -> str:
    """rpm -> RPM; the endpoints of --endpoints together are not a limit's acronym."""
    return "the endpoints" if key == "endpoints" else key.upper()


def _binds(key: str) -> str:
    return "the endpoints' limits bind" if key == "endpoints" else f"{key.upper()} binds"
