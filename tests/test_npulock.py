"""The cross-process NPU lock: exclusive, bounded wait, released by the kernel."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from npud.npulock import LockTimeout, LockWaitCancelled, NpuLock


def test_lock_is_exclusive_and_times_out(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "npu.lock")
    lock = NpuLock(path, timeout_s=0.2)
    with lock.hold() as waited:
        assert waited < 0.2
        with pytest.raises(LockTimeout) as info:
            with NpuLock(path, timeout_s=0.2).hold():
                pass
        assert info.value.waited_s >= 0.2
    with lock.hold():  # released on exit
        pass


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "npu.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl,os,sys; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX);"
         " print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout, match="held by another process"):
            with NpuLock(str(path), timeout_s=0.1).hold():
                pass
    finally:
        holder.kill()  # the kernel releases a dead holder's flock
        holder.wait()
    with NpuLock(str(path), timeout_s=1).hold():
        pass


def test_cancel_ends_the_wait(tmp_path: Path) -> None:
    path = str(tmp_path / "npu.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    cancel = threading.Event()
    cancel.set()
    try:
        with pytest.raises(LockWaitCancelled):
            with NpuLock(path, timeout_s=60).hold(cancel=cancel.is_set):
                pass
    finally:
        os.close(fd)
