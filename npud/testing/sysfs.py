"""A synthetic sysfs tree with an ``intel_vpu`` accel device, and a busy counter that advances.

``python -m npud.testing.sysfs PATH`` serves such a counter at PATH until SIGINT/SIGTERM, for
running npud or ``npud.smoke`` by hand on the emulated NPU (``--busy-file PATH``).
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import stat
import struct
import sys
import threading
from pathlib import Path
from types import TracebackType

BUSY_FILE = "npu_busy_time_us"


def make_npu_sysfs(root: Path, busy_us: int = 1000, index: int = 0, driver: str = "intel_vpu",
                   busy_counter: bool = True) -> Path:
    """Create ``root/class/accel/accelN/device`` like the kernel does; return the busy file.

    ``busy_counter=False`` makes the tree of a kernel older than 6.11 (Ubuntu 24.04's 6.8): the
    intel_vpu device is there, ``npu_busy_time_us`` is not (the returned path does not exist)."""
    device = root / "devices" / "pci0000:00" / f"0000:00:0b.{index}"
    device.mkdir(parents=True, exist_ok=True)
    (device / "uevent").write_text(f"DRIVER={driver}\nPCI_CLASS=120000\nPCI_ID=8086:7D1D\n")
    busy = device / BUSY_FILE
    if busy_counter:
        busy.write_text(f"{busy_us}\n")
    (device / "npu_current_frequency_mhz").write_text("0\n")
    (device / "npu_max_frequency_mhz").write_text("1400\n")
    accel = root / "class" / "accel" / f"accel{index}"
    accel.mkdir(parents=True, exist_ok=True)
    link = accel / "device"
    if not link.exists():
        link.symlink_to(device)
    return accel / "device" / BUSY_FILE


_IN_CLOSE_NOWRITE = 0x10
_INOTIFY_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)
_POLL_S = 0.1  # how often a waiting server thread looks at close(); never part of a result


class AdvancingBusyCounter:
    """A synthetic ``npu_busy_time_us`` that grows at every read, with no timing involved.

    Nothing advances a synthetic sysfs file on its own, and an emulated NPU has no driver to do
    it. So the file is a FIFO served by a thread: every open-and-read gets the previous answer plus
    ``step`` (``step = 0``: a counter that does not grow, as when the work ran somewhere else).
    The next answer is served only after the reader has closed the FIFO (inotify tells), so two
    answers never run together into one read. Readers take turns: two processes reading at the
    very same moment could share one answer (tests do not read health while a job runs).

    ``hold()`` makes the next read wait until ``release()``, with ``held`` set while a reader
    waits: a test can stop the daemon's worker right before a generation (it reads the counter
    just before and just after each one).
    """

    def __init__(self, path: Path, start: int = 1_000_000, step: int = 1000) -> None:
        self.path = path
        self.step = step
        self.reads = 0
        self.held = threading.Event()
        self._value = start
        self._gate = threading.Event()
        self._gate.set()
        self._closing = threading.Event()
        if path.exists():
            path.unlink()
        os.mkfifo(path, 0o600)
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._inotify: int = self._libc.inotify_init1(os.O_CLOEXEC)
        if self._inotify < 0 or self._libc.inotify_add_watch(
                self._inotify, os.fsencode(path), _IN_CLOSE_NOWRITE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")
        self._thread = threading.Thread(target=self._serve, name="busy-counter", daemon=True)
        self._thread.start()

    @classmethod
    def in_sysfs(cls, root: Path, start: int = 1_000_000, step: int = 1000) -> AdvancingBusyCounter:
        """A synthetic ``intel_vpu`` sysfs tree under ``root`` whose busy file is the FIFO."""
        return cls(make_npu_sysfs(root, busy_us=start).resolve(), start, step)

    @property
    def value(self) -> int:
        """The next answer."""
        return self._value

    def hold(self) -> None:
        self.held.clear()
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._closing.set()
        self._gate.set()
        # A reader end (non-blocking) wakes a server blocked in its open for writing.
        wake = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            self._thread.join(10)
        finally:
            os.close(wake)
            os.close(self._inotify)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> AdvancingBusyCounter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _serve(self) -> None:
        while not self._closing.is_set():
            fd = os.open(self.path, os.O_WRONLY)  # returns once a reader has opened the FIFO
            try:
                if self._closing.is_set():
                    return
                if not self._gate.is_set():
                    self.held.set()
                    self._gate.wait()
                try:
                    os.write(fd, f"{self._value}\n".encode())
                except BrokenPipeError:
                    continue  # the reader gave up waiting (a bounded read): serve the next one
                self._value += self.step
                self.reads += 1
            finally:
                os.close(fd)
            self._wait_reader_closed()

    def _wait_reader_closed(self) -> None:
        """Block until the reader just served has closed its end (one IN_CLOSE_NOWRITE event)."""
        while not self._closing.is_set():
            ready, _, _ = select.select([self._inotify], [], [], _POLL_S)
            if not ready:
                continue
            data = os.read(self._inotify, 4096)
            offset = 0
            while offset < len(data):
                _, mask, _, length = _INOTIFY_EVENT.unpack_from(data, offset)
                offset += _INOTIFY_EVENT.size + length
                if mask & _IN_CLOSE_NOWRITE:
                    return


def shared_directory_problem(path: Path) -> str | None:
    """Why PATH must not be served: a directory others can write (/tmp). Another user could
    create the name first (a FIFO of theirs: they choose the counter's values, or hang npud) or
    remove it; the README's examples use $XDG_RUNTIME_DIR, which only its user can write."""
    try:
        mode = path.parent.stat().st_mode
    except OSError as exc:
        return f"{path.parent}: {exc.strerror}"
    if mode & stat.S_IWOTH:
        return (f"{path.parent} is writable by every user: another user could create {path.name} there "
                "first and choose what npud reads. Use a private directory, e.g. "
                "$XDG_RUNTIME_DIR/npu_busy_time_us")
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m npud.testing.sysfs PATH  (serves a synthetic npu_busy_time_us "
                         "that grows at every read, until SIGINT/SIGTERM)\n")
        return 2
    problem = shared_directory_problem(Path(argv[0]).absolute())
    if problem is not None:
        sys.stderr.write(f"npud.testing.sysfs: {problem}\n")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with AdvancingBusyCounter(Path(argv[0]).absolute()) as counter:
        sys.stdout.write(f"serving a synthetic busy counter at {counter.path} (use --busy-file {counter.path})\n")
        sys.stdout.flush()
        while not stop.wait(3600):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
