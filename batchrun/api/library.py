"""The library calls: submit, run, resume, estimate, status and their async twins."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from batchrun.api.blocking import block
from batchrun.api.job import Answers, Counts, Job, Tokens
from batchrun.api.options import (
    check_options,
    check_tier,
    check_types,
    given_flags,
    refuse_beside_endpoints,
    refuse_unknown,
)
from batchrun.api.steps import (
    Prepared,
    estimate_path,
    execute,
    finished_message,
    prepare_resume,
    prepare_submit,
    report_document,
    run_summary,
    status_rows,
)
from batchrun.backends.signals import interrupt_work
from batchrun.errors import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    BadLine,
    BadLinesError,
    BatchrunError,
    InputError,
)
from batchrun.events import Event, Listener, Note, Stats, emit_all
from batchrun.files.jobs import read_jobs
from batchrun.files.jobstore import JobState, JobStore, Manifest, state_home
from batchrun.files.outputlock import holds_results
from batchrun.messages import shown
from batchrun.report.tally import EndpointTally
from batchrun.routing import EndpointConfig, load_endpoints
from batchrun.state import parse_state_url, usage_today

# on_event: called with each event, on the thread the job runs on
EventHook = Callable[[Event], None]


def _job(manifest: Manifest, exit_code: int, message: str, state: JobState | None = None,
         summary: dict[str, Any] | None = None) -> Job:
    tokens = Tokens(**summary["tokens"]) if summary else Tokens()
    return Job(
        id=manifest.job_id, state=JobState(state or manifest.state), exit_code=exit_code,
        message=message, input=Path(manifest.input), output=Path(manifest.output),
        counts=Counts(manifest.total, manifest.done, manifest.failed), tokens=tokens,
        cost_usd=summary["cost_usd"] if summary else 0.0,
        job_cost_usd=summary["job_cost_usd"] if summary else 0.0, summary=summary)


async def _launch(p: Prepared, on_event: EventHook | None, progress: bool) -> Job:
    """Run a prepared job; every ending once it started is a Job."""
    if p.finished is not None:
        message, code = finished_message(p.finished, p.manifest)
        return _job(p.manifest, code, message)
    stats, tally = Stats(), EndpointTally()
    hook = _GuardedHook(on_event, asyncio.get_running_loop())

    def note(text: str) -> None:
        hook(Note(text))

    hooks: list[Listener] = [stats, tally, hook]
    with contextlib.ExitStack() as stack:
        notify: Callable[[str], None] = note
        if progress:  # rich is loaded only here: a library user who asks for no display
            from batchrun.display.progress import ProgressDisplay

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
            return _job(recorded, exc.exit_code, shown(exc.message),
                        state=p.store.effective_state(recorded))
    if hook.raised is not None:  # the job stopped for it, resumable: the user's bug is theirs
        job_id = p.manifest.job_id
        hook.raised.add_note(f"on_event raised this during batchrun job {job_id}, which ended "
                             f"{JobState(p.manifest.state).value}; batchrun.resume({job_id!r}) "
                             "goes on.")
        raise hook.raised
    summary = run_summary(stats, tally, p.manifest, p.store, stopped)
    if stopped is None:
        code = EXIT_SOME_FAILED if p.manifest.failed else EXIT_OK
        return _job(p.manifest, code, summary["message"], summary=summary)
    return _job(p.manifest, stopped.exit_code, summary["message"], summary=summary)


class _GuardedHook:
    """The user's on_event, called so that an exception in it stops the job as Ctrl-C does
    (finishing what is in flight, resumable) instead of tearing the engine's tasks down and
    leaving the job "crashed"; the call then raises it (`raised`)."""

    def __init__(self, on_event: EventHook | None, loop: asyncio.AbstractEventLoop) -> None:
        self.on_event, self.loop = on_event, loop
        self.raised: Exception | None = None
        self.stopping = False

    def __call__(self, event: Event) -> None:
        if self.raised is None and self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:  # the user's code: raised again when the job has stopped
                self.raised = exc
        if self.raised is not None and not self.stopping:
            # False until the job runs under its interrupt: asked again at the next event
            self.stopping = interrupt_work(self.loop)


def _both(*notes: Callable[[str], None]) -> Callable[[str], None]:
    def told(text: str) -> None:
        for note in notes:
            note(text)
    return told


def _submit_options(options: dict[str, Any]) -> dict[str, Any]:
    check_options(options)
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
    refuse_unknown("submit", options, _SUBMIT_OPTIONS)
    if jobs is None:
        raise InputError("jobs=None: give the path of a JSONL file of requests.")
    check_types({"jobs": jobs, "on_event": on_event, "progress": progress})
    given = given_flags(options)  # before the environment's defaults, which are no error
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
    poll_max, batch_queue_tokens, service_tier, flex_wait, max_cost, metrics_port, cache,
    cache_refresh). Works inside a running event loop (Jupyter) too: the job then runs on a
    worker thread, and `on_event` is called there."""
    return block(submit_async(jobs, on_event=on_event, progress=progress, **options))


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
    check_types({"on_event": on_event, "progress": progress, "retry_failed": retry_failed,
                 "force": force, "state": state})
    check_options({**options, "drain": drain})
    known = {"rpm", "tpm", "rpd", "tpd", "concurrency", "max_retries", "timeout",
             "max_response_mb", "wait", "via", "detach", "poll_max", "batch_queue_tokens",
             "cancel_batches", "flex_wait", "max_cost", "metrics_port", "cache", "cache_refresh"}
    refuse_unknown("resume", options, known)
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
    return block(resume_async(job, on_event=on_event, progress=progress,
                               retry_failed=retry_failed, force=force, drain=drain,
                               state=state, **options))


def _request_lines(requests: Iterable[Mapping[str, Any]]) -> bytes:
    if isinstance(requests, Mapping | str | bytes) or not isinstance(requests, Iterable):
        # a dict would be read as its keys, a string as its characters: refused by name instead
        raise InputError(f"requests={_short(requests)} ({type(requests).__name__}): give a "
                         "list of dicts (or any iterable of them), one per request.")
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


def _as_requests(exc: BadLinesError) -> BadLinesError:
    """run()'s bad lines are its requests, one a line, in a file the user never named: said as
    requests, with the keyword's advice instead of the CLI flag's."""
    plural = "s" if exc.total_bad != 1 else ""
    lines = [f"run(): {exc.total_bad:,} bad request{plural}; nothing was sent."]
    lines += [f"  request {bad.describe().removeprefix('line ')}"
              for bad in exc.bad[:BadLinesError.SHOWN]]
    if exc.total_bad > BadLinesError.SHOWN:
        lines.append(f"  … and {exc.total_bad - BadLinesError.SHOWN:,} more")
    lines.append("Fix these requests, or pass on_bad_line='skip' to record them as failed and "
                 "go on.")
    renamed = BadLinesError("run()", exc.bad, exc.total_bad)
    renamed.message = "\n".join(lines)
    renamed.args = (renamed.message,)
    return renamed


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _run_paths(data: bytes, name: str | None, output: str | os.PathLike[str] | None,
               shaping: Mapping[str, Any]) -> tuple[Path, Path]:
    """Where run() keeps its requests and results: by `name`; else by `output` (one output
    holds one job's results, so its requests are kept under its path, and edited requests meet
    that job rather than a stranger's); else by a hash of the requests and of the options that
    shape the answers, so the same call finds its earlier results."""
    if name is not None and (not name or "/" in name or name.startswith(".")):
        raise InputError(f"name={name!r}: give a plain name (letters, digits, - and _).")
    if name is None and output is not None:
        where = str(Path(output).resolve()).encode()
        name = "output-" + hashlib.sha256(where).hexdigest()[:16]
    digest = hashlib.sha256(data + orjson.dumps(dict(shaping), option=orjson.OPT_SORT_KEYS))
    folder = state_home() / "runs" / (name or digest.hexdigest()[:16])
    return folder / "requests.jsonl", Path(output) if output else folder / "results.jsonl"


def _changed_request(before: bytes, now: bytes) -> str:
    """The first request that differs between two runs' requests, as the user counts them."""
    old, new = before.splitlines(), now.splitlines()
    n = next((i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b),
             min(len(old), len(new)))
    if n >= len(new):
        return f"there are {len(new):,} requests now, {len(old):,} before"
    line = orjson.loads(new[n])
    given = line.get("custom_id", line.get("id")) if isinstance(line, dict) else None
    ident = f" (id {given!r})" if isinstance(given, str) else ""
    return f"request {n + 1}{ident} is not the one it was given before"


def _refuse_other_requests(input_path: Path, output_path: Path, data: bytes, label: str) -> None:
    """A run kept by `name` or `output` holds the answers to the requests it was first given:
    other requests are refused here, in Python's terms and before anything is rewritten, not
    as the CLI's "input changed" (which names -o and --force)."""
    try:
        before = input_path.read_bytes()
    except FileNotFoundError:
        return
    if before == data or not holds_results(output_path):
        return
    raise InputError(
        f"run({label}) holds the answers to other requests: {_changed_request(before, data)}. "
        f"Give another {label.split('=')[0]}= to start a new job (every request is sent "
        "again), or force=True to keep the answers it has, by id (an edited request keeps its "
        "earlier answer), and send only the requests without one.")


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
    refuse_unknown("run", options, _SUBMIT_OPTIONS)
    check_types({"name": name, "output": output, "model": model})
    data = _request_lines(requests)
    if not data:
        raise InputError("run() was given no requests.")
    shaping = {"model": model, **{k: options.get(k) for k in (
        "base_url", "azure_endpoint", "simulate", "endpoints", "via")}}
    shaping["endpoints"] = str(shaping["endpoints"]) if shaping["endpoints"] else None
    input_path, output_path = _run_paths(data, name, output, shaping)
    if (name is not None or output is not None) and not options.get("force"):
        label = f"name={name!r}" if name is not None else f"output={str(output)!r}"
        _refuse_other_requests(input_path, output_path, data, label)
    _write_if_changed(input_path, data)
    try:
        job = await submit_async(input_path, output=output_path, model=model,
                                 on_event=on_event, progress=progress, **options)
    except BadLinesError as exc:
        raise _as_requests(exc) from None
    return _in_input_order(input_path, job, model)


def run(requests: Iterable[Mapping[str, Any]], *, name: str | None = None,
        output: str | os.PathLike[str] | None = None, model: str = "gpt-4o-mini",
        on_event: EventHook | None = None, progress: bool = False, **options: Any) -> Answers:
    """Send input-shaped dicts (`{"id": "a1", "prompt": "..."}`, chat or Batch API lines) and
    return their result lines as dicts in input order (None: no result yet; `answers.job` says
    why). Checkpointed like a file job: the requests and results live under
    $BATCHRUN_HOME/runs/, keyed by a hash of the requests, model, endpoint and path options (or
    by `name`; or by `output`, where the results then are), so calling it again with the same
    requests sends only what has no result yet. Edited requests under a `name` or `output` are
    refused unless `force=True`. Other options are `submit`'s."""
    return block(run_async(requests, name=name, output=output, model=model,
                            on_event=on_event, progress=progress, **options))


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
    check_types({"model": model, "latency": latency, "assume_output_tokens": assume_output_tokens,
                 "endpoints": endpoints, "state": state, "base_url": base_url,
                 "azure_endpoint": azure_endpoint, "api_key_env": api_key_env})
    check_options({"rpm": rpm, "tpm": tpm, "rpd": rpd, "tpd": tpd, "concurrency": concurrency,
                    "on_bad_line": on_bad_line, "via": via,
                    "batch_queue_tokens": batch_queue_tokens})
    tier = check_tier(tier)
    configs: tuple[EndpointConfig, ...] = ()
    if endpoints is not None:
        refuse_beside_endpoints(Path(endpoints), given_flags(
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

    data = _request_lines(jobs)
    if not data:  # the temporary file's own "is empty" would name a path the user never saw
        raise InputError("estimate() was given no requests.")
    with tempfile.TemporaryDirectory(prefix="batchrun-estimate-") as folder:
        path = Path(folder) / "requests.jsonl"
        path.write_bytes(data)
        return estimate(path, model=model, tier=tier, rpm=rpm, tpm=tpm, rpd=rpd, tpd=tpd,
                        concurrency=concurrency, latency=latency,
                        assume_output_tokens=assume_output_tokens, on_bad_line=on_bad_line,
                        endpoints=endpoints, state=state, via=via,
                        batch_queue_tokens=batch_queue_tokens, base_url=base_url,
                        azure_endpoint=azure_endpoint, api_key_env=api_key_env)


def status(job: Job | str | os.PathLike[str] | None = None, *,
           state: str | None = None) -> dict[str, Any]:
    """The jobs (or one: a Job, its id, a unique prefix of it, or its output path) and today's
    usage, as `batchrun status --json` prints them (without collecting a Batch API job's
    finished batches: `resume` does that)."""
    if job is not None and not isinstance(job, Job | str | os.PathLike):
        raise InputError(f"job={job!r} ({type(job).__name__}): give a Job, a job id or the "
                         "job's output path.")
    check_types({"state": state})
    store = JobStore()
    if job is not None:
        jobs = [store.find(job.id if isinstance(job, Job) else str(job))]
    else:
        jobs, _damaged = store.scan()
    state_url = parse_state_url(state if state is not None else os.environ.get("BATCHRUN_STATE"))
    _today, usage = usage_today(state_url, store.home / "ledger.sqlite3")
    return {"jobs": status_rows(store, jobs), "usage": usage,
            **({"state": state_url.shown} if state_url else {})}


def report(job: Job | str | os.PathLike[str]) -> dict[str, Any]:
    """A job's report document (a Job, its id, a unique prefix of it, or its output path): what
    `batchrun report --json` prints, the shape docs/report.md describes. A job from before
    timelines were recorded gives what its manifest knows, with `recorded` False."""
    if not isinstance(job, Job | str | os.PathLike):
        raise InputError(f"job={job!r} ({type(job).__name__}): give a Job, a job id or the "
                         "job's output path.")
    return report_document(JobStore(), job.id if isinstance(job, Job) else str(job))
