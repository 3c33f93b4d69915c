"""Why a job stopped before every request had a line, as data. Both ways of sending a job, the
sync engine and the Batch API path, are a `Backend` that returns a `Stop` (None: every request
has a line); the job turns it into the user's message and exit code with `messages.phrase`
(the engine writes no sentences for the terminal; the Batch API path words its own, in
batch.words, and hands them over in `Stop.said`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from batchrun.errors import BatchrunError
from batchrun.policy.stopkind import StopKind


@dataclass(frozen=True, slots=True)
class Stop:
    kind: StopKind
    done: int = 0  # requests with a result line, when the run ended
    total: int = 0
    budget: str = ""  # DAILY: e.g. "Daily token budget reached: 300 of 300 tokens used on …"
    until_reset: dt.timedelta | None = None  # DAILY: time left until 00:00 UTC
    server_message: str = ""  # the server's words (already redacted by the client)
    code: str = ""
    status: int | None = None
    host: str = ""  # NO_NETWORK: where the job could not connect
    input: str = ""  # INPUT_CHANGED, INCOMPLETE: the job's input file
    change: str = ""  # INPUT_CHANGED: what changed, e.g. "its size went from 10 to 5 bytes"
    # Requests in flight at the stop that got no answer: abandoned (Ctrl-C, the end of the
    # wait) or ended without one (a timeout, a reset, a 5xx). The API may have billed them, and
    # the job sends them again.
    abandoned: int = 0
    interrupted: bool = False  # Ctrl-C came while it stopped (for this reason or another)
    unwritten: int = 0  # OUTPUT: answers that came but whose lines could not be written
    spent_usd: float = 0.0  # COST: the job's spend so far (every run), at list prices
    cap_usd: float = 0.0  # COST: the cap it stopped under
    need_usd: float = 0.0  # COST: the worst case of the request (or part) that did not fit
    said: BatchrunError | None = None  # DETACHED, BATCH: the message and exit code, worded


class Backend(Protocol):
    """A way to send a prepared job: the sync engine (engine.Engine) or the Batch API path
    (batch.run.BatchJob). `run` sends what has no line yet and returns why it stopped early
    (None: every request has a line); a local failure that ends it at once (a disk, the
    state) is raised as a BatchrunError. `interrupt`: Ctrl-C or SIGTERM."""

    async def run(self) -> Stop | None: ...

    def interrupt(self) -> None: ...


def hands_over_to_batch(stop: Stop, via: str) -> bool:
    """--via auto: the sync path's stop hands what is left to the Batch API at once only when
    it was the daily budget and nobody pressed Ctrl-C: after a Ctrl-C the user wants out, and
    requests its drain abandoned (maybe billed) must not be sent again on the spot."""
    return via == "auto" and stop.kind is StopKind.DAILY and not stop.interrupted
