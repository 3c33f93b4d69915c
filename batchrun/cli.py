"""The command line: parse options, call the core, render. Errors become messages and exit codes
here and only here (BATCHRUN_DEBUG=1 re-raises them with a traceback)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.text import Text

from batchrun.client import Endpoint
from batchrun.engine import JobSpec, emit_all, run_job
from batchrun.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchrunError,
    InputError,
)
from batchrun.events import Stats
from batchrun.progress import ProgressDisplay
from batchrun.tiers import TIERS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or "
    "double-bill work.",
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


@app.callback()
def _root() -> None:
    """Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or
    double-bill work."""


class OnBadLine(str, Enum):
    fail = "fail"
    skip = "skip"


Limit = Annotated[int | None, typer.Option(min=0, show_default="preset", help="0 = unlimited")]


@app.command()
def submit(
    jobs: Annotated[Path, typer.Argument(help="JSONL file of requests")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="results JSONL",
                                                show_default="JOBS.results.jsonl")] = None,
    model: Annotated[str, typer.Option("-m", "--model",
                                       help="model for lines that name none")] = "gpt-4o-mini",
    tier: Annotated[str, typer.Option(help=f"preset limits: {', '.join(TIERS)}")] = "tier1",
    rpm: Limit = None,
    tpm: Limit = None,
    rpd: Limit = None,
    tpd: Limit = None,
    concurrency: Annotated[int | None, typer.Option(min=1, show_default="from rate × latency",
                                                    help="most requests in flight")] = None,
    base_url: Annotated[str | None, typer.Option(envvar="OPENAI_BASE_URL",
                                                 help="any OpenAI-compatible API")] = None,
    azure_endpoint: Annotated[str | None, typer.Option(
        envvar="AZURE_OPENAI_ENDPOINT", help="Azure OpenAI resource; model = deployment")] = None,
    api_key_env: Annotated[str | None, typer.Option(
        help="name of the env var holding the key", show_default="OPENAI_API_KEY")] = None,
    max_retries: Annotated[int, typer.Option(min=0)] = 8,
    timeout: Annotated[float, typer.Option(min=1, help="seconds per request")] = 600.0,
    on_bad_line: Annotated[OnBadLine, typer.Option(
        help="fail: check the whole file first; skip: record bad lines as failed",
    )] = OnBadLine.fail,
    simulate: Annotated[bool, typer.Option(
        help="run against the built-in local simulator (no key, no network)")] = False,
    insecure: Annotated[bool, typer.Option(help="allow plain http:// to a remote host")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress display")] = False,
) -> None:
    """Send every request in JOBS and write one result line per request."""
    if tier not in TIERS:
        raise InputError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}.")
    if output is None:
        absolute = jobs.resolve()
        output = absolute.with_name(absolute.name.removesuffix(".jsonl") + ".results.jsonl")
    spec = JobSpec(
        input=jobs,
        output=output,
        endpoint=Endpoint.make(base_url, azure_endpoint, api_key_env, insecure),
        model=model,
        tier=tier,
        overrides={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd},
        concurrency=concurrency,
        max_retries=max_retries,
        timeout_s=timeout,
        on_bad_line=on_bad_line.value,
    )
    stats = Stats()
    with ProgressDisplay(stats, sys.stderr, quiet=quiet or json_) as display:
        stopped = asyncio.run(_run(spec, emit_all(stats, display), simulate))
    summary = stats.summary()
    if json_:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        _print_summary(summary, spec.output)
    if stopped is not None:
        raise stopped
    raise typer.Exit(EXIT_SOME_FAILED if stats.failed else EXIT_OK)


async def _run(spec: JobSpec, listener: Any, simulate: bool) -> BatchrunError | None:
    if not simulate:
        return await run_job(spec, spec.endpoint.api_key(), listener)
    from batchrun.sim import SimConfig, SimLimits, SimServer, Simulator

    lim = spec.limits_for(spec.model)
    config = SimConfig(SimLimits(lim.rpm, lim.tpm, lim.rpd, lim.tpd), latency_s=0.3, jitter_s=0.1)
    async with SimServer(Simulator(config)) as server:
        endpoint = Endpoint.make(server.base_url, None, None)
        return await run_job(replace(spec, endpoint=endpoint), "sk-simulated", listener)


def _print_summary(s: dict[str, Any], output: Path) -> None:
    r = s["requests"]
    cost = "unknown (no list price for this model)" if s["cost_usd"] is None else (
        f"${s['cost_usd']:,.4f} at list prices")
    lines = [
        f"{r['ok']:,} ok · {r['failed']:,} failed"
        + (f" ({r['bad_lines']:,} bad input lines)" if r["bad_lines"] else "")
        + (f" · {r['already_done']:,} done before" if r["already_done"] else "")
        + (f" · {r['not_done']:,} not done" if r["not_done"] else ""),
        f"tokens: {s['tokens']['input']:,} in, {s['tokens']['output']:,} out · cost {cost}",
        f"{s['wall_seconds']:,.1f}s · {s['achieved']['requests_per_min']:,.0f} req/min · "
        f"{s['achieved']['tokens_per_min']:,.0f} tok/min · {s['rate_limited_429']:,} 429s",
        f"results: {output}",
    ]
    out.print("\n".join(lines), markup=False)


def main() -> None:
    """Entry point: the one place errors turn into messages and exit codes."""
    try:
        app()
    except BatchrunError as exc:
        if os.environ.get("BATCHRUN_DEBUG"):
            raise
        # Text, not markup: messages quote ids and server words that may contain brackets.
        prefix = Text("error: ", style="bold red") if exc.exit_code == EXIT_INPUT else Text()
        err.print(prefix + Text(exc.message))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("Interrupted before anything was sent.")
        sys.exit(EXIT_INTERRUPTED)
