"""Every job's timeline: what happened in each second of each run, beside its manifest.

One append-only file per job (`jobs/JOB.timeline`), one JSON array a line, times in UTC epoch
seconds. A run (a session) writes:

    ["S", t, 1]                              a session starts (format 1); key numbers restart
    ["K", k, model, endpoint]                key k is this (model, --endpoints name)
    ["L", t, {model: [rpm, tpm, rpd, tpd]}]  the limits the run paces to
    [t, k, in_flight, sent, ok, cached, failed, 429_minute, 429_day, 429_too_large, 429,
     tokens, charged]                        second t: requests in flight at its end, and its
                                             counts (trailing zeros left off)
    ["G", t, k, rate_rpm, rate_tpm, burst_tokens, waiting]   the limiter, when it moves
    ["B", t, k, tokens, requests]            today's daily budget used, when it moves
    ["C", t, k, pause_s]                     a per-minute 429's cooldown
    ["T", t, state]                          the job's state (running, paused-daily, ...)
    ["P", t, part, batch_id, state, requests]   a Batch API part's state
    ["A", t]                                 still alive, after a minute with nothing to write
    ["E", t, ended]                          the session ended (done, stopped, ...)

A session with no "E" line was killed (kill -9, a power cut): its end is its last line.
Sparse: a count row only for a second in which something happened. After the job's first
6 hours a row counts a whole minute (t on the minute, `step` 60 when read), so a job of days
stays a few MB. Rows are buffered and written about once a second (every 10 s once rows count
minutes), on the next event or a timer of the running loop, so a quiet job writes too: a kill -9
loses at most the last second or two (ten after 6 hours). A row may come in parts (a minute's
is written every 10 s); the reader adds them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import StateError
from batchrun.events import (
    AttemptEnded,
    BatchPart,
    BudgetUsed,
    Event,
    JobStarted,
    Paced,
    RequestFinished,
    RequestSent,
    StateChanged,
    Throttled,
    rate_limited_kind,
)
from batchrun.files.jobstore import timeline_file

FORMAT = 1
PER_SECOND_S = 6 * 3600  # a job's first 6 hours in per-second rows, then per-minute
FLUSH_S = 1.0
FLUSH_MINUTES_S = 10.0
ALIVE_S = 60.0
COUNTS = ("sent", "ok", "cached", "failed", "rate_limited_minute", "rate_limited_day",
          "too_large", "rate_limited", "tokens", "tokens_charged")
GAUGES = ("in_flight", "rate_rpm", "rate_tpm", "burst_tokens", "waiting")
SENT, OK, CACHED, FAILED, RL_MINUTE, RL_DAY, TOO_LARGE, RL, TOKENS, CHARGED = range(len(COUNTS))
_RATE_KINDS = {"minute": RL_MINUTE, "day": RL_DAY, "too_large": TOO_LARGE}


def timeline_path(jobs_dir: Path, job_id: str) -> Path:
    return timeline_file(jobs_dir, job_id)


def minute_rows_from(origin: float) -> int:
    """The first second counted in per-minute rows: on a minute, so rows before it are
    seconds and rows from it minutes, whichever way the file is cut."""
    return math.ceil((origin + PER_SECOND_S) / 60) * 60


def row_time(t: int, minutes_from: int) -> int:
    """The row that second `t` is counted in."""
    return t if t < minutes_from else t - t % 60


def first_start(path: Path) -> int | None:
    """When the job's first session started (its first line), or None with no timeline."""
    try:
        with path.open("rb") as f:
            line = f.readline()
    except OSError:
        return None
    try:
        head = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return int(head[1]) if isinstance(head, list) and _valid(head) and head[0] == "S" else None


def ends_mid_line(path: Path) -> bool:
    """The file's last line is torn (a kill -9 or a full disk in the middle of a write): what
    comes next must start on a line of its own, or the torn line swallows it."""
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False


@dataclass(slots=True)
class _Key:
    """One (model, endpoint): its counts in the open row, its gauges as last written."""

    n: int
    counts: list[int] = field(default_factory=lambda: [0] * len(COUNTS))
    in_flight: int = 0
    in_flight_written: int = 0
    paced: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)  # rpm, tpm, burst, waiting
    paced_written: tuple[float, float, float, int] = (0.0, 0.0, 0.0, 0)
    budget: tuple[int, int] = (0, 0)
    budget_written: tuple[int, int] = (0, 0)


class Recorder:
    """A Listener that records the job's timeline. Cheap per event (a dict lookup and an
    add); writes nothing until the job has started (JobStarted) or `keep` says it is on disk,
    so a refused submit leaves no file. `close(ended)` ends the session."""

    def __init__(self, path: Path, now: Callable[[], float] = time.time,
                 keep: bool = False) -> None:
        self._path = path
        self._now = now
        self._keep = keep
        self._keys: dict[tuple[str, str], _Key] = {}
        self._lines: list[bytes] = []
        self._row_t = -1  # the second (or minute) the open counts belong to
        self._state = ""
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._flushed_at = self._written_at = now()
        start = int(self._flushed_at)
        origin = first_start(path)
        self._torn = ends_mid_line(path)
        self._minutes_from = minute_rows_from(start if origin is None else origin)
        self._lines.append(orjson.dumps(["S", start, FORMAT]))

    def __call__(self, event: Event) -> None:
        if self._closed:
            return
        now = self._now()
        t = row_time(int(now), self._minutes_from)
        if t != self._row_t:
            self._close_row()
            self._row_t = t
        match event:
            case RequestSent(model=model, endpoint=endpoint, cost=cost):
                key = self._key(model, endpoint)
                key.counts[SENT] += 1
                key.counts[CHARGED] += cost
                key.in_flight += 1
            case AttemptEnded(model=model, endpoint=endpoint):
                self._attempt_ended(self._key(model, endpoint), event)
            case RequestFinished(model=model, endpoint=endpoint):
                key = self._key(model, endpoint)
                # The response cache's answers (#25, from_cache) were billed when first asked.
                if event.from_cache:
                    key.counts[CACHED] += 1
                else:
                    key.counts[OK if event.ok else FAILED] += 1
                    key.counts[TOKENS] += event.tokens_in + event.tokens_out
            case Paced(model=model, endpoint=endpoint):
                # Rounded: a gauge that moves by a hair is not written again, nor at length.
                self._key(model, endpoint).paced = (round(event.rate_rpm, 1),
                                                    round(event.rate_tpm, 1),
                                                    round(event.burst_tokens, 1), event.waiting)
            case BudgetUsed(model=model, endpoint=endpoint):
                self._key(model, endpoint).budget = (event.tokens, event.requests)
            case Throttled(model=model, endpoint=endpoint, pause_s=pause):
                self._lines.append(orjson.dumps(["C", t, self._key(model, endpoint).n,
                                                 round(pause, 3)]))
            case StateChanged(state=state) if state != self._state:
                self._state = state
                self._lines.append(orjson.dumps(["T", int(self._now()), state]))
            case BatchPart():
                self._lines.append(orjson.dumps(["P", int(self._now()), event.part,
                                                 event.batch_id, event.state, event.requests]))
            case JobStarted(limits=limits):
                self._keep = True
                self._lines.append(orjson.dumps(["L", int(self._now()), {
                    m: [x.rpm, x.tpm, x.rpd, x.tpd] for m, x in limits.items()}]))
        self._schedule(now, t)

    def _attempt_ended(self, key: _Key, event: AttemptEnded) -> None:
        key.in_flight -= 1
        counts = key.counts
        named = rate_limited_kind(event)
        kind = None if named is None else _RATE_KINDS[named]
        if kind is not None:
            counts[kind] += 1
        if event.status == 429 or (event.status is None and kind is not None):
            counts[RL] += 1

    def _key(self, model: str, endpoint: str) -> _Key:
        key = self._keys.get((model, endpoint))
        if key is None:
            key = self._keys[model, endpoint] = _Key(len(self._keys))
            self._lines.append(orjson.dumps(["K", key.n, model, endpoint]))
        return key

    def _close_row(self) -> None:
        """Write the open row's counts and any gauge that moved, and start a new row."""
        t = self._row_t
        if t < 0:
            return
        for key in self._keys.values():
            counts = key.counts
            if any(counts) or key.in_flight != key.in_flight_written:
                last = max((i for i, c in enumerate(counts) if c), default=-1)
                self._lines.append(orjson.dumps([t, key.n, key.in_flight, *counts[:last + 1]]))
                key.counts = [0] * len(COUNTS)
                key.in_flight_written = key.in_flight
            if key.paced != key.paced_written:
                key.paced_written = key.paced
                self._lines.append(orjson.dumps(["G", t, key.n, *key.paced]))
            if key.budget != key.budget_written:
                key.budget_written = key.budget
                self._lines.append(orjson.dumps(["B", t, key.n, *key.budget]))

    def _schedule(self, now: float, t: int) -> None:
        """Write about once a second (every 10 s once rows count minutes: a row per write),
        on the next event or, when none comes, on a timer of the running loop."""
        if not self._keep:
            return
        every = FLUSH_S if t < self._minutes_from else FLUSH_MINUTES_S
        if now - self._flushed_at >= every:
            # A second's row is closed by the next second's event; a minute's is written in parts.
            self.flush(close_row=t >= self._minutes_from)
            return
        if self._timer is None:
            with contextlib.suppress(RuntimeError):  # no loop (a library's own thread): next event
                self._timer = asyncio.get_running_loop().call_later(every, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self, close_row: bool = True) -> None:
        """Write what is buffered; with `close_row` the open row too (it may then come in
        two parts)."""
        if not self._keep:
            return
        self._flushed_at = self._now()
        if close_row:
            self._close_row()
        if not self._lines and self._flushed_at - self._written_at >= ALIVE_S:
            # A quiet stretch (a daily wait): a word that the process lives, so a kill -9
            # during it ends the session where it died, not where it fell quiet.
            self._lines.append(orjson.dumps(["A", int(self._flushed_at)]))
        if not self._lines:
            return
        self._written_at = self._flushed_at
        data = b"\n".join(self._lines) + b"\n"
        if self._torn:
            data = b"\n" + data
        self._lines = []
        try:
            with self._path.open("ab") as f:
                f.write(data)
            self._torn = False
        except OSError:
            # The timeline is a record for the report, never a reason to stop a job: a full
            # disk shows as a gap (the output and the manifest say what was done). A write
            # may have stopped mid-line.
            self._torn = True

    def close(self, ended: str) -> None:
        """The session ends, saying how (a state of the job: done, stopped, paused-daily...)."""
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_row()
        self._lines.append(orjson.dumps(["E", int(self._now()), ended]))
        self.flush()
        self._closed = True


# -- reading --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    start: int
    end: int
    ended: str  # how it ended; "killed" when it never said (kill -9, a power cut)


@dataclass(slots=True)
class Timeline:
    """A timeline as read: rows per (t, model, endpoint), and the job's marks."""

    sessions: list[Session] = field(default_factory=list)
    minutes_from: int = 0
    counts: dict[tuple[int, str, str], list[int]] = field(default_factory=dict)
    gauges: dict[tuple[int, str, str], list[float]] = field(default_factory=dict)
    budget: dict[tuple[int, str, str], tuple[int, int]] = field(default_factory=dict)
    cooldowns: list[tuple[int, str, str, float]] = field(default_factory=list)
    states: list[tuple[int, str]] = field(default_factory=list)
    parts: list[tuple[int, int, str, str, int]] = field(default_factory=list)
    limits: dict[str, list[int]] = field(default_factory=dict)

    def step(self, t: int) -> int:
        return 60 if t >= self.minutes_from else 1


def read(path: Path, running: bool = False) -> Timeline | None:
    """The timeline of a job (None when it has none). A torn last line (a kill -9 mid-write)
    is skipped. `running`: the last session is still going, so its missing end is no kill."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the timeline {path}: {exc.strerror}. The job's results "
                         "and `batchrun status` do not depend on it; move it away and "
                         "`batchrun report` gives what the job's manifest knows.") from None
    timeline = Timeline()
    keys: dict[int, tuple[str, str]] = {}
    now: dict[tuple[str, str], list[float]] = {}  # each key's gauges as they stand
    last_t = 0
    for row in _rows(data):
        head = row[0]
        if isinstance(head, int):
            key = keys.get(row[1], ("?", ""))
            counts = timeline.counts.setdefault((head, *key), [0] * len(COUNTS))
            for i, value in enumerate(row[3:3 + len(COUNTS)]):
                counts[i] += value
            gauges = now.get(key) or now.setdefault(key, _first_gauges(timeline, key))
            gauges[0] = row[2]
            timeline.gauges[head, *key] = list(gauges)
            last_t = max(last_t, head)
            continue
        if head == "S":
            now.clear()  # a new process: nothing in flight, its limiter new
        elif head == "G":
            key = keys.get(row[2], ("?", ""))
            gauges = now.get(key) or now.setdefault(key, _first_gauges(timeline, key))
            gauges[1:] = row[3:3 + len(GAUGES) - 1]
            timeline.gauges[row[1], *key] = list(gauges)
        _mark(timeline, keys, row, last_t)
        if head != "K":
            last_t = max(last_t, row[1])
    if timeline.sessions and timeline.sessions[-1].ended == "":
        timeline.sessions[-1].end = max(timeline.sessions[-1].start, last_t)
        timeline.sessions[-1].ended = "running" if running else "killed"
    if timeline.sessions:
        timeline.minutes_from = minute_rows_from(timeline.sessions[0].start)
    return timeline


def _first_gauges(timeline: Timeline, key: tuple[str, str]) -> list[float]:
    """A key's gauges before its limiter first spoke: a new limiter admits at the model's
    limits (one endpoint's: with --endpoints they are every endpoint's together, so unknown)."""
    model, endpoint = key
    rpm, tpm = (timeline.limits.get(model) or [0, 0])[:2] if not endpoint else (0, 0)
    return [0, float(rpm), float(tpm), 0.0, 0]


def _mark(timeline: Timeline, keys: dict[int, tuple[str, str]], row: list[Any],
          last_t: int) -> None:
    """One line that is not a count row."""
    head = row[0]
    if head == "S":
        keys.clear()
        if timeline.sessions and timeline.sessions[-1].ended == "":
            killed = timeline.sessions[-1]
            killed.end, killed.ended = max(killed.start, last_t), "killed"
        timeline.sessions.append(Session(row[1], row[1], ""))
    elif head == "K":
        keys[row[1]] = (row[2], row[3])
    elif head == "E" and timeline.sessions:
        # max: a clock set back (NTP) during the session must not end it before it began.
        session = timeline.sessions[-1]
        session.end, session.ended = max(session.start, row[1]), row[2]
    elif head == "B":
        model, endpoint = keys.get(row[2], ("?", ""))
        timeline.budget[row[1], model, endpoint] = (row[3], row[4])
    elif head == "C":
        model, endpoint = keys.get(row[2], ("?", ""))
        timeline.cooldowns.append((row[1], model, endpoint, row[3]))
    elif head == "T":
        timeline.states.append((row[1], row[2]))
    elif head == "P":
        timeline.parts.append((row[1], row[2], row[3], row[4], row[5]))
    elif head == "L":
        timeline.limits.update(row[2])


def _rows(data: bytes) -> Iterator[list[Any]]:
    """The lines that are what a Recorder writes; a torn or damaged one is skipped."""
    for line in data.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            row = orjson.loads(line)
            if isinstance(row, list) and _valid(row):
                yield row


_INT, _NUM, _STR = "i", "n", "s"
# Each kind of line: the types of its fields after the head ("*": as many more of the last).
_SHAPES = {"S": "ii", "K": "iss", "G": "iin*", "B": "iiii", "C": "iin", "T": "is",
           "P": "iissi", "A": "i", "E": "is"}


def _valid(row: list[Any]) -> bool:
    """A line has the shape its kind is written in (pure)."""
    if not row:
        return False
    head, fields = row[0], row[1:]
    if head == "L":
        return len(fields) == 2 and _is(fields[0], _INT) and _limits(fields[1])
    if type(head) is int:  # a count row, most of the file: checked without a call a field
        return 2 <= len(fields) <= 2 + len(COUNTS) and all(type(v) is int for v in fields)
    shape = _SHAPES.get(head) if isinstance(head, str) else None
    if shape is None:
        return False
    many = shape.endswith("*")
    shape = shape.rstrip("*")
    if len(fields) < len(shape) or (len(fields) > len(shape) and not many):
        return False
    kinds = shape + shape[-1] * (len(fields) - len(shape))
    return all(_is(v, k) for v, k in zip(fields, kinds, strict=True))


def _is(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == _INT:
        return isinstance(value, int)
    if kind == _NUM:
        return isinstance(value, int | float)
    return isinstance(value, str)


def _limits(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list) and len(v) == 4 and all(_is(x, _INT) for x in v)
        for v in value.values())
