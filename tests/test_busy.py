"""Busy counter discovery on a synthetic sysfs tree, and reading it."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.busy import BusyCounter, BusyCounterError, discover_busy_file
from npud.testing.sysfs import make_npu_sysfs


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
