"""Job manifests under $BATCHRUN_HOME/jobs: what a job is, so `resume` can run it again.

A manifest names the input (with a fingerprint to notice changes), the output, every option that
shapes the run, and the job's state. It never holds the API key: only the name of the variable
that does. Written atomically (temp file, fsync, rename), mode 0600.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import os
import stat
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import InputError, StateError
from batchrun.files.fsutil import PRIVATE_FILE, identity, private_dir, write_bytes_atomic
from batchrun.files.outputlock import is_held, read_owner
from batchrun.files.spend import spend_path
from batchrun.policy.classify import DEFAULT_MAX_RESPONSE_MB
from batchrun.policy.decide import DEFAULT_FLEX_WAIT_S


class JobState(StrEnum):
    """A job's recorded state. A str, so manifests, JSON and messages keep the same words."""

    RUNNING = "running"
    PAUSED_DAILY = "paused-daily"  # a daily budget is spent: resume after 00:00 UTC
    PAUSED_COST = "paused-cost"  # --max-cost: resume with a larger cap
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    STOPPED = "stopped"  # the API refused (key, quota) or local state failed
    # Recorded when an unexpected exception ended the run; a job left "running" by a process
    # that died is shown as crashed too (effective_state).
    CRASHED = "crashed"
    DONE = "done"
    SUBMITTED = "submitted"  # --detach left its batches running on the server


FINISHED = JobState.DONE
STATES = tuple(JobState)
_SAMPLE = 1024 * 1024


def state_home() -> Path:
    if os.environ.get("BATCHRUN_HOME"):
        return Path(os.environ["BATCHRUN_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "batchrun"


def fingerprint(path: Path, full: bool = False) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last MiB: cheap for a 10 GB file. `full` adds a
    hash of the whole content, for the fingerprint a job starts with: a file rewritten with the
    same bytes (a notebook cell run twice) moves only the mtime, and only the whole content can
    tell that from an edit in the middle."""
    st = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(f.read(_SAMPLE))
        if st.st_size > _SAMPLE:
            f.seek(max(_SAMPLE, st.st_size - _SAMPLE))
            digest.update(f.read(_SAMPLE))
    print_ = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "sha256_head_tail": digest.hexdigest()}
    if full:
        print_["sha256"] = content_hash(path)
    return print_


def content_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_change(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What changed in the input since the job started, in words; None if nothing did. Where
    only the mtime moved, a `sha256` of the whole content in both says whether the bytes did."""
    if not isinstance(before.get("size"), int):
        return "batchrun recorded no fingerprint of it"
    if before["size"] != now["size"]:
        return f"its size went from {before.get('size'):,} to {now['size']:,} bytes"
    if before.get("sha256_head_tail") != now["sha256_head_tail"]:
        return "its content changed"
    if before.get("mtime_ns") == now["mtime_ns"]:
        return None
    if isinstance(before.get("sha256"), str) and "sha256" in now:
        return None if before["sha256"] == now["sha256"] else "its content changed"
    return "it was modified (same size, new modification time)"


def input_change(before: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """The input's fingerprint now, and what changed since `before` (None: nothing). The whole
    file is read only when its size and both ends match but its mtime moved."""
    now = fingerprint(path)
    if (isinstance(before.get("sha256"), str) and before.get("size") == now["size"]
            and before.get("sha256_head_tail") == now["sha256_head_tail"]
            and before.get("mtime_ns") != now["mtime_ns"]):
        now["sha256"] = content_hash(path)
    return now, describe_change(before, now)


def timeline_file(jobs_dir: Path, job_id: str) -> Path:
    """Where a job's timeline (report/timeline.py) lives: beside its manifest, gone with it."""
    return jobs_dir / f"{job_id}.timeline"


def job_id_for(input_path: Path, output_path: Path) -> str:
    """Readable and stable: the input's stem plus 6 hex of the output path."""
    stem = input_path.name.removesuffix(".jsonl").replace(" ", "_")[:40] or "job"
    return f"{stem}-{hashlib.sha256(str(output_path).encode()).hexdigest()[:6]}"


# What `resume` needs of a manifest's options (newer options have defaults).
OPTION_KEYS = frozenset({
    "model", "tier", "overrides", "concurrency", "max_retries", "timeout_s", "on_bad_line",
    "wait", "simulate", "base_url", "azure_endpoint", "api_key_env", "insecure",
})


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The options a job runs with, as its manifest records them (`Manifest.options`). The
    first thirteen are in every manifest (OPTION_KEYS); the rest came later, and a manifest
    written before them reads with the defaults those versions ran with."""

    model: str
    tier: str
    overrides: dict[str, int | None]
    concurrency: int | None
    max_retries: int
    timeout_s: float
    on_bad_line: str
    wait: bool
    simulate: bool
    base_url: str | None
    azure_endpoint: str | None
    api_key_env: str | None
    insecure: bool
    max_response_mb: float = DEFAULT_MAX_RESPONSE_MB
    endpoints: str | None = None
    record_endpoint: bool = False
    via: str = "sync"
    poll_max_s: float = 60.0
    batch_queue_tokens: int | None = None
    detach: bool = False
    cancel_batches: bool = False
    max_cost: float | None = None
    service_tier: str | None = None
    flex_wait_s: float = DEFAULT_FLEX_WAIT_S
    cache: str = "on"  # the response cache: on | off | refresh

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> JobOptions:
        """The typed view of a manifest's options (checked by the loader: _wrong_options).
        Keys not named here (the shared state's, the endpoints file's digest) stay with the
        dict for their own readers."""
        return cls(**{f.name: options[f.name] for f in fields(cls) if f.name in options})


_FIELDS: dict[str, type] = {"job_id": str, "input": str, "output": str, "fingerprint": dict,
                            "options": dict, "state": str, "updated": str}


# Far larger than any manifest (the checking pass saves at most 20 bad lines).
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def _read_manifest(path: Path) -> tuple[bytes, str | None]:
    """A manifest's bytes, or why they cannot be read. Only a plain file is read, never through
    a symbolic link, and never more than a manifest can hold: a FIFO or a link to /dev/zero in
    the jobs directory must not hang or exhaust every command."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        what = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        return b"", f"cannot read it: {what}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"", "it is not a regular file"
        raw = os.read(fd, _MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        return b"", f"cannot read it: {exc.strerror}"
    finally:
        os.close(fd)
    if len(raw) > _MAX_MANIFEST_BYTES:
        return b"", f"it is larger than {_MAX_MANIFEST_BYTES // 2**20} MB"
    return raw, None


def _decode(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """A manifest's fields, and what is wrong with them (None: nothing)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {}, f"not valid JSON: {exc}"
    if not isinstance(data, dict):
        return {}, "not a JSON object"
    for key, kind in _FIELDS.items():
        if not isinstance(data.get(key), kind):
            return data, f"{key} is missing or not a {kind.__name__}"
    if data["state"] not in STATES:
        return data, f"unknown state {data['state']!r}"
    missing = OPTION_KEYS - data["options"].keys()
    if missing:
        return data, f"options lack {', '.join(sorted(missing))}"
    for key in ("total", "done", "failed"):
        if key in data and not _is_count(data[key]):
            return data, f"{key} is not a count: {data[key]!r}"
    wrong = _wrong_options(data["options"])
    if wrong:
        return data, f"option {wrong[0][0]} cannot be {wrong[0][1]!r}"
    if not isinstance(data.get("endpoints", {}), dict):
        data["endpoints"] = {}  # only counts for `status`: the output holds the results
    if not _used_today_ok(data.get("used_today", {})):
        data["used_today"] = {}  # only for a message's "by other jobs": start it again
    if not _billed_ok(data.get("billed", {})):
        data["billed"] = {}  # only for `status`'s cost: the output and ledger hold the rest
    if not _checked_ok(data.get("checked")):
        data["checked"] = None  # only a cache of the input's check: read the input again
    return data, None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# What each option may hold: resume builds the run from these, so a hand-edited or damaged value
# must be named here rather than fail deep inside.
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "tier": (str,), "overrides": (dict,), "concurrency": (int, type(None)),
    "max_retries": (int,), "timeout_s": (int, float), "on_bad_line": (str,), "wait": (bool,),
    "simulate": (bool,), "base_url": (str, type(None)), "azure_endpoint": (str, type(None)),
    "api_key_env": (str, type(None)), "insecure": (bool,), "max_response_mb": (int, float),
    "endpoints": (str, type(None)), "record_endpoint": (bool,),
    "via": (str,), "poll_max_s": (int, float), "batch_queue_tokens": (int, type(None)),
    "max_cost": (int, float, type(None)),
    "service_tier": (str, type(None)), "flex_wait_s": (int, float), "cache": (str,),
}


def _wrong_options(options: dict[str, Any]) -> list[tuple[str, Any]]:
    wrong = [(k, options[k]) for k, kinds in _OPTION_TYPES.items()
             if k in options and (not isinstance(options[k], kinds)
                                  or (bool not in kinds and isinstance(options[k], bool)))]
    cap = options.get("max_cost")
    if isinstance(cap, int | float) and not isinstance(cap, bool) and not cap > 0:
        wrong.append(("max_cost", cap))  # a cap no request fits under, or NaN
    if options.get("cache", "on") not in ("on", "off", "refresh"):
        wrong.append(("cache", options.get("cache")))
    if options.get("on_bad_line") not in ("fail", "skip"):
        wrong.append(("on_bad_line", options.get("on_bad_line")))
    overrides = options.get("overrides")
    if isinstance(overrides, dict):
        wrong += [(f"overrides.{k}", v) for k, v in overrides.items()
                  if v is not None and not _is_count(v)]
    return wrong


def _used_today_ok(used: Any) -> bool:
    if used == {}:
        return True
    return (isinstance(used, dict) and isinstance(used.get("day"), str)
            and isinstance(used.get("tokens"), dict)
            and all(isinstance(k, str) and _is_count(v) for k, v in used["tokens"].items()))


def _billed_ok(billed: Any) -> bool:
    return isinstance(billed, dict) and all(
        isinstance(via, str) and isinstance(models, dict)
        and all(isinstance(m, str) and isinstance(c, list) and len(c) == 3
                and all(_is_count(n) for n in c) for m, c in models.items())
        for via, models in billed.items())


def _checked_ok(checked: Any) -> bool:
    if checked is None:
        return True
    if not isinstance(checked, dict):
        return False
    lists = [checked.get(k) for k in ("bad", "duplicates", "unnamed")]
    return (all(_is_count(checked.get(k)) for k in ("total", "bad_total"))
            and isinstance(checked.get("models"), dict)
            and all(isinstance(v, list) for v in lists)
            and all(isinstance(b, list) and len(b) == 3 for b in checked["bad"])
            and all(_is_count(n) for n in (*checked["duplicates"], *checked["unnamed"])))


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Manifest:
    job_id: str
    input: str
    output: str
    fingerprint: dict[str, Any]
    options: dict[str, Any]
    created: str = field(default_factory=_now_iso)
    updated: str = field(default_factory=_now_iso)
    state: JobState = JobState.RUNNING
    total: int = 0
    done: int = 0
    failed: int = 0
    message: str = ""
    checked: dict[str, Any] | None = None  # the input's checking pass, while it is unchanged
    # --endpoints: results per endpoint name, {"done": n, "failed": n} (this job, every run)
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)  # Batch API parts (batchrun.backends.batch)
    # The tokens the job's runs billed on one UTC day, by model family, as its ledger scope
    # names it (one endpoint, sync path): {"day": "2026-11-27", "tokens": {"gpt-4o-mini": n}}.
    # What the key's ledger holds beyond them, other jobs used.
    used_today: dict[str, Any] = field(default_factory=dict)
    # What the server billed this job, every run: {via: {model: [input, cached input, output]}}
    # tokens, via "sync", "flex" or "batch" (policy.prices.Via), cached input a part of input.
    billed: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def count_billed(self, via: str, model: str, tokens_in: int, cached_in: int,
                     tokens_out: int) -> None:
        if not (tokens_in or tokens_out):
            return
        row = self.billed.setdefault(via, {}).setdefault(model, [0, 0, 0])
        row[0] += tokens_in
        row[1] += cached_in
        row[2] += tokens_out

    def tokens_on(self, day: dt.date, model: str) -> int:
        if self.used_today.get("day") != day.isoformat():
            return 0
        return int(self.used_today["tokens"].get(model, 0))

    def count_tokens(self, day: dt.date, model: str, tokens: int) -> None:
        if self.used_today.get("day", "") > day.isoformat():
            return  # a run across midnight: only the latest day is kept
        if self.used_today.get("day") != day.isoformat():
            self.used_today = {"day": day.isoformat(), "tokens": {}}
        counts = self.used_today["tokens"]
        counts[model] = counts.get(model, 0) + tokens

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def resume_command(self) -> str:
        return f"batchrun resume {self.job_id}"


class DamagedManifest(StateError):
    """A manifest batchrun cannot use; the message says how to recover its job."""

    def __init__(self, path: Path, reason: str, data: dict[str, Any]) -> None:
        where = ("input and output" if not {"input", "output"} <= data.keys() else
                 f"input {data['input']} and output {data['output']}")
        super().__init__(
            f"the job manifest {path} is damaged ({reason}), so batchrun cannot resume job "
            f"{path.stem}. Its finished results are safe in its output. To go on, move it aside "
            f"(mv {path} {path}.damaged) and run `batchrun submit` again with the job's {where}: "
            "requests already in the output are not sent again."
        )
        self.path, self.reason = path, reason


class JobStore:
    def __init__(self, home: Path | None = None) -> None:
        self.home = home or state_home()
        self.dir = self.home / "jobs"

    def ensure_dir(self) -> None:
        """Create the state directory (0700), or say why it is unusable."""
        try:
            private_dir(self.home)
            private_dir(self.dir)
        except OSError as exc:
            raise StateError(
                f"cannot create {self.dir}: {exc.strerror}. Set $BATCHRUN_HOME to a writable "
                "directory."
            ) from None

    def save(self, manifest: Manifest) -> None:
        self.ensure_dir()
        manifest.updated = _now_iso()
        target = self.dir / f"{manifest.job_id}.json"
        data = orjson.dumps(asdict(manifest), option=orjson.OPT_INDENT_2)
        try:
            write_bytes_atomic(target, data, PRIVATE_FILE)
        except OSError as exc:
            raise StateError(
                f"cannot write the job manifest {target}: {exc.strerror}. Set $BATCHRUN_HOME to "
                "a writable directory."
            ) from None

    def load(self, path: Path) -> Manifest:
        """The manifest at `path`; a StateError that says how to recover if it is damaged."""
        raw, reason = _read_manifest(path)
        data, reason = _decode(raw) if reason is None else ({}, reason)
        if reason is None and data["job_id"] != path.stem:
            # The id names the files batchrun writes: one that is not this file's own name
            # (`../../victim`) would write somewhere else.
            reason = f"its job_id {data['job_id']!r} is not the file's name {path.stem!r}"
        if reason is None:
            try:
                return Manifest(**{**data, "state": JobState(data["state"])})
            except TypeError as exc:
                reason = str(exc).replace("Manifest.__init__() ", "")
        raise DamagedManifest(path, reason, data)

    def scan(self) -> tuple[list[Manifest], list[DamagedManifest]]:
        """Every job, most recently updated first, and what is wrong with each damaged manifest
        (skipped, so one bad file does not break every command)."""
        if not self.dir.is_dir():
            return [], []
        manifests, damaged = [], []
        for path in sorted(self.dir.glob("*.json")):
            try:
                manifests.append(self.load(path))
            except DamagedManifest as exc:
                damaged.append(exc)
        return sorted(manifests, key=lambda m: m.updated, reverse=True), damaged

    def all(self) -> list[Manifest]:
        return self.scan()[0]

    def get(self, job_id: str) -> Manifest | None:
        path = self.dir / f"{job_id}.json"
        return self.load(path) if path.exists() else None

    def find(self, ref: str) -> Manifest:
        """A job by id, unique id prefix, or output path."""
        jobs = self.all()
        for m in jobs:
            if m.job_id == ref:
                return m
        if (self.dir / f"{ref}.json").is_file():
            self.load(self.dir / f"{ref}.json")  # damaged: says what is wrong and what to do
        output = Path(ref).expanduser().resolve()
        by_output = self.for_output(output)
        if by_output is not None:
            return by_output
        matches = [m for m in jobs if m.job_id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(m.job_id for m in matches[:5])
            raise InputError(f"{ref!r} matches several jobs ({names}); give more of the id.")
        owner = read_owner(output)
        if owner is not None:
            raise InputError(
                f"{ref} holds the results of {owner.input} (job {owner.job_id}), a job this "
                f"state dir ({self.home}) does not know: set $BATCHRUN_HOME to the one that "
                f"started it, or continue it here with `batchrun submit {owner.input} -o {ref}` "
                "and the job's options (requests already in the output are not sent again)."
            )
        raise InputError(
            f"no job {ref!r}. `batchrun status` lists the jobs; a job is named by its id, a "
            "prefix of it, or its output path."
        )

    def latest_unfinished(self, with_failures: bool = False) -> Manifest | None:
        """The most recently updated job that is not done (or, `with_failures`, that holds
        failed results to send again)."""
        return next((m for m in self.all()
                     if not m.finished or (with_failures and m.failed)), None)

    def exists(self, job_id: str) -> bool:
        return (self.dir / f"{job_id}.json").exists()

    def for_output(self, output: Path) -> Manifest | None:
        """The job that writes `output` (resolved): by path, or by identity, since a hard link
        or a symlink to a job's output is that output."""
        jobs = self.all()
        same = next((m for m in jobs if m.output == str(output)), None)
        if same is not None:
            return same
        ident = identity(output)
        if ident is None:
            return None
        return next((m for m in jobs if identity(Path(m.output)) == ident), None)

    def is_running(self, manifest: Manifest) -> bool:
        """True while some process holds the lock on the job's output (a crashed one does not),
        even if the output itself was deleted under it."""
        return is_held(Path(manifest.output))

    def forget(self, manifest: Manifest) -> None:
        """Remove a job's manifest (never its input or output), so `status` no longer lists it
        and `resume` no longer finds it."""
        if self.is_running(manifest):
            raise InputError(
                f"job {manifest.job_id} is running; stop it (Ctrl-C) before forgetting it."
            )
        try:
            (self.dir / f"{manifest.job_id}.json").unlink(missing_ok=True)
        except OSError as exc:
            raise StateError(
                f"cannot remove the manifest of job {manifest.job_id}: {exc.strerror}."
            ) from None
        # The same input and output make the same job id again: a timeline or spend record
        # left behind would give the new job the forgotten one's sessions, and count its
        # dollars against the new one's --max-cost. Without its manifest they are no one's.
        for record in (timeline_file(self.dir, manifest.job_id),
                       spend_path(self.dir, manifest.job_id)):
            with contextlib.suppress(OSError):
                record.unlink(missing_ok=True)

    def effective_state(self, manifest: Manifest) -> JobState:
        """A manifest left 'running' by a process that died is a crashed job."""
        if manifest.state == JobState.RUNNING and not self.is_running(manifest):
            return JobState.CRASHED
        return manifest.state
