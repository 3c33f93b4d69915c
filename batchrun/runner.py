"""Running a job as a whole: its manifest, its lock, the shared ledger, signals, the engine.

`submit` and `resume` in the CLI both end here. Nothing here knows about terminals.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from batchrun.checkpoint import drop_failed, scan_output
from batchrun.client import Endpoint
from batchrun.engine import Engine, JobSpec
from batchrun.errors import BadLinesError, BatchrunError, DailyLimitReached, InputError, Interrupted
from batchrun.events import Event, JobStarted, Listener, RequestFinished, StateChanged
from batchrun.jobs import input_report
from batchrun.jobstore import JobStore, Manifest, describe_change, fingerprint, job_id_for
from batchrun.ledger import DailyBudget, Ledger, Scope, key_fingerprint, utc_now
from batchrun.stop import Stop, phrase
from batchrun.tiers import Limits, family

SIMULATOR_HOST = "simulator"
SAVE_EVERY_S = 2.0


def spec_options(spec: JobSpec, simulate: bool) -> dict[str, Any]:
    """Everything that shapes the run, for the manifest. The key's *variable name* only."""
    ep = spec.endpoint
    return {
        "model": spec.model, "tier": spec.tier, "overrides": spec.overrides,
        "concurrency": spec.concurrency, "max_retries": spec.max_retries,
        "timeout_s": spec.timeout_s, "on_bad_line": spec.on_bad_line, "wait": spec.wait,
        "simulate": simulate, "base_url": None if ep.azure else ep.base_url,
        "azure_endpoint": ep.base_url if ep.azure else None, "api_key_env": ep.key_env,
        "insecure": ep.insecure,
    }


def spec_from_manifest(m: Manifest, overrides: dict[str, Any]) -> tuple[JobSpec, bool]:
    """Rebuild a job's spec from its manifest, with any options the user gives on resume."""
    o = {**m.options}
    limit_overrides = {**o["overrides"], **{k: v for k, v in overrides.pop("limits", {}).items()
                                            if v is not None}}
    o.update({k: v for k, v in overrides.items() if v is not None})
    endpoint = Endpoint.make(o["base_url"], o["azure_endpoint"], o["api_key_env"], o["insecure"])
    spec = JobSpec(
        input=Path(m.input), output=Path(m.output), endpoint=endpoint, model=o["model"],
        tier=o["tier"], overrides=limit_overrides, concurrency=o["concurrency"],
        max_retries=o["max_retries"], timeout_s=o["timeout_s"], on_bad_line=o["on_bad_line"],
        wait=o["wait"],
    )
    return spec, bool(o["simulate"])


@dataclass
class _ManifestUpdater:
    """Keeps the manifest's counts and state current; saves on each change of state."""

    store: JobStore
    manifest: Manifest
    saved_at: float = field(default_factory=time.monotonic)

    def __call__(self, event: Event) -> None:
        m = self.manifest
        match event:
            case JobStarted():
                m.total = event.total
                m.done = event.already_done
            case RequestFinished(ok=ok):
                m.done += 1
                m.failed += not ok
                # Often enough for `status` to show progress; rare enough to cost nothing.
                if time.monotonic() - self.saved_at >= SAVE_EVERY_S:
                    self.store.save(m)
                    self.saved_at = time.monotonic()
            case StateChanged(state=state, detail=detail) if state in ("running",
                                                                        "paused-daily"):
                m.state, m.message = state, detail
                self.store.save(m)


def _final_state(stop: BatchrunError | None) -> str:
    if stop is None:
        return "done"
    if isinstance(stop, DailyLimitReached):
        return "paused-daily"
    if isinstance(stop, Interrupted):
        return "interrupted"
    return "stopped"


async def _drive(engine: Engine) -> Stop | None:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, engine.interrupt)
            installed.append(sig)
    try:
        return await engine.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def prepare(spec: JobSpec, simulate: bool, store: JobStore, force: bool = False) -> Manifest:
    """The manifest for submitting `spec`: a new one, or the existing job of that output."""
    output = spec.output.resolve()
    job_id = job_id_for(spec.input, output)
    try:
        print_ = fingerprint(spec.input)
    except OSError:
        print_ = {}  # the reader reports a missing or unreadable input with its own message
    existing = store.get(job_id)
    if existing is not None and existing.input != str(spec.input.resolve()):
        raise InputError(
            f"{output} already holds the results of job {job_id} for {existing.input}. "
            "Choose another output with -o."
        )
    if existing is not None and print_ and not force:
        change = describe_change(existing.fingerprint, print_)
        if change:
            raise InputError(
                f"{spec.input} changed since job {job_id} started: {change}. Results in "
                f"{output} would not match it. Use another -o for a new job, or add --force "
                "to continue anyway."
            )
    manifest = existing or Manifest(job_id=job_id, input=str(spec.input.resolve()),
                                    output=str(output), fingerprint=print_, options={})
    if manifest.options.get("model", spec.model) != spec.model:
        manifest.checked = None  # lines that name no model now get another one
    manifest.options = spec_options(spec, simulate)
    if force and print_ and describe_change(manifest.fingerprint, print_):
        manifest.fingerprint, manifest.checked = print_, None
    return manifest


async def run(
    spec: JobSpec,
    manifest: Manifest,
    store: JobStore,
    api_key: str,
    listener: Listener,
    host: str,
    now_utc: Callable[[], dt.datetime] = utc_now,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> BatchrunError | None:
    """Run the job under its lock, with the shared ledger; record how it ended."""
    with store.lock(manifest.job_id):
        spec = replace(spec, output=Path(manifest.output))
        manifest.state, manifest.message = "running", ""
        store.save(manifest)
        ledger = Ledger(store.home / "ledger.sqlite3", now_utc)
        keyfp = key_fingerprint(api_key)

        def budget_for(model: str, limits: Limits) -> DailyBudget:
            return DailyBudget(ledger, Scope(host, keyfp, family(model) or model),
                               limits.tpd, limits.rpd)

        updater = _ManifestUpdater(store, manifest)

        def fan_out(event: Event) -> None:
            updater(event)
            listener(event)

        stop: BatchrunError | None = None
        crashed = True  # until proven otherwise: a bug must not leave the job "done"
        try:
            done = scan_output(spec.output)
            report = input_report(spec.input, spec.model, done, manifest.checked)
            manifest.checked = report.to_dict()
            if report.bad_total and spec.on_bad_line == "fail":
                raise BadLinesError(str(spec.input), report.bad, report.bad_total)
            engine = Engine(spec, report, done, api_key, fan_out, budget_for, now_utc=now_utc,
                            sleep=sleep)
            ended = await _drive(engine)
            if ended is not None:
                stop = phrase(ended, str(spec.output), manifest.resume_command,
                              spec.endpoint.key_env)
            crashed = False
        except BatchrunError as exc:
            stop, crashed = exc, False
            raise
        finally:
            ledger.close()
            manifest.state = "crashed" if crashed else _final_state(stop)
            manifest.message = stop.message if stop else ""
            store.save(manifest)
        return stop


def retry_failed(manifest: Manifest) -> int:
    return drop_failed(Path(manifest.output))


def check_input_unchanged(manifest: Manifest, force: bool) -> None:
    path = Path(manifest.input)
    try:
        now = fingerprint(path)
    except OSError:
        raise InputError(
            f"the input of job {manifest.job_id}, {path}, is gone; put it back to resume."
        ) from None
    change = describe_change(manifest.fingerprint, now)
    if change and not force:
        raise InputError(
            f"{path} changed since job {manifest.job_id} started: {change}. Its results would not "
            f"match. Restore the file, or add --force to resume against it as it is now."
        )
    if change:
        manifest.fingerprint, manifest.checked = now, None

