"""Cross-process serialisation of NPU use with ``flock``.

The NPU is shared with other services (a chat model, say). OpenVINO gives no cross-process
arbitration, so every cooperating process takes an exclusive ``flock`` on one agreed file around
each compile and each generation. ``flock`` locks are released by the kernel when the holder
dies, so a crashed peer can never wedge the NPU for everyone.
"""

from __future__ import annotations

import errno
import fcntl
import os
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
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except PermissionError:
            # Another user's lock file in a shared directory: flock works on a read-only fd.
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)

    @contextmanager
    def hold(self, cancel: Callable[[], bool] | None = None, timeout_s: float | None = None) -> Iterator[float]:
        """Hold the lock; yields the seconds spent waiting for it (at most ``timeout_s``).

        Raises :class:`LockTimeout` after ``timeout_s``, :class:`LockWaitCancelled` once ``cancel()``
        is true."""
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
