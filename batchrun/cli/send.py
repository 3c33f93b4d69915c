"""The commands that run a job, `submit` and `resume`: a thin client of batchrun.api's steps,
with the live display and the summary around the run."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchrun import messages
from batchrun.api import steps
from batchrun.api.options import MAX_SECONDS, MAX_WHOLE
from batchrun.backends.batch.run import Detached
from batchrun.cli import options, printing
from batchrun.cli.options import (
    MAX_RETRIES_HELP,
    ApiKeyEnv,
    AzureEndpoint,
    BaseUrl,
    CacheOpt,
    CacheRefresh,
    Concurrency,
    Detach,
    Drain,
    FlexWait,
    Force,
    Jobs,
    Json,
    Limit,
    MaxCost,
    MaxResponseMb,
    MaxRetries,
    MetricsPort,
    Model,
    OnBadLine,
    PollMax,
    QueueTokens,
    Quiet,
    ServiceTierOpt,
    State,
    Tier,
    ViaOpt,
    Wait,
)
from batchrun.display.progress import ProgressDisplay
from batchrun.errors import EXIT_OK, EXIT_SOME_FAILED
from batchrun.events import Stats, emit_all
from batchrun.files.jobstore import JobStore
from batchrun.report.tally import EndpointTally


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
    timeout: Annotated[float | None, typer.Option(
        min=1, max=MAX_SECONDS, show_default="600; 900 with --service-tier flex",
        help="seconds per request")] = None,
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
    service_tier: ServiceTierOpt = None,
    flex_wait: FlexWait = None,
    max_cost: MaxCost = None,
    metrics_port: MetricsPort = None,
    cache: CacheOpt = None,
    cache_refresh: CacheRefresh = False,
) -> None:
    """Send every request in JOBS and write one result line per request."""
    printing.reply.json = json_

    def beside_endpoints(path: Path) -> None:
        options.refuse_beside_endpoints(ctx, path)

    prepared = steps.prepare_submit(
        jobs, output=output, model=model, tier=tier, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
        concurrency=concurrency, base_url=base_url, azure_endpoint=azure_endpoint,
        api_key_env=api_key_env, max_retries=max_retries, timeout=timeout, drain=drain,
        max_response_mb=max_response_mb, wait=wait, on_bad_line=on_bad_line.value,
        simulate=simulate, insecure=insecure, force=force, endpoints=endpoints,
        record_endpoint=record_endpoint, state=state, via=via.value if via else None,
        detach=detach, poll_max=poll_max, batch_queue_tokens=batch_queue_tokens,
        service_tier=service_tier.value if service_tier else None, flex_wait=flex_wait,
        max_cost=max_cost, metrics_port=metrics_port, cache=cache, cache_refresh=cache_refresh,
        beside_endpoints=beside_endpoints)
    printing.reply.about(prepared.manifest.job_id)
    if prepared.finished is not None:
        printing.finished(prepared.finished, prepared.manifest)
    launch(prepared, json_, quiet)


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
    flex_wait: FlexWait = None,
    max_cost: MaxCost = None,
    metrics_port: MetricsPort = None,
    cache: CacheOpt = None,
    cache_refresh: CacheRefresh = False,
) -> None:
    """Continue a paused, interrupted or crashed job where it stopped."""
    printing.reply.json = json_
    store = JobStore()
    if job is not None:
        manifest = store.find(job)
    else:
        printing.warn_damaged(store)
        found = store.latest_unfinished(with_failures=retry_failed)
        if found is None:
            printing.err.print(messages.nothing_to_resume(retry_failed))
            raise typer.Exit(EXIT_OK)
        manifest = found
        printing.err.print(messages.resuming(manifest.job_id, retry_failed, manifest.input,
                                             manifest.output), markup=False)
    printing.reply.about(manifest.job_id)
    from_env = getattr(ctx.get_parameter_source("state"), "name", "") == "ENVIRONMENT"
    prepared = steps.prepare_resume(
        manifest, store, retry_failed=retry_failed, force=force, drain=drain, state=state,
        state_from_env=from_env, warn=printing.warn, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
        concurrency=concurrency, max_retries=max_retries, timeout=timeout,
        max_response_mb=max_response_mb, wait=wait, cancel_batches=cancel_batches,
        via=via.value if via else None, detach=detach, poll_max=poll_max,
        batch_queue_tokens=batch_queue_tokens, flex_wait=flex_wait, max_cost=max_cost,
        metrics_port=metrics_port, cache=cache, cache_refresh=cache_refresh)
    if prepared.finished is not None:
        printing.finished(prepared.finished, manifest)
    launch(prepared, json_, quiet)


def launch(p: steps.Prepared, json_: bool, quiet: bool) -> None:
    stats, tally = Stats(), EndpointTally()
    with ProgressDisplay(stats, sys.stderr, quiet=quiet or json_, endpoints=tally) as display:
        stopped = asyncio.run(steps.execute(p, emit_all(stats, tally, display), display.note))
    manifest = p.manifest
    if isinstance(stopped, Detached):  # not an error: the batches run on the server
        said = messages.shown(stopped.message)  # as job.message says it
        if json_:
            printing.print_json({"job": manifest.job_id, "state": manifest.state,
                                 "message": said})
        else:
            printing.out.print(said, markup=False)
        raise typer.Exit(EXIT_OK)
    summary = steps.run_summary(stats, tally, manifest, p.store, stopped)
    if json_:
        printing.print_json(summary)
    else:
        printing.print_summary(summary, Path(manifest.output),
                               batch=bool(sum(stats.batch_in.values())))
    if stopped is not None:
        raise stopped
    raise typer.Exit(EXIT_SOME_FAILED if manifest.failed else EXIT_OK)
