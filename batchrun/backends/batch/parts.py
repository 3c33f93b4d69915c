"""A job's Batch API parts as the manifest records them, and the files each part keeps under
$BATCHRUN_HOME/batches/JOB/: the exact lines uploaded (`part-N.jsonl`), our input's line number
of each (`part-N.lines`), and the requests it left unfinished (`part-N.left`).

A part's `state` is ours alone: planned → uploaded (file id) → creating → submitted (batch id)
→ collected (or dropped), saved the moment anything the API returned changes it. What the API
last said of its batch is `api_status`, a separate field: a server's word never becomes one of
our states (a server saying "collected" or "uploaded" must not end or re-create a part). A crash
between "creating" and the batch id is the one gap the manifest cannot close: `key` (job, part
number and a random nonce) goes into the batch's metadata, so resume finds that batch by
listing and never creates a second one for the part.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import StateError
from batchrun.files.fsutil import PRIVATE_FILE, private_dir, write_bytes_atomic

# Statuses the API gives a batch that will not change again.
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
# Every status the Batch API documents; anything else is unknown, shown and waited on.
DOCUMENTED = TERMINAL | {"validating", "in_progress", "finalizing", "cancelling"}
# Statuses of a batch that no cancel can stop and that bills nothing more.
UNSTOPPABLE = TERMINAL | {"finalizing", "cancelling"}
# Before the API knows the part: it has no batch yet.
LOCAL = frozenset({"planned", "uploaded", "creating"})
SUBMITTED = "submitted"  # its batch exists: `api_status` says how it goes
COLLECTED = "collected"
DROPPED = "dropped"  # cancelled by the user before its batch was created
OURS = LOCAL | {SUBMITTED, COLLECTED, DROPPED}
METADATA_JOB = "batchrun_job"
METADATA_PART = "batchrun_part"


@dataclass(slots=True)
class Part:
    n: int
    key: str  # the attempt's identity, in its batch's metadata
    url: str  # our url (/v1/...)
    model: str
    count: int
    tokens: int
    attempt: int = 1  # how many times its requests have been sent, this one included
    state: str = "planned"  # ours, one of OURS
    api_status: str | None = None  # what the API last said of its batch, verbatim
    cancel_asked: bool = False  # the API accepted `batchrun cancel` for its batch
    output_tries: int = 0  # downloads of a finished batch's results that came back unreadable
    file_id: str | None = None
    batch_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # a failed batch's reasons, as shown
    worst_usd: float = 0.0  # --max-cost: its requests' most possible bill (Batch API prices)

    @property
    def active(self) -> bool:
        """Created (or maybe created) and not yet collected: it counts against the queue."""
        return self.state not in ("planned", "uploaded", COLLECTED, DROPPED)

    @property
    def open(self) -> bool:
        return self.state not in (COLLECTED, DROPPED)

    @property
    def finished(self) -> bool:
        """Its batch will not change again: its files can be collected."""
        return self.state == SUBMITTED and self.api_status in TERMINAL

    def metadata(self, job_id: str) -> dict[str, str]:
        return {METADATA_JOB: job_id, METADATA_PART: self.key}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Part:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not {"n", "key", "url", "model", "count",
                                              "tokens"} <= data.keys():
            raise ValueError(f"not a part record: {str(data)[:80]}")
        part = cls(**_migrated({k: v for k, v in data.items() if k in names}))
        _check(part)
        return part


# What each field of a saved part must hold: a hand-edited or damaged record is named as such
# (BatchBook.load), not met later as a crash or as a part no step ever moves on.
_WHOLE = ("n", "count", "tokens", "attempt", "output_tries", "completed", "failed")
_TEXT = ("key", "url", "model", "state")
_TEXT_OR_NONE = ("api_status", "file_id", "batch_id", "output_file_id", "error_file_id")


def _check(part: Part) -> None:
    for name in _WHOLE:
        value = getattr(part, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"part {part.n!r}: {name} is {value!r}, not a count")
    if part.n < 1:
        raise ValueError(f"part number {part.n}")
    for name in _TEXT:
        if not isinstance(getattr(part, name), str):
            raise ValueError(f"part {part.n}: {name} is {getattr(part, name)!r}, not text")
    for name in _TEXT_OR_NONE:
        if getattr(part, name) is not None and not isinstance(getattr(part, name), str):
            raise ValueError(f"part {part.n}: {name} is {getattr(part, name)!r}, not text")
    if isinstance(part.worst_usd, bool) or not isinstance(part.worst_usd, int | float) or \
            part.worst_usd < 0:
        raise ValueError(f"part {part.n}: worst_usd is {part.worst_usd!r}, not an amount")
    if not isinstance(part.cancel_asked, bool):
        raise ValueError(f"part {part.n}: cancel_asked is {part.cancel_asked!r}")
    if not isinstance(part.errors, list) or not all(isinstance(e, str) for e in part.errors):
        raise ValueError(f"part {part.n}: errors is not a list of text")
    if part.state not in OURS:
        raise ValueError(f"part {part.n}: state {part.state!r} is not one batchrun sets")
    if part.state == SUBMITTED and part.batch_id is None:
        raise ValueError(f"part {part.n} is submitted but names no batch id")
    if part.state in ("uploaded", "creating") and part.file_id is None:
        raise ValueError(f"part {part.n} is {part.state} but names no uploaded file")


def _migrated(data: dict[str, Any]) -> dict[str, Any]:
    """Records saved before `api_status` existed held the API's status in `state`."""
    state = data.get("state", "planned")
    if state not in OURS and data.get("api_status") is None:
        data = {**data, "state": SUBMITTED, "api_status": state}
    return data


@dataclass(slots=True)
class BatchBook:
    """The manifest's `batch` record: every part, and whether the user cancelled the job's
    batches (then nothing more is submitted until `resume --retry-failed`)."""

    parts: list[Part] = field(default_factory=list)
    cancelled: bool = False
    tries_from: int = 1  # parts before this one no longer count a request's tries

    @classmethod
    def load(cls, data: Any, job_id: str) -> BatchBook:
        try:
            if not isinstance(data, dict) or not isinstance(data.get("parts", []), list):
                raise ValueError("not an object with a list of parts")
            parts = [Part.from_dict(p) for p in data.get("parts", [])]
        except (TypeError, ValueError) as exc:
            raise StateError(
                f"the Batch API record of job {job_id} is damaged ({exc}); its batches may "
                "still run on the server. Look them up in the API's dashboard.") from None
        tries_from = data.get("tries_from", 1)
        return cls(parts, bool(data.get("cancelled", False)),
                   tries_from if isinstance(tries_from, int) else 1)

    def dump(self) -> dict[str, Any]:
        return {"parts": [p.to_dict() for p in self.parts], "cancelled": self.cancelled,
                "tries_from": self.tries_from}

    def next_n(self) -> int:
        return max((p.n for p in self.parts), default=0) + 1


class PartFiles:
    """Where one job's part files live."""

    def __init__(self, home: Path, job_id: str) -> None:
        self.dir = home / "batches" / job_id

    def ensure(self) -> None:
        try:
            private_dir(self.dir.parent)
            private_dir(self.dir)
        except OSError as exc:
            raise StateError(f"cannot create {self.dir}: {exc.strerror}.") from None

    def lines_path(self, n: int) -> Path:
        return self.dir / f"part-{n:05d}.jsonl"

    def map_path(self, n: int) -> Path:
        return self.dir / f"part-{n:05d}.lines"

    def left_path(self, n: int) -> Path:
        return self.dir / f"part-{n:05d}.left"

    def download_path(self, n: int, which: str) -> Path:
        return self.dir / f"part-{n:05d}.{which}.jsonl"

    def write_part(self, n: int, lines: list[bytes], line_nos: list[int]) -> None:
        self.ensure()
        try:
            write_bytes_atomic(self.lines_path(n), b"".join(lines), PRIVATE_FILE)
            write_bytes_atomic(self.map_path(n), orjson.dumps(line_nos), PRIVATE_FILE)
        except OSError as exc:
            raise StateError(f"cannot write {self.dir}: {exc.strerror}.") from None

    def ids(self, n: int) -> list[str]:
        """The custom_ids of part n, in its file's order."""
        return [str(orjson.loads(raw)["custom_id"]) for raw in self._read(self.lines_path(n))]

    def requests(self, n: int) -> Iterator[tuple[str, dict[str, object]]]:
        """(custom_id, body) of each request of part n, as uploaded."""
        for raw in self._read(self.lines_path(n)):
            line = orjson.loads(raw)
            yield str(line["custom_id"]), line["body"]

    def line_nos(self, n: int) -> list[int]:
        raw = self._read_all(self.map_path(n))
        return [int(x) for x in orjson.loads(raw)]

    def write_left(self, n: int, left: dict[str, tuple[str, str]]) -> None:
        data = b"".join(orjson.dumps([cid, code, message]) + b"\n"
                        for cid, (code, message) in left.items())
        try:
            write_bytes_atomic(self.left_path(n), data, PRIVATE_FILE)
        except OSError as exc:
            raise StateError(f"cannot write {self.left_path(n)}: {exc.strerror}.") from None

    def left(self, n: int) -> Iterator[tuple[str, str, str]]:
        path = self.left_path(n)
        if not path.exists():
            return
        for raw in self._read(path):
            cid, code, message = orjson.loads(raw)
            yield str(cid), str(code), str(message)

    def remove(self, path: Path) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"cannot remove {path}: {exc.strerror}.") from None

    def _read_all(self, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(
                f"cannot read {path}, a part of this job's Batch API record: {exc.strerror}. "
                "Its batch may still run on the server.") from None

    def _read(self, path: Path) -> Iterator[bytes]:
        try:
            with path.open("rb") as f:
                yield from (raw for raw in f if raw.strip())
        except OSError as exc:
            raise StateError(
                f"cannot read {path}, a part of this job's Batch API record: {exc.strerror}. "
                "Its batch may still run on the server.") from None


def shown_record(batch: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A manifest's `batch` record as `status` shows it: a damaged one (named by the collection
    before it) shows no parts rather than failing on a field that is not what it should be."""
    if not batch:
        return batch
    try:
        return BatchBook.load(batch, job_id).dump()
    except StateError:
        return {}


def has_open_parts(batch: Any) -> bool:
    """Does a manifest's `batch` record hold parts not yet collected? Then their requests may
    be on the server, and only the Batch API path may run the job until they are collected."""
    parts = batch.get("parts") if isinstance(batch, dict) else None
    return any(isinstance(p, dict) and p.get("state") not in (COLLECTED, DROPPED)
               for p in parts or [])


def has_batches_on_server(batch: Any) -> bool:
    """Does a manifest's `batch` record hold parts whose batch exists (or may: its create was
    asked) and is not yet collected? Only then has `status JOB` anything to collect."""
    parts = batch.get("parts") if isinstance(batch, dict) else None
    return any(isinstance(p, dict) and p.get("state") not in ("planned", "uploaded", COLLECTED,
                                                              DROPPED)
               for p in parts or [])


def forgetting_loses_batches(batch: Any) -> bool:
    """Would forgetting the job leave batches on the server that nothing collects or cancels?
    Before `batchrun cancel`: any batch not collected. After it: any batch whose cancel the API
    did not accept and that it did not call finished (a cancel cut short leaves those)."""
    if not has_batches_on_server(batch):
        return False
    if not batch.get("cancelled"):
        return True
    for p in batch.get("parts") or []:
        if not isinstance(p, dict) or p.get("state") in ("planned", "uploaded", COLLECTED,
                                                         DROPPED):
            continue
        status = p.get("api_status") or p.get("state")  # older records: the API's in `state`
        if not p.get("cancel_asked") and status not in UNSTOPPABLE:
            return True
    return False


def drop_unsent_parts(batch: Any) -> int:
    """Drop the parts whose batch was never asked for (planned, uploaded): their requests go
    by the sync path now, and must not be submitted later too. How many parts."""
    parts = batch.get("parts") if isinstance(batch, dict) else None
    unsent = [p for p in parts or [] if isinstance(p, dict)
              and p.get("state") in ("planned", "uploaded")]
    for p in unsent:
        p["state"] = DROPPED
    return len(unsent)


def forget_open_parts(batch: Any) -> int:
    """Drop the parts not yet collected (their requests are planned again): for a job that ran
    against the built-in simulator, whose batches ended with its process. How many parts."""
    if not isinstance(batch, dict) or not isinstance(batch.get("parts"), list):
        return 0
    parts = [p for p in batch["parts"] if isinstance(p, dict)
             and p.get("state") not in (COLLECTED, DROPPED)]
    for p in parts:
        p["state"] = DROPPED
    return len(parts)


def send_failed_again(batch: Any) -> None:
    """`resume --retry-failed`: submit again what `cancel` stopped, and count each request's
    tries afresh (those that ran out of retries are sent again, not failed at once)."""
    if not isinstance(batch, dict):
        return  # damaged: BatchBook.load names it if the job reaches the Batch API path
    batch.pop("cancelled", None)
    listed = batch.get("parts")
    parts = [p for p in listed if isinstance(p, dict)] if isinstance(listed, list) else []
    if parts:
        batch["tries_from"] = max((p.get("n", 0) for p in parts), default=0) + 1
