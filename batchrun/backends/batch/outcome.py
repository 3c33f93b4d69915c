"""What a finished part's batch comes to, once its files are merged (see `collect`): which
requests fail for good and with what reason, which are left over for a new part, and what an
enqueued-token refusal teaches about how much a model's queue holds."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from batchrun.backends.batch.collect import Collector, Merged
from batchrun.backends.batch.parts import COLLECTED, BatchBook, Part, PartFiles
from batchrun.errors import redact

SHOWN_ERRORS = 20
# Downloads of a completed batch's results that may come back unreadable before its unread
# requests are failed (each one a poll apart).
OUTPUT_TRIES = 3

# The limit an enqueued-token refusal names: OpenAI's "Limit: 2,000,000 enqueued tokens",
# Azure's "the configured limit of 2,000,000".
_LIMIT = re.compile(r"[Ll]imit(?::| of)\s*(\d[\d,]*)")


def stated_limit(message: str) -> int | None:
    found = _LIMIT.search(message)
    return int(found.group(1).replace(",", "")) or None if found else None


def describe(error: tuple[int | None, str, str], secrets: tuple[str, ...]) -> str:
    """A validation error as the manifest keeps it."""
    line, code, message = error  # the server's words, which may quote the key
    return orjson.dumps([line, *(redact(x, *secrets) for x in (code, message))]).decode()


@dataclass(slots=True)
class QueueSeen:
    """After an enqueued-token refusal: models whose parts wait for the next poll, and the
    queue each model was seen to hold (less than the preset: another job shares it)."""

    held: set[str] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)


class PartSettler:
    def __init__(self, book: BatchBook, files: PartFiles, collector: Collector, done: set[str],
                 input_path: Path, queue: QueueSeen, notify: Callable[[str], None]) -> None:
        self._book, self._files, self._collector, self._done = book, files, collector, done
        self._input, self._queue, self._notify = input_path, queue, notify

    def settle(self, part: Part, ids: list[str], merged: Merged, gone: str | None) -> None:
        """Every request of part gets a result line or goes into merged.left (written for the
        next planning); the part is then collected, which its caller saves."""
        if part.api_status == "failed":
            self._failed_validation(part, ids, merged)
        reason = {"expired": ("batch_expired", "the batch expired before this request ran"),
                  "cancelled": ("batch_cancelled", "the batch was cancelled before this "
                                "request ran")}.get(part.api_status or "",
                                                    ("batch_incomplete", "the batch returned "
                                                     "no result for this request"))
        if gone is not None:
            # They ran (and were billed), but their results are lost: not sent again unasked.
            for cid in ids:
                if cid not in merged.left:
                    self._collector.fail(
                        cid, part.model, "output_file_missing",
                        f"the result file {gone} of batch {part.batch_id} is gone from the API "
                        "(HTTP 404); resume --retry-failed sends the request again",
                        part.attempt)
        for cid in ids:
            if cid not in self._done and cid not in merged.left:
                merged.left[cid] = reason
        if merged.refused is not None:
            # Tried afresh once the account is fixed: these leftovers count no try.
            part.attempt = 0
        self._files.write_left(part.n, merged.left)
        part.state = COLLECTED

    def unread(self, part: Part, ids: list[str], merged: Merged) -> list[str]:
        """Requests the batch ran whose results were not read (output_file_id null, a file
        that is not JSONL or was cut short), as opposed to left undone. A completed batch ran
        every request; an expired or cancelled one ran as many as its request_counts say
        completed, and when fewer answers were read than that, the unread ones cannot be told
        from those that never ran: all are read again, never sent again unasked."""
        missing = [cid for cid in ids if cid not in self._done and cid not in merged.left]
        if part.api_status == "completed":
            return missing
        if part.api_status in ("expired", "cancelled") and merged.answered < part.completed:
            return missing
        return []

    def read_again(self, part: Part, unread: list[str]) -> bool:
        """True: download the part's files again at the next poll. Out of tries, the unread
        requests fail: they ran and may have been billed, so only --retry-failed sends them
        again. The caller saves the part either way."""
        if part.output_tries < OUTPUT_TRIES:
            part.output_tries += 1
            self._notify(f"Batch {part.batch_id} (part {part.n}) {part.api_status}, but the "
                         f"results of {len(unread):,} of its requests could not be read (its "
                         "output file is missing, not JSONL or cut short); they are downloaded "
                         f"again, not sent again (try {part.output_tries} of {OUTPUT_TRIES}).")
            return True
        message = (f"batch {part.batch_id} {part.api_status} but this request's result could "
                   f"not be read after {OUTPUT_TRIES + 1} downloads (the output file was "
                   "missing, not JSONL or cut short); it may have been billed. resume "
                   "--retry-failed sends it again")
        for cid in unread:
            self._collector.fail(cid, part.model, "batch_output_unavailable", message,
                                 part.attempt)
        return False

    def tidy(self, part: Part) -> None:
        """Once the part is saved as collected, only what it left unfinished is needed (the
        next planning reads it)."""
        for path in (self._files.download_path(part.n, "output"),
                     self._files.download_path(part.n, "error"),
                     self._files.lines_path(part.n), self._files.map_path(part.n)):
            self._files.remove(path)

    def _failed_validation(self, part: Part, ids: list[str], merged: Merged) -> None:
        """A batch that failed validation: the lines it names fail for good with its reason;
        the rest are fine and go into a new part. With no line named, the whole part fails
        with the reason, except an enqueued-token refusal, which waits and tries again."""
        line_nos = self._files.line_nos(part.n)
        errors = [orjson.loads(e) for e in part.errors]
        shown = []
        named = False
        for line, code, message in errors:
            if line is not None and 1 <= line <= len(ids):
                named = True
                cid, ours = ids[line - 1], line_nos[line - 1]
                self._collector.fail(cid, part.model, code,
                                     f"{message} (line {ours} of {self._input})", part.attempt)
                shown.append(f"line {ours} of {self._input} (id {cid!r}): {code}: {message}")
            else:
                shown.append(f"{code}: {message}")
        refusal = next((m for _, code, m in errors if code == "token_limit_exceeded"), None)
        waits = refusal is not None and not self._queue_refused(part, ids, refusal)
        if named or waits:
            # What is left did not run (other lines were at fault, or the queue was full):
            # not a try, its requests keep their tries.
            part.attempt -= 1
        if not named and all(code != "token_limit_exceeded" for _, code, _ in errors):
            _, code, message = errors[0]
            for cid in ids:
                self._collector.fail(cid, part.model, code, message, part.attempt)
        left = ((errors[0][1], errors[0][2]) if not named else
                ("batch_failed", "its batch failed validation because of other lines"))
        for cid in ids:
            if cid not in self._done:
                merged.left.setdefault(cid, left)
        more = f"\n  … and {len(shown) - SHOWN_ERRORS} more" if len(shown) > SHOWN_ERRORS else ""
        self._notify(f"Batch {part.batch_id} (part {part.n}, {part.count:,} requests) failed "
                     "validation:\n  " + "\n  ".join(shown[:SHOWN_ERRORS]) + more)

    def _queue_refused(self, part: Part, ids: list[str], message: str) -> bool:
        """An enqueued-token refusal: hold the model's parts until the next poll, and learn
        how big a part may be. Whether it counts as one of the requests' tries: only when
        the API's answer cannot tell a queue other jobs fill from a part that never fits."""
        seen = self._queue.limits
        self._queue.held.add(part.model)
        others = sum(p.tokens for p in self._book.parts
                     if p.active and p.model == part.model and p is not part)
        if others:
            seen[part.model] = others
            return False
        limit = stated_limit(message)
        if limit is None:
            return True
        if part.tokens <= limit // 2:
            return False  # no count is that far from the API's: other jobs hold the queue
        # Over nine tenths of the limit it cannot fit; below, our count of prompt tokens may
        # be under the API's (the simulator's runs 40 % higher on some text): halve.
        room = limit * 9 // 10 if part.tokens > limit * 9 // 10 else part.tokens // 2
        if part.count > 1:
            before = seen.get(part.model)
            seen[part.model] = min(before, room) if before else room
            return False
        if part.tokens <= limit * 9 // 10:
            return True  # alone and maybe over: a try, so it ends at --max-retries
        self._collector.fail(
            ids[0], part.model, "token_limit_exceeded",
            f"this request alone has about {part.tokens:,} prompt tokens, too many for the "
            f"API's enqueued-token limit of {limit:,} for {part.model}: no batch can hold it. "
            "Send it with --via sync.", part.attempt)
        return False
