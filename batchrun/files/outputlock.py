"""The sidecar beside an output, `.<output name>.batchrun` (0600): the file a running job holds
its lock on, and the record of whose results the output holds.

Why a second file: a lock on the output itself goes with the output's inode, so deleting the
output under a running job would free it, and a second process could start the same job again.
The sidecar stays put when the output is deleted, rebuilt or rewritten (`--retry-failed`).
The job also keeps its lock on the output, so a hard link to it (a sidecar of its own) still
meets a locked file.

Why an owner record beside the output rather than only the manifest: the manifest lives in
$BATCHRUN_HOME, and another state dir (or a wiped one) knows nothing of it; the sidecar goes
where the output goes. It names the input (resolved path) and the input's fingerprint when the
job started: nothing secret. A record is meaningful only while the output holds something: one
left beside a deleted or empty output is stale and replaced.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from batchrun.errors import InputError, StateError
from batchrun.files.fsutil import FileLock, identity, is_locked, private_dir

_MAX_RECORD = 64 * 1024  # far above any record; a planted huge file costs us nothing
_SUFFIX = ".batchrun"


def sidecar_path(output: Path) -> Path:
    return output.with_name(f".{output.name}{_SUFFIX}")


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose results an output holds."""

    job_id: str
    input: str  # resolved path
    fingerprint: dict[str, Any]  # the input's, when the job started (jobstore.fingerprint)

    def to_bytes(self) -> bytes:
        return orjson.dumps({"batchrun_output_of": asdict(self)}, option=orjson.OPT_INDENT_2)

    @staticmethod
    def from_bytes(raw: bytes) -> Owner | None:
        """The record, or None for anything else (damaged, torn by a crash, someone's file):
        then the output is judged as if there were no record."""
        try:
            data = orjson.loads(raw).get("batchrun_output_of")
            owner = Owner(**data)
        except (orjson.JSONDecodeError, AttributeError, TypeError):
            return None
        valid = (isinstance(owner.job_id, str) and isinstance(owner.input, str)
                 and isinstance(owner.fingerprint, dict))
        return owner if valid else None


def read_owner(output: Path) -> Owner | None:
    """The owner record beside `output`, read without a lock and without changing anything;
    None if there is none, or it is not a usable record, or the output holds nothing."""
    if not holds_results(output):
        return None
    return _read_record(sidecar_path(output)) or _record_of_another_name(output)


def _read_record(path: Path) -> Owner | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return Owner.from_bytes(f.read(_MAX_RECORD))


def _record_of_another_name(output: Path) -> Owner | None:
    """A hard link to an output made in the same directory finds the record kept beside the
    output's other name (links elsewhere cannot be found without searching the disk)."""
    try:
        st = os.stat(output)
        names = os.listdir(output.parent) if st.st_nlink > 1 else []
    except OSError:
        return None
    for name in names:
        other = name[1 : -len(_SUFFIX)]
        if not (name.startswith(".") and name.endswith(_SUFFIX) and other
                and other != output.name):
            continue
        try:
            same = identity(output.with_name(other)) == (st.st_dev, st.st_ino)
        except OSError:  # a symlink loop, say: not a name of our output
            continue
        found = _read_record(output.with_name(name)) if same else None
        if found is not None:
            return found
    return None


def holds_results(output: Path) -> bool:
    try:
        return output.stat().st_size > 0
    except OSError:
        return False


def host_lock_path(output: Path) -> Path:
    """A lock per output path in this user's runtime directory (outside the output's own
    directory): `rm -rf results/` or `git clean -fdx` under a running job removes the output and
    its sidecar, but not this, so a second run of the same command is still refused."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha256(str(output).encode()).hexdigest()[:32]
    return base / f"batchrun-{os.getuid()}" / f"{digest}.lock"


def is_held(output: Path) -> bool:
    """True while some process runs a job that writes `output` (even if it was deleted)."""
    return (is_locked(host_lock_path(output)) or is_locked(sidecar_path(output))
            or is_locked(output))


class OutputLock:
    """What a job holds while it writes an output: the sidecar's lock, then the output's.

    Raises BlockingIOError when another process holds either (the caller words it), InputError
    naming the file and what to do when the sidecar cannot be created or is not a plain file of
    ours, and what FileLock raises for the output. Creates the output (0600) if it is not there
    yet, and the sidecar too.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.sidecar_path = sidecar_path(output)
        self._host = _lock_host(output)
        try:
            self._sidecar = self._lock_sidecar()
        except BaseException:
            self._host.release()
            raise
        self._before: bytes | None = None  # the record we replaced, to put back if unused
        try:
            self._output = FileLock(output)
        except BaseException:
            self._discard_sidecar()
            self._sidecar.release()
            self._host.release()
            raise

    def _lock_sidecar(self) -> FileLock:
        path = self.sidecar_path
        try:
            lock = FileLock(path, follow_symlinks=False)
        except BlockingIOError:
            raise
        except (ValueError, IsADirectoryError):
            raise self._not_ours("is not a regular file") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._not_ours("is a symbolic link") from None
            if exc.errno == errno.ENAMETOOLONG:
                raise InputError(
                    f"the name of {self.output} is too long for the file batchrun keeps beside "
                    f"it ({path.name}); choose a shorter output name with -o."
                ) from None
            verb = "open" if os.path.lexists(path) else "create"
            raise InputError(
                f"cannot {verb} {path}: {exc.strerror}. batchrun keeps the lock and the owner "
                f"of {self.output} in that file beside it: make {path.parent} writable (and "
                "that file, if it is there), or choose an output in a writable directory with "
                "-o."
            ) from None
        if lock.links() != 1:
            lock.release()
            raise self._not_ours("has other names (hard links)")
        return lock

    def _not_ours(self, what: str) -> InputError:
        return InputError(
            f"{self.sidecar_path} {what}; batchrun keeps the lock and the owner of {self.output} "
            "in a plain file of that name and did not change it. Move it away, or choose "
            "another output with -o."
        )

    def owner(self) -> Owner | None:
        """The recorded owner (None: none, unusable, or stale beside an empty output)."""
        if not holds_results(self.output):
            return None
        return (Owner.from_bytes(self._sidecar.read(_MAX_RECORD))
                or _record_of_another_name(self.output))

    def record(self, owner: Owner) -> None:
        """Make `owner` the output's recorded owner."""
        data = owner.to_bytes()
        current = self._sidecar.read(_MAX_RECORD + 1)
        if current == data:
            return
        try:
            self._sidecar.overwrite(data)
        except OSError as exc:
            raise StateError(
                f"cannot write {self.sidecar_path}, where batchrun records whose results "
                f"{self.output} holds: {exc.strerror}. Free space or fix permissions, then run "
                "the same command again."
            ) from None
        if self._before is None:
            self._before = current

    def follow(self) -> None:
        """The output was replaced by an atomic rewrite: lock the new file."""
        try:
            self._output.follow()
        except (BlockingIOError, ValueError):
            raise StateError(
                f"{self.output} was replaced while batchrun rewrote it, and another program "
                "holds the new file. Stop it; then run the same command again."
            ) from None

    def discard_if_unused(self) -> None:
        """The run was refused: remove what it created, put back the record it replaced."""
        self._output.discard_if_unused()
        self._discard_sidecar()

    def _discard_sidecar(self) -> None:
        if self._sidecar.created:
            self._sidecar.discard()
        elif self._before is not None:
            with contextlib.suppress(OSError):
                self._sidecar.overwrite(self._before)

    def release(self) -> None:
        self._output.release()
        self._sidecar.release()
        self._host.release()


def _lock_host(output: Path) -> FileLock:
    path = host_lock_path(output)
    try:
        private_dir(path.parent)
        return FileLock(path, follow_symlinks=False)
    except BlockingIOError:
        raise
    except OSError as exc:
        raise StateError(
            f"cannot create the lock {path} that keeps two batchrun processes from writing "
            f"{output}: {exc.strerror}. Make {path.parent} writable (or set XDG_RUNTIME_DIR to "
            "a writable directory of yours)."
        ) from None
