"""batchrun as a library: the same jobs as the CLI, from Python.

    submit / submit_async   a JSONL file -> Job          (blocks / awaits)
    run / run_async         dicts -> result dicts, in input order, checkpointed under $BATCHRUN_HOME
    resume                  a Job, job id or output path -> Job
    estimate, status        what the CLI's `estimate --json` and `status --json` print, as dicts

Keyword options are the CLI's long options in snake_case. Usage and input errors (the CLI's exit
2) raise `batchrun.errors.InputError`; once a job has started, every ending comes back as a Job
whose `state` and `exit_code` say which. Nothing is printed unless asked: `on_event` receives the
typed events of `batchrun.events`, `progress=True` shows the live display on stderr.

The CLI is a client of this module: `prepare_submit`, `prepare_resume` and `execute` are the
steps it shares with the functions above.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import orjson

from batchrun import ledger, runner
from batchrun.batch.parts import forget_open_parts, shown_record
from batchrun.endpoint import Endpoint
from batchrun.endpoints import EndpointConfig, check_serves, load_endpoints
from batchrun.endpoints.tally import EndpointTally
from batchrun.endpoints.upstreams import with_endpoints
from batchrun.engine import JobSpec
from batchrun.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    BadLine,
    BatchrunError,
    InputError,
)
from batchrun.estimate import Today, known_today, nothing_known
from batchrun.estimate import estimate as estimate_job
from batchrun.events import Event, Listener, Note, Stats, emit_all
from batchrun.jobs import read_jobs
from batchrun.jobstore import JobState, JobStore, Manifest, state_home
from batchrun.signals import interrupt_work
from batchrun.spec import DEFAULT_MAX_RESPONSE_MB
from batchrun.state import (
    StateUrl,
    leaving_shared,
    manifest_options,
    parse_state_url,
    state_for_resume,
)
from batchrun.state._open import shared_accountings, usage_today
from batchrun.tiers import TIERS

T = TypeVar("T")
EventHook = Callable[[Event], None]

# The largest whole number an option takes: past any real budget, and within what the manifest
# (64-bit integers), the ledger (SQLite) and Redis's scripts (doubles, exact to 2**53) hold.
MAX_WHOLE = 10**15
# Seconds a wait may be given as: a day, which --timeout and --poll-max never need to pass (an
# infinite one cannot become the whole milliseconds the engine schedules with).
MAX_SECONDS = 86_400.0
VIAS = ("sync", "batch", "auto")
ON_BAD_LINE = ("fail", "skip")
# The options of one endpoint, which an endpoints file gives per endpoint instead.
SINGLE_ENDPOINT = ("base_url", "azure_endpoint", "api_key_env", "tier", "rpm", "tpm", "rpd",
                   "tpd")


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests of the job (every run): `done` have a result line, `failed` of them an error."""

    total: int
    done: int
    failed: int

    @property
    def ok(self) -> int:
        return self.done - self.failed

    @property
    def not_done(self) -> int:
        return max(0, self.total - self.done)


@dataclass(frozen=True, slots=True)
class Tokens:
    """Tokens billed by this call (not by the job's earlier runs)."""

    input: int = 0
    output: int = 0


@dataclass(frozen=True, slots=True)
class Job:
    """How a job stands after a call: why it ended (`state`, `exit_code` as the CLI's, `message`
    as the CLI would print it), where its results are, and what this call spent."""

    id: str
    state: JobState
    exit_code: int
    message: str
    input: Path
    output: Path
    counts: Counts
    tokens: Tokens = Tokens()
    cost_usd: float | None = 0.0
    summary: Mapping[str, Any] | None = None  # the CLI's --json summary of this run, if one ran

    def results(self) -> Iterator[dict[str, Any]]:
        """The result lines written so far, as dicts (the OpenAI Batch API output format), in
        the order they were written."""
        with contextlib.suppress(FileNotFoundError), self.output.open("rb") as lines:
            for raw in lines:
                if raw.strip():
                    with contextlib.suppress(orjson.JSONDecodeError):  # a torn last line
                        yield orjson.loads(raw)


class Answers(list[dict[str, Any] | None]):
    """`run()`'s result lines, one per request in input order: None where a request has no
    result yet (the job stopped early: `job` says why; calling `run()` again goes on)."""

    job: Job

    def __init__(self, items: Iterable[dict[str, Any] | None], job: Job) -> None:
        super().__init__(items)
        self.job = job


# ---- options ------------------------------------------------------------------------------

def check_tier(value: str) -> str:
    """Tier names are not case-sensitive; an unknown one is refused before anything runs."""
    tier = value.lower()
    if tier not in TIERS:
        raise InputError(f"unknown tier {value!r}; choose one of {', '.join(TIERS)}.")
    return tier


def _check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InputError(f"{name}={value!r} is out of range: give a number from {low:g} to "
                         f"{high:g}.")


def _check_choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InputError(f"{name}={value!r}: choose one of {', '.join(choices)}.")


def _check_options(o: Mapping[str, Any]) -> None:
    """What the CLI's option parser checks, for keyword options (exit 2 there, InputError here)."""
    for name in ("rpm", "tpm", "rpd", "tpd", "batch_queue_tokens"):
        _check_range(name, o.get(name), 0, MAX_WHOLE)
    _check_range("concurrency", o.get("concurrency"), 1, MAX_WHOLE)
    _check_range("max_retries", o.get("max_retries"), 0, MAX_WHOLE)
    _check_range("timeout", o.get("timeout"), 1, MAX_SECONDS)
    _check_range("drain", o.get("drain"), 0, MAX_SECONDS)
    _check_range("poll_max", o.get("poll_max"), 1, MAX_SECONDS)
    _check_range("max_response_mb", o.get("max_response_mb"), 0.0001, 1e6)
    _check_choice("via", o.get("via"), VIAS)
    _check_choice("on_bad_line", o.get("on_bad_line"), ON_BAD_LINE)


def batch_options(via: str | None, detach: bool | None, poll_max: float | None,
                  queue: int | None, given_only: bool = False) -> dict[str, Any]:
    """The Batch API options as JobSpec fields; `given_only` (resume): only those given."""
    options: dict[str, Any] = {"via": via, "detach": detach or None,
                               "poll_max_s": poll_max, "batch_queue_tokens": queue}
    if given_only:
        return options
    defaults = {"via": "sync", "detach": False, "poll_max_s": 60.0}
    return {k: defaults[k] if v is None and k in defaults else v for k, v in options.items()}


def refuse_beside_endpoints(path: Path, given: list[str], from_env: bool) -> None:
    """--endpoints: each endpoint's URL, key, tier and limits come from the file, so the one
    endpoint's options beside it are a usage error (the environment's defaults are not)."""
    if given and from_env:  # the user typed no --endpoints: say where it came from
        raise InputError(
            f"--endpoints and {', '.join(given)} cannot go together: $BATCHRUN_ENDPOINTS is set "
            f"({path}), and with it each endpoint's URL, key variable, tier and limits come "
            f"from that file. Drop {', '.join(given)}, or unset BATCHRUN_ENDPOINTS to use one "
            "endpoint.")
    if given:
        raise InputError(
            f"--endpoints and {', '.join(given)} cannot go together: with --endpoints each "
            f"endpoint's URL, key variable, tier and limits come from {path}. Drop "
            f"{', '.join(given)}, or drop --endpoints to use one endpoint.")


def _given_flags(options: Mapping[str, Any]) -> list[str]:
    return [f"--{name.replace('_', '-')}" for name in SINGLE_ENDPOINT
            if options.get(name) is not None]


# ---- the steps the CLI shares -------------------------------------------------------------

@dataclass(slots=True)
class Prepared:
    """A job ready to run: its spec, manifest and store, or `finished` when nothing is left."""

    spec: JobSpec
    manifest: Manifest
    store: JobStore
    simulate: bool
    state: StateUrl | None
    retry_failed: bool = False
    finished: runner.Finished | None = None


def prepare_submit(jobs: Path, *, output: Path | None = None, model: str = "gpt-4o-mini",
                   tier: str = "tier1", rpm: int | None = None, tpm: int | None = None,
                   rpd: int | None = None, tpd: int | None = None,
                   concurrency: int | None = None, base_url: str | None = None,
                   azure_endpoint: str | None = None, api_key_env: str | None = None,
                   max_retries: int = 8, timeout: float = 600.0, drain: float = 10.0,
                   max_response_mb: float | None = None, wait: bool | None = None,
                   on_bad_line: str = "fail", simulate: bool = False, insecure: bool = False,
                   force: bool = False, endpoints: Path | None = None,
                   record_endpoint: bool = False, state: str | None = None,
                   via: str | None = None, detach: bool = False, poll_max: float | None = None,
                   batch_queue_tokens: int | None = None,
                   beside_endpoints: Callable[[Path], None] = lambda _: None) -> Prepared:
    """`submit`'s checks and plan; changes nothing on disk. `beside_endpoints` refuses the
    single endpoint's options given with `endpoints` (the caller knows which were given)."""
    tier = check_tier(tier)
    state_url = parse_state_url(state)
    if output is None:
        absolute = jobs.resolve()
        output = absolute.with_name(absolute.name.removesuffix(".jsonl") + ".results.jsonl")
    spec = JobSpec(
        input=jobs, output=output,
        endpoint=Endpoint.make(base_url, azure_endpoint, api_key_env, insecure),
        model=model, tier=tier, overrides={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd},
        concurrency=concurrency, max_retries=max_retries,
        max_response_mb=max_response_mb or DEFAULT_MAX_RESPONSE_MB, timeout_s=timeout,
        drain_s=drain, on_bad_line=on_bad_line, wait=bool(wait),
        **batch_options(via, detach, poll_max, batch_queue_tokens),
    )
    if endpoints is not None:
        beside_endpoints(endpoints)
        spec = with_endpoints(spec, endpoints, record_endpoint, need_keys=not simulate)
    elif record_endpoint:
        raise InputError("--record-endpoint names the endpoint of --endpoints in each "
                         "output line; give --endpoints FILE.toml too.")
    store = JobStore()
    manifest = runner.prepare(spec, simulate, store, force)
    manifest.options.update(state_url.manifest_options() if state_url else {})
    prepared = Prepared(spec, manifest, store, simulate, state_url)
    if manifest.finished and store.exists(manifest.job_id) and not force:
        runner.count_from_output(manifest)  # the file decides: it may have lost lines since
        if manifest.done >= manifest.total:
            prepared.finished = runner.Finished(manifest.done, manifest.total, manifest.failed)
    return prepared


def prepare_resume(manifest: Manifest, store: JobStore, *, retry_failed: bool = False,
                   force: bool = False, drain: float = 10.0, state: str | None = None,
                   state_from_env: bool = False, warn: Callable[[str], None] = lambda _: None,
                   **given: Any) -> Prepared:
    """`resume`'s plan for a job: its spec with the options given now (None: as before)."""
    plan = runner.plan_resume(manifest, retry_failed, force, {
        "limits": {k: given.get(k) for k in ("rpm", "tpm", "rpd", "tpd")},
        "concurrency": given.get("concurrency"), "max_retries": given.get("max_retries"),
        "timeout_s": given.get("timeout"), "max_response_mb": given.get("max_response_mb"),
        "wait": given.get("wait"), "cancel_batches": given.get("cancel_batches") or None,
        **batch_options(given.get("via"), given.get("detach"), given.get("poll_max"),
                        given.get("batch_queue_tokens"), given_only=True),
    })
    if isinstance(plan, runner.Finished):
        return Prepared(_spec_stub(manifest), manifest, store, False, None, retry_failed, plan)
    spec, simulate = plan
    spec = replace(spec, drain_s=drain)  # how this run ends at Ctrl-C: not saved with the job
    state_url = state_for_resume(state, manifest.options, state_from_env)
    if (leaving := leaving_shared(state_url, manifest.options)) is not None:
        warn(leaving)
    manifest.options.update(manifest_options(state_url))
    return Prepared(spec, manifest, store, simulate, state_url, retry_failed)


def _spec_stub(manifest: Manifest) -> JobSpec:
    """A finished job runs nothing: its spec only names its files."""
    return JobSpec(input=Path(manifest.input), output=Path(manifest.output),
                   endpoint=Endpoint.make(None, None, None), model="", tier="tier1",
                   overrides={})


def finished_message(plan: runner.Finished, manifest: Manifest) -> tuple[str, int]:
    """Nothing left to send: what to say (and how to send the failures again), and the exit
    code the job's last run ended with, so a script sees failures however it asks."""
    again = (f" Send the failed ones again with: batchrun resume {manifest.job_id} "
             "--retry-failed" if plan.failed else "")
    message = (f"Job {manifest.job_id} is finished: {plan.done:,} of {plan.total:,} requests "
               f"have a result ({plan.failed:,} failed). Results: {manifest.output}.{again}")
    return message, EXIT_SOME_FAILED if plan.failed else EXIT_OK


async def execute(p: Prepared, listener: Listener,
                  notify: Callable[[str], None]) -> BatchrunError | None:
    """Run a prepared job to its end; returns why it stopped early (None: every request has a
    line). Raises what refused it before it began, and a local failure during it."""
    spec, manifest, store = p.spec, p.manifest, p.store
    if not p.simulate:
        # With --endpoints each endpoint's key is read when its client is made.
        key = "" if spec.endpoints else spec.endpoint.api_key()
        return await runner.run(spec, manifest, store, key, listener, spec.endpoint.host,
                                now_utc=ledger.utc_now, retry_failed=p.retry_failed,
                                notify=notify, state=p.state)
    from batchrun.sim import SimConfig, SimLimits, SimServer, Simulator

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
        return await runner.run(replace(spec, endpoint=endpoint), manifest, store,
                                "sk-simulated", listener, runner.simulator_host(manifest.job_id),
                                now_utc=ledger.utc_now, retry_failed=p.retry_failed,
                                notify=notify, state=p.state)


async def _simulate_endpoints(p: Prepared, listener: Listener,
                              notify: Callable[[str], None]) -> BatchrunError | None:
    """--simulate --endpoints: one simulator per endpoint, with that endpoint's limits (of the
    job's model), so an endpoints file can be tried offline. Each endpoint's daily budget is
    the job's own, kept by endpoint name: a simulator's port changes with every run."""
    from batchrun.sim import SimConfig, SimLimits, SimServer, Simulator

    spec = p.spec
    job_host = runner.simulator_host(p.manifest.job_id)
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
        return await runner.run(
            replace(spec, endpoint=configs[0].endpoint, endpoints=tuple(configs)), p.manifest,
            p.store, "sk-simulated", listener, job_host, now_utc=ledger.utc_now,
            retry_failed=p.retry_failed, notify=notify, state=p.state,
            simulated_hosts=ledger_hosts)


def run_summary(stats: Stats, tally: EndpointTally, manifest: Manifest,
                stopped: BatchrunError | None) -> dict[str, Any]:
    """The CLI's --json summary of one run."""
    summary = stats.summary()
    if tally.endpoints:
        summary["endpoints"] = tally.summary()
    summary["job"] = manifest.job_id
    # The job's recorded state says why it stopped (paused-daily, interrupted, ...), where the
    # engine's last event can only say "stopped"; the message says what to do next.
    summary["state"] = manifest.state
    summary["message"] = stopped.message if stopped is not None else ""
    summary["results"] = manifest.output
    # The manifest's count is the output file's failed lines at the start plus this run's.
    summary["requests"]["failed_before"] = manifest.failed - stats.failed
    return summary


# ---- the library --------------------------------------------------------------------------

def _job(manifest: Manifest, exit_code: int, message: str, state: JobState | None = None,
         summary: dict[str, Any] | None = None) -> Job:
    tokens = Tokens(**summary["tokens"]) if summary else Tokens()
    return Job(
        id=manifest.job_id, state=JobState(state or manifest.state), exit_code=exit_code,
        message=message, input=Path(manifest.input), output=Path(manifest.output),
        counts=Counts(manifest.total, manifest.done, manifest.failed), tokens=tokens,
        cost_usd=summary["cost_usd"] if summary else 0.0, summary=summary)


async def _launch(p: Prepared, on_event: EventHook | None, progress: bool) -> Job:
    """Run a prepared job; every ending once it started is a Job."""
    if p.finished is not None:
        message, code = finished_message(p.finished, p.manifest)
        return _job(p.manifest, code, message)
    stats, tally = Stats(), EndpointTally()
    def hook(event: Event) -> None:
        if on_event is not None:
            on_event(event)

    def note(text: str) -> None:
        hook(Note(text))

    hooks: list[Listener] = [stats, tally, hook]
    with contextlib.ExitStack() as stack:
        notify: Callable[[str], None] = note
        if progress:  # rich is loaded only here: a library user who asks for no display
            from batchrun.progress import ProgressDisplay

            display = stack.enter_context(ProgressDisplay(stats, sys.stderr, endpoints=tally))
            hooks.append(display)
            notify = _both(note, display.note)
        try:
            stopped = await execute(p, emit_all(*hooks), notify)
        except InputError:
            raise
        except BatchrunError as exc:  # a local failure once it ran: the job says so
            recorded = p.store.get(p.manifest.job_id)
            if recorded is None:
                raise
            return _job(recorded, exc.exit_code, exc.message,
                        state=p.store.effective_state(recorded))
    summary = run_summary(stats, tally, p.manifest, stopped)
    if stopped is None:
        code = EXIT_SOME_FAILED if p.manifest.failed else EXIT_OK
        return _job(p.manifest, code, "", summary=summary)
    return _job(p.manifest, stopped.exit_code, stopped.message, summary=summary)


def _both(*notes: Callable[[str], None]) -> Callable[[str], None]:
    def told(text: str) -> None:
        for note in notes:
            note(text)
    return told


def _submit_options(options: dict[str, Any]) -> dict[str, Any]:
    _check_options(options)
    for name in ("base_url", "azure_endpoint"):  # as the CLI: the environment's default
        env = {"base_url": "OPENAI_BASE_URL", "azure_endpoint": "AZURE_OPENAI_ENDPOINT"}[name]
        if options.get(name) is None and os.environ.get(env):
            options[name] = os.environ[env]
    if options.get("state") is None and os.environ.get("BATCHRUN_STATE"):
        options["state"] = os.environ["BATCHRUN_STATE"]
    if options.get("endpoints") is not None:
        options["endpoints"] = Path(options["endpoints"])
    if options.get("output") is not None:
        options["output"] = Path(options["output"])
    return options


_SUBMIT_OPTIONS = frozenset(inspect.signature(prepare_submit).parameters) - {
    "jobs", "beside_endpoints"}


async def submit_async(jobs: str | os.PathLike[str], *, on_event: EventHook | None = None,
                       progress: bool = False, **options: Any) -> Job:
    """`batchrun submit JOBS` from a running loop. See `submit`."""
    if unknown := sorted(set(options) - _SUBMIT_OPTIONS):
        raise InputError(f"submit: unknown option {unknown[0]!r}; the options are the CLI's "
                         "long options in snake_case (see `batchrun submit --help`).")
    given = _given_flags(options)  # before the environment's defaults, which are no error
    options = {k: v for k, v in _submit_options(options).items() if v is not None}
    prepared = prepare_submit(Path(jobs), **options, beside_endpoints=lambda path: (
        refuse_beside_endpoints(path, given, False)))
    return await _launch(prepared, on_event, progress)


def submit(jobs: str | os.PathLike[str], *, on_event: EventHook | None = None,
           progress: bool = False, **options: Any) -> Job:
    """Send every request in the JSONL file `jobs`; block until the job ends, and return it.

    Options are `batchrun submit`'s (output, model, tier, rpm, tpm, rpd, tpd, concurrency,
    base_url, azure_endpoint, api_key_env, max_retries, timeout, drain, max_response_mb, wait,
    on_bad_line, simulate, insecure, force, endpoints, record_endpoint, state, via, detach,
    poll_max, batch_queue_tokens). Works inside a running event loop (Jupyter) too: the job then
    runs on a worker thread, and `on_event` is called there."""
    return _block(submit_async(jobs, on_event=on_event, progress=progress, **options))


def _find(job: Job | str | os.PathLike[str] | None, store: JobStore,
          retry_failed: bool) -> Manifest:
    if isinstance(job, Job):
        return store.find(job.id)
    if job is not None:
        return store.find(str(job))
    found = store.latest_unfinished(with_failures=retry_failed)
    if found is None:
        raise InputError("No unfinished job to resume. Start one with batchrun.submit().")
    return found


async def resume_async(job: Job | str | os.PathLike[str] | None = None, *,
                       on_event: EventHook | None = None, progress: bool = False,
                       retry_failed: bool = False, force: bool = False, drain: float = 10.0,
                       state: str | None = None, **options: Any) -> Job:
    """`batchrun resume` from a running loop. See `resume`."""
    _check_options({**options, "drain": drain})
    known = {"rpm", "tpm", "rpd", "tpd", "concurrency", "max_retries", "timeout",
             "max_response_mb", "wait", "via", "detach", "poll_max", "batch_queue_tokens",
             "cancel_batches"}
    if unknown := sorted(set(options) - known):
        raise InputError(f"resume: unknown option {unknown[0]!r}; the options are the CLI's "
                         "long options in snake_case (see `batchrun resume --help`).")
    store = JobStore()
    manifest = _find(job, store, retry_failed)
    prepared = prepare_resume(manifest, store, retry_failed=retry_failed, force=force,
                              drain=drain, state=state, **options)
    return await _launch(prepared, on_event, progress)


def resume(job: Job | str | os.PathLike[str] | None = None, *,
           on_event: EventHook | None = None, progress: bool = False,
           retry_failed: bool = False, force: bool = False, drain: float = 10.0,
           state: str | None = None, **options: Any) -> Job:
    """Continue a paused, interrupted or crashed job (a Job, its id, a unique prefix of it, or
    its output path; None: the most recently updated unfinished one). Options given change the
    job from now on, as `batchrun resume --rpm ...` does."""
    return _block(resume_async(job, on_event=on_event, progress=progress,
                               retry_failed=retry_failed, force=force, drain=drain,
                               state=state, **options))


def _request_lines(requests: Iterable[Mapping[str, Any]]) -> bytes:
    lines = []
    for n, request in enumerate(requests, 1):
        if not isinstance(request, Mapping):
            raise InputError(f"request {n} is a {type(request).__name__}, not a dict: give "
                             "dicts shaped as input lines ({'id': ..., 'prompt': ...}).")
        try:
            lines.append(orjson.dumps(dict(request)))
        except TypeError as exc:
            raise InputError(f"request {n} cannot be written as JSON: {exc}.") from None
    return b"\n".join(lines) + b"\n" if lines else b""


def _run_paths(data: bytes, name: str | None, output: str | os.PathLike[str] | None,
               shaping: Mapping[str, Any]) -> tuple[Path, Path]:
    """Where run() keeps its requests and results: by `name`, else by a hash of the requests
    and of the options that shape the answers, so the same call finds its earlier results."""
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise InputError(f"name={name!r}: give a plain name (letters, digits, - and _).")
    digest = hashlib.sha256(data + orjson.dumps(dict(shaping), option=orjson.OPT_SORT_KEYS))
    folder = state_home() / "runs" / (name or digest.hexdigest()[:16])
    return folder / "requests.jsonl", Path(output) if output else folder / "results.jsonl"


def _write_if_changed(path: Path, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.read_bytes() == data:
            return  # rewriting would change its mtime: the job checks the input for changes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise InputError(f"cannot write the requests to {path}: {exc.strerror}. Set "
                         "$BATCHRUN_HOME to a writable directory.") from None


def _in_input_order(input_path: Path, job: Job, model: str) -> Answers:
    by_id = {line.get("custom_id"): line for line in job.results()}
    ids = (item.output_id if isinstance(item, BadLine) else item.custom_id
           for item in read_jobs(input_path, model))
    return Answers((by_id.get(i) for i in ids), job)


async def run_async(requests: Iterable[Mapping[str, Any]], *, name: str | None = None,
                    output: str | os.PathLike[str] | None = None, model: str = "gpt-4o-mini",
                    on_event: EventHook | None = None, progress: bool = False,
                    **options: Any) -> Answers:
    """`run` from a running loop."""
    data = _request_lines(requests)
    if not data:
        raise InputError("run() was given no requests.")
    shaping = {"model": model, **{k: options.get(k) for k in (
        "base_url", "azure_endpoint", "simulate", "endpoints", "via")}}
    shaping["endpoints"] = str(shaping["endpoints"]) if shaping["endpoints"] else None
    input_path, output_path = _run_paths(data, name, output, shaping)
    _write_if_changed(input_path, data)
    job = await submit_async(input_path, output=output_path, model=model, on_event=on_event,
                             progress=progress, **options)
    return _in_input_order(input_path, job, model)


def run(requests: Iterable[Mapping[str, Any]], *, name: str | None = None,
        output: str | os.PathLike[str] | None = None, model: str = "gpt-4o-mini",
        on_event: EventHook | None = None, progress: bool = False, **options: Any) -> Answers:
    """Send input-shaped dicts (`{"id": "a1", "prompt": "..."}`, chat or Batch API lines) and
    return their result lines as dicts in input order (None: no result yet; `answers.job` says
    why). Checkpointed like a file job: the requests and results live under
    $BATCHRUN_HOME/runs/, keyed by a hash of the requests, model, endpoint and path options (or
    by `name`; or the results at `output`), so calling it again with the same requests sends
    only what has no result yet. Other options are `submit`'s."""
    return _block(run_async(requests, name=name, output=output, model=model,
                            on_event=on_event, progress=progress, **options))


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


def estimate(jobs: str | os.PathLike[str] | Iterable[Mapping[str, Any]], *,
             model: str = "gpt-4o-mini", tier: str = "tier1", rpm: int | None = None,
             tpm: int | None = None, rpd: int | None = None, tpd: int | None = None,
             concurrency: int | None = None, latency: float = 2.0,
             assume_output_tokens: int = 256, on_bad_line: str = "fail",
             endpoints: str | os.PathLike[str] | None = None, state: str | None = None,
             via: str | None = None, batch_queue_tokens: int | None = None,
             base_url: str | None = None, azure_endpoint: str | None = None,
             api_key_env: str | None = None) -> dict[str, Any]:
    """Tokens, cost and time to finish, as `batchrun estimate --json` prints them. Sends
    nothing. `jobs` is a JSONL path or an iterable of input-shaped dicts."""
    _check_options({"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd, "concurrency": concurrency,
                    "on_bad_line": on_bad_line, "via": via,
                    "batch_queue_tokens": batch_queue_tokens})
    tier = check_tier(tier)
    configs: tuple[EndpointConfig, ...] = ()
    if endpoints is not None:
        refuse_beside_endpoints(Path(endpoints), _given_flags(
            {"base_url": base_url, "azure_endpoint": azure_endpoint, "api_key_env": api_key_env,
             "rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd}), False)
        configs = load_endpoints(Path(endpoints), need_keys=False)
    if isinstance(jobs, str | os.PathLike):
        return estimate_path(Path(jobs), configs, model=model, tier=tier,
                             limits={"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd},
                             concurrency=concurrency, latency=latency,
                             assume_output_tokens=assume_output_tokens, on_bad_line=on_bad_line,
                             endpoints_file=Path(endpoints) if endpoints else None,
                             state=parse_state_url(state), via=via,
                             batch_queue_tokens=batch_queue_tokens,
                             endpoint=(base_url, azure_endpoint, api_key_env))
    import tempfile

    with tempfile.TemporaryDirectory(prefix="batchrun-estimate-") as folder:
        path = Path(folder) / "requests.jsonl"
        path.write_bytes(_request_lines(jobs))
        return estimate(path, model=model, tier=tier, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
                        concurrency=concurrency, latency=latency,
                        assume_output_tokens=assume_output_tokens, on_bad_line=on_bad_line,
                        endpoints=endpoints, state=state, via=via,
                        batch_queue_tokens=batch_queue_tokens, base_url=base_url,
                        azure_endpoint=azure_endpoint, api_key_env=api_key_env)


def estimate_path(jobs: Path, configs: tuple[EndpointConfig, ...], *, model: str, tier: str,
                  limits: dict[str, int | None], concurrency: int | None, latency: float,
                  assume_output_tokens: int, on_bad_line: str, endpoints_file: Path | None,
                  state: StateUrl | None, via: str | None, batch_queue_tokens: int | None,
                  endpoint: tuple[str | None, str | None, str | None]) -> dict[str, Any]:
    """The estimate of one file, with the endpoints file already read (the CLI's step)."""
    # Today's usage is per endpoint and key with --endpoints: not looked up (counted as unused).
    # The key and host whose ledger is read: as submit would send (nothing is sent here).
    today, known = ((nothing_known, False) if configs else ledger_lookup(
        state, Endpoint.make(*endpoint, insecure=True)))
    result = estimate_job(
        jobs, model, tier, limits, concurrency=concurrency, latency_s=latency,
        assumed_output=assume_output_tokens, on_bad_line=on_bad_line, today=today,
        today_known=known, endpoints=configs, via=via or "sync", batch_queue=batch_queue_tokens,
    )
    if configs and endpoints_file is not None:  # as submit checks the file against the input
        check_serves(configs, [m["model"] for m in result["models"]], endpoints_file)
    return result


def status(job: Job | str | None = None, *, state: str | None = None) -> dict[str, Any]:
    """The jobs (or one) and today's usage, as `batchrun status --json` prints them (without
    collecting a Batch API job's finished batches: `resume` does that)."""
    store = JobStore()
    if job is not None:
        jobs = [store.find(job.id if isinstance(job, Job) else job)]
    else:
        jobs, _damaged = store.scan()
    state_url = parse_state_url(state if state is not None else os.environ.get("BATCHRUN_STATE"))
    _today, usage = usage_today(state_url, store.home / "ledger.sqlite3")
    rows = []
    for m in jobs:
        shown = store.effective_state(m)
        if shown == JobState.CRASHED:
            runner.count_from_output(m)  # its last saves may lag what it wrote
        rows.append({**asdict(m), "batch": shown_record(m.batch, m.job_id), "state": shown,
                     "resume": m.resume_command})
    return {"jobs": rows, "usage": usage, **({"state": state_url.shown} if state_url else {})}


# ---- blocking calls -----------------------------------------------------------------------

def _block(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end from synchronous code. With a loop already running in this thread
    (Jupyter), it runs on a worker thread with its own loop; Ctrl-C (KeyboardInterrupt here)
    then asks the job to stop as the CLI's Ctrl-C does, and the interrupted job comes back."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work)
    loop = asyncio.new_event_loop()
    outcome: list[Any] = []

    def worker() -> None:
        asyncio.set_event_loop(loop)
        try:
            outcome.append(loop.run_until_complete(work))
        except BaseException as exc:  # handed to the caller's thread, raised there
            outcome.append(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    thread = threading.Thread(target=worker, name="batchrun-job", daemon=True)
    pressed: list[bool] = []

    def ctrl_c() -> None:
        pressed.append(True)
        if not interrupt_work(loop):  # not sending yet: stop what it is doing
            loop.call_soon_threadsafe(_cancel_all, loop)

    with _on_ctrl_c(ctrl_c):
        thread.start()
        while thread.is_alive():
            try:
                thread.join(timeout=0.2)  # wakes for Ctrl-C on every platform
            except KeyboardInterrupt:  # a handler of the caller's raised it
                ctrl_c()
    result = outcome[0]
    if isinstance(result, asyncio.CancelledError) and pressed:
        raise KeyboardInterrupt
    if isinstance(result, BaseException):
        raise result
    return result  # type: ignore[no-any-return]


@contextlib.contextmanager
def _on_ctrl_c(stop: Callable[[], None]) -> Iterator[None]:
    """Ctrl-C (SIGINT) calls `stop` while the job runs on the worker thread: the caller's loop
    (asyncio.run's handler cancels its main task, which is blocked here) never could."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda _sig, _frame: stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    for task in asyncio.all_tasks(loop):
        task.cancel()
