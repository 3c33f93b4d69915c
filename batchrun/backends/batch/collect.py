"""Merging a batch's output and error files into the job's output: exactly one line per
custom_id, through the same writer and line format as the sync path.

A line whose id already has a result (an earlier collection that crashed before it was
recorded, or the sync path in `--via auto`) is skipped. Requests the batch did not finish for a
reason a new batch can cure (`batch_expired`, `batch_cancelled`, a 5xx, 408/409/429) get no
line: they are returned as left over, to go into a new part. Other request-level errors (4xx)
are final and written, as the sync path writes them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import StateError, redact
from batchrun.events import Listener, RequestFinished
from batchrun.files.checkpoint import OutputWriter, result_line
from batchrun.policy.classify import (
    Kind,
    is_success,
    reported_cached,
    reported_usage,
    scrub,
    status_kind,
)

RETRY_CODES = frozenset({"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded",
                         "timeout"})


@dataclass(slots=True)
class Merged:
    ok: int = 0
    failed: int = 0
    left: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (code, message)
    refused: tuple[str, str] | None = None  # the account was refused (insufficient_quota, …)
    # Lines of the part's requests that carry a response (what request_counts.completed
    # counts), read now or by an earlier collection: fewer than the batch says ran means a
    # file was not read whole.
    answered: int = 0
    # What the part's answered lines were billed (prompt, completion, cached prompt tokens, and
    # answers that report no usage), every such line in its files, also those an earlier
    # collection wrote: --max-cost settles the part's whole hold with it.
    billed: list[int] = field(default_factory=lambda: [0, 0, 0, 0])


def _kind(status: int | None, code: str) -> Kind:
    """A failed line read as the sync path reads the same answer (classify.status_kind), with
    the batch's own codes for a request it never ran (expired, cancelled) sent again."""
    kind = status_kind(status or 0, code)
    if kind is not Kind.REFUSED and code in RETRY_CODES:
        return Kind.RETRY
    return Kind.RETRY if kind is Kind.RATE_MINUTE else kind


# A value of 20 digits or more: maybe an integer past 64 bits, which orjson reads as a float
# (dropping digits) and cannot write. Such lines go through the standard library, which keeps
# them exact.
# The quick test maps every digit to 0 and looks for 20 zeros (several times faster than a
# regular expression); the second one looks closer.
_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_TWENTY = b"0" * 20
_LONG_NUMBER = re.compile(rb"[:,\[]\s*-?\d{20}")


def _loads(raw: bytes) -> tuple[Any, bool]:
    """The line, and whether it was read by the standard library (then written by it too)."""
    if not (_TWENTY in raw.translate(_TO_ZERO) and _LONG_NUMBER.search(raw)):
        try:
            return orjson.loads(raw), False
        except orjson.JSONDecodeError:
            pass  # a lone surrogate: the standard library takes it
    try:
        return json.loads(raw), True
    except (ValueError, RecursionError):
        return None, False


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with path.open("rb") as f:
            yield from (raw for raw in f if raw.strip())
    except OSError as exc:
        raise StateError(f"cannot read the downloaded {path}: {exc.strerror}.") from None


def _error_of(obj: dict[str, Any], body: Any, status: int | None) -> tuple[str, str]:
    err = obj.get("error")
    if not isinstance(err, dict) and isinstance(body, dict):
        err = body.get("error")
    if isinstance(err, dict):
        code = str(err.get("code") or err.get("type") or f"http_{status}")
        return code, str(err.get("message") or code)
    return f"http_{status}", f"the request failed with HTTP {status}"


def _count_billed(body: Any, billed: list[int]) -> None:
    usage = reported_usage(body)
    billed[3] += usage is None
    if usage is not None:
        billed[0] += usage[0]
        billed[1] += usage[1]
        billed[2] += reported_cached(body)


class Collector:
    """Writes a part's results into the output; `done` is shared with the job and grows."""

    def __init__(self, writer: OutputWriter, done: set[str], emit: Listener,
                 secrets: tuple[str, ...] = ()) -> None:
        self._writer = writer
        self._done = done
        self._emit = emit
        self._secrets = secrets  # the key's forms: a failure's words may quote it
        # The response cache (#25): each answer merged, for the job to store (None: no cache)
        self.answers: dict[str, bytes] | None = None
        # ... and each failure for good merged, for copies waiting for it (None: no copies wait)
        self.failures: dict[str, tuple[int | None, Any, str, str, int]] | None = None

    def cached(self, cid: str, line: bytes, finished: RequestFinished) -> None:
        """A line the response cache answered: written, never uploaded."""
        self._write(cid, line)
        self._emit(finished)

    def fail(self, cid: str, model: str, code: str, message: str, attempts: int,
             status: int | None = None, body: Any = None) -> None:
        """A final failure line for a request no file answered (e.g. out of retries, or a copy
        of one that failed for good: `status` and `body` are then that one's)."""
        if cid in self._done:
            return
        self._write(cid, result_line(cid, status, "", body, (code, message)))
        self._emit(RequestFinished(cid, model, False, 0, 0, attempts, message, batch=True))

    def merge(self, path: Path, ids: set[str], model: str, attempts: int,
              merged: Merged) -> None:
        """One downloaded file (output or error file) of the part whose requests are `ids`."""
        for raw in _lines(path):
            obj, exact = _loads(raw)
            if not isinstance(obj, dict):
                continue  # not a result line: nothing to attribute it to
            cid = obj.get("custom_id")
            if not isinstance(cid, str) or cid not in ids:
                continue
            response = obj.get("response")
            response = response if isinstance(response, dict) else None
            merged.answered += response is not None
            if response is not None and obj.get("error") is None:
                _count_billed(response.get("body"), merged.billed)
            if cid in self._done:
                continue
            if response is None and not isinstance(obj.get("error"), dict):
                continue  # neither an answer nor an error: not a result line (an echo?)
            status = response.get("status_code") if response else None
            status = status if isinstance(status, int) and not isinstance(status, bool) else None
            body = response.get("body") if response else None
            request_id = str(response.get("request_id") or "") if response else ""
            if obj.get("error") is None and status is not None and is_success(status):
                # Written as read: one line of the answer's JSON, digits and escapes kept.
                raw_body = json.dumps(body, separators=(",", ":")).encode() if exact else None
                self._write(cid, result_line(cid, status, request_id, body, None, raw_body))
                if self.answers is not None:
                    self.answers[cid] = raw_body or orjson.dumps(body)
                tokens = reported_usage(body) or (0, 0)
                self._emit(RequestFinished(cid, model, True, *tokens, attempts, batch=True,
                                            cached_in=reported_cached(body)))
                merged.ok += 1
                merged.left.pop(cid, None)
                continue
            # Not an answer: the server's words about our request, which may quote the key.
            body = scrub(body, self._secrets)
            code, message = (redact(x, *self._secrets) for x in _error_of(obj, body, status))
            request_id = redact(request_id, *self._secrets, hex_keys=False)
            kind = _kind(status, code)
            if kind is Kind.REFUSED:
                # Not the request's fault: kept unsent, and the job stops as the sync path does.
                merged.left[cid] = (code, message)
                merged.refused = (code, message)
                continue
            if kind is Kind.RETRY:
                merged.left[cid] = (code, message)
                continue
            self._write(cid, result_line(cid, status, request_id, body, (code, message)))
            self._emit(RequestFinished(cid, model, False, 0, 0, attempts, message, batch=True))
            if self.failures is not None:
                self.failures[cid] = (status, body, code, message, attempts)
            merged.failed += 1
            merged.left.pop(cid, None)

    def _write(self, cid: str, line: bytes) -> None:
        self._writer.write(line)
        self._done.add(cid)
