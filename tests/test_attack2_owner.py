"""Attack review 2: the NPU owner's path (README "On an Intel NPU", "Serving other users",
"Running on a real NPU"), walked as written. Each test fails on the code it was written against;
the docstring quotes the promise it checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npud.accel import AccelNode, Groups, access_problem

from .conftest import REPO, unique_socket
from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env

README = (REPO / "README.md").read_text()


# ---------------------------------------------------------------- npuctl --wait and the load retry


def test_npuctl_wait_waits_for_a_scheduled_load_retry(tmp_path: Path) -> None:
    """README: "`--wait` waits for `health` to say `ready` first"; "A failed load is retried when
    the failure is transient ... Meanwhile `health` says `error` with `retry_in_s`". After a
    reboot the first load can fail transiently (the NPU lock held by another service at login);
    `npuctl --wait` (README step 7) then gives up at once with exit 5 "model failed to load",
    although npud retries seconds later and would answer."""
    listener = NotifyListener()
    name = unique_socket()
    env = daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, NPUD_FAKE_LOAD_FAILURES="1")
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--load-retry-delay", "5"],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("STATUS=model failed to load (attempt 1), retrying in ")
        npuctl = subprocess.run([str(Path(sys.executable).parent / "npuctl"), "--socket", name, "--wait",
                                 "--timeout", "60", "generate", "--job", "title", "--input", "x"],
                                capture_output=True, text=True, timeout=90)
        assert npuctl.returncode == 0, (npuctl.returncode, npuctl.stderr)
        assert npuctl.stdout.strip() == "Fake Title About The Input"
    finally:
        listener.close()
        proc.terminate()
        proc.wait(30)
