"""The steps of submit and resume that the CLI and the library share: check and plan, run,
sum up. Nothing here prints: the CLI renders, the library returns a Job."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from batchrun import job, messages
from batchrun.api.cache import estimate_lookup
from batchrun.api.options import (
    batch_options,
    cache_mode,
    check_options,
    check_tier,
    flex_options,
)
from batchrun.backends.batch.parts import forget_open_parts, shown_record
from batchrun.backends.sync.engine import JobSpec
from batchrun.backends.sync.upstreams import with_endpoints
from batchrun.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    BatchrunError,
    InputError,
)
from batchrun.events import Listener, Stats, emit_all
from batchrun.files import ledger
from batchrun.files.jobstore import JobState, JobStore, Manifest
from batchrun.files.spend import read_spent, spend_path
from batchrun.http.endpoint import Endpoint
from batchrun.metrics import MetricsTally, require_metrics_extra
from batchrun.policy import flex
from batchrun.policy.classify import DEFAULT_MAX_RESPONSE_MB
from batchrun.report import document, timeline
from batchrun.report.bill import job_bill
from batchrun.report.estimate import Today, known_today, nothing_known
from batchrun.report.estimate import estimate as estimate_job
from batchrun.report.tally import EndpointTally
from batchrun.routing import EndpointConfig, check_serves
from batchrun.state import (
    StateUrl,
    leaving_shared,
    manifest_options,
    parse_state_url,
    shared_accountings,
    state_for_resume,
    usage_today,
)


@dataclass(slots=True)
class Prepared:
    """A job ready to run: its spec, manifest and store, or `finished` when nothing is left."""

    spec: JobSpec
    manifest: Manifest
    store: JobStore
    simulate: bool
    state: StateUrl | None
    retry_failed: bool = False
    finished: job.Finished | None = None
    metrics_port: int | None = None  # --metrics-port: this run's, not saved with the job


def prepare_submit(jobs: Path, *, output: Path | None = None, model: str = "gpt-4o-mini",
                   tier: str = "tier1", rpm: int | None = None, tpm: int | None = None,
                   rpd: int | None = None, tpd: int | None = None,
                   concurrency: int | None = None, base_url: str | None = None,
                   azure_endpoint: str | None = None, api_key_env: str | None = None,
                   max_retries: int = 8, timeout: float | None = None, drain: float = 10.0,
                   max_response_mb: float | None = None, wait: bool | None = None,
                   on_bad_line: str = "fail", simulate: bool = False, insecure: bool = False,
                   force: bool = False, endpoints: Path | None = None,
                   record_endpoint: bool = False, state: str | None = None,
                   via: str | None = None, detach: bool = False, poll_max: float | None = None,
                   batch_queue_tokens: int | None = None, service_tier: str | None = None,
                   flex_wait: float | None = None, max_cost: float | None = None,
                   metrics_port: int | None = None,
                   cache: bool | None = None, cache_refresh: bool = False,
                   beside_endpoints: Callable[[Path], None] = lambda _: None) -> Prepared:
    """`submit`'s checks and plan; changes nothing on disk. `beside_endpoints` refuses the
    single endpoint's options given with `endpoints` (the caller knows which were given)."""
    tier = check_tier(tier)
    check_metrics(metrics_port)
    state_url = parse_state_url(state)
    if output is None:
        absolute = jobs.resolve()
        output = absolute.with_name(absolute.name.removesuffix(".jsonl") + ".results.jsonl")
    spec = JobSpec(
        input=jobs, output=output,
        endpoint=Endpoint.make(base_url, azure_endpoint, api_key_env, insecure),
        model=model, tier=tier, overrides={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd},
        concurrency=concurrency, max_retries=max_retries,
        max_response_mb=max_response_mb or DEFAULT_MAX_RESPONSE_MB,
        drain_s=drain, on_bad_line=on_bad_line, wait=bool(wait), max_cost=max_cost,
        cache=cache_mode(cache, cache_refresh) or "on",
        **batch_options(via, detach, poll_max, batch_queue_tokens),
        **flex_options(service_tier, flex_wait, via, timeout),
    )
    if endpoints is not None:
        beside_endpoints(endpoints)
        spec = with_endpoints(spec, endpoints, record_endpoint, need_keys=not simulate)
    elif record_endpoint:
        raise InputError("--record-endpoint names the endpoint of --endpoints in each "
                         "output line; give --endpoints FILE.toml too.")
    store = JobStore()
    manifest = job.prepare(spec, simulate, store, force)
    manifest.options.update(state_url.manifest_options() if state_url else {})
    prepared = Prepared(spec, manifest, store, simulate, state_url, metrics_port=metrics_port)
    if manifest.finished and store.exists(manifest.job_id) and not force:
        job.count_from_output(manifest)  # the file decides: it may have lost lines since
        if manifest.done >= manifest.total:
            prepared.finished = job.Finished(manifest.done, manifest.total, manifest.failed)
    return prepared


def prepare_resume(manifest: Manifest, store: JobStore, *, retry_failed: bool = False,
                   force: bool = False, drain: float = 10.0, state: str | None = None,
                   state_from_env: bool = False, warn: Callable[[str], None] = lambda _: None,
                   **given: Any) -> Prepared:
    """`resume`'s plan for a job: its spec with the options given now (None: as before)."""
    check_metrics(given.get("metrics_port"))
    if given.get("flex_wait") is not None and not manifest.options.get("service_tier"):
        raise InputError(f"--flex-wait is how long a request waits for flex capacity, and job "
                         f"{manifest.job_id} does not run at --service-tier flex; drop it.")
    plan = job.plan_resume(manifest, retry_failed, force, {
        "limits": {k: given.get(k) for k in ("rpm", "tpm", "rpd", "tpd")},
        "concurrency": given.get("concurrency"), "max_retries": given.get("max_retries"),
        "timeout_s": given.get("timeout"), "max_response_mb": given.get("max_response_mb"),
        "wait": given.get("wait"), "cancel_batches": given.get("cancel_batches") or None,
        "max_cost": given.get("max_cost"),
        "flex_wait_s": given.get("flex_wait"),
        "cache": cache_mode(given.get("cache"), given.get("cache_refresh"), given_only=True),
        **batch_options(given.get("via"), given.get("detach"), given.get("poll_max"),
                        given.get("batch_queue_tokens"), given_only=True),
    })
    if isinstance(plan, job.Finished):
        return Prepared(_spec_stub(manifest), manifest, store, False, None, retry_failed, plan)
    spec, simulate = plan
    spec = replace(spec, drain_s=drain)  # how this run ends at Ctrl-C: not saved with the job
    state_url = state_for_resume(state, manifest.options, state_from_env)
    if (leaving := leaving_shared(state_url, manifest.options)) is not None:
        warn(leaving)
    manifest.options.update(manifest_options(state_url))
    return Prepared(spec, manifest, store, simulate, state_url, retry_failed,
                    metrics_port=given.get("metrics_port"))


def _spec_stub(manifest: Manifest) -> JobSpec:
    """A finished job runs nothing: its spec only names its files."""
    return JobSpec(input=Path(manifest.input), output=Path(manifest.output),
                   endpoint=Endpoint.make(None, None, None), model="", tier="tier1",
                   overrides={})


def finished_message(plan: job.Finished, manifest: Manifest) -> tuple[str, int]:
    """Nothing left to send: what to say (and how to send the failures again), and the exit
    code the job's last run ended with, so a script sees failures however it asks."""
    message = messages.finished(manifest.job_id, manifest.output, plan.done, plan.total,
                                plan.failed)
    return message, EXIT_SOME_FAILED if plan.failed else EXIT_OK


def check_metrics(port: int | None) -> None:
    """--metrics-port needs the `metrics` extra: refused before anything is planned or sent."""
    if port is None:
        return
    check_options({"metrics_port": port})
    require_metrics_extra()


async def execute(p: Prepared, listener: Listener,
                  notify: Callable[[str], None]) -> BatchrunError | None:
    """Run a prepared job to its end; returns why it stopped early (None: every request has a
    line). Raises what refused it before it began, and a local failure during it."""
    if p.metrics_port is None:
        return await _execute(p, listener, notify)
    from batchrun.metrics.exposition import serving  # prometheus_client: only when asked

    tally = MetricsTally(p.manifest.job_id)
    async with serving(tally, p.metrics_port):
        return await _execute(p, emit_all(listener, tally), notify)


async def _execute(p: Prepared, listener: Listener,
                   notify: Callable[[str], None]) -> BatchrunError | None:
    spec, manifest, store = p.spec, p.manifest, p.store
    if not p.simulate:
        # With --endpoints each endpoint's key is read when its client is made.
        key = "" if spec.endpoints else spec.endpoint.api_key()
        return await job.run(spec, manifest, store, key, listener, spec.endpoint.host,
                             now_utc=ledger.utc_now, retry_failed=p.retry_failed,
                             notify=notify, state=p.state)
    from batchrun.simulator import SimConfig, SimLimits, SimServer, Simulator

    if spec.detach:
        raise InputError("--detach needs a real Batch API: the built-in simulator ends with "
                         "this process. Drop --simulate, or --detach.")
    if forget_open_parts(manifest.batch):
        notify("The simulator's earlier batches ended with its process: their requests are "
               "sent again.")
    if spec.endpoints:
        return await _simulate_endpoints(p, listener, notify)
    lim = spec.limits_for(spec.model)
    # The simulator keeps no daily count of its own: batchrun's ledger enforces --tpd/--rpd.
    config = SimConfig(SimLimits(lim.rpm, lim.tpm), latency_s=0.3, jitter_s=0.1)
    async with SimServer(Simulator(config)) as server:
        endpoint = Endpoint.make(server.base_url, None, None)
        return await job.run(replace(spec, endpoint=endpoint), manifest, store,
                             "sk-simulated", listener, job.simulator_host(manifest.job_id),
                             now_utc=ledger.utc_now, retry_failed=p.retry_failed,
                             notify=notify, state=p.state, simulate=True)


async def _simulate_endpoints(p: Prepared, listener: Listener,
                              notify: Callable[[str], None]) -> BatchrunError | None:
    """--simulate --endpoints: one simulator per endpoint, with that endpoint's limits (of the
    job's model), so an endpoints file can be tried offline. Each endpoint's daily budget is
    the job's own, kept by endpoint name: a simulator's port changes with every run."""
    from batchrun.simulator import SimConfig, SimLimits, SimServer, Simulator

    spec = p.spec
    job_host = job.simulator_host(p.manifest.job_id)
    async with contextlib.AsyncExitStack() as servers:
        configs, ledger_hosts = [], {}
        for config in spec.endpoints:
            lim = config.limits_for(spec.model)
            server = await servers.enter_async_context(SimServer(Simulator(SimConfig(
                SimLimits(lim.rpm, lim.tpm), latency_s=0.3, jitter_s=0.1))))
            url = server.azure_endpoint if config.endpoint.azure else server.base_url
            simulated = replace(config, endpoint=replace(config.endpoint, base_url=url))
            configs.append(simulated)
            ledger_hosts[ledger.ledger_host(simulated.endpoint.host)] = f"{job_host}/{config.name}"
        return await job.run(
            replace(spec, endpoint=configs[0].endpoint, endpoints=tuple(configs)), p.manifest,
            p.store, "sk-simulated", listener, job_host, now_utc=ledger.utc_now,
            retry_failed=p.retry_failed, notify=notify, state=p.state,
            simulated_hosts=ledger_hosts, simulate=True)


def run_summary(stats: Stats, tally: EndpointTally, manifest: Manifest, store: JobStore,
                stopped: BatchrunError | None) -> dict[str, Any]:
    """The CLI's --json summary of one run."""
    summary = stats.summary()
    summary |= job_spend(store, manifest)
    if tally.endpoints:
        summary["endpoints"] = tally.summary()
    summary["job"] = manifest.job_id
    # The job's recorded state says why it stopped (paused-daily, interrupted, ...), where the
    # engine's last event can only say "stopped"; the message says what to do next.
    summary["state"] = manifest.state
    summary["message"] = messages.ending(stopped, manifest.failed, manifest.job_id)
    summary["results"] = manifest.output
    # The manifest's count is the output file's failed lines at the start plus this run's.
    summary["requests"]["failed_before"] = manifest.failed - stats.failed
    return summary


def job_spend(store: JobStore, manifest: Manifest) -> dict[str, Any]:
    """The whole job's spend so far at list prices (every run, from its spend record: right
    after a kill -9 too) and its --max-cost, for the summary and `status`."""
    spent = read_spent(spend_path(store.dir, manifest.job_id))
    return {"job_cost_usd": round(spent, 6), "max_cost_usd": manifest.options.get("max_cost")}


def ledger_lookup(state: StateUrl | None, endpoint: Endpoint,
                  ) -> tuple[Callable[[str], Today], bool]:
    """What the ledger knows of each model for the endpoint's key, if it is set (from the shared
    state when one is given: every host's usage)."""
    key = os.environ.get(endpoint.key_env, "").strip()
    path = JobStore().home / "ledger.sqlite3"
    if not key:
        return nothing_known, False
    if state is None and not path.exists():  # no job has run here yet: nothing used, known
        return nothing_known, True
    day, usage = usage_today(state, path)
    host, fingerprint = ledger.ledger_host(endpoint.host), ledger.key_fingerprint(key)
    learned = ledger.accountings_in(path, host, fingerprint) if path.exists() else {}
    if state is not None:  # every host's, where what one host learns every host uses
        learned |= shared_accountings(state, host, key)
    return known_today(usage, day, host, fingerprint, learned), True


def estimate_path(jobs: Path, configs: tuple[EndpointConfig, ...], *, model: str, tier: str,
                  limits: dict[str, int | None], concurrency: int | None, latency: float,
                  assume_output_tokens: int, on_bad_line: str, endpoints_file: Path | None,
                  state: StateUrl | None, via: str | None, batch_queue_tokens: int | None,
                  endpoint: tuple[str | None, str | None, str | None],
                  service_tier: str | None = None) -> dict[str, Any]:
    """The estimate of one file, with the endpoints file already read (the CLI's step)."""
    flex_options(service_tier, None, via, None)  # refused as submit refuses it
    # Today's usage is per endpoint and key with --endpoints: not looked up (counted as unused).
    # The key and host whose ledger is read: as submit would send (nothing is sent here).
    single = Endpoint.make(*endpoint, insecure=True)
    today, known = (nothing_known, False) if configs else ledger_lookup(state, single)
    cache = estimate_lookup(state, [c.endpoint for c in configs] or [single], JobStore().home,
                            from_file=bool(configs))
    result = estimate_job(
        jobs, model, tier, limits, concurrency=concurrency, latency_s=latency,
        assumed_output=assume_output_tokens, on_bad_line=on_bad_line, today=today,
        today_known=known, endpoints=configs, via=via or "sync", batch_queue=batch_queue_tokens,
        service_tier=service_tier, cache=cache,
    )
    if service_tier is not None and (refused := flex.refusal(
            m["model"] for m in result["models"])) is not None:
        raise InputError(refused)
    if configs and endpoints_file is not None:  # as submit checks the file against the input
        check_serves(configs, [m["model"] for m in result["models"]], endpoints_file)
    return result


def status_rows(store: JobStore, jobs: list[Manifest]) -> list[dict[str, Any]]:
    """Each job as `status --json` shows it: its state as it is now (a job left running by a
    process that died is crashed), its Batch API record as a user reads it."""
    rows = []
    for m in jobs:
        shown = store.effective_state(m)
        if shown == JobState.CRASHED:
            job.count_from_output(m)  # its last saves may lag what it wrote
        rows.append({**asdict(m), "batch": shown_record(m.batch, m.job_id), "state": shown,
                     "resume": m.resume_command, **job_bill(m.billed),
                     **job_spend(store, m)})
    return rows


def report_document(store: JobStore, ref: str) -> dict[str, Any]:
    """`batchrun report`'s document of the job `ref` names (id, prefix or output path): its
    manifest and its timeline (`recorded` False, with a `note`, for a job that has none)."""
    manifest = store.find(ref)
    running = store.is_running(manifest)
    recorded = timeline.read(timeline.timeline_path(store.dir, manifest.job_id), running)
    return document.build(manifest, recorded, store.effective_state(manifest))
