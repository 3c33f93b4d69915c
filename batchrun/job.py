"""Running a job as a whole: its manifest, its lock, the shared ledger, signals, the engine.

`submit` and `resume` in the CLI both end here. Nothing here knows about terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchrun.backends.batch.entry import (
    cancel_job,
    collect_fetched,
    ids_on_server,
    look_at_batches,
    run_batch,
)
from batchrun.backends.batch.look import Fetched
from batchrun.backends.batch.parts import (
    drop_unsent_parts,
    has_batches_on_server,
    has_open_parts,
    send_failed_again,
)
from batchrun.backends.batch.run import Detached
from batchrun.backends.cacheflow import OFF, CacheFlow
from batchrun.backends.costcap import (
    CostCap,
    price_table,
    priced_everywhere,
    refuse_uncappable,
)
from batchrun.backends.signals import on_signals
from batchrun.backends.stop import Stop, hands_over_to_batch
from batchrun.backends.sync.engine import Engine, JobSpec
from batchrun.backends.sync.upstreams import build_upstreams, with_endpoints
from batchrun.errors import (
    BadLine,
    BadLinesError,
    BatchrunError,
    DailyLimitReached,
    InputError,
    Interrupted,
    SpendCapReached,
    StateError,
)
from batchrun.events import Event, JobStarted, Listener, RequestFinished, StateChanged
from batchrun.files.cache import ResponseCache
from batchrun.files.checkpoint import (
    OutputScan,
    check_output_path,
    drop_failed,
    not_a_regular_file,
    read_output,
)
from batchrun.files.jobs import InputReport, input_report, read_jobs
from batchrun.files.jobstore import (
    JobOptions,
    JobState,
    JobStore,
    Manifest,
    describe_change,
    fingerprint,
    input_change,
    job_id_for,
)
from batchrun.files.ledger import DailyBudget, Ledger, Scope, key_fingerprint, utc_now
from batchrun.files.outputlock import OutputLock, Owner, read_owner
from batchrun.files.spend import SpendJournal, spend_path
from batchrun.http.endpoint import Endpoint
from batchrun.messages import phrase, state_unavailable_next
from batchrun.policy import flex
from batchrun.policy.prices import Via
from batchrun.policy.tiers import Limits, family
from batchrun.report.tally import count_endpoint, forget_failed
from batchrun.report.timeline import Recorder, timeline_path
from batchrun.routing import EndpointConfig, check_serves
from batchrun.routing.config import check_unchanged as check_endpoints_unchanged
from batchrun.routing.config import digest as endpoints_digest
from batchrun.state import SharedBudget, SharedStateError, StateUrl, open_cache
from batchrun.state import connect as connect_state

SIMULATOR_HOST = "simulator"
SAVE_EVERY_S = 2.0


async def _close_cache(cache: ResponseCache, notify: Callable[[str], None]) -> None:
    """Every line is written by now: answers the cache could not keep cost money on a later
    run, never this run's results, so its failure is said and the job ends as it ended."""
    try:
        await cache.close()
    except StateError as exc:
        notify(f"{exc.message} (answers of this run may not be in the response cache)")


def cache_flow(spec: JobSpec, cache: ResponseCache | None, simulate: bool,
               ) -> CacheFlow | None:
    """The job's use of the response cache; None with --no-cache."""
    if cache is None or spec.cache == OFF:
        return None
    return CacheFlow(cache, spec.cache, SIMULATOR_HOST if simulate else None)


def simulator_host(job_id: str) -> str:
    """The ledger's host for a --simulate job: its own, so one simulated job's usage never
    spends another's budget (the simulator keeps no daily count: the ledger is its --tpd), and
    per job, not per run, so a daily stop still holds on resume."""
    return f"{SIMULATOR_HOST}/{job_id}"


def spec_options(spec: JobSpec, simulate: bool) -> dict[str, Any]:
    """Everything that shapes the run, for the manifest. The key's *variable name* only."""
    ep = spec.endpoint
    return {
        "model": spec.model, "tier": spec.tier, "overrides": spec.overrides,
        "concurrency": spec.concurrency, "max_retries": spec.max_retries,
        "timeout_s": spec.timeout_s, "on_bad_line": spec.on_bad_line, "wait": spec.wait,
        "simulate": simulate, "base_url": None if ep.azure else ep.base_url,
        "azure_endpoint": ep.base_url if ep.azure else None, "api_key_env": ep.key_env,
        "insecure": ep.insecure, "max_response_mb": spec.max_response_mb,
        "endpoints": spec.endpoints_file, "record_endpoint": spec.record_endpoint,
        "endpoints_sha256": endpoints_digest(Path(spec.endpoints_file))
        if spec.endpoints_file else None,
        "via": spec.via, "poll_max_s": spec.poll_max_s,
        "batch_queue_tokens": spec.batch_queue_tokens, "max_cost": spec.max_cost,
        "service_tier": spec.service_tier, "flex_wait_s": spec.flex_wait_s,
        "cache": spec.cache,
    }


def spec_from_manifest(m: Manifest, overrides: dict[str, Any]) -> tuple[JobSpec, bool]:
    """Rebuild a job's spec from its manifest, with any options the user gives on resume."""
    given = [f"--{k}" for k, v in overrides.get("limits", {}).items() if v is not None]
    o = JobOptions.from_dict(m.options)
    if o.endpoints and given:
        raise InputError(
            f"job {m.job_id} runs over the endpoints of {o.endpoints}, where each endpoint's "
            f"limits are: change them there, not with {', '.join(given)}.")
    limit_overrides = {**o.overrides, **{k: v for k, v in overrides.pop("limits", {}).items()
                                         if v is not None}}
    o = replace(o, **{k: v for k, v in overrides.items() if v is not None})
    endpoint = Endpoint.make(o.base_url, o.azure_endpoint, o.api_key_env, o.insecure)
    spec = JobSpec(
        input=Path(m.input), output=Path(m.output), endpoint=endpoint, model=o.model,
        tier=o.tier, overrides=limit_overrides, concurrency=o.concurrency,
        max_retries=o.max_retries, timeout_s=o.timeout_s, on_bad_line=o.on_bad_line,
        wait=o.wait, max_response_mb=o.max_response_mb, via=o.via, poll_max_s=o.poll_max_s,
        batch_queue_tokens=o.batch_queue_tokens, detach=bool(o.detach),
        cancel_batches=bool(o.cancel_batches), max_cost=o.max_cost,
        service_tier=o.service_tier, flex_wait_s=o.flex_wait_s, cache=o.cache,
    )
    if o.endpoints:  # read again: the keys' variables are checked as on submit
        spec = with_endpoints(spec, Path(o.endpoints), o.record_endpoint, m.job_id,
                              need_keys=not o.simulate)
    return spec, o.simulate


@dataclass
class _ManifestUpdater:
    """Keeps the manifest's counts and state current; saves on each change of state."""

    store: JobStore
    manifest: Manifest
    saved_at: float = field(default_factory=time.monotonic)
    started: bool = False  # the engine accepted the input
    sync_via: str = "sync"  # how this run's per-minute path is billed (flex: its own rates)

    def __call__(self, event: Event) -> None:
        m = self.manifest
        match event:
            case JobStarted():
                self.started = True
                self.sync_via = event.via.value
                m.total = event.total
                m.done = event.already_done
            case RequestFinished(ok=ok, endpoint=endpoint):
                m.done += 1
                m.failed += not ok
                m.count_billed("batch" if event.batch else self.sync_via, event.model,
                               event.tokens_in, event.cached_in, event.tokens_out)
                if endpoint:
                    count_endpoint(m.endpoints, endpoint, ok)
                # Often enough for `status` to show progress; rare enough to cost nothing.
                if time.monotonic() - self.saved_at >= SAVE_EVERY_S:
                    self.store.save(m)
                    self.saved_at = time.monotonic()
            case StateChanged(state=state, detail=detail) if state in (JobState.RUNNING,
                                                                        JobState.PAUSED_DAILY):
                m.state, m.message = JobState(state), detail
                self.store.save(m)


def _check_flex(models: Iterable[str], notify: Callable[[str], None]) -> None:
    """--service-tier flex over the input's models: refuse the models without it (exit 2,
    nothing sent), warn about those batchrun has no word on."""
    if (refused := flex.refusal(models)) is not None:
        raise InputError(refused)
    if (unsure := flex.warning(models)) is not None:
        notify(unsure)


def _final_state(stop: BatchrunError | None) -> JobState:
    if stop is None:
        return JobState.DONE
    if isinstance(stop, Detached):
        return JobState.SUBMITTED
    if isinstance(stop, DailyLimitReached):
        return JobState.PAUSED_DAILY
    if isinstance(stop, SpendCapReached):
        return JobState.PAUSED_COST
    if isinstance(stop, Interrupted):
        return JobState.INTERRUPTED
    return JobState.STOPPED


def prepare(spec: JobSpec, simulate: bool, store: JobStore, force: bool = False) -> Manifest:
    """The manifest for submitting `spec`: a new one, or the existing job of that output.
    Changes nothing on disk: the run may yet be refused."""
    output = spec.output.expanduser().resolve()
    input_path = spec.input.resolve()
    check_output_path(output, spec.input)
    existing = store.for_output(output)
    if existing is not None and existing.input != str(input_path):
        raise InputError(
            f"{output} belongs to job {existing.job_id}, the results of {existing.input}; one "
            "output holds the results of one input. Choose another output with -o (or "
            f"continue that job with: {existing.resume_command})."
        )
    job_id = existing.job_id if existing else job_id_for(spec.input, output)
    started = _started_as(existing, output, input_path)
    try:
        print_, change = (input_change(started[1], spec.input) if started is not None
                          else (fingerprint(spec.input, full=True), None))
    except OSError:
        # The reader reports a missing or unreadable input with its own message.
        print_, change = {}, None
    if started is not None and change and not force:
        raise InputError(
            f"{spec.input} changed since job {started[0]} started: {change}. Results in "
            f"{output} would not match it. Use another -o for a new job, or add --force "
            "to continue anyway."
        )
    manifest = existing or Manifest(job_id=job_id, input=str(input_path),
                                    output=str(output), fingerprint=print_, options={})
    if manifest.options.get("model", spec.model) != spec.model:
        manifest.checked = None  # lines that name no model now get another one
    manifest.options = spec_options(spec, simulate)
    if print_ and describe_change(manifest.fingerprint, print_):
        manifest.fingerprint, manifest.checked = _baseline(spec.input, print_), None
    elif "sha256" in print_:
        manifest.fingerprint = print_  # same bytes, new mtime: the next look stays cheap
    return manifest


def _baseline(path: Path, print_: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint a job goes on from: with the hash of the whole content."""
    return print_ if "sha256" in print_ else fingerprint(path, full=True)


def _started_as(existing: Manifest | None, output: Path,
                input_path: Path) -> tuple[str, dict[str, Any]] | None:
    """The job that started this input's results in `output`, and the input's fingerprint
    then: from the manifest, or, with none here (another $BATCHRUN_HOME made it, or this one
    was wiped), from the record beside the output."""
    if existing is not None:
        return existing.job_id, existing.fingerprint
    owner = read_owner(output)
    if owner is not None and owner.input == str(input_path):
        return owner.job_id, owner.fingerprint
    return None


def _lock_output(output: Path) -> OutputLock:
    """Lock the output's sidecar and the output itself: every process on this host sees them,
    whatever path or $BATCHRUN_HOME it came by, and deleting the output frees neither. Creates
    the file (0600) if it is not there yet."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        return OutputLock(output)
    except BlockingIOError:
        raise InputError(
            f"another batchrun process is already running a job that writes {output}; wait "
            "for it to finish or stop it first (or choose another output with -o)."
        ) from None
    except ValueError:  # replaced by a device or a pipe since prepare() looked
        raise not_a_regular_file(output) from None
    except OSError as exc:
        raise InputError(
            f"cannot open output {output}: {exc.strerror}. Choose a writable path with -o."
        ) from None


def _claim_output(spec: JobSpec, manifest: Manifest, store: JobStore, lock: OutputLock,
                  retry_failed: bool) -> tuple[OutputScan, int]:
    """Under the output's lock: make sure the file is this job's (or new), record it as this
    job's, take its failed count from the file, and drop failed lines if asked. Returns what the
    output holds (its done ids are the ones not to send) and how many failed lines were
    dropped."""
    output = Path(manifest.output)
    owned = store.exists(manifest.job_id)
    scan = read_output(output)
    scan.check_ours(output, owned)
    owner = lock.owner()
    if owner is not None and owner.input != manifest.input:
        raise InputError(
            f"{output} holds the results of {owner.input} (job {owner.job_id}, recorded in "
            f"{lock.sidecar_path.name} beside it); one output holds the results of one input. "
            "batchrun did not change it: choose another output with -o, or move that file away."
        )
    if not owned and scan.done:
        foreign = _ids_not_in_input(scan.done, spec)
        if foreign:
            raise InputError(
                f"{output} holds results that are not this job's: {foreign[0]!r} is not an id "
                f"of {spec.input}. batchrun did not change it: choose another output with -o, "
                "or move that file away."
            )
    lock.record(Owner(manifest.job_id, manifest.input, manifest.fingerprint))
    dropped = 0
    if retry_failed and scan.failed:
        dropped = drop_failed(output)
        lock.follow()  # the rewrite is a new file: hold the lock on it
        scan = read_output(output)
    manifest.failed = len(scan.failed)
    return scan, dropped


def _ids_not_in_input(done: set[str], spec: JobSpec) -> list[str]:
    """An output with no manifest is ours only if every id in it is one of the input's."""
    left = set(done)
    for item in read_jobs(spec.input, spec.model):
        left.discard(item.output_id if isinstance(item, BadLine) else item.custom_id)
        if not left:
            break
    return sorted(left)


async def run(
    spec: JobSpec,
    manifest: Manifest,
    store: JobStore,
    api_key: str,
    listener: Listener,
    host: str,
    now_utc: Callable[[], dt.datetime] = utc_now,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    retry_failed: bool = False,
    notify: Callable[[str], None] = lambda message: None,
    state: StateUrl | None = None,
    simulated_hosts: Mapping[str, str] | None = None,
    simulate: bool = False,
) -> BatchrunError | None:
    """Run the job under its output's lock, with the shared ledger; record how it ended.

    `simulated_hosts` (--simulate --endpoints): the ledger host for each simulator's address (as
    ledger_host names it), whose port changes with every run while the job's daily budget must
    not; their keys are made up from `api_key`.

    A new job's manifest is written only once the engine has accepted the input, so a refused
    submit leaves nothing behind (not even the empty output the lock created)."""
    _check_paths(spec, manifest)
    store.ensure_dir()  # an unusable $BATCHRUN_HOME is named before anything else happens
    lock = _lock_output(Path(manifest.output))
    try:
        _reread_batches(manifest, store)
    except BaseException:
        lock.release()  # a library caller goes on in this process: the output must stay free
        raise
    updater = _ManifestUpdater(store, manifest)
    try:
        scan, dropped = _claim_output(spec, manifest, store, lock, retry_failed)
        if retry_failed and dropped:
            forget_failed(manifest.endpoints)
            notify(f"Dropped {dropped:,} failed results from {manifest.output}; they are sent "
                   "again now.")
        elif retry_failed:
            notify(f"No failed results in {manifest.output} to send again.")
        spec = replace(spec, output=Path(manifest.output))
        on_disk = store.exists(manifest.job_id)
        # The job's record for `batchrun report`, whoever runs it (the CLI, the library).
        timeline = Recorder(timeline_path(store.dir, manifest.job_id),
                            # time.time is utc_now().timestamp() without a datetime an event
                            time.time if now_utc is utc_now else lambda: now_utc().timestamp(),
                            keep=on_disk)
        ledger = Ledger(store.home / "ledger.sqlite3", now_utc)
        keyfp = key_fingerprint(api_key)
        key_for = ((lambda config: f"{api_key}-{config.name}") if simulated_hosts
                   else None)
        try:  # --state redis://: the daily budget and per-minute admission live there
            # The keys whose state this run may name in Redis (names derive from the key).
            keys = [api_key, *(key_for(c) if key_for else c.endpoint.api_key()
                               for c in spec.endpoints)]
            shared = await connect_state(state, now_utc, keys) if state is not None else None
        except SharedStateError as exc:
            ledger.close()
            raise SharedStateError(
                f"{exc.message} {state_unavailable_next(state.shown if state else None)}"
            ) from None
        except BaseException:
            ledger.close()
            raise
        # Only now: a run refused before it began leaves the job as it was, not "crashed".
        manifest.state, manifest.message = JobState.RUNNING, ""
        if on_disk:
            store.save(manifest)

        def budget_in(scope: Scope, limits: Limits,
                      job_tokens: Callable[[dt.date], int] | None = None,
                      ) -> DailyBudget | SharedBudget:
            if simulated_hosts:
                scope = replace(scope, host=simulated_hosts.get(scope.host, scope.host))
            if shared is not None:
                # The job's earlier runs' tokens: counted there again if Redis lost them.
                return shared.budget(scope, limits.tpd, limits.rpd, spec.timeout_s,
                                     manifest.job_id, job_tokens)
            return DailyBudget(ledger, scope, limits.tpd, limits.rpd, job_tokens)

        own: list[DailyBudget | SharedBudget] = []  # what they bill is the job's (manifest)

        def budget_for(model: str, limits: Limits) -> DailyBudget | SharedBudget:
            # One endpoint: the job's own tokens of the model are all in this one scope.
            scope = Scope(host, keyfp, family(model) or model)
            budget = budget_in(scope, limits,
                               lambda day: manifest.tokens_on(day, scope.model))
            own.append(budget)
            return budget

        def fan_out(event: Event) -> None:
            updater(event)
            timeline(event)
            listener(event)

        stop: BatchrunError | None = None
        crashed = True  # until proven otherwise: a bug must not leave the job "done"
        try:
            done = scan.done
            report = input_report(spec.input, spec.model, done, manifest.checked)
            manifest.checked = report.to_dict()
            if report.bad_total and spec.on_bad_line == "fail":
                raise BadLinesError(str(spec.input), report.bad, report.bad_total)
            if spec.max_cost is not None:
                refuse_uncappable(spec.max_cost, report.models, spec.input, spec.model,
                                  priced_everywhere(spec.endpoints))
            if spec.service_tier is not None:
                _check_flex(report.models, notify)
            if retry_failed:
                send_failed_again(manifest.batch)
            manifest.options["via"] = spec.via
            journal = SpendJournal(spend_path(store.dir, manifest.job_id))
            cache = (open_cache(state, store.home, simulate=simulate, notify=notify)
                     if spec.cache != OFF else None)
            try:
                stop = await _send(spec, manifest, store, api_key, fan_out, report, done,
                                   Budgets(budget_for, budget_in, key_for,
                                           CostCap(spec.max_cost, journal,
                                                   price_table(spec.endpoints),
                                                   _sync_rate(spec)),
                                           cache_flow(spec, cache, simulate)),
                                   now_utc, sleep, notify, on_disk)
            finally:
                journal.close()
                if cache is not None:
                    await _close_cache(cache, notify)
            crashed = False
        except BatchrunError as exc:
            stop, crashed = exc, False
            raise
        finally:
            # How the run ended is recorded even when the ledger cannot take its last
            # settlements (a full disk): the ledger's own error still reaches the user.
            try:
                try:
                    ledger.close()
                finally:
                    if shared is not None:
                        await shared.close()
            finally:
                for budget in own:
                    for day, tokens in budget.spent.items():
                        manifest.count_tokens(day, budget.scope.model, tokens)
                if updater.started or on_disk:
                    manifest.state = JobState.CRASHED if crashed else _final_state(stop)
                    manifest.message = stop.message if stop else ""
                    store.save(manifest)
                    timeline.close(str(manifest.state))
        return stop
    finally:
        if not updater.started:
            lock.discard_if_unused()
        lock.release()


def _check_paths(spec: JobSpec, manifest: Manifest) -> None:
    """Options that cannot go together, refused before anything is locked or sent."""
    if spec.endpoints and spec.via != "sync":
        raise InputError(
            f"--via {spec.via} sends through one endpoint's Batch API, and --endpoints spreads the "
            f"per-minute path over several, so they cannot go together. Drop --endpoints to use "
            f"the Batch API, or use --via sync with --endpoints.")
    if spec.cancel_batches and spec.via != "sync":
        raise InputError(
            f"--cancel-batches cancels the job's batches so that the sync path sends the rest; "
            f"add --via sync (the job goes by --via {spec.via} now).")
    if spec.detach and spec.via == "sync" and not has_open_parts(manifest.batch):
        raise InputError(
            "--detach leaves Batch API batches running and exits; the sync path (--via sync, "
            "the default) has nothing to leave running. Add --via batch (or --via auto), or "
            "drop --detach.")


@dataclass(frozen=True, slots=True)
class Budgets:
    """How the sync path gets a daily budget: by model for the one endpoint, by ledger scope
    for each endpoint of --endpoints (local SQLite, or shared in Redis)."""

    for_model: Callable[[str, Limits], DailyBudget | SharedBudget]
    in_scope: Callable[[Scope, Limits], DailyBudget | SharedBudget]
    # --simulate --endpoints: each simulated endpoint's key (none is in the environment)
    key_for: Callable[[EndpointConfig], str] | None = None
    # The job's spend beside the daily budget: capped with --max-cost, recorded always
    cost: CostCap | None = None
    cache: CacheFlow | None = None  # the response cache in the job's mode (None: --no-cache)


async def _send(spec: JobSpec, manifest: Manifest, store: JobStore, api_key: str,
                listener: Listener, report: InputReport, done: set[str], budgets: Budgets,
                now_utc: Callable[[], dt.datetime], sleep: Callable[[float], Awaitable[None]],
                notify: Callable[[str], None], on_disk: bool) -> BatchrunError | None:
    """Send what has no result yet by the job's path: the Batch API, or the sync engine (and,
    for --via auto, the Batch API for what is left once today's budget is spent). Returns why
    it stopped early, worded for the user; None when every request has a line."""
    # Requests in batches on the server not yet collected must not be sent again by the sync
    # path; parts never submitted are dropped when it runs.
    if spec.via == "sync" and has_batches_on_server(manifest.batch):
        return await _sync_beside_batches(spec, manifest, store, api_key, listener, report,
                                          done, budgets, now_utc, sleep, notify, on_disk)
    if spec.via == "batch" or has_batches_on_server(manifest.batch):
        return _phrase(await run_batch(spec, manifest, store, api_key, listener, report, done,
                                       sleep=sleep, notify=notify, cost=_batch_cost(budgets),
                                       cache=budgets.cache), spec, manifest)
    if drop_unsent_parts(manifest.batch) and on_disk:
        store.save(manifest)  # before the sync path sends what they held
    if spec.endpoints:
        check_serves(spec.endpoints, list(report.models), Path(str(spec.endpoints_file)))
    if spec.via == "auto":  # at the daily limit the Batch API goes on, no waiting
        spec = replace(spec, wait=False)
    ended = await _run_engine(spec, report, done, api_key, listener, budgets, now_utc, sleep)
    if ended is None:
        return None
    if hands_over_to_batch(ended, spec.via):
        notify(f"{ended.budget}: the {ended.total - ended.done:,} requests left go through the "
               "Batch API now, into the same output.")
        ended = await run_batch(spec, manifest, store, api_key, listener, report,
                                read_output(spec.output).done, sleep=sleep, notify=notify,
                                announce=False, cost=_batch_cost(budgets), cache=budgets.cache)
    return _phrase(ended, spec, manifest)


async def _run_engine(spec: JobSpec, report: InputReport, skip: set[str], api_key: str,
                      listener: Listener, budgets: Budgets,
                      now_utc: Callable[[], dt.datetime],
                      sleep: Callable[[float], Awaitable[None]]) -> Stop | None:
    """The sync path over every request of the input whose id is not in `skip`."""
    engine = Engine(spec, report, skip, api_key, listener, budgets.for_model, now_utc=now_utc,
                    sleep=sleep, upstreams=build_upstreams(spec, budgets.in_scope,
                                                           budgets.key_for),
                    cost=budgets.cost, cache=budgets.cache)
    return await on_signals(engine.interrupt, engine.run())


def _sync_rate(spec: JobSpec) -> Via:
    """The per-minute path's rate: flex processing is billed at Batch API rates."""
    return Via.FLEX if spec.service_tier == flex.FLEX else Via.SYNC


def _batch_cost(budgets: Budgets) -> CostCap | None:
    return budgets.cost.on_path(Via.BATCH) if budgets.cost is not None else None


def _phrase(ended: Stop | None, spec: JobSpec, manifest: Manifest) -> BatchrunError | None:
    """How a backend's run ended (stop.Backend), in the user's words; None: done."""
    if ended is None:
        return None
    key_envs = [c.endpoint.key_env for c in spec.endpoints] or [spec.endpoint.key_env]
    return phrase(ended, str(spec.output), manifest.resume_command,
                  ", $".join(dict.fromkeys(key_envs)))


async def _sync_beside_batches(spec: JobSpec, manifest: Manifest, store: JobStore,
                               api_key: str, listener: Listener, report: InputReport,
                               done: set[str], budgets: Budgets,
                               now_utc: Callable[[], dt.datetime],
                               sleep: Callable[[float], Awaitable[None]],
                               notify: Callable[[str], None],
                               on_disk: bool) -> BatchrunError | None:
    """`--via sync` while batches of the job run on the server: the requests no batch holds go
    by the sync path now; then the batches are collected as they finish (cancelled first with
    --cancel-batches), and what they left unfinished goes by the sync path too. Nothing is
    submitted to the Batch API."""
    if spec.cancel_batches:
        cancelled, _ = await cancel_job(spec, manifest, store, api_key)
        notify(f"Cancelled {cancelled} batch{'es' if cancelled != 1 else ''} of job "
               f"{manifest.job_id}: what they finished is collected, the rest goes by the sync "
               "path.")
    if drop_unsent_parts(manifest.batch) and on_disk:
        store.save(manifest)  # before the sync path sends what they held
    while True:
        held = ids_on_server(manifest, store)
        ended = await _run_engine(spec, report, done | held, api_key, listener, budgets,
                                  now_utc, sleep)
        if ended is not None:
            return _phrase(ended, spec, manifest)
        if not held:
            return None
        stop = await run_batch(spec, manifest, store, api_key, listener, report,
                               read_output(spec.output).done, sleep=sleep, notify=notify,
                               announce=False, collect_only=True, cost=_batch_cost(budgets),
                               cache=budgets.cache)
        if stop is not None:
            return _phrase(stop, spec, manifest)
        done = read_output(spec.output).done
        report = input_report(spec.input, spec.model, done, manifest.checked)
        listener = _going_on(listener)


def _going_on(listener: Listener) -> Listener:
    """The same run going on: a second start would count the first pass's results twice."""
    def heard(event: Event) -> None:
        if not isinstance(event, JobStarted):
            listener(event)
    return heard


def _reread_batches(manifest: Manifest, store: JobStore) -> None:
    """Under the output's lock: the job's Batch API record as saved now. Another process may
    have run the job since this one read its manifest (a resume that ended while `status`
    waited for the lock); saving the old record over its parts would forget their batches,
    and their requests would be submitted again."""
    saved = store.get(manifest.job_id)
    if saved is not None:
        manifest.batch = saved.batch


async def cancel_batches(manifest: Manifest, store: JobStore,
                         force: bool = False) -> tuple[int, int]:
    """`batchrun cancel`: cancel the job's running batches, under its output's lock (so not
    while a process runs the job). Returns (batches cancelled, parts dropped unsent)."""
    if store.is_running(manifest):  # first: it may be about to submit batches
        raise InputError(
            f"job {manifest.job_id} is running in another batchrun process: stop it first "
            f"(Ctrl-C; its batches go on running on the server), then run batchrun cancel "
            f"{manifest.job_id} again.")
    nothing = InputError(f"job {manifest.job_id} has no Batch API batches that are not "
                         "finished; nothing to cancel.")
    if not has_open_parts(manifest.batch):
        raise nothing
    spec, simulate = spec_from_manifest(manifest, {})
    if simulate:
        raise InputError(f"job {manifest.job_id} ran against the simulator, whose batches ended "
                         f"with it; run {manifest.resume_command} to send the rest again.")
    key = spec.endpoint.api_key()
    lock = _lock_output(Path(manifest.output))
    try:
        _reread_batches(manifest, store)
        if not has_open_parts(manifest.batch):  # collected since it was read
            raise nothing
        return await cancel_job(spec, manifest, store, key, force)
    finally:
        lock.release()


async def collect_finished(manifest: Manifest, store: JobStore,
                           listener: Listener) -> Interrupted | None:
    """`status JOB` of a job with batches on the server: one short look at each (no lock held
    while it waits on the network), then, under the output's lock, merge what finished. Never
    submits, never waits, never rewrites the job's recorded state. Raises what stopped it;
    returns Interrupted after a Ctrl-C during the look (nothing was recorded)."""
    spec, _ = spec_from_manifest(manifest, {})
    key = spec.endpoint.api_key()
    looking = asyncio.ensure_future(look_at_batches(spec, manifest, store, key))

    def stop() -> None:
        looking.cancel()

    try:
        fetched = await on_signals(stop, looking)
    except asyncio.CancelledError:
        if not looking.cancelled():
            raise
        return Interrupted(f"Interrupted while asking the Batch API: nothing was collected or "
                           f"recorded. The job's batches go on; batchrun resume "
                           f"{manifest.job_id} collects them.")
    try:
        if fetched.batches:
            await _merge_fetched(spec, manifest, store, key, listener, fetched)
    finally:
        fetched.discard()
    if fetched.trouble is not None:
        again = "with that key" if fetched.unknown else "again later"
        raise StateError(f"{fetched.trouble}. The job's batches are shown as last recorded; "
                         f"run batchrun status {manifest.job_id} {again}.")
    return None


async def _merge_fetched(spec: JobSpec, manifest: Manifest, store: JobStore, key: str,
                         listener: Listener, fetched: Fetched) -> None:
    try:
        lock = OutputLock(Path(manifest.output))
    except (BlockingIOError, ValueError, OSError):
        raise StateError(f"job {manifest.job_id} is running in another batchrun process, "
                         "which collects its batches.") from None
    try:
        saved = store.get(manifest.job_id)  # another process may have run it since
        if saved is None:
            return
        spec = replace(spec, output=Path(saved.output))
        done = read_output(spec.output).done
        report = input_report(spec.input, spec.model, done, saved.checked)
        await collect_fetched(spec, saved, store, key, listener, report, done, fetched)
        count_from_output(saved)
        store.save(saved)
    finally:
        lock.release()


@dataclass(frozen=True, slots=True)
class Finished:
    """`resume` of a job with nothing left to do."""

    done: int
    total: int
    failed: int


def plan_resume(manifest: Manifest, retry_failed: bool, force: bool,
                overrides: dict[str, Any]) -> tuple[JobSpec, bool] | Finished:
    """What `resume` runs: the job's spec with the user's changes, or Finished. The failed
    count comes from the output file: a crash may have left failures no manifest counted. The
    failed lines themselves are dropped later, under the output's lock (run(retry_failed=)).
    A finished job whose input changed is not finished with it: refused as any job's changed
    input is, or with `force` run over the input as it is now (sending ids with no result)."""
    if manifest.finished and not _input_changed(manifest):
        failed = len(read_output(Path(manifest.output)).failed)
        if not (retry_failed and failed):
            return Finished(manifest.done, manifest.total, failed)
    check_input_unchanged(manifest, force)
    spec, simulate = spec_from_manifest(manifest, overrides)
    # What the user changes on resume holds for the job from now on, as if submitted with it: a
    # later plain `resume` (the command every message prints) must not go back to the old limits.
    manifest.options.update({
        "overrides": spec.overrides, "concurrency": spec.concurrency,
        "max_retries": spec.max_retries, "timeout_s": spec.timeout_s, "wait": spec.wait,
        "max_response_mb": spec.max_response_mb, "poll_max_s": spec.poll_max_s,
        "batch_queue_tokens": spec.batch_queue_tokens, "max_cost": spec.max_cost,
        "flex_wait_s": spec.flex_wait_s, "cache": spec.cache})
    return spec, simulate


def count_from_output(manifest: Manifest) -> None:
    """Set a job's done and failed counts from its output file (read only)."""
    with contextlib.suppress(BatchrunError):  # an unreadable output: keep what was saved
        scan = read_output(Path(manifest.output))
        manifest.done, manifest.failed = len(scan.done), len(scan.failed)


def _input_changed(manifest: Manifest) -> bool:
    try:
        return input_change(manifest.fingerprint, Path(manifest.input))[1] is not None
    except OSError:
        return False  # gone: a finished job has nothing more to send without it


def check_input_unchanged(manifest: Manifest, force: bool) -> None:
    path = Path(manifest.input)
    try:
        now, change = input_change(manifest.fingerprint, path)
        if change and not force:
            raise InputError(
                f"{path} changed since job {manifest.job_id} started: {change}. Its results "
                "would not match. Restore the file, or add --force to resume against it as it "
                "is now."
            )
        if change:
            manifest.fingerprint, manifest.checked = _baseline(path, now), None
        elif "sha256" in now:
            manifest.fingerprint = now  # same bytes, new mtime: the next look stays cheap
    except OSError:
        raise InputError(
            f"the input of job {manifest.job_id}, {path}, is gone; put it back to resume."
        ) from None
    check_endpoints_unchanged(manifest.options, manifest.job_id, force)

