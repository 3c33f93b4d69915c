"""Why a job stopped before every request had a line, as data. Both ways of sending a job, the
sync engine and the Batch API path, are a `Backend` that returns a `Stop` (None: every request
has a line); the runner turns it into the user's message and exit code with `phrase` (the
engine writes no sentences for the terminal; the Batch API path words its own, in batch.words,
and hands them over in `Stop.said`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

from batchrun.errors import ApiRefused, BatchrunError, DailyLimitReached, Interrupted, StateError
from batchrun.files.ledger import fmt_wait
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


def abandoned_note(abandoned: int) -> str:
    """What a message says of requests in flight given up at a stop ("" when none was)."""
    if not abandoned:
        return ""
    one = abandoned == 1
    return (f" {abandoned:,} request{'' if one else 's'} in flight got no answer (abandoned "
            f"at the stop, or timed out; the API may have billed {'it' if one else 'them'}); "
            f"resuming sends {'it' if one else 'them'} again.")


def phrase(stop: Stop, output: str, resume: str, key_env: str) -> BatchrunError:
    """The message and exit code the user sees. `resume`: the command that continues the job."""
    if stop.said is not None:
        return stop.said
    done = f"{stop.done:,} of {stop.total:,} requests done"
    # Said before the resume command, never after it: run on from the command, the count read
    # (and was copied) as its arguments.
    note = abandoned_note(stop.abandoned)
    if stop.kind is StopKind.DAILY:
        said = f" (The server said: {stop.server_message})" if stop.server_message else ""
        wait = fmt_wait(stop.until_reset or dt.timedelta())
        return DailyLimitReached(
            f"{stop.budget}. {done}.{said}{note} Resume after 00:00 UTC (in {wait}) with: "
            f"{resume}")
    if stop.kind is StopKind.REFUSED:
        return ApiRefused(
            f"The API refused the request: {stop.server_message} ({stop.code}, HTTP "
            f"{stop.status}).{note} Check ${key_env}, the account's billing and quota, then "
            f"continue with: {resume} (the {stop.done:,} finished results in {output} are kept).")
    if stop.kind is StopKind.NO_NETWORK:
        return StateError(
            f"Cannot reach {stop.host}: no request has got through and every attempt failed "
            f"to connect (last: {stop.server_message}). Nothing was recorded as failed; "
            f"{done}.{note} Check the network, the proxy settings and the base URL, then "
            f"continue with: {resume}")
    if stop.kind is StopKind.INPUT_CHANGED:
        return StateError(
            f"The input {stop.input} changed while the job ran ({stop.change}); nothing read "
            f"after the change was sent. {done}, kept in {output}.{note} Put the input back "
            f"as it was, with its modification time (cp -p), and continue with: {resume} (or add "
            "--force to go on with it as it is now; ids that already have a result are not "
            "sent again).")
    if stop.kind is StopKind.INCOMPLETE:
        return StateError(
            f"The job is not finished: {done}, and reading {stop.input} again gave none of the "
            f"rest.{note} Nothing is lost: make sure nothing is changing the file, then continue "
            f"with: {resume}")
    if stop.kind is StopKind.OUTPUT:
        lost = ""
        if stop.unwritten:
            lost = (f" {stop.unwritten:,} answer{'s' if stop.unwritten != 1 else ''} could not "
                    "be written (the API billed them; resuming sends them again).")
        return StateError(f"{stop.server_message} {done}, kept in {output}.{lost}{note} Then "
                          f"continue with: {resume}")
    if stop.kind is StopKind.STATE:
        flight = (abandoned_note(stop.abandoned).strip() if stop.abandoned else
                  "The requests in flight were finished and written.")
        return StateError(f"{stop.server_message} {done}, kept in {output}. {flight} Once it "
                          f"answers again, continue with: {resume}")
    return Interrupted(
        f"Interrupted. {stop.done:,} of {stop.total:,} requests are done and kept in {output}."
        f"{note} Continue with: {resume}")
