"""Attack review 2: the NPU path and its emulation (issue 10), the busy counter as configured by a
careless owner. Each test fails on the code it was written against; the docstring quotes the
promise it checks."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npud.busy import BusyCounter, BusyCounterError
from npud.config import load_config
from npud.daemon import prepare_busy_counter
from npud.engine import OpenVinoLoader, StartupError
from npud.smoke import run
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import AdvancingBusyCounter

from .conftest import make_config
from .test_smoke import host


# ---------------------------------------------------------------- a busy file that is not a counter


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


# ---------------------------------------------------------------- the acceptance check and the NPU lock


def test_the_acceptance_check_takes_the_npu_lock_like_the_service(tmp_path: Path) -> None:
    """CONTRACT §8: "On the NPU, every generation and the model compile hold an exclusive flock on
    the lock file ... Other services sharing the NPU should take the same lock". The acceptance
    check compiles the model twice and generates on the NPU without it: its row "NPU lock file"
    only opens the file. Run while the service (or a chat model) works on the NPU (README
    "Reporting a problem" asks for it while npud runs), both use the device at once, and each one's
    busy-counter delta includes the other's work, so either can be "verified" by the other's job."""
    lock = tmp_path / "npu.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the service, in the middle of a job
    try:
        behaviour = FakeBehaviour()
        with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
            config = load_config(["--device", "NPU", "--npu-emulation", "--model", "fake-model",
                                  "--busy-file", str(busy.path), "--cache-dir", str(tmp_path / "cache"),
                                  "--lock-file", str(lock), "--lock-timeout", "0.2"], {"HOME": str(tmp_path)})
            run(config, FakeLoader(behaviour), ["CPU"], host())
        assert not behaviour.calls, "the acceptance check generated while another process held the NPU lock"
    finally:
        os.close(holder)
