"""The commands that look after jobs without running them: cancel, forget, status, estimate."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from batchrun import messages
from batchrun.api import steps
from batchrun.backends.batch.parts import forgetting_loses_batches, has_batches_on_server
from batchrun.cli import options, printing
from batchrun.cli.options import (
    ApiKeyEnv,
    AzureEndpoint,
    BaseUrl,
    Concurrency,
    Jobs,
    Json,
    Limit,
    Model,
    OnBadLine,
    QueueTokens,
    ServiceTierOpt,
    State,
    Tier,
    ViaOpt,
)
from batchrun.display.render import render_estimate, render_status
from batchrun.errors import BatchrunError, InputError, Interrupted
from batchrun.events import Stats
from batchrun.files.jobstore import JobStore, Manifest
from batchrun.job import cancel_batches, collect_finished
from batchrun.report.estimate_cache import describe as describe_cache
from batchrun.routing import EndpointConfig, load_endpoints
from batchrun.state import SharedStateError, host_lines, parse_state_url, usage_today


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
    printing.out.print(messages.cancelled(manifest.job_id, cancelled, dropped, force),
                       markup=False)


def forget(
    job: Annotated[str, typer.Argument(help="job id, a unique prefix of it, or its output path")],
) -> None:
    """Forget a job: status no longer lists it. Its input and results are left as they are."""
    store = JobStore()
    manifest = store.find(job)
    if forgetting_loses_batches(manifest.batch):
        raise InputError(messages.forget_refused(manifest.job_id))
    store.forget(manifest)
    printing.out.print(messages.forgot(manifest.job_id, manifest.output), markup=False)


def status(
    job: Annotated[str | None, typer.Argument(help="one job: id, prefix or output path")] = None,
    json_: Json = False,
    state: State = None,
) -> None:
    """Jobs, their progress, and today's usage per key and model."""
    printing.reply.json = json_
    store = JobStore()
    jobs = [_collect_finished(store, store.find(job))] if job else printing.warn_damaged(store)
    state_url = parse_state_url(state)
    try:
        today, usage = usage_today(state_url, store.home / "ledger.sqlite3")
    except SharedStateError as exc:
        raise SharedStateError(messages.status_state_down(exc.message)) from None
    rows = steps.status_rows(store, jobs)
    if json_:
        shown = {"state": state_url.shown} if state_url else {}
        printing.print_json({"jobs": rows, "usage": usage, **shown})
        return
    render_status(printing.out, rows, usage, today.isoformat(), detail=job is not None)
    if state_url is not None:
        printing.out.print("\n".join(host_lines(state_url, usage)), markup=False)


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
        printing.err.print(Text(messages.not_collected(exc.message)), style="yellow")
        stop = None
    if isinstance(stop, Interrupted):
        raise stop  # Ctrl-C: say so and exit 130, rather than show the job as if asked
    return store.find(manifest.job_id)


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
    service_tier: ServiceTierOpt = None,
) -> None:
    """Tokens, cost and time to finish under the tier. Sends nothing."""
    printing.reply.json = json_
    state_url = parse_state_url(state)
    configs: tuple[EndpointConfig, ...] = ()
    if endpoints is not None:
        options.refuse_beside_endpoints(ctx, endpoints)
        configs = load_endpoints(endpoints, need_keys=False)
    result = steps.estimate_path(
        jobs, configs, model=model, tier=tier,
        limits={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd}, concurrency=concurrency,
        latency=latency, assume_output_tokens=assume_output_tokens,
        on_bad_line=on_bad_line.value, endpoints_file=endpoints, state=state_url,
        via=via.value if via else None, batch_queue_tokens=batch_queue_tokens,
        endpoint=(base_url, azure_endpoint, api_key_env),
        service_tier=service_tier.value if service_tier else None)
    if json_:
        printing.print_json(result)
    else:
        render_estimate(printing.out, result)
        printing.out.print(describe_cache(result["cache"], result["prices_as_of"]), markup=False)
