"""A synthetic sysfs tree with an ``intel_vpu`` accel device, for discovery tests."""

from __future__ import annotations

from pathlib import Path


def make_npu_sysfs(root: Path, busy_us: int = 1000, index: int = 0, driver: str = "intel_vpu",
                   busy_counter: bool = True) -> Path:
    """Create ``root/class/accel/accelN/device`` like the kernel does; return the busy file.

    ``busy_counter=False`` makes the tree of a kernel older than 6.11 (Ubuntu 24.04's 6.8): the
    intel_vpu device is there, ``npu_busy_time_us`` is not (the returned path does not exist)."""
    device = root / "devices" / "pci0000:00" / f"0000:00:0b.{index}"
    device.mkdir(parents=True, exist_ok=True)
    (device / "uevent").write_text(f"DRIVER={driver}\nPCI_CLASS=120000\nPCI_ID=8086:7D1D\n")
    busy = device / "npu_busy_time_us"
    if busy_counter:
        busy.write_text(f"{busy_us}\n")
    (device / "npu_current_frequency_mhz").write_text("0\n")
    (device / "npu_max_frequency_mhz").write_text("1400\n")
    accel = root / "class" / "accel" / f"accel{index}"
    accel.mkdir(parents=True, exist_ok=True)
    link = accel / "device"
    if not link.exists():
        link.symlink_to(device)
    return accel / "device" / "npu_busy_time_us"
