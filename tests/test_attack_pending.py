"""Attack review (issue 14 follow-up): findings another helper is fixing (W1: load retry with
backoff; D1: contrib/ and the systemd units). They fail until that work is merged.
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path
from typing import Any

from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import REPO
from .test_http_boundaries import wait_for
from .test_reliability import title


def test_a_lock_held_through_the_model_load_does_not_break_the_daemon_for_good(
        daemon_factory: Any, tmp_path: Path) -> None:
    """Another NPU user (a chat model compiling at boot: 'the first NPU compile can take minutes')
    holds the lock longer than --lock-timeout while npud loads. The load fails with 'NPU lock ...
    held by another process', health says error and every job gets -32001 forever, although the
    lock is free again; and the watchdog keeps being fed (is_responsive() is true for a failed
    load), so systemd never restarts npud. Expected: a contended lock is a transient condition
    (keep waiting while 'loading', retry, or exit so systemd restarts), not a dead daemon."""
    lock = tmp_path / "npu.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the other NPU user
    behaviour = FakeBehaviour(busy_file=make_npu_sysfs(tmp_path / "sys"))
    daemon = daemon_factory(FakeLoader(behaviour), wait_ready=False, device="NPU", sysfs_root=str(tmp_path / "sys"),
                            lock_file=str(lock), lock_timeout_s=0.3)
    wait_for(lambda: daemon.call("health")["result"]["status"] != "loading" or daemon.daemon.worker.wait_loaded(0),
             "the load to give up on the lock", bound_s=5)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)  # the NPU is free again
    wait_for(lambda: daemon.call("health")["result"]["status"] == "ready" or not daemon.thread.is_alive(),
             "npud to recover (ready) or to exit for a restart, once the lock was free", bound_s=15)
    if daemon.thread.is_alive():
        assert daemon.call("generate", title())["result"]["job"] == "title"
    else:
        assert daemon.daemon.exit_code != 0, "exited with status 0: systemd's Restart=on-failure would not restart it"


def test_the_user_unit_env_example_does_not_offer_an_allow_list() -> None:
    """contrib/npud.env.example is installed as ~/.config/npud/npud.env for the *user* units and
    offers '#OV_GENAI_NPU_ALLOW_UID=1001  (Let another local user in over the socket)'. README
    'Serving other users' says allow-lists cannot work in the user units and npud refuses to start
    with one there (status 1; with Restart=on-failure, a restart loop). Uncommenting the example
    line breaks the daemon."""
    example = (REPO / "contrib" / "npud.env.example").read_text()
    offered = [line for line in example.splitlines() if re.match(r"#?\s*OV_GENAI_NPU_ALLOW_(UID|GID)=", line)]
    assert offered == [], f"the user-unit env example offers an allow-list the user units refuse: {offered}"
