"""Attack review (issue 14 follow-up): the NPU lock file and waits for it.

These tests fail on purpose until the findings are fixed; see the attack14 report.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from npud import worker as worker_module
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import as_nobody
from .test_http_boundaries import wait_for
from .test_reliability import npu_daemon_with_lock_held, request, title, wait_running  # noqa: F401 (fixture)


def test_a_client_hanging_up_during_the_lock_wait_logs_no_error(
        npu_daemon_with_lock_held: Any, caplog: pytest.LogCaptureFixture,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that closes its connection while its job waits for the NPU lock is a normal event
    (CONTRACT §4: 'a closed connection also ends a wait for the NPU lock'). The worker then
    resolves the abandoned future with RequestCancelled, which nobody retrieves: asyncio logs
    'Future exception was never retrieved' at ERROR with a traceback."""
    caplog.set_level(logging.ERROR)
    daemon, behaviour, _ = npu_daemon_with_lock_held
    answered = threading.Event()
    original = worker_module._resolve

    def resolve_and_signal(job: Any, outcome: Any) -> None:
        original(job, outcome)
        job.loop.call_soon_threadsafe(answered.set)  # runs after the worker's answer landed

    monkeypatch.setattr(worker_module, "_resolve", resolve_and_signal)
    with daemon.connect() as conn:
        conn.send_json(request(1))
        wait_running(daemon)
    assert answered.wait(20), "the worker never answered the abandoned job"
    answered.clear()
    # The worker keeps its last job (and so the abandoned future) until it takes the next one.
    assert daemon.call("generate", title(timeout_ms=100))["error"]["code"] == -32007
    assert answered.wait(20)
    gc.collect()  # the abandoned future sits in a reference cycle (exception -> traceback -> job)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], f"errors logged for a client that hung up: {errors}"
    assert behaviour.calls == []
