"""The Intel NPU busy counter: proof that a generation really ran on the NPU.

The Linux ``intel_vpu`` driver exposes ``npu_busy_time_us`` (microseconds, device-wide) on the PCI
device. It grows in real time while the firmware runs jobs, so a positive delta across a
generation proves that NPU work happened in that window. A delta of zero means the work ran
elsewhere (a silent CPU fallback, say) and a counter that goes backwards means the driver was
reloaded mid-job: both fail the job rather than report a success we cannot prove.
"""

from __future__ import annotations

from pathlib import Path

BUSY_FILE_NAME = "npu_busy_time_us"
NPU_DRIVER = "intel_vpu"


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


def discover_busy_file(sysfs_root: str = "/sys") -> Path | None:
    """The busy counter of the first ``intel_vpu`` accel device, or ``None``.

    Devices are matched by driver name in ``uevent`` rather than by assuming ``accel0``: a
    machine may have other accel devices, and numbering follows probe order.
    """
    accel = Path(sysfs_root) / "class" / "accel"
    try:
        candidates = sorted(accel.iterdir())
    except OSError:
        return None
    for entry in candidates:
        device = entry / "device"
        counter = device / BUSY_FILE_NAME
        if _driver_of(device) == NPU_DRIVER and counter.exists():
            return counter
    return None


class BusyCounter:
    """Reads one ``npu_busy_time_us`` file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int:
        try:
            text = self.path.read_text()
        except OSError as exc:
            raise BusyCounterError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            return int(text.strip())
        except ValueError:
            raise BusyCounterError(f"{self.path} does not hold an integer") from None


def read_int(path: Path) -> int | None:
    """A sysfs integer attribute, or None when absent or unreadable (e.g. older kernels)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


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
