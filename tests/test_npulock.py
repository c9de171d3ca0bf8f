"""The cross-process NPU lock: exclusive, bounded wait, released by the kernel."""

from __future__ import annotations

import errno
import fcntl
import logging
import textwrap
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from npud.config import default_lock_file, load_config
from npud.daemon import EXIT_STARTUP_FAILED, check_npu_lock, run
from npud.engine import StartupError
from npud import npulock
from npud.npulock import LockFileRefused, LockTimeout, LockWaitCancelled, NpuLock
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import NOBODY, as_nobody, make_config
from .test_reliability import title


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


# ---------------------------------------------------------------- which file (S2)


def test_the_lock_file_is_not_followed_through_another_users_symlink(daemon_factory: Any) -> None:
    """Security (local). Another user plants a symlink at the lock path in a sticky directory:
    npud, as its own user, used to create (or open and flock) whatever file the link named. Here
    the link points into a directory only the daemon's user can write. (fs.protected_symlinks=1
    blocks this in sticky directories; many containers have 0, like this machine.)"""
    shared = Path(tempfile.mkdtemp(prefix="npud-shared-"))
    private = Path(tempfile.mkdtemp(prefix="npud-private-"))
    try:
        shared.chmod(0o1777)  # like /tmp
        private.chmod(0o700)
        lock, target = shared / "npu.lock", private / "created-through-the-link"
        assert as_nobody(lambda: (os.symlink(target, lock), b"planted")[1]) == b"planted"
        behaviour = FakeBehaviour(busy_file=make_npu_sysfs(shared / "sys"))
        daemon = daemon_factory(FakeLoader(behaviour), device="NPU", sysfs_root=str(shared / "sys"),
                                lock_file=str(lock))
        health = daemon.call("health")["result"]
        assert health["status"] == "error" and "is a symbolic link" in health["error"]
        assert daemon.call("generate", title())["error"]["code"] == -32001
        assert not target.exists(), "npud created a file where another user's symlink pointed"
        assert behaviour.calls == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def test_a_lock_file_of_another_user_is_refused_not_waited_for(tmp_path: Path) -> None:
    """Another user creates the lock file first in a shared directory and holds its flock: npud
    would wait (and fail every job) for as long as they like. A lock file must be ours or root's."""
    if os.getuid() != 0:
        pytest.skip("needs root to create another user's file")
    path = tmp_path / "npu.lock"
    path.touch()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(LockFileRefused, match=f"belongs to uid {NOBODY}, neither this user nor root"):
        with NpuLock(str(path), timeout_s=0.1).hold():
            pass


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_lock_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO would block open() for ever; neither it nor a directory is a lock file."""
    path = tmp_path / "npu.lock"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(LockFileRefused, match="not a regular file"):
        with NpuLock(str(path), timeout_s=0.1).hold():
            pass


def test_the_default_lock_file_is_never_in_a_shared_directory() -> None:
    """$XDG_RUNTIME_DIR, else systemd's $RUNTIME_DIRECTORY; without either no default at all
    (it used to be /tmp/npu.lock, where any user can plant a link or hold the lock)."""
    assert default_lock_file({"XDG_RUNTIME_DIR": "/run/user/1000", "RUNTIME_DIRECTORY": "/run/npud"}) \
        == "/run/user/1000/npu.lock"
    assert default_lock_file({"RUNTIME_DIRECTORY": "/run/npud:/run/other"}) == "/run/npud/npu.lock"
    assert default_lock_file({}) == ""
    assert load_config([], {"HOME": "/h"}).lock_file == ""
    assert load_config(["--lock-file", "/run/npu.lock"], {"HOME": "/h"}).lock_file == "/run/npu.lock"


@pytest.mark.parametrize("case", ["no default", "symlink"])
def test_npud_on_the_npu_refuses_to_start_without_a_usable_lock_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    caplog.set_level(logging.ERROR, logger="npud")
    lock = ""
    if case == "symlink":
        lock = str(tmp_path / "npu.lock")
        os.symlink(tmp_path / "elsewhere", lock)
    behaviour = FakeBehaviour(busy_file=make_npu_sysfs(tmp_path / "sys"))
    config = make_config(tmp_path, device="NPU", sysfs_root=str(tmp_path / "sys"), lock_file=lock)
    assert run(config, FakeLoader(behaviour)) == EXIT_STARTUP_FAILED
    message = " ".join(r.getMessage() for r in caplog.records)
    expected = "Pass --lock-file" if case == "no default" else "is a symbolic link"
    assert "cannot start" in message and expected in message
    assert not (tmp_path / "elsewhere").exists()
    assert not behaviour.calls


def test_cpu_needs_no_lock_file(tmp_path: Path) -> None:
    """Off the NPU there is no lock, so no default is needed: nothing changes for CPU users."""
    config = make_config(tmp_path, lock_file="")
    check_npu_lock(config)  # no error


# ---------------------------------------------------------------- a shared lock on a read-only mount


LOCK_ON_READ_ONLY_MOUNT = textwrap.dedent("""
    import os, subprocess, sys
    from npud.npulock import NpuLock
    directory = sys.argv[1]
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
    with NpuLock(os.path.join(directory, "npu.lock"), 1.0).hold():
        print("locked")
""")


def test_a_lock_file_on_a_read_only_mount_is_used_as_the_readme_says(tmp_path: Path) -> None:
    """README: "a lock shared between users must be made by root, for example with
    /etc/tmpfiles.d/npu.conf holding `f /run/npu.lock 0660 root render` and `--lock-file
    /run/npu.lock` for every program that uses the NPU". The system unit (the one "for serving
    other users") has ProtectSystem=strict, which mounts /run read-only for npud (systemd.exec(5):
    "the entire file system hierarchy is mounted read-only, except for the API file system
    subtrees /dev/, /proc/ and /sys/"). flock works on a read-only descriptor, and npud already
    falls back to O_RDONLY on EACCES, but not on EROFS: the service exits at startup with
    "cannot open the NPU lock file /run/npu.lock: Read-only file system", while the acceptance
    check (`sudo -u npud ... npud.smoke`, not sandboxed) passes that row."""
    if os.getuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private read-only mount")
    shared = tmp_path / "run"
    shared.mkdir()
    (shared / "npu.lock").touch()
    os.chmod(shared / "npu.lock", 0o660)  # as systemd-tmpfiles makes it: root-owned, group render
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no mount namespaces here")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                           LOCK_ON_READ_ONLY_MOUNT, str(shared)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "locked", proc.stderr[-600:]


def refuse_writing(monkeypatch: pytest.MonkeyPatch, errno_code: int) -> None:
    """os.open as on a read-only mount (EROFS) or a file not writable for us: any open for
    writing fails with ``errno_code``; read-only opens work."""
    real_open = os.open

    def fake_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno_code, os.strerror(errno_code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(npulock.os, "open", fake_open)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_lock_file_that_cannot_be_opened_for_writing_is_locked_read_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The same without root: EROFS (a system unit's ProtectSystem=strict) falls back to a
    read-only descriptor like EACCES does, and flock on it still excludes other processes."""
    path = tmp_path / "npu.lock"
    path.touch()
    refuse_writing(monkeypatch, code)
    with NpuLock(str(path), timeout_s=1).hold():
        monkeypatch.undo()
        with pytest.raises(LockTimeout):
            with NpuLock(str(path), timeout_s=0.05).hold():
                pass


def test_a_missing_lock_file_that_cannot_be_created_says_how_to_make_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_writing(monkeypatch, errno.EROFS)
    with pytest.raises(StartupError, match=r"does not exist and it cannot be created here .*"
                                              r"'f /run/npu.lock 0660 root render -'.*systemd-tmpfiles --create"):
        check_npu_lock(make_config(tmp_path, device="NPU", lock_file=str(tmp_path / "npu.lock")))


def test_without_a_runtime_directory_the_example_lock_is_the_shared_one(tmp_path: Path) -> None:
    """Verify review 2 (finding F): the shared NPU lock is now /run/npu.lock, made by root through
    tmpfiles.d (README "Configuration", the system units). The startup error for a missing lock
    file still gave /run/npud/npu.lock (RuntimeDirectory=npud) as its example: a directory of one
    service, so a lock no other program shares, against "the same path for every process"."""
    config = make_config(tmp_path, lock_file="", device="NPU")
    with pytest.raises(StartupError) as caught:
        check_npu_lock(config)
    assert "/run/npu.lock" in str(caught.value) and "/run/npud/" not in str(caught.value)
