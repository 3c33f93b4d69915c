"""A job's spend in US dollars at list prices, kept durably for --max-cost across runs and kill -9.

One small append-only file per job beside its manifest (`jobs/JOB.spend`), one line per event:

    R key usd   a request (or a Batch API part) is about to be sent; usd is its worst case
    S key usd   its answer came back; usd is what it cost (the reservation is closed)
    T usd       what the lines before a compaction added up to

The sync engine appends `R` before a request leaves and `S` before its result line is written.
So after a kill -9 the file never says less than the server billed for the lines in the output:
an `R` with no `S` counts at its worst case (the request may have been answered and billed, its
line lost with the process). A torn last line is ignored: a torn `R` was never sent, a torn
`S` leaves its `R` counting at the worst case.

Each run starts by rewriting the file (atomically) as one `T` line plus the reservations that
outlive a run: a Batch API part's (keys starting `KEPT`), whose batch goes on on the server and
is settled when it is collected, by whichever run collects it. A sync request's open
reservation is never settled later (its request is sent again under a new key), so it is folded
into `T` at its worst case.
"""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path

from batchrun.errors import StateError
from batchrun.files.fsutil import PRIVATE_FILE, write_bytes_atomic

KEPT = "b:"  # a Batch API part's reservation: open across runs until its part is collected


def spend_path(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / f"{job_id}.spend"


def read_spent(path: Path) -> float:
    """The job's spend as the file says it (0 when there is none yet). Open reservations count
    at their worst case."""
    settled, held = _read(path)
    return settled + sum(held.values())


def _read(path: Path) -> tuple[float, dict[str, float]]:
    """What is settled, and the reservations still open (key -> worst case)."""
    total, held = 0.0, dict[str, float]()
    try:
        # Line by line: a record holds a line per answer, millions after a long run.
        with path.open("rb") as f:
            for line in f:
                total += _line(line, held)
    except FileNotFoundError:
        return 0.0, {}
    except OSError as exc:
        raise StateError(f"cannot read the job's spend record {path}: {exc.strerror}.") from None
    return total, held


def _line(line: bytes, held: dict[str, float]) -> float:
    """What one line of the record adds to the settled sum; opens or closes a hold in `held`."""
    if not line.endswith(b"\n"):
        return 0.0  # torn: it may hold a number cut short ("0.01" of "0.0123")
    parts = line.split()
    try:
        match parts:
            case [b"T", usd]:
                return _amount(usd)
            case [b"R", key, usd]:
                held[key.decode()] = _amount(usd)
            case [b"S", key, usd]:
                amount = _amount(usd)
                held.pop(key.decode(), None)
                return amount
    except (ValueError, UnicodeDecodeError):
        pass  # not batchrun's: skipped, as a torn last line is
    return 0.0


def _amount(usd: bytes) -> float:
    """A recorded amount in US dollars. batchrun writes only finite amounts of at least zero:
    a NaN would make every later cap check fail and a negative one would lower the job's spend
    below the bill, so either is read as a damaged line."""
    value = float(usd)
    if not 0 <= value < math.inf:
        raise ValueError(usd)
    return value


class SpendJournal:
    """The open spend file of a running job. `spent`: everything settled, by this run and every
    earlier one (earlier runs' unsettled sync requests at their worst case); `held`: the
    reservations open now (requests in flight, Batch API parts on the server)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        settled, held = _read(path)
        self.held = {k: v for k, v in held.items() if k.startswith(KEPT)}
        self.kept_usd = sum(self.held.values())  # what Batch API parts hold (KEPT keys)
        self.spent = settled + sum(v for k, v in held.items() if not k.startswith(KEPT))
        self._run = secrets.token_hex(4)  # keys of this run never meet an earlier run's
        self._serial = 0
        lines = [f"T {self.spent!r}\n", *(f"R {k} {v!r}\n" for k, v in self.held.items())]
        try:
            write_bytes_atomic(path, "".join(lines).encode(), PRIVATE_FILE)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise self._failed(exc) from None

    @property
    def held_usd(self) -> float:
        return sum(self.held.values())

    def reserve(self, worst: float, key: str = "") -> str:
        """Record a request (or, with `key`, a Batch API part: KEPT + its key) about to be sent,
        at its worst case; returns its key. A key already held is not held twice."""
        if not key:
            self._serial += 1
            key = f"{self._run}.{self._serial}"
        if key not in self.held:
            self._append(f"R {key} {worst!r}\n")
            self.held[key] = worst
            if key.startswith(KEPT):
                self.kept_usd += worst
        return key

    def settle(self, key: str, usd: float) -> None:
        """Record what a sent request cost; from now on it counts at that, not its worst."""
        self._append(f"S {key} {usd!r}\n")
        if key.startswith(KEPT):
            self.kept_usd = max(0.0, self.kept_usd - self.held.get(key, 0.0))
        self.held.pop(key, None)
        self.spent += usd

    def close(self) -> None:
        os.close(self._fd)

    def _append(self, line: str) -> None:
        try:
            os.write(self._fd, line.encode())  # one write: a line is whole or torn, never mixed
        except OSError as exc:
            raise self._failed(exc) from None

    def _failed(self, exc: OSError) -> StateError:
        return StateError(f"cannot write the job's spend record {self.path}: {exc.strerror}; "
                          "nothing more was sent. Free space on its disk or set "
                          "$BATCHRUN_HOME to a writable directory, then resume.")
