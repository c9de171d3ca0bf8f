"""Busy counter discovery on a synthetic sysfs tree, and reading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.busy import BusyCounter, BusyCounterError, discover_busy_file, discover_npu
from npud.daemon import prepare_busy_counter
from npud.engine import StartupError
from npud.testing.sysfs import make_npu_sysfs

from .conftest import make_config


def test_discovers_the_intel_vpu_device_not_just_accel0(tmp_path: Path) -> None:
    make_npu_sysfs(tmp_path, index=0, driver="some_other_accel")
    expected = make_npu_sysfs(tmp_path, index=1, busy_us=42)
    found = discover_busy_file(str(tmp_path))
    assert found == expected
    assert BusyCounter(found).read() == 42


def test_no_device_means_none(tmp_path: Path) -> None:
    assert discover_busy_file(str(tmp_path)) is None
    make_npu_sysfs(tmp_path, driver="amdxdna")
    assert discover_busy_file(str(tmp_path)) is None


def test_old_kernel_without_counter(tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path)
    busy.unlink()
    assert discover_busy_file(str(tmp_path)) is None


def test_read_errors_are_clear(tmp_path: Path) -> None:
    missing = BusyCounter(tmp_path / "gone")
    with pytest.raises(BusyCounterError, match="cannot read"):
        missing.read()
    garbage = tmp_path / "garbage"
    garbage.write_text("abc\n")
    with pytest.raises(BusyCounterError, match="does not hold an integer"):
        BusyCounter(garbage).read()


# ---------------------------------------------------------------- device and counter, separately


def test_device_and_counter_are_found_separately(tmp_path: Path) -> None:
    make_npu_sysfs(tmp_path, index=0, driver="amdxdna")
    make_npu_sysfs(tmp_path, index=1, busy_counter=False)  # a 6.8 kernel: device, no counter
    found = discover_npu(str(tmp_path))
    assert found.device == tmp_path / "class" / "accel" / "accel1" / "device" and found.counter is None
    assert found.accel_devices == (("accel0", "amdxdna"), ("accel1", "intel_vpu"))
    problem = found.problem("6.8.0-45-generic")
    assert problem == (
        f"the intel_vpu device {found.device} has no npu_busy_time_us: the driver has this counter "
        "from Linux 6.11 on, and this kernel is 6.8.0-45-generic (Ubuntu 24.04's stock kernel is 6.8). "
        "Without it npud cannot prove that a job ran on the NPU. Either install a newer kernel (Ubuntu "
        "24.04: 'sudo apt install --install-recommends linux-generic-hwe-24.04', then reboot), or run "
        "with --no-busy-check (OV_GENAI_NPU_NO_BUSY_CHECK=1): results then say \"verified\": false.")


def test_no_intel_vpu_device_says_the_driver_is_not_loaded(tmp_path: Path) -> None:
    assert discover_npu(str(tmp_path)).problem("6.11.0") == (
        f"no intel_vpu device under {tmp_path}/class/accel (no accel device at all). The NPU kernel driver "
        "is not loaded: run 'sudo modprobe intel_vpu' and check 'sudo dmesg | grep -i vpu'. If modprobe "
        "finds no module, or the driver does not bind, this kernel is too old for this processor's NPU "
        "(intel_vpu is in Linux since 6.3; newer NPUs need newer kernels).")
    make_npu_sysfs(tmp_path, driver="habanalabs")
    assert "(only other accelerators: accel0 (habanalabs))" in (discover_npu(str(tmp_path)).problem("") or "")


def test_a_complete_tree_has_no_problem(tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path)
    found = discover_npu(str(tmp_path))
    assert found.counter == busy and found.problem("6.11.0") is None


def test_startup_names_the_missing_piece(tmp_path: Path) -> None:
    """npud on an NPU machine with a 6.8 kernel is told about the kernel, not sent to modprobe."""
    make_npu_sysfs(tmp_path / "sys", busy_counter=False)
    config = make_config(tmp_path, device="NPU", sysfs_root=str(tmp_path / "sys"))
    with pytest.raises(StartupError) as raised:
        prepare_busy_counter(config, "6.8.0-45-generic")
    message = str(raised.value)
    assert "has no npu_busy_time_us" in message and "this kernel is 6.8.0-45-generic" in message
    assert "linux-generic-hwe-24.04" in message and "--no-busy-check" in message
    assert "modprobe" not in message
    empty = make_config(tmp_path, device="NPU", sysfs_root=str(tmp_path / "nothing"))
    with pytest.raises(StartupError, match=r"no intel_vpu device .* 'sudo modprobe intel_vpu'"):
        prepare_busy_counter(empty, "6.11.0")
    assert prepare_busy_counter(make_config(tmp_path, device="NPU", busy_check=False,
                                            sysfs_root=str(tmp_path / "nothing"))) is None
    with pytest.raises(StartupError, match=r"--busy-file\) does not exist"):
        prepare_busy_counter(make_config(tmp_path, device="NPU", busy_file=str(tmp_path / "gone")))
