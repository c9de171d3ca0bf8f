"""Cross-process serialisation of NPU use with ``flock``.

The NPU is shared with other services (a chat model, say). OpenVINO gives no cross-process
arbitration, so every cooperating process takes an exclusive ``flock`` on one agreed file around
each compile and each generation. ``flock`` locks are released by the kernel when the holder
dies, so a crashed peer can never wedge the NPU for everyone.

The lock file is opened without following a symbolic link, and used only if it is a regular file
owned by this user or by root. In a directory others can write to (``/tmp``), another user could
otherwise plant a link that makes npud create or open a file of its choosing, or create the file
first and hold its lock for ever. A lock shared between users must therefore be created by root
(CONTRACT.md §8 says where); the default lives in a directory only this user can write.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(Exception):
    def __init__(self, path: str, waited_s: float) -> None:
        super().__init__(f"NPU lock {path} held by another process for {waited_s:.1f}s")
        self.path = path
        self.waited_s = waited_s


class LockWaitCancelled(Exception):
    """The wait for the lock was given up (the job was cancelled, or the daemon is stopping)."""


class LockFileRefused(Exception):
    """The lock file is not one npud may use (a link, not a regular file, another user's)."""


# O_NOFOLLOW: never through a link. O_NONBLOCK: a FIFO planted at the path must not block open().
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NOT_REGULAR = "NPU lock file {path} is not a regular file; npud leaves it alone. Use --lock-file with a regular file."


# Why a lock file may be opened read-only: a lock root created for several users may not be
# writable by us (EACCES, EPERM), or the file system is mounted read-only for us (EROFS: a system
# unit's ProtectSystem=strict makes /run read-only). flock works on a read-only descriptor.
_READ_ONLY_FALLBACK = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_CREATE_IT = ("it cannot be created here (read-only or not writable for this user): a lock shared "
              "between users is created by root, e.g. /etc/tmpfiles.d/npu.conf holding "
              "'f /run/npu.lock 0660 root render -', then 'sudo systemd-tmpfiles --create'")


def open_lock_file(path: str) -> int:
    """Open (creating it, mode 0600) the lock file, or raise LockFileRefused saying why not."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LockFileRefused(f"cannot create the folder of the NPU lock file {path}: {exc.strerror}") from None
    try:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_FALLBACK:
                raise
            try:
                fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
            except FileNotFoundError:
                raise LockFileRefused(f"the NPU lock file {path} does not exist and {_CREATE_IT}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockFileRefused(f"NPU lock file {path} is a symbolic link; npud does not follow it "
                                  "(another user may have planted it). Use --lock-file with a real file.") from None
        if exc.errno == errno.EISDIR:
            raise LockFileRefused(_NOT_REGULAR.format(path=path)) from None
        raise LockFileRefused(f"cannot open the NPU lock file {path}: {exc.strerror}") from None
    try:
        _check_lock_file(path, os.fstat(fd))
    except LockFileRefused:
        os.close(fd)
        raise
    return fd


def _check_lock_file(path: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise LockFileRefused(_NOT_REGULAR.format(path=path))
    if st.st_uid not in (os.geteuid(), 0):
        raise LockFileRefused(
            f"NPU lock file {path} belongs to uid {st.st_uid}, neither this user nor root: in a shared "
            "directory another user could hold it for ever. A lock shared between users must be created "
            "by root (e.g. systemd-tmpfiles 'f /run/npu.lock 0660 root render'); otherwise use a "
            "--lock-file in a directory only you can write ($XDG_RUNTIME_DIR).")


class NpuLock:
    """An exclusive flock with a bounded wait.

    ``flock`` cannot time out by itself and a blocked call cannot be interrupted from another
    thread, so waiting polls ``LOCK_NB`` with a short, growing interval (at most POLL_MAX_S);
    ``cancel`` is asked at every poll and ends the wait early (job cancelled, shutdown).
    """

    POLL_MIN_S = 0.005
    POLL_MAX_S = 0.1

    def __init__(self, path: str, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def _open(self) -> int:
        return open_lock_file(self.path)  # checked at every use: the file may be replaced meanwhile

    @contextmanager
    def hold(self, cancel: Callable[[], bool] | None = None, timeout_s: float | None = None) -> Iterator[float]:
        """Hold the lock; yields the seconds spent waiting for it (at most ``timeout_s``).

        Raises :class:`LockTimeout` after ``timeout_s``, :class:`LockWaitCancelled` once ``cancel()``
        is true, :class:`LockFileRefused` when the file may not be used."""
        fd = self._open()
        try:
            waited = self._acquire(fd, cancel, self.timeout_s if timeout_s is None else timeout_s)
            try:
                yield waited
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _acquire(self, fd: int, cancel: Callable[[], bool] | None, timeout_s: float) -> float:
        start = time.monotonic()
        interval = self.POLL_MIN_S
        while True:
            if cancel is not None and cancel():
                raise LockWaitCancelled(f"gave up waiting for the NPU lock {self.path}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return time.monotonic() - start
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
            waited = time.monotonic() - start
            if waited >= timeout_s:
                raise LockTimeout(self.path, waited)
            time.sleep(min(interval, timeout_s - waited))
            interval = min(interval * 2, self.POLL_MAX_S)
