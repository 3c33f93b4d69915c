"""The output file is the checkpoint: a request is done when its line is in the output.

Each finished request is one `os.write` of one whole line to a file opened O_APPEND, so a crash
leaves at most one torn last line, which `scan_output` cuts off before a run goes on.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batchrun.errors import BatchrunError, InputError
from batchrun.fsutil import PRIVATE_FILE, atomic_write


def scan_output(path: Path) -> set[str]:
    """The custom_ids already in the output. Cuts off a torn last line left by a crash."""
    done: set[str] = set()
    try:
        f = path.open("r+b")
    except FileNotFoundError:
        return done
    except IsADirectoryError:
        raise InputError(f"output {path} is a directory; give a file path with -o.") from None
    except OSError as exc:
        raise InputError(f"cannot open output {path}: {exc.strerror}.") from None
    with f:
        good_end = 0
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn: the process died in the middle of this write
            cid = _custom_id(raw)
            if cid is None:
                raise InputError(
                    f"{path} is not a batchrun results file (line {raw[:60]!r}…); "
                    "choose another output path with -o."
                )
            done.add(cid)
            good_end += len(raw)
        if f.seek(0, os.SEEK_END) != good_end:
            f.truncate(good_end)
    return done


_PREFIX = b'{"id":"batch_req_'
_CID_AT = len(_PREFIX) + 24 + len(b'","custom_id":')


def _custom_id(raw: bytes) -> str | None:
    """A result line's custom_id. Our own lines have it at a fixed place, so a resume with a
    million done lines decodes only the id (the whole line is parsed when that fails)."""
    if raw.startswith(_PREFIX) and raw[_CID_AT : _CID_AT + 1] == b'"':
        end = raw.find(b'","response":', _CID_AT + 1)
        if end > 0:
            with contextlib.suppress(orjson.JSONDecodeError):
                cid = orjson.loads(raw[_CID_AT : end + 1])
                if isinstance(cid, str):
                    return cid
    try:
        cid = orjson.loads(raw).get("custom_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return cid if isinstance(cid, str) else None


def result_line(
    custom_id: str,
    status: int | None,
    request_id: str,
    body: Any,
    error: tuple[str, str] | None,
) -> bytes:
    """One line of the OpenAI Batch API output format."""
    response = None if status is None else {
        "status_code": status, "request_id": request_id, "body": body,
    }
    line = {
        "id": "batch_req_" + os.urandom(12).hex(),
        "custom_id": custom_id,
        "response": response,
        "error": None if error is None else {"code": error[0], "message": error[1]},
    }
    return orjson.dumps(line) + b"\n"


class OutputWriter:
    """Appends whole lines, one write each, so no reader or crash ever sees half a line.

    It also notices, within a second, when something else deletes, replaces or truncates the
    output under a running job: a deleted file is rebuilt from the still-open descriptor (so
    nothing finished is lost), a truncated one stops the job with an error.
    """

    CHECK_EVERY_S = 0.5

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               PRIVATE_FILE)
        except OSError as exc:
            raise InputError(
                f"cannot write the output {path}: {exc.strerror}. Choose a writable path with -o."
            ) from None
        st = os.fstat(self._fd)
        self._inode, self._size = (st.st_dev, st.st_ino), st.st_size
        self._checked = time.monotonic()

    def write(self, line: bytes) -> None:
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY_S:
            self._checked = now
            self.check()
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as exc:
            raise BatchrunError(
                f"cannot write to {self.path}: {exc.strerror}. Results written so far are kept; "
                "free space or fix permissions, then run the same command again to continue."
            ) from None

    def check(self) -> None:
        """Is the file at our path still the one we write, and whole?"""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._inode
        except FileNotFoundError:
            same = False
        if not same:
            self._rebuild()
        elif st.st_size < self._size:
            raise BatchrunError(
                f"{self.path} was truncated by another program while batchrun wrote it: it holds "
                f"{st.st_size:,} of the {self._size:,} bytes written. Stop whatever touches it; "
                "then resume, and the requests whose lines were lost are sent again."
            )

    def _rebuild(self) -> None:
        """The output was deleted or replaced: put back what we wrote, and go on writing there."""

        def copy(dst: BinaryIO) -> None:
            offset = 0
            while chunk := os.pread(self._fd, 1 << 20, offset):
                dst.write(chunk)
                offset += len(chunk)

        try:
            # The mode of the file we still hold open: a user's chmod survives.
            atomic_write(self.path, copy, stat.S_IMODE(os.fstat(self._fd).st_mode))
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise BatchrunError(
                f"{self.path} was deleted while batchrun ran, and putting it back failed "
                f"({exc.strerror}). Results so far are lost from disk; resume to send them again."
            ) from None
        os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._inode, self._size = (st.st_dev, st.st_ino), st.st_size

    def close(self) -> None:
        with contextlib.suppress(BatchrunError):
            self.check()
        os.close(self._fd)


def drop_failed(path: Path) -> int:
    """Remove the lines of requests that failed for good, so a resume sends them again.

    An atomic rewrite that keeps the file's mode: a crash at any point leaves either the old
    output or the new one, never a mix. Returns how many lines were dropped.
    """
    if not path.exists():
        return 0
    dropped = 0

    def keep_the_rest(dst: BinaryIO) -> None:
        nonlocal dropped
        with path.open("rb") as src:
            for raw in src:
                if not raw.endswith(b"\n"):
                    break  # a torn last line is not a result
                try:
                    failed = orjson.loads(raw).get("error") is not None
                except (orjson.JSONDecodeError, AttributeError):
                    failed = False
                if failed:
                    dropped += 1
                else:
                    dst.write(raw)

    try:
        atomic_write(path, keep_the_rest)
    except OSError as exc:
        raise BatchrunError(
            f"cannot rewrite {path} to drop failed lines: {exc.strerror}."
        ) from None
    return dropped
