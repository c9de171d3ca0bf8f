"""Busy counter discovery on a synthetic sysfs tree, and reading it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from npud import busy as busy_module
from npud.busy import (
    MAX_ATTRIBUTE_BYTES,
    BusyCounter,
    BusyCounterError,
    LiveSysfs,
    discover_busy_file,
    discover_npu,
)
from npud.daemon import prepare_busy_counter
from npud.engine import StartupError
from npud.testing.fake import FakeLoader
from npud.testing.sysfs import AdvancingBusyCounter, make_npu_sysfs

from .conftest import RawConnection, make_config, start_daemon


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


def test_reads_are_bounded_in_size_and_must_be_text(tmp_path: Path) -> None:
    """A sysfs attribute is a few bytes: more is not a counter (and /dev/zero is never read to
    the end: see the attack test for the memory bound); bytes that are not text neither."""
    long = tmp_path / "long"
    long.write_text("1" * (MAX_ATTRIBUTE_BYTES + 1))
    with pytest.raises(BusyCounterError, match="not a counter"):
        BusyCounter(long).read()
    long.write_text("1" * (MAX_ATTRIBUTE_BYTES - 1) + "\n")
    assert BusyCounter(long).read() == int("1" * (MAX_ATTRIBUTE_BYTES - 1))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe12\n")
    with pytest.raises(BusyCounterError, match="does not hold text"):
        BusyCounter(binary).read()


def test_a_busy_file_with_non_utf8_bytes_is_a_clear_startup_error(tmp_path: Path) -> None:
    """README, exit status: "1 when the daemon cannot start (..., busy counter missing, ...; the
    message says which and what to do)". `--busy-file` naming a file that is not text (a wrong
    path, a binary) ends npud with a UnicodeDecodeError traceback instead; at run time the same
    read fails a job with -32003 "generation failed" rather than -32002 `unreadable`."""
    busy = tmp_path / "npu_busy_time_us"
    busy.write_bytes(b"\xff\xfe12\n")
    with pytest.raises(BusyCounterError):
        BusyCounter(busy).read()
    config = make_config(tmp_path, device="NPU", busy_file=str(busy))
    with pytest.raises(StartupError, match="busy counter"):
        prepare_busy_counter(config)


UNBOUNDED_READ = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    from npud.busy import BusyCounter, BusyCounterError
    resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
    try:
        BusyCounter(Path("/dev/zero")).read()
    except BusyCounterError:
        print("refused")
    except MemoryError:
        print("MemoryError")
""")


def test_the_busy_counter_read_is_bounded() -> None:
    """A sysfs attribute is at most a page; npud reads `--busy-file` with read_text(), without a
    bound, at startup, around every job and on every health call. Pointed at a character device
    (a typo such as /dev/zero, or a file that grows) it reads until memory runs out: MemoryError
    traceback at startup (here under a 768 MiB address-space limit; without one, until the OOM
    killer). Expected: a bounded read and BusyCounterError."""
    proc = subprocess.run([sys.executable, "-c", UNBOUNDED_READ], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "refused", (proc.stdout, proc.stderr[-400:])


def test_a_fifo_nobody_writes_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    """A FIFO without a writer (the synthetic counter's helper killed) blocked open() for ever."""
    fifo = tmp_path / "npu_busy_time_us"
    os.mkfifo(fifo)
    with pytest.raises(BusyCounterError, match="nothing to read within 0.05 s"):
        BusyCounter(fifo, read_timeout_s=0.05).read()


class Spawned:
    """A LiveSysfs ``spawn`` that keeps the refresh instead of starting a thread."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []

    def __call__(self, target: Callable[[], None]) -> None:
        self.pending.append(target)


def test_health_readings_are_never_taken_on_the_caller_and_at_most_once_per_interval(tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path, busy_us=100)
    now = [0.0]
    spawned = Spawned()
    readers: list[str] = []

    class Recording(BusyCounter):
        def read(self) -> int:
            readers.append(threading.current_thread().name)
            return super().read()

    live = LiveSysfs(Recording(busy), interval_s=1.0, clock=lambda: now[0], spawn=spawned)
    assert live.first.busy_us == 100 and live.first.max_frequency_mhz == 1400 and len(readers) == 1
    busy.write_text("250\n")
    for _ in range(5):  # within the interval: the startup reading, no read at all
        assert live.latest().busy_us == 100
    assert len(readers) == 1 and not spawned.pending
    now[0] = 1.0
    for _ in range(5):  # stale: one refresh is started, the caller still gets the last reading
        assert live.latest().busy_us == 100
    assert len(readers) == 1 and len(spawned.pending) == 1
    threading.Thread(target=spawned.pending.pop(), name="refresh").run()  # run it here, as its thread would
    assert readers[-1] == threading.current_thread().name and live.latest().busy_us == 250
    assert not spawned.pending and live.first.busy_us == 100  # fresh again until the next interval


def test_health_answers_while_the_busy_file_blocks_and_the_daemon_still_stops(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """health read the busy file on the event loop: a FIFO counter whose writer hangs (or is gone)
    stopped every reply and the daemon's own shutdown. Here a read waits for as long as the test
    holds the counter (no read timeout): health must answer meanwhile, and the daemon stop."""
    monkeypatch.setattr(busy_module, "READ_TIMEOUT_S", 600.0)
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as counter:
        config = make_config(tmp_path, device="NPU", busy_file=str(counter.path))
        running = start_daemon(config, FakeLoader())
        try:
            counter.hold()  # the next read of the counter waits: health's refresh, once the interval passed
            with RawConnection.open(config.socket, timeout=10) as conn:
                while not counter.held.wait(0.05):
                    assert conn.call("health")["result"]["status"] == "ready"
                health = conn.call("health")["result"]  # while that read still waits
            assert health["status"] == "ready" and health["device_info"]["busy_file"] == str(counter.path)
            running.stop()
        finally:
            counter.release()
            if running.thread.is_alive():
                running.stop()


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
