"""The Intel NPU busy counter: proof that a generation really ran on the NPU.

The Linux ``intel_vpu`` driver exposes ``npu_busy_time_us`` (microseconds, device-wide) on the PCI
device. It grows in real time while the firmware runs jobs, so a positive delta across a
generation proves that NPU work happened in that window. A delta of zero means the work ran
elsewhere (a silent CPU fallback, say) and a counter that goes backwards means the driver was
reloaded mid-job: both fail the job rather than report a success we cannot prove.

The device and the counter are found separately, because they fail separately: the driver
(``intel_vpu``, Linux 6.3+) may be loaded by a kernel that predates the counter. The counter came
with commit 0adff3b0ef12 "accel/ivpu: Share NPU busy time in sysfs", merged for Linux 6.11 (it
reached drm-next in drm-misc-next-2024-06-06, after 6.10-rc1; stable backports that fix it are
tagged "v6.11+"). Ubuntu 24.04's stock 6.8 kernel therefore has the device but not the counter.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BUSY_FILE_NAME = "npu_busy_time_us"
NPU_DRIVER = "intel_vpu"
#: The first Linux release whose intel_vpu driver has npu_busy_time_us (see the module docstring).
COUNTER_KERNEL = "6.11"
#: How to get such a kernel on the distribution this project documents first.
UBUNTU_HWE_KERNEL = "sudo apt install --install-recommends linux-generic-hwe-24.04"
#: A counter is a few digits and a newline; a sysfs attribute is at most a page. More than this is
#: not a counter (a wrong path such as /dev/zero, a growing log file), and is never read further.
MAX_ATTRIBUTE_BYTES = 64
#: How long one read may wait for data. sysfs answers at once; only a FIFO (the synthetic counter
#: of npud.testing.sysfs) can make a reader wait, and one without a writer would wait for ever.
READ_TIMEOUT_S = 5.0
#: health reads the live sysfs facts at most this often (the counter is device-wide and cheap, but
#: any local HTTP client can call health in a loop; the kernel's ABI notes ask not to poll it fast).
LIVE_READ_INTERVAL_S = 1.0


class BusyCounterError(Exception):
    """The counter could not be found or read."""


def _driver_of(device_dir: Path) -> str | None:
    try:
        uevent = (device_dir / "uevent").read_text()
    except OSError:
        return None
    for line in uevent.splitlines():
        key, _, value = line.partition("=")
        if key == "DRIVER":
            return value.strip()
    return None


@dataclass(frozen=True)
class NpuDiscovery:
    """What sysfs says about the NPU: every accel device, the intel_vpu one, and its counter."""

    sysfs_root: str
    #: ``accelN`` names under ``<sysfs>/class/accel`` with their driver (None when unreadable).
    accel_devices: tuple[tuple[str, str | None], ...] = ()
    #: The intel_vpu device: ``<sysfs>/class/accel/accelN/device``.
    device: Path | None = None
    #: Its ``npu_busy_time_us``, when the kernel has it.
    counter: Path | None = None

    @property
    def accel_dir(self) -> Path:
        return Path(self.sysfs_root) / "class" / "accel"

    def problem(self, kernel_release: str) -> str | None:
        """What is missing and what to do about it, or None when the counter is there."""
        if self.device is None:
            return missing_device_message(self)
        if self.counter is None:
            return missing_counter_message(self.device, kernel_release)
        return None


def discover_npu(sysfs_root: str = "/sys") -> NpuDiscovery:
    """Find the first ``intel_vpu`` accel device and, separately, its busy counter.

    Devices are matched by driver name in ``uevent`` rather than by assuming ``accel0``: a
    machine may have other accel devices, and numbering follows probe order.
    """
    accel = Path(sysfs_root) / "class" / "accel"
    try:
        entries = sorted(accel.iterdir())
    except OSError:
        return NpuDiscovery(sysfs_root)
    found = tuple((entry.name, _driver_of(entry / "device")) for entry in entries)
    for entry, (_, driver) in zip(entries, found):
        if driver == NPU_DRIVER:
            device = entry / "device"
            counter = device / BUSY_FILE_NAME
            return NpuDiscovery(sysfs_root, found, device, counter if counter.exists() else None)
    return NpuDiscovery(sysfs_root, found)


def discover_busy_file(sysfs_root: str = "/sys") -> Path | None:
    """The busy counter of the first ``intel_vpu`` accel device, or ``None``."""
    return discover_npu(sysfs_root).counter


def missing_device_message(found: NpuDiscovery) -> str:
    others = ", ".join(f"{name} ({driver or 'unknown driver'})" for name, driver in found.accel_devices)
    seen = f"only other accelerators: {others}" if others else "no accel device at all"
    return (
        f"no intel_vpu device under {found.accel_dir} ({seen}). The NPU kernel driver is not loaded: "
        "run 'sudo modprobe intel_vpu' and check 'sudo dmesg | grep -i vpu'. If modprobe finds no "
        "module, or the driver does not bind, this kernel is too old for this processor's NPU "
        "(intel_vpu is in Linux since 6.3; newer NPUs need newer kernels)."
    )


def missing_counter_message(device: Path, kernel_release: str) -> str:
    return (
        f"the intel_vpu device {device} has no {BUSY_FILE_NAME}: the driver has this counter from "
        f"Linux {COUNTER_KERNEL} on, and this kernel is {kernel_release or 'unknown'} (Ubuntu 24.04's "
        f"stock kernel is 6.8). Without it npud cannot prove that a job ran on the NPU. Either "
        f"install a newer kernel (Ubuntu 24.04: '{UBUNTU_HWE_KERNEL}', then reboot), or run with "
        "--no-busy-check (OV_GENAI_NPU_NO_BUSY_CHECK=1): results then say \"verified\": false."
    )


def read_attribute(path: Path, timeout_s: float) -> str:
    """The text of a small sysfs-style file, bounded in size and in time.

    Opened non-blocking, so a FIFO without a writer cannot block ``open``; then at most
    ``timeout_s`` for data to arrive (a FIFO's writer may still be on its way: the synthetic
    counter of the tests writes only once a reader has opened it) and one read of at most
    MAX_ATTRIBUTE_BYTES + 1 bytes. Raises BusyCounterError saying what is wrong.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise BusyCounterError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0, round(timeout_s * 1000))):
            raise BusyCounterError(f"cannot read {path}: nothing to read within {timeout_s:g} s "
                                   "(a FIFO nobody writes?)")
        data = os.read(fd, MAX_ATTRIBUTE_BYTES + 1)
    except BlockingIOError:
        raise BusyCounterError(f"cannot read {path}: nothing to read") from None
    except OSError as exc:
        raise BusyCounterError(f"cannot read {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_ATTRIBUTE_BYTES:
        raise BusyCounterError(f"{path} holds more than {MAX_ATTRIBUTE_BYTES} bytes: not a counter")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise BusyCounterError(f"{path} does not hold text: not a counter") from None


class BusyCounter:
    """Reads one ``npu_busy_time_us`` file.

    Reads are bounded (:func:`read_attribute`) and taken in turn: ``lock`` is held by each read,
    and by the worker across a generation's before and after reads, so that nothing else in this
    process (health's refresh) reads in between. For the real counter that changes nothing; a
    synthetic FIFO counter that advances at every read then still grows by one step per job.
    """

    def __init__(self, path: Path, read_timeout_s: float | None = None) -> None:
        self.path = path
        self.read_timeout_s = READ_TIMEOUT_S if read_timeout_s is None else read_timeout_s
        self.lock = threading.RLock()

    def read(self) -> int:
        with self.lock:
            text = read_attribute(self.path, self.read_timeout_s)
        try:
            return int(text.strip())
        except ValueError:
            raise BusyCounterError(f"{self.path} does not hold an integer") from None


def read_int(path: Path, timeout_s: float | None = None) -> int | None:
    """A sysfs integer attribute, or None when absent or unreadable (e.g. older kernels)."""
    try:
        return int(read_attribute(path, READ_TIMEOUT_S if timeout_s is None else timeout_s).strip())
    except (BusyCounterError, ValueError):
        return None


@dataclass(frozen=True)
class LiveReading:
    """What health shows of the NPU's sysfs directory: the counter and the frequencies."""

    busy_us: int | None
    current_frequency_mhz: int | None
    max_frequency_mhz: int | None


def _start_thread(target: Callable[[], None]) -> None:
    threading.Thread(target=target, name="npud-sysfs", daemon=True).start()


class LiveSysfs:
    """health's live sysfs readings, read off the event loop and at most once per interval.

    ``latest()`` never reads: it returns the last reading at once and, when that is older than
    ``interval_s`` and no refresh is running, starts one on a thread. So health answers
    immediately whatever the files do (a FIFO without a writer, a slow read), and a client calling
    health in a loop causes at most one read per interval. The first reading is taken at startup.
    """

    def __init__(self, counter: BusyCounter, interval_s: float = LIVE_READ_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 spawn: Callable[[Callable[[], None]], None] = _start_thread) -> None:
        self._counter = counter
        self._interval_s = interval_s
        self._clock = clock
        self._spawn = spawn
        self._lock = threading.Lock()
        self._refreshing = False
        #: The reading taken at startup (health's busy time is counted from it).
        self.first = self._latest = self._read()
        self._read_at = clock()

    def _read(self) -> LiveReading:
        device_dir = self._counter.path.parent
        try:
            busy: int | None = self._counter.read()
        except BusyCounterError:
            busy = None
        timeout = self._counter.read_timeout_s
        return LiveReading(busy, read_int(device_dir / "npu_current_frequency_mhz", timeout),
                           read_int(device_dir / "npu_max_frequency_mhz", timeout))

    def latest(self) -> LiveReading:
        with self._lock:
            latest = self._latest
            start = not self._refreshing and self._clock() - self._read_at >= self._interval_s
            if start:
                self._refreshing = True
        if start:
            self._spawn(self._refresh)
        return latest

    def _refresh(self) -> None:
        reading = self._read()  # every read error is a None in the reading, never an exception
        with self._lock:
            self._latest, self._read_at, self._refreshing = reading, self._clock(), False


def verify_delta(before: int | None, after: int | None) -> tuple[int | None, str | None]:
    """(delta, None) when the counter proves NPU work, else (delta or None, reason).

    Reasons: ``unreadable`` (a read failed), ``went_backwards`` (driver reload), ``no_growth``
    (the work ran somewhere else).
    """
    if before is None or after is None:
        return None, "unreadable"
    delta = after - before
    if delta < 0:
        return delta, "went_backwards"
    if delta == 0:
        return 0, "no_growth"
    return delta, None
