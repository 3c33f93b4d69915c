"""What the Batch API path tells the user when it stops short of the end (Ctrl-C, --detach,
`status`, a call that failed for good) and how far its parts got. Each message names the
batches still running on the server, since those go on (and are billed) whatever the run does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from batchrun.backends.batch.parts import COLLECTED, DROPPED, SUBMITTED, Part

SHOWN_PARTS = 6
# Polls of a batch whose status the API does not document before the run stops: with the
# poll interval doubling up to --poll-max (60 s), about a quarter of an hour.
UNKNOWN_POLLS = 20


def _batches(n: int) -> str:
    return f"{n} batch{'es' if n != 1 else ''}"


def resume_hint(job: str, running: int) -> str:
    on_server = (f"The {_batches(running)} already submitted "
                 f"{'go' if running != 1 else 'goes'} on running on the server. "
                 if running else "")
    return f"{on_server}Continue with: batchrun resume {job}"


def stopped(job: str, running: int, done: int, total: int, output: Path) -> str:
    many = running != 1
    batches = (f" The {_batches(running)} submitted {'go' if many else 'goes'} on running on "
               f"the server (Ctrl-C does not cancel {'them' if many else 'it'}): batchrun "
               f"resume {job} collects the results, batchrun cancel {job} cancels "
               f"{'them' if many else 'it'}." if running else
               f" Continue with: batchrun resume {job}")
    return (f"Interrupted. {done:,} of {total:,} requests are done and kept in "
            f"{output}.{batches}")


def queue_full(job: str, model: str, waited_s: float, refused: int, said: str, part: int,
               tokens: int) -> str:
    return (f"The Batch API's enqueued-token queue for {model} stayed full for "
            f"{waited_s / 60:,.0f} minutes: it refused {refused} batch"
            f"{'es' if refused != 1 else ''} of this job (token_limit_exceeded: {said}) while "
            f"none of the job's other batches of {model} was in it. So it is filled by other "
            "batches of the account (another job or tool: see the API's list of batches), or "
            "the API counts this job's requests far above batchrun's estimate (part "
            f"{part}: {tokens:,} prompt tokens). Let those batches finish or cancel them, or "
            f"set a smaller --batch-queue-tokens, then continue with: batchrun resume {job}")


def cancel_interrupted(job: str, cancelled: list[str], running: list[str]) -> str:
    done = (f"cancelled {_batches(len(cancelled))} of job {job} ({', '.join(cancelled)})"
            if cancelled else f"cancelled no batch of job {job}")
    rest = (f"; {_batches(len(running))} may still run on the server ({', '.join(running)}): "
            f"cancel {'them' if len(running) != 1 else 'it'} with: batchrun cancel {job}"
            if running else "")
    return (f"Interrupted: {done}{rest}. batchrun resume {job} collects what the batches "
            "finished.")


def unknown_status(batch_id: str, n: int, status: str) -> str:
    return (f"Batch {batch_id} (part {n}) reports status {status!r}, which the Batch API does "
            "not document: batchrun waits for it to become one it knows.")


def unknown_status_stop(job: str, batch_id: str, n: int, status: str, polls: int) -> str:
    return (f"Batch {batch_id} (part {n}) still reports status {status!r} after {polls} polls; "
            "the Batch API does not document it, so batchrun cannot tell whether the batch "
            "will finish. Its requests are kept for it, not sent again. Continue with: "
            f"batchrun resume {job} (or stop it with: batchrun cancel {job}).")


def incomplete(job: str, done: int, total: int, path: Path) -> str:
    return (f"The job is not finished: {done:,} of {total:,} requests have a result, and "
            f"reading {path} again gave none of the rest. Nothing is lost: make sure nothing "
            f"is changing the file, then continue with: batchrun resume {job}")


def detached(job: str, running: int, waiting: int) -> str:
    wait = (f" {waiting} more part{'s' if waiting != 1 else ''} wait for the enqueued-token "
            "limit and are submitted by resume." if waiting else "")
    return (f"Job {job} submitted, not finished: {_batches(running)} running on the server."
            f"{wait} Collect the results with: batchrun resume {job} (batchrun status {job} "
            "collects what has finished and shows how far it got).")


def progress(all_parts: list[Part], queued: Callable[[str], int],
             limit: Callable[[str], int]) -> str | None:
    """Each part's state and counts (open parts first), and the tokens enqueued against
    each model's limit: the non-TTY line and the live display's detail."""
    parts = sorted((p for p in all_parts if p.state != DROPPED),
                   key=lambda p: (not p.open, p.n))
    if not parts:
        return None
    shown = []
    for p in parts[:SHOWN_PARTS]:
        said = str(p.api_status if p.state == SUBMITTED else p.state).replace("_", " ")
        what = {"planned": "waiting for the queue", "uploaded": "waiting for the queue",
                COLLECTED: "done"}.get(p.state, said)
        counts = f" {p.completed + p.failed:,}/{p.count:,}" if p.batch_id else ""
        shown.append(f"part {p.n} {what}{counts}")
    models = sorted({p.model for p in parts})
    named = len(models) > 1  # each model has its own queue: say which is which
    queues = " · ".join(
        (f"{m} " if named else "") + (
            f"queued {queued(m):,}/{limit(m):,} tok" if limit(m) else f"queued {queued(m):,} tok")
        for m in models)
    more = f" · +{len(parts) - SHOWN_PARTS} parts" if len(parts) > SHOWN_PARTS else ""
    return " · ".join(shown) + more + " · " + queues


def cancel_unknown(job: str, unknown: list[str], cancelled: int, dropped: int) -> str:
    done = f"cancelled {_batches(cancelled)}" if cancelled else "cancelled no batch"
    if dropped:
        done += f" and dropped {dropped} part{'s' if dropped != 1 else ''} not yet submitted"
    return (f"The Batch API does not know {_batches(len(unknown))} of job {job} under this key "
            f"(HTTP 404): {', '.join(unknown)}. {'They' if len(unknown) != 1 else 'It'} may "
            "still run, and bill, under another key or project (the one the job was started "
            f"with): run batchrun cancel {job} again with that key, or batchrun resume {job} "
            f"with it to collect the results. If the batch is truly gone (deleted), stop "
            f"waiting for it with: batchrun cancel {job} --force (its requests are then "
            f"recorded as failed, batch_cancelled). So far: {done}.")
