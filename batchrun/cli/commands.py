"""The command line: parse options, call the core, render. Errors become messages and exit codes
here and only here (BATCHRUN_DEBUG=1 re-raises them with a traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import orjson
import typer
from rich.text import Text

from batchrun import __version__
from batchrun.api import options, steps
from batchrun.api.options import MAX_SECONDS, MAX_WHOLE
from batchrun.backends.batch.parts import forgetting_loses_batches, has_batches_on_server
from batchrun.backends.batch.run import Detached
from batchrun.display.progress import PipeSafeConsole, ProgressDisplay, drop_output
from batchrun.display.render import describe_endpoint, render_estimate, render_status
from batchrun.errors import (
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchrunError,
    InputError,
    Interrupted,
    printable,
    redact,
    redact_urls,
)
from batchrun.events import Stats, emit_all
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.job import Finished, cancel_batches, collect_finished
from batchrun.policy.tiers import TIERS
from batchrun.report.tally import EndpointTally
from batchrun.routing import EndpointConfig, load_endpoints
from batchrun.state import (
    SharedStateError,
    host_lines,
    parse_state_url,
    usage_today,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or "
    "double-bill work.",
)
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: a bug in batchrun, not in the input or the API
# soft_wrap: messages are never hard-wrapped at 80 columns; the terminal wraps them.
err = PipeSafeConsole(stderr=True, highlight=False, soft_wrap=True)
out = PipeSafeConsole(highlight=False, soft_wrap=True)


@dataclass(slots=True)
class _Reply:
    """What a command has told of itself, so that an error under --json is answered with an
    object on stdout (a script reads stdout; the message also goes to stderr as always)."""

    json: bool = False
    job: str | None = None
    answered: bool = False  # stdout already holds this command's JSON

    def about(self, job_id: str) -> None:
        self.job = job_id

    def reset(self) -> None:  # one process may run several commands (the tests do)
        self.json, self.job, self.answered = False, None, False


_reply = _Reply()


def _version(value: bool) -> None:
    if value:
        out.print(f"batchrun {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="print the version and exit")] = False,
) -> None:
    """Run a JSONL of OpenAI-style requests at your account's rate limits; never lose or
    double-bill work."""


class OnBadLine(str, Enum):
    fail = "fail"
    skip = "skip"


Jobs = Annotated[Path, typer.Argument(metavar="JOBS", help="JSONL file of requests")]
Model = Annotated[str, typer.Option("-m", "--model", help="model for lines that name none")]
Tier = Annotated[str, typer.Option(help=f"preset limits: {', '.join(TIERS)}",
                                   callback=options.check_tier)]
Limit = Annotated[int | None, typer.Option(min=0, max=MAX_WHOLE, show_default="preset",
                                           help="0 = unlimited")]


Wait = Annotated[bool | None, typer.Option(
    "--wait/--no-wait", show_default="--no-wait",
    help="at the daily limit: sleep until 00:00 UTC and go on, or stop with exit 3")]
Force = Annotated[bool, typer.Option(
    "--force", help="go on although the input changed since the job began")]
Json = Annotated[bool, typer.Option("--json", help="print the summary as JSON")]
Quiet = Annotated[bool, typer.Option("-q", "--quiet", help="no progress display")]
MAX_RETRIES_HELP = ("retries of a request after 5xx, timeouts and dropped connections; "
                    "per-minute 429s are waited out and don't count")
MaxRetries = Annotated[int, typer.Option(min=0, max=MAX_WHOLE, help=MAX_RETRIES_HELP)]
MaxResponseMb = Annotated[float | None, typer.Option(
    min=0.0001, max=1e6, show_default="64",
    help="largest answer accepted, in MB; a bigger one fails its request (response_too_large)")]
Drain = Annotated[float, typer.Option(
    "--drain", min=0, max=MAX_SECONDS, metavar="S",
    help="at Ctrl-C or SIGTERM: seconds to wait for the answers of requests in flight before "
    "abandoning them (other stops wait for them up to --timeout)")]


class Via(str, Enum):
    sync = "sync"
    batch = "batch"
    auto = "auto"


ViaOpt = Annotated[Via | None, typer.Option(
    "--via", show_default="sync", help="sync: the per-minute path; batch: the Batch API (half "
    "price, 24 h window); auto: sync while today's budget lasts, the rest via the Batch API")]
Detach = Annotated[bool, typer.Option(
    "--detach", help="Batch API: submit the batches, print the job id and exit; resume collects")]
PollMax = Annotated[float | None, typer.Option(
    min=1, max=MAX_SECONDS, show_default="60",
    help="Batch API: longest wait between two polls, in seconds")]
QueueTokens = Annotated[int | None, typer.Option(
    min=0, max=MAX_WHOLE, show_default="preset",
    help="Batch API: enqueued-token limit (0 = unlimited)")]
Concurrency = Annotated[int | None, typer.Option(
    min=1, max=MAX_WHOLE, show_default="from rate x latency", help="most requests in flight")]
State = Annotated[str | None, typer.Option(
    "--state", envvar="BATCHRUN_STATE", metavar="URL", show_default="the local ledger",
    help="shared limiter and daily ledger: redis://[user:password@]host:6379/0 for every host "
    "on the same key")]
BaseUrl = Annotated[str | None, typer.Option(envvar="OPENAI_BASE_URL",
                                            help="any OpenAI-compatible API")]
AzureEndpoint = Annotated[str | None, typer.Option(
    envvar="AZURE_OPENAI_ENDPOINT", help="Azure OpenAI resource; model = deployment")]
ApiKeyEnv = Annotated[str | None, typer.Option(
    help="name of the env var holding the key", show_default="OPENAI_API_KEY")]


@app.command()
def submit(
    ctx: typer.Context,
    jobs: Jobs,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="results JSONL",
                                                show_default="JOBS.results.jsonl")] = None,
    model: Model = "gpt-4o-mini",
    tier: Tier = "tier1",
    rpm: Limit = None,
    tpm: Limit = None,
    rpd: Limit = None,
    tpd: Limit = None,
    concurrency: Concurrency = None,
    base_url: BaseUrl = None,
    azure_endpoint: AzureEndpoint = None,
    api_key_env: ApiKeyEnv = None,
    max_retries: MaxRetries = 8,
    timeout: Annotated[float, typer.Option(min=1, max=MAX_SECONDS,
                                           help="seconds per request")] = 600.0,
    drain: Drain = 10.0,
    max_response_mb: MaxResponseMb = None,
    wait: Wait = None,
    on_bad_line: Annotated[OnBadLine, typer.Option(
        help="fail: check the whole file first; skip: record bad lines as failed",
    )] = OnBadLine.fail,
    simulate: Annotated[bool, typer.Option(
        "--simulate", help="run against the built-in local simulator (no key, no network)")
    ] = False,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="allow plain http:// to a remote host")] = False,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
    endpoints: Annotated[Path | None, typer.Option(
        envvar="BATCHRUN_ENDPOINTS", metavar="FILE.toml",
        help="several endpoints (keys, accounts, Azure regions) for one job")] = None,
    record_endpoint: Annotated[bool, typer.Option(
        "--record-endpoint", help='add "endpoint": NAME to each output line (--endpoints)')
    ] = False,
    state: State = None,
    via: ViaOpt = None,
    detach: Detach = False,
    poll_max: PollMax = None,
    batch_queue_tokens: QueueTokens = None,
) -> None:
    """Send every request in JOBS and write one result line per request."""
    _reply.json = json_

    def beside_endpoints(path: Path) -> None:
        _refuse_beside_endpoints(ctx, path)

    prepared = steps.prepare_submit(
        jobs, output=output, model=model, tier=tier, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
        concurrency=concurrency, base_url=base_url, azure_endpoint=azure_endpoint,
        api_key_env=api_key_env, max_retries=max_retries, timeout=timeout, drain=drain,
        max_response_mb=max_response_mb, wait=wait, on_bad_line=on_bad_line.value,
        simulate=simulate, insecure=insecure, force=force, endpoints=endpoints,
        record_endpoint=record_endpoint, state=state, via=via.value if via else None,
        detach=detach, poll_max=poll_max, batch_queue_tokens=batch_queue_tokens,
        beside_endpoints=beside_endpoints)
    _reply.about(prepared.manifest.job_id)
    if prepared.finished is not None:
        _finished(prepared.finished, prepared.manifest)
    _launch(prepared, json_, quiet)


def _refuse_beside_endpoints(ctx: typer.Context, path: Path) -> None:
    """The single endpoint's options typed beside --endpoints (their environment's defaults
    are no error)."""
    given = [f"--{name.replace('_', '-')}" for name in options.SINGLE_ENDPOINT
             if name in ctx.params and (src := ctx.get_parameter_source(name)) is not None
             and src.name == "COMMANDLINE"]
    from_env = getattr(ctx.get_parameter_source("endpoints"), "name", "") == "ENVIRONMENT"
    options.refuse_beside_endpoints(path, given, from_env)


def _finished(plan: Finished, manifest: Manifest) -> NoReturn:
    """Nothing left to send: say so (and how to send the failures again) without a header."""
    message, code = steps.finished_message(plan, manifest)
    if _reply.json:
        _print_json({"job": manifest.job_id, "state": manifest.state, "exit_code": code,
                     "message": message})
    else:
        out.print(message, markup=False)
    raise typer.Exit(code)


@app.command()
def resume(
    ctx: typer.Context,
    job: Annotated[str | None, typer.Argument(
        help="job id, a unique prefix of it, or its output path",
        show_default="the most recently updated unfinished job")] = None,
    retry_failed: Annotated[bool, typer.Option(
        help="send the requests that failed for good again")] = False,
    rpm: Limit = None,
    tpm: Limit = None,
    rpd: Limit = None,
    tpd: Limit = None,
    concurrency: Concurrency = None,
    max_retries: Annotated[int | None, typer.Option(min=0, max=MAX_WHOLE,
                                                    help=MAX_RETRIES_HELP)] = None,
    max_response_mb: MaxResponseMb = None,
    timeout: Annotated[float | None, typer.Option(min=1, max=MAX_SECONDS)] = None,
    drain: Drain = 10.0,
    wait: Wait = None,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
    state: State = None,
    via: ViaOpt = None,
    detach: Detach = False,
    poll_max: PollMax = None,
    batch_queue_tokens: QueueTokens = None,
    cancel_batches: Annotated[bool, typer.Option(
        help="with --via sync: cancel the job's Batch API batches (what they finished is "
        "kept) and send the rest by the sync path")] = False,
) -> None:
    """Continue a paused, interrupted or crashed job where it stopped."""
    _reply.json = json_
    store = JobStore()
    if job is not None:
        manifest = store.find(job)
    else:
        _warn_damaged(store)
        found = store.latest_unfinished(with_failures=retry_failed)
        what = "unfinished job or job with failed requests" if retry_failed else "unfinished job"
        if found is None:
            err.print(f"No {what} to resume. Start one with: batchrun submit JOBS.jsonl")
            raise typer.Exit(EXIT_OK)
        manifest = found
        err.print(f"Resuming {manifest.job_id}, the most recently updated {what} "
                  f"({manifest.input} → {manifest.output}).", markup=False)
    _reply.about(manifest.job_id)
    from_env = getattr(ctx.get_parameter_source("state"), "name", "") == "ENVIRONMENT"
    prepared = steps.prepare_resume(
        manifest, store, retry_failed=retry_failed, force=force, drain=drain, state=state,
        state_from_env=from_env, warn=_warn, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
        concurrency=concurrency, max_retries=max_retries, timeout=timeout,
        max_response_mb=max_response_mb, wait=wait, cancel_batches=cancel_batches,
        via=via.value if via else None, detach=detach, poll_max=poll_max,
        batch_queue_tokens=batch_queue_tokens)
    if prepared.finished is not None:
        _finished(prepared.finished, manifest)
    _launch(prepared, json_, quiet)


def _warn(message: str) -> None:
    err.print(Text("warning: ", style="bold yellow") + Text(message))


@app.command()
def cancel(
    job: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or its output path")],
    force: Annotated[bool, typer.Option(
        help="also stop waiting for batches the API does not know under this key (HTTP 404), "
             "as when they were deleted: their requests are recorded as cancelled")] = False,
) -> None:
    """Cancel a job's Batch API batches. Their finished results are kept: resume collects them."""
    store = JobStore()
    manifest = store.find(job)
    cancelled, dropped = asyncio.run(cancel_batches(manifest, store, force))
    unsent = f"; {dropped} part{'s' if dropped != 1 else ''} not yet submitted will not be" if (
        dropped) else ""
    gone = " (with --force, any the API does not know under this key count as gone)" if (
        force and cancelled) else ""
    out.print(f"Cancelled {cancelled} batch{'es' if cancelled != 1 else ''} of job "
              f"{manifest.job_id}{gone}{unsent}. Collect the results they finished with: "
              f"batchrun resume {manifest.job_id} (the rest are recorded as failed, "
              "batch_cancelled; resume --retry-failed sends them again).", markup=False)


@app.command()
def forget(
    job: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or its output path")],
) -> None:
    """Forget a job: status no longer lists it. Its input and results are left as they are."""
    store = JobStore()
    manifest = store.find(job)
    if forgetting_loses_batches(manifest.batch):
        raise InputError(
            f"job {manifest.job_id} has batches on the server that nothing would collect or "
            f"cancel once it is forgotten (they run on, and are billed). Collect them with "
            f"batchrun resume {manifest.job_id}, or cancel them with batchrun cancel "
            f"{manifest.job_id}, then forget it.")
    store.forget(manifest)
    out.print(f"Forgot job {manifest.job_id}. Its results stay in {manifest.output}.",
              markup=False)


@app.command()
def status(
    job: Annotated[str | None, typer.Argument(help="one job: id, prefix or output path")] = None,
    json_: Json = False,
    state: State = None,
) -> None:
    """Jobs, their progress, and today's usage per key and model."""
    _reply.json = json_
    store = JobStore()
    jobs = [_collect_finished(store, store.find(job))] if job else _warn_damaged(store)
    state_url = parse_state_url(state)
    try:
        today, usage = usage_today(state_url, store.home / "ledger.sqlite3")
    except SharedStateError as exc:
        raise SharedStateError(
            f"{exc.message} Check that Redis runs and answers there, then run it again; "
            "`batchrun status` without --state (and with $BATCHRUN_STATE unset) shows this "
            "host's own ledger meanwhile.") from None
    rows = steps.status_rows(store, jobs)
    if json_:
        shown = {"state": state_url.shown} if state_url else {}
        _print_json({"jobs": rows, "usage": usage, **shown})
        return
    render_status(out, rows, usage, today.isoformat(), detail=job is not None)
    if state_url is not None:
        out.print("\n".join(host_lines(state_url, usage)), markup=False)


def _collect_finished(store: JobStore, manifest: Manifest) -> Manifest:
    """One job's batches on the server: merge what finished, then show the job. When that
    cannot be done now (it runs elsewhere, no key, the API does not answer), say why and show
    what is recorded."""
    if (not has_batches_on_server(manifest.batch) or manifest.options.get("simulate")
            or store.is_running(manifest)):
        return manifest
    try:
        stop = asyncio.run(collect_finished(manifest, store, Stats()))
    except BatchrunError as exc:
        err.print(Text(f"Not collected now: {printable(exc.message)}"), style="yellow")
        stop = None
    if isinstance(stop, Interrupted):
        raise stop  # Ctrl-C: say so and exit 130, rather than show the job as if asked
    return store.find(manifest.job_id)


@app.command()
def estimate(
    ctx: typer.Context,
    jobs: Jobs,
    model: Model = "gpt-4o-mini",
    tier: Tier = "tier1",
    rpm: Limit = None,
    tpm: Limit = None,
    rpd: Limit = None,
    tpd: Limit = None,
    concurrency: Concurrency = None,
    latency: Annotated[float, typer.Option(
        min=0.01, help="expected seconds per request, for the concurrency bound")] = 2.0,
    assume_output_tokens: Annotated[int, typer.Option(
        min=0, help="output tokens assumed for requests that set no max_tokens")] = 256,
    on_bad_line: Annotated[OnBadLine, typer.Option(
        help="fail: list bad lines and stop; skip: estimate the rest")] = OnBadLine.fail,
    json_: Json = False,
    endpoints: Annotated[Path | None, typer.Option(
        envvar="BATCHRUN_ENDPOINTS", metavar="FILE.toml",
        help="plan under these endpoints' limits together")] = None,
    state: State = None,
    via: ViaOpt = None,
    batch_queue_tokens: QueueTokens = None,
    base_url: BaseUrl = None,
    azure_endpoint: AzureEndpoint = None,
    api_key_env: ApiKeyEnv = None,
) -> None:
    """Tokens, cost and time to finish under the tier. Sends nothing."""
    _reply.json = json_
    state_url = parse_state_url(state)
    configs: tuple[EndpointConfig, ...] = ()
    if endpoints is not None:
        _refuse_beside_endpoints(ctx, endpoints)
        configs = load_endpoints(endpoints, need_keys=False)
    result = steps.estimate_path(
        jobs, configs, model=model, tier=tier,
        limits={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd}, concurrency=concurrency,
        latency=latency, assume_output_tokens=assume_output_tokens,
        on_bad_line=on_bad_line.value, endpoints_file=endpoints, state=state_url,
        via=via.value if via else None, batch_queue_tokens=batch_queue_tokens,
        endpoint=(base_url, azure_endpoint, api_key_env))
    if json_:
        _print_json(result)
    else:
        render_estimate(out, result)


def _warn_damaged(store: JobStore) -> list[Manifest]:
    """Every readable job; each damaged manifest is named on stderr and skipped."""
    jobs, damaged = store.scan()
    for exc in damaged:
        err.print(Text("warning: ", style="bold yellow")
                  + Text(f"skipped the damaged job manifest {exc.path}: {exc.reason}. "
                         f"`batchrun resume {exc.path.stem}` says how to recover that job."))
    return jobs


def _launch(p: steps.Prepared, json_: bool, quiet: bool) -> None:
    stats, tally = Stats(), EndpointTally()
    with ProgressDisplay(stats, sys.stderr, quiet=quiet or json_, endpoints=tally) as display:
        stopped = asyncio.run(steps.execute(p, emit_all(stats, tally, display), display.note))
    manifest = p.manifest
    if isinstance(stopped, Detached):  # not an error: the batches run on the server
        if json_:
            _print_json({"job": manifest.job_id, "state": manifest.state,
                         "message": stopped.message})
        else:
            out.print(stopped.message, markup=False)
        raise typer.Exit(EXIT_OK)
    summary = steps.run_summary(stats, tally, manifest, stopped)
    if json_:
        _print_json(summary)
    else:
        _print_summary(summary, Path(manifest.output), batch=bool(sum(stats.batch_in.values())))
    if stopped is not None:
        raise stopped
    raise typer.Exit(EXIT_SOME_FAILED if manifest.failed else EXIT_OK)


def _print_json(data: Any) -> None:
    """One JSON line on stdout; a reader that has gone (`| head`) does not change the job's
    exit code."""
    _reply.answered = True
    try:
        sys.stdout.write(orjson.dumps(data).decode() + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        drop_output(sys.stdout)


def _answer_error(argv: list[str] | None, exit_code: int, message: str) -> None:
    """--json: an error is an object on stdout too, naming the job and its recorded state."""
    wants = _reply.json or "--json" in (sys.argv[1:] if argv is None else argv)
    if not wants or _reply.answered:
        return
    state = None
    if _reply.job is not None:
        with contextlib.suppress(BatchrunError, OSError):
            manifest = JobStore().get(_reply.job)
            state = JobStore().effective_state(manifest) if manifest is not None else None
    _print_json({"job": _reply.job, "state": state, "exit_code": exit_code,
                 "message": message})


def _print_summary(s: dict[str, Any], output: Path, batch: bool = False) -> None:
    r = s["requests"]
    unpriced = ", ".join(s["unpriced_models"])
    cost = f"unknown (no list price for {unpriced})" if s["cost_usd"] is None else (
        f"${s['cost_usd']:,.4f} at list prices"
        + (" (Batch API requests at half of them)" if batch else "")
        + (f", plus {unpriced}, which has no list price" if unpriced else ""))
    lines = [
        f"{r['ok']:,} ok · {r['failed']:,} failed"
        + (f" ({r['bad_lines']:,} bad input lines)" if r["bad_lines"] else "")
        + (f" · {r['already_done']:,} done before" if r["already_done"] else "")
        + (f" ({r['failed_before']:,} of them failed)" if r["failed_before"] else "")
        + (f" · {r['not_done']:,} not done" if r["not_done"] else ""),
        f"tokens: {s['tokens']['input']:,} in, {s['tokens']['output']:,} out · cost {cost}",
        f"{s['wall_seconds']:,.1f}s · {s['achieved']['requests_per_min']:,.0f} req/min · "
        f"{s['achieved']['tokens_per_min']:,.0f} tok/min · {s['rate_limited_429']:,} 429s",
        f"results: {output}",
    ]
    sync, batch_way = s["via"]["sync"], s["via"]["batch"]
    if batch_way["requests"]:  # --via batch or auto: what went where, at which price
        lines.insert(3, f"via: {sync['requests']:,} sync ({_usd(sync['cost_usd'])}) · "
                        f"{batch_way['requests']:,} Batch API ({_usd(batch_way['cost_usd'])}, "
                        "half price)")
    if r["failed"] or r["failed_before"]:
        failed = r["failed"] + r["failed_before"]
        lines.append(f"{failed:,} failed for good: each has its error in the results. "
                     f"Send them again with: batchrun resume {s['job']} --retry-failed")
    if r["bad_lines"]:
        # Sent again as they are, bad lines fail again: the input must change first.
        lines.append(f"{r['bad_lines']:,} of them are bad input lines (error code "
                     "invalid_request_line): fix those lines in the input, then run "
                     f"batchrun resume {s['job']} --retry-failed --force")
    lines += [f"  {name}: {describe_endpoint(e)}" for name, e in s.get("endpoints", {}).items()]
    out.print("\n".join(lines), markup=False)


def _usd(cost: float | None) -> str:
    return "no list price" if cost is None else f"${cost:,.4f}"


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code: the one place errors turn into messages."""
    _reply.reset()
    try:
        result = app(args=argv, standalone_mode=False)
    except BatchrunError as exc:
        if os.environ.get("BATCHRUN_DEBUG"):
            raise
        # Text, not markup: messages quote ids and server words that may contain brackets.
        prefix = Text("error: ", style="bold red") if exc.exit_code == EXIT_INPUT else Text()
        # Every URL's credentials masked, whoever wrote the message (nothing else is changed).
        message = printable(redact_urls(exc.message))
        err.print(prefix + Text(message))
        _answer_error(argv, exc.exit_code, message)
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err.print("Interrupted before anything was sent.")
        _answer_error(argv, EXIT_INTERRUPTED, "Interrupted before anything was sent.")
        return EXIT_INTERRUPTED
    except Exception as exc:
        # Usage errors (click's, vendored or not, depending on typer's version) show themselves.
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            usage = getattr(exc, "format_message", None)
            _answer_error(argv, code, str(usage() if callable(usage) else exc))
            return code
        if os.environ.get("BATCHRUN_DEBUG"):
            raise
        while isinstance(exc, ExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]  # the task group's wrapping says nothing to a user
        # A bug, not a user error: say so in one line. The job is recorded as crashed (the
        # runner never marks a job done on an exception), so nothing finished is lost.
        message = printable(
            f"internal error: {type(exc).__name__}: {redact(str(exc))}. This is a bug in "
            "batchrun; results written so far are kept and `batchrun resume` continues the "
            "job. Run again with BATCHRUN_DEBUG=1 to see the traceback, and please report it.")
        err.print(Text(message, style="bold red"))
        _answer_error(argv, EXIT_INTERNAL, message)
        return EXIT_INTERNAL
    return result if isinstance(result, int) else EXIT_OK


def main() -> None:
    sys.exit(run())
