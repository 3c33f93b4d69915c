"""Files on disk: replacing one atomically, private directories, and locking a file across
processes. Plain OSErrors come out; callers turn them into messages that name their file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_dir(path: Path) -> None:
    """Create `path` (and missing parents) with the directory itself 0700; leave an existing
    one as the user set it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=PRIVATE_DIR)


def atomic_write(target: Path, write: Callable[[BinaryIO], None], mode: int | None = None) -> None:
    """Replace `target` with what `write` puts into a file: a temp file beside it, fsynced,
    renamed over it, the directory fsynced. A crash leaves the old file or the new one.

    `mode`: the new file's permission bits; by default the existing file's (a user's chmod
    survives the rewrite), or 0600 for a new file.
    """
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            mode = PRIVATE_FILE
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode passes through the umask; a kept mode must not
        with os.fdopen(fd, "wb", closefd=False) as f:
            write(f)
            f.flush()
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes_atomic(target: Path, data: bytes, mode: int | None = None) -> None:
    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write(target, write, mode)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of what `path` names, following symlinks; None if nothing is there.
    Two paths with one identity (a hard link, a symlink) are one file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # no file can have that name
            return None
        raise
    return st.st_dev, st.st_ino


class FileLock:
    """An exclusive flock on a regular file itself, so every process on the host sees it
    whatever path (hard link, symlink) or state directory it came by. Created 0600 if missing.

    Raises BlockingIOError when another process holds it, IsADirectoryError/ValueError when
    the path is not a regular file, and OSError(ELOOP) when it is a symlink and
    `follow_symlinks` is off.
    """

    def __init__(self, path: Path, follow_symlinks: bool = True) -> None:
        self.path = path
        self.created = False
        # A file batchrun writes into must not be a symlink planted to aim that write elsewhere.
        self._flags = os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
        self._fd = self._acquire()

    def _acquire(self) -> int:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | self._flags,
                             PRIVATE_FILE)
                created = True
            except FileExistsError:
                try:
                    # O_NONBLOCK: opening a FIFO must not wait for a writer.
                    fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | self._flags)
                except FileNotFoundError:
                    continue  # removed between our two opens: create it after all
                created = False
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise ValueError(f"{self.path} is not a regular file")
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BaseException:
                os.close(fd)
                raise
            st = os.fstat(fd)
            # The file may have been replaced or removed between our open and our lock: then
            # we hold a lock nobody else will look at. Lock whatever is there now instead.
            if identity(self.path) == (st.st_dev, st.st_ino):
                self.created = self.created or created
                return fd
            os.close(fd)

    def follow(self) -> None:
        """The file at our path was replaced (an atomic rewrite): lock the new one."""
        old, self._fd = self._fd, self._acquire()
        os.close(old)

    def discard_if_unused(self) -> None:
        """Remove the file if this lock created it and nothing was written to it."""
        if self.created and os.fstat(self._fd).st_size == 0:
            self.discard()

    def discard(self) -> None:
        """Remove the file at our path if it is still the one we hold."""
        if identity(self.path) == self.identity():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def identity(self) -> tuple[int, int]:
        st = os.fstat(self._fd)
        return st.st_dev, st.st_ino

    def links(self) -> int:
        """How many names the locked file has."""
        return os.fstat(self._fd).st_nlink

    def read(self, limit: int) -> bytes:
        """The locked file's content, at most `limit` bytes of it."""
        return os.pread(self._fd, limit, 0)

    def overwrite(self, data: bytes) -> None:
        """Make `data` the locked file's whole content, in place (the lock stays on it), and
        durable. Only for small files: a crash midway may leave a mix of old and new."""
        os.ftruncate(self._fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(self._fd, view, len(data) - len(view)):]
        os.fsync(self._fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def is_locked(path: Path) -> bool:
    """True while some process holds a FileLock on the file at `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        # A shared probe: two `status` runs never trip over each other.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def locked(path: Path) -> Iterator[FileLock]:
    lock = FileLock(path)
    try:
        yield lock
    finally:
        lock.release()
