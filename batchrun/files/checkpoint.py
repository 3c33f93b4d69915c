"""The output file is the checkpoint: a request is done when its line is in the output.

Each finished request is one `os.write` of one whole line to a file opened O_APPEND, so a crash
leaves at most one torn last line. Reading an output (`read_output`) never changes it: a file
at `-o` may be someone else's, and a run may yet be refused. The writer cuts a torn last line
when it opens the file, once the run is accepted and the file is known to be ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import resource
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from batchrun.errors import InputError, StateError
from batchrun.files.fsutil import PRIVATE_FILE, atomic_write, identity
from batchrun.files.outputlock import sidecar_path

# Room the output must have before a request is sent, so that its answer's line fits: far above a
# usual answer (a few KB), and twice the largest line this run has written.
MIN_ROOM = 256 * 1024

# The largest line we read whole: far above any answer (the client caps a response at 64 MB),
# and a bound on what a file that is not ours (a 10 GB line, /dev/zero) can cost us.
MAX_LINE = 256 * 1024 * 1024


@dataclass(slots=True)
class OutputScan:
    """What an output holds, read without changing it."""

    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    lines: int = 0  # whole result lines
    torn: bytes = b""  # the start of an incomplete last line, if any
    foreign: tuple[int, bytes] | None = None  # the first line that is not a result: (no, text)

    def check_ours(self, path: Path, owned: bool) -> None:
        """Refuse a file that is not provably a batchrun output. `owned`: a manifest says this
        path is the job's output, so a bad line means damage, not someone else's file."""
        where = self.foreign
        if where is None and self.torn and not self.lines and not (
            owned and self.torn.startswith(_PREFIX)
        ):
            # One fragment and nothing else proves nothing: it may be a user's one-line file.
            where = (1, self.torn)
        if where is None:
            return
        line_no, text = where
        excerpt = text[:60].decode("utf-8", "replace")
        if owned:
            raise StateError(
                f"{path} is damaged: line {line_no} is not a batchrun result ({excerpt!r}). "
                "batchrun did not change it. Remove that line (or move the file aside to start "
                "over), then run the same command again."
            )
        raise InputError(
            f"{path} exists and is not a batchrun results file (line {line_no}: {excerpt!r}). "
            "batchrun did not change it: choose another output with -o, or move that file away."
        )


class OutputWriteFailed(StateError):
    """A result line could not be written: `reason` is the system's word (the disk is full)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot write to {path}: {reason}. Results written so far are kept; free space or "
            "fix permissions, then run the same command again to continue.")
        self.path, self.reason = path, reason


def check_output_path(output: Path, input_path: Path) -> None:
    """Refuse, before anything is opened, an output batchrun must not write: not a regular
    file, or the input itself (by any name: a symlink, a hard link), or one whose sidecar
    would be the input."""
    beside = identity(sidecar_path(output))
    if beside is not None and beside == identity(input_path):
        raise InputError(
            f"the input {input_path} is named like the file batchrun keeps beside {output} "
            f"({sidecar_path(output).name}); batchrun would overwrite it. Rename the input or "
            "give another path with -o."
        )
    try:
        st = os.stat(output)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"cannot open output {output}: {exc.strerror}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"output {output} is a directory; give a file path with -o.")
    if not stat.S_ISREG(st.st_mode):
        raise not_a_regular_file(output)
    if identity(input_path) == (st.st_dev, st.st_ino):
        raise InputError(
            f"output {output} is the input itself ({input_path}); results would overwrite the "
            "requests. Give another path with -o."
        )


def _open_output(path: Path) -> BinaryIO:
    """Open an existing output for reading; refuse anything but a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except IsADirectoryError:
        raise InputError(f"output {path} is a directory; give a file path with -o.") from None
    except OSError as exc:
        raise InputError(f"cannot open output {path}: {exc.strerror}.") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise InputError(f"output {path} is a directory; give a file path with -o.")
        raise not_a_regular_file(path)
    return os.fdopen(fd, "rb")


def not_a_regular_file(output: Path) -> InputError:
    return InputError(
        f"output {output} is not a regular file (a device or a pipe); batchrun reads its output "
        "back to resume, so give the path of a file with -o."
    )


def read_output(path: Path) -> OutputScan:
    """Which custom_ids the output holds, and which of them failed. One pass; changes nothing
    (a torn last line is cut by the writer, once the run is accepted)."""
    scan = OutputScan()
    try:
        f = _open_output(path)
    except InputError:
        if not path.exists() and not path.is_symlink():
            return scan
        raise
    with f:
        while raw := f.readline(MAX_LINE):
            if not raw.endswith(b"\n"):
                if len(raw) < MAX_LINE and not f.read(1):
                    scan.torn = raw  # the process died in the middle of this write
                    break
                scan.foreign = (scan.lines + 1, raw)
                break
            parsed = _parse(raw)
            if parsed is None:
                scan.foreign = (scan.lines + 1, raw)
                break
            cid, failed = parsed
            scan.done.add(cid)
            if failed:
                scan.failed.add(cid)
            scan.lines += 1
    return scan


_PREFIX = b'{"id":"batch_req_'
_CID_AT = len(_PREFIX) + 24 + len(b'","custom_id":')
_OK_END = b',"error":null}\n'
_RESULT_KEYS = frozenset({"custom_id", "response", "error"})


def _parse(raw: bytes) -> tuple[str, bool] | None:
    """A result line's custom_id and whether it failed; None if it is not a result line.

    Our own lines have the id at a fixed place and end in `"error":null}` when they succeeded,
    so a resume with a million done lines decodes only the ids (anything else is parsed whole).
    """
    if raw.startswith(_PREFIX) and raw[_CID_AT : _CID_AT + 1] == b'"':
        end = raw.find(b'","response":', _CID_AT + 1)
        if end > 0 and raw.endswith(_OK_END):
            with contextlib.suppress(orjson.JSONDecodeError):
                cid = orjson.loads(raw[_CID_AT : end + 1])
                if isinstance(cid, str):
                    return cid, False
    line = _loads(raw)
    if not isinstance(line, dict) or not line.keys() >= _RESULT_KEYS:
        return None
    cid = line["custom_id"]
    return (cid, line["error"] is not None) if isinstance(cid, str) else None


def _loads(raw: bytes) -> Any:
    """A whole output line, or None. An answer is recorded byte for byte, so a line may hold
    what orjson refuses (a lone surrogate escape, an integer past 64 bits): the standard
    library's reader takes those."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


_OK_TAIL = b'"body":null},"error":null}\n'


def result_line(
    custom_id: str,
    status: int | None,
    request_id: str,
    body: Any,
    error: tuple[str, str] | None,
    raw_body: bytes | None = None,
    cached: bool = False,
) -> bytes:
    """One line of the OpenAI Batch API output format; `cached`: answered from the response
    cache, said by a top-level `"cached": true` after the Batch API's fields (readers of Batch
    API output ignore a key they do not know).

    A successful answer's `raw_body` (its exact bytes, checked by the client to be one JSON
    object on one line) goes into the line as it came: parsing and writing it again would turn
    an integer past 64 bits into a float, or refuse a lone surrogate the model wrote.
    """
    if cached:
        plain = result_line(custom_id, status, request_id, body, error, raw_body)
        return plain[:-2] + b',"cached":true}\n'
    if raw_body is not None and error is None and status is not None:
        head = result_line(custom_id, status, request_id, None, None)
        assert head.endswith(_OK_TAIL)
        return head[: -len(_OK_TAIL)] + b'"body":' + raw_body + _OK_TAIL[len(b'"body":null'):]
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
        try:
            st = os.fstat(self._fd)
            end = _whole_lines_end(self._fd, st.st_size)
            if end != st.st_size:
                os.ftruncate(self._fd, end)  # a torn last line from a crash: not a result
        except OSError as exc:
            os.close(self._fd)
            raise StateError(
                f"cannot prepare the output {path} for writing: {exc.strerror}. Results written "
                "so far are kept; fix it, then run the same command again."
            ) from None
        self._inode, self._size = (st.st_dev, st.st_ino), end
        self._checked = time.monotonic()
        self._largest = 0  # the longest line written by this run
        self._roomy_until: float = 0  # room_left looks again once the output is this long
        self._room_checked = -math.inf
        self._failed: StateError | None = None  # a write failed and left a part line behind

    def room_left(self) -> str | None:
        """None when the output can take another answer's line; else why not, for a message.
        Asked before each request is sent: an answer that cannot be written is paid for
        nothing, and sent (and paid for) again on resume."""
        now = time.monotonic()
        if self._size < self._roomy_until and now - self._room_checked < self.CHECK_EVERY_S:
            return None  # far from full at the last look: spare the system calls per request
        self._room_checked = now
        need = max(MIN_ROOM, 2 * self._largest)
        try:
            st = os.fstatvfs(self._fd)
        except OSError:
            st = None  # cannot tell: the write itself will say
        # f_blocks 0: a filesystem that reports no sizes (some FUSE and network ones).
        free = st.f_bavail * st.f_frsize if st is not None and st.f_blocks else None
        cap = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        room = [free - need] if free is not None else []
        room += [cap - need - self._size] if cap != resource.RLIM_INFINITY else []
        # Look again after half of what is left is written: ever more often near the end.
        self._roomy_until = self._size + min(room) // 2 if room else math.inf
        if free is not None and free < need:
            return (f"The disk of {self.path} is full ({free:,} bytes free; batchrun sends "
                    f"a request only with {need:,} bytes free for its answer), so nothing more "
                    "was sent. Free space on that disk.")
        if cap != resource.RLIM_INFINITY and self._size + need > cap:
            return (f"{self.path} is at this process's file-size limit (ulimit -f: {cap:,} "
                    f"bytes; it holds {self._size:,}), so nothing more was sent. Raise the limit "
                    "(ulimit -f unlimited).")
        return None

    def write(self, line: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        now = time.monotonic()
        if now - self._checked >= self.CHECK_EVERY_S:
            self._checked = now
            self.check()
        start = self._size
        view = memoryview(line)
        try:
            while view:
                written = os.write(self._fd, view)
                self._size += written
                view = view[written:]
        except OSError as exc:
            error = OutputWriteFailed(self.path, exc.strerror or str(exc))
            try:
                # Cut the part of the line that got out: a later line must not be glued to it.
                os.ftruncate(self._fd, start)
                self._size = start
            except OSError:
                self._failed = error  # no later line may go after the part one
            raise error from None
        self._largest = max(self._largest, len(line))

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
            raise StateError(
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
            raise StateError(
                f"{self.path} was deleted while batchrun ran, and putting it back failed "
                f"({exc.strerror}). Results so far are lost from disk; resume to send them again."
            ) from None
        try:
            # The job's lock is on the file that was deleted; lock the new one, or another
            # process could take this output from under us.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateError(
                f"{self.path} was deleted while batchrun ran, and another process took the "
                "file put back in its place. Stop it; then resume this job."
            ) from None
        os.close(self._fd)
        self._fd = fd
        st = os.fstat(fd)
        self._inode, self._size = (st.st_dev, st.st_ino), st.st_size

    def close(self) -> None:
        with contextlib.suppress(StateError):
            self.check()
        os.close(self._fd)


def _whole_lines_end(fd: int, size: int) -> int:
    """Where the last whole line of the file ends."""
    end = size
    while end > 0:
        start = max(0, end - (1 << 16))
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


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
                parsed = _parse(raw)
                if parsed is not None and parsed[1]:
                    dropped += 1
                else:
                    dst.write(raw)

    try:
        atomic_write(path, keep_the_rest)
    except OSError as exc:
        raise StateError(
            f"cannot rewrite {path} to drop failed lines: {exc.strerror}."
        ) from None
    return dropped
