"""A failed model load is retried with backoff when the failure is transient (NPU lock held,
device busy or lost), never when it is not (missing or corrupt model); health, -32001 and the
systemd STATUS line say what happens next. The fake loader fails N times, then loads."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from npud.daemon import Daemon, Listeners
from npud.engine import ModelLoadError
from npud.npulock import LockTimeout, LockWaitCancelled
from npud.rpc import Dispatcher
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs
from npud.testing.fake_daemon import DEVICE_LOST
from npud.worker import (
    LOAD_RETRY_MAX_DELAY_S,
    Worker,
    WorkerSnapshot,
    is_transient_load_failure,
    load_paths,
    load_retry_delay,
)

from .conftest import RawConnection, make_config, unique_socket
from .test_dispatcher import call, run_with_dispatcher, title
from .test_http_boundaries import wait_for as wait_until
from .test_reliability import title as reliability_title
from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env

CORRUPT_GGUF = ("converting /m/bad.gguf to OpenVINO IR crashed: OpenVINO's GGUF reader died with SIGSEGV. "
                "The file is probably truncated or corrupt")


class Backoff:
    """Stands in for the worker's backoff wait: records each delay and holds until released."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.waiting = threading.Event()
        self._releases = threading.Semaphore(0)  # a release may come before the wait starts

    def __call__(self, delay: float) -> bool:
        self.delays.append(delay)
        self.waiting.set()
        assert self._releases.acquire(timeout=30), "the test never released this backoff"
        return False

    def release(self) -> None:
        self.waiting.clear()
        self._releases.release()


def run_retrying(tmp_path: Path, loader: FakeLoader, backoff: Backoff, body: Callable[[Dispatcher, Worker], Any],
                 **overrides: Any) -> None:
    config = make_config(tmp_path, load_retry_delay_s=5.0, **overrides)
    original = Worker.__init__

    def patched(self: Worker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, backoff_wait=backoff, **kwargs)

    Worker.__init__ = patched  # type: ignore[method-assign]
    try:
        run_with_dispatcher(config, loader, body, wait_loaded=False)
    finally:
        Worker.__init__ = original  # type: ignore[method-assign]


async def wait_for(event: threading.Event) -> None:
    import asyncio

    assert await asyncio.to_thread(event.wait, 10)


def test_transient_failures_are_retried_with_backoff_until_the_load_succeeds(tmp_path: Path) -> None:
    backoff = Backoff()
    loader = FakeLoader(load_failures=[ModelLoadError(DEVICE_LOST), LockTimeout("/run/user/1000/npu.lock", 60.0)])

    async def body(d: Dispatcher, w: Worker) -> None:
        await wait_for(backoff.waiting)
        health = (await call(d, "health"))["result"]
        assert health["status"] == "error" and "ZE_RESULT_ERROR_DEVICE_LOST" in health["error"]
        assert health["load_attempts"] == 1 and 0 < health["retry_in_s"] <= 5.0
        refused = (await call(d, "generate", title()))["error"]
        assert refused["code"] == -32001
        assert refused["message"].startswith("model failed to load; the next attempt is in ")
        assert refused["data"]["status"] == "error" and 0 < refused["data"]["retry_in_s"] <= 5.0
        backoff.release()  # attempt 2: the NPU lock is held by another process
        await wait_for(backoff.waiting)
        health = (await call(d, "health"))["result"]
        assert health["status"] == "error" and "held by another process" in health["error"]
        assert health["load_attempts"] == 2 and 5.0 < health["retry_in_s"] <= 10.0
        backoff.release()  # attempt 3 loads
        assert await __import__("asyncio").to_thread(w.wait_loaded, 10)
        health = (await call(d, "health"))["result"]
        assert health["status"] == "ready" and health["load_attempts"] == 3
        assert "retry_in_s" not in health and "error" not in health
        assert (await call(d, "generate", title()))["result"]["job"] == "title"

    run_retrying(tmp_path, loader, backoff, body)
    assert backoff.delays == [5.0, 10.0]
    assert len(loader.loaded_with) == 3


@pytest.mark.parametrize("message", [
    CORRUPT_GGUF,
    "FileNotFoundError: [Errno 2] No such file or directory: '/m/Qwen2.5-1.5B-Instruct-int4-ov/openvino_model.xml'",
    "RuntimeError: Couldn't create directory [/var/cache/npud/compiled/abc], err=Permission denied",
    "RuntimeError: Exception from src/inference/src/cpp/core.cpp:117:\nBroadcast incorrect target shape",
])
def test_permanent_failures_are_not_retried(tmp_path: Path, message: str) -> None:
    backoff = Backoff()
    loader = FakeLoader(load_error=message)

    async def body(d: Dispatcher, w: Worker) -> None:
        assert await __import__("asyncio").to_thread(w.wait_loaded, 10)
        health = (await call(d, "health"))["result"]
        assert health["status"] == "error" and health["error"] == message
        assert health["load_attempts"] == 1 and "retry_in_s" not in health
        error = (await call(d, "generate", title()))["error"]
        assert error == {"code": -32001, "message": "model failed to load",
                         "data": {"status": "error", "error": message}}

    run_retrying(tmp_path, loader, backoff, body)
    assert backoff.delays == [] and len(loader.loaded_with) == 1


def test_retries_stop_after_the_cap(tmp_path: Path) -> None:
    backoff = Backoff()
    loader = FakeLoader(load_error=f"RuntimeError: {DEVICE_LOST}")

    async def body(d: Dispatcher, w: Worker) -> None:
        for _ in range(2):
            await wait_for(backoff.waiting)
            backoff.release()
        assert await __import__("asyncio").to_thread(w.wait_loaded, 10)
        health = (await call(d, "health"))["result"]
        assert health["status"] == "error" and health["load_attempts"] == 3 and "retry_in_s" not in health

    run_retrying(tmp_path, loader, backoff, body, load_retries=2)
    assert backoff.delays == [5.0, 10.0] and len(loader.loaded_with) == 3


def test_jobs_queued_during_a_failing_attempt_learn_when_the_next_one_is(tmp_path: Path) -> None:
    backoff = Backoff()
    gate = threading.Event()
    loader = FakeLoader(load_gate=gate, load_failures=[ModelLoadError(DEVICE_LOST)])

    async def body(d: Dispatcher, w: Worker) -> None:
        import asyncio

        waiting = asyncio.ensure_future(call(d, "generate", title()))
        while w.snapshot().queue_depth < 1:
            await asyncio.sleep(0)
        gate.set()
        error = (await waiting)["error"]
        assert error["code"] == -32001 and error["data"]["retry_in_s"] > 0
        backoff.release()
        assert await asyncio.to_thread(w.wait_loaded, 10)

    run_retrying(tmp_path, loader, backoff, body)


def test_shutdown_ends_the_backoff_at_once(tmp_path: Path) -> None:
    """The real backoff wait (a minute here) gives way to stop(): the worker ends promptly."""
    config = make_config(tmp_path, load_retry_delay_s=60.0)
    loader = FakeLoader(load_failures=[ModelLoadError(DEVICE_LOST)])
    worker = Worker(config, loader, None, None)
    worker.start()
    while worker.snapshot().retry_in_s is None:
        pass
    worker.stop()
    assert worker.join(5)
    assert len(loader.loaded_with) == 1


def test_classification_and_schedule() -> None:
    assert is_transient_load_failure(LockTimeout("/tmp/npu.lock", 60))
    assert is_transient_load_failure(ModelLoadError(DEVICE_LOST))
    assert is_transient_load_failure(ModelLoadError("RuntimeError: ... ivpu: Device or resource busy"))
    assert not is_transient_load_failure(LockWaitCancelled("stopping"))
    assert not is_transient_load_failure(ModelLoadError(CORRUPT_GGUF))
    assert not is_transient_load_failure(ValueError("a loader bug"))


@pytest.mark.parametrize("folder", ["EBUSY", "device or resource busy", "ZE_RESULT_ERROR_DEVICE_LOST"])
def test_a_model_path_that_names_a_transient_error_is_not_one(tmp_path: Path, folder: str) -> None:
    """The markers were matched anywhere in the message, the model's path included: a folder named
    like a transient error made a missing or broken model be retried ten times over 25 minutes."""
    model = tmp_path / "models" / folder
    config = make_config(tmp_path, model=str(model))
    permanent = ModelLoadError(f"RuntimeError: Exception from src/inference/src/cpp/core.cpp:109:\n"
                               f"Check 'util::file_exists(path)' failed: {model}/openvino_model.xml does not exist")
    assert not is_transient_load_failure(permanent, load_paths(config))
    # Quoted inside another path (a converted model under the cache), and a real one still counts.
    converted = ModelLoadError(f"RuntimeError: cannot open {tmp_path}/cache/models/{folder}-1a2b3c/openvino_model.bin")
    assert not is_transient_load_failure(converted, load_paths(config))
    assert is_transient_load_failure(ModelLoadError(f"{DEVICE_LOST} while loading {model}"), load_paths(config))
    assert [load_retry_delay(5, n) for n in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert LOAD_RETRY_MAX_DELAY_S == 300


def snapshot(**changes: Any) -> WorkerSnapshot:
    base: dict[str, Any] = dict(status="ready", error=None, queue_depth=0, running=False, jobs_served=0,
                                jobs_failed=0, load_time_ms=None, model_id=None, device_info=None)
    return WorkerSnapshot(**{**base, **changes})


def test_status_line_says_what_happens_next(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    daemon = Daemon(config, FakeLoader(), Listeners(rpc=__import__("socket").socket()), None)
    try:
        line = daemon._status_line(snapshot(status="error", error="NPU lock /run/npu.lock held by another "
                                            "process for 60.0s", load_attempts=2, retry_in_s=9.2))
        assert line == ("model failed to load (attempt 2), retrying in 10s: NPU lock /run/npu.lock held by "
                        "another process for 60.0s")
        assert daemon._status_line(snapshot(status="loading", load_attempts=3)) == (
            "loading fake-model on CPU (attempt 3)")
        assert daemon._status_line(snapshot(status="error", error="bad", load_attempts=1)) == (
            "model failed to load: bad")
    finally:
        daemon.listeners.close()


def test_unverified_npu_results_are_marked_in_status_and_results(tmp_path: Path) -> None:
    from .test_dispatcher import npu_config
    from npud.testing.fake import FakeBehaviour

    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour, busy_check=False)

    async def body(d: Dispatcher, w: Worker) -> None:
        result = (await call(d, "generate", title()))["result"]
        assert result["verified"] is False and result["npu_busy_delta_us"] is None and result["device"] == "NPU"
        assert (await call(d, "health"))["result"]["busy_counter"] == {"enabled": False, "path": None}

    run_with_dispatcher(config, FakeLoader(behaviour), body)
    daemon = Daemon(config, FakeLoader(), Listeners(rpc=__import__("socket").socket()), None)
    try:
        assert daemon._status_line(snapshot()).endswith("0 failed, 0 cancelled, NPU use NOT verified (--no-busy-check)")
    finally:
        daemon.listeners.close()


def test_verified_is_absent_when_the_counter_proves_the_job(tmp_path: Path) -> None:
    from .test_dispatcher import npu_config
    from npud.testing.fake import FakeBehaviour

    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour)

    async def body(d: Dispatcher, w: Worker) -> None:
        result = (await call(d, "generate", title()))["result"]
        assert "verified" not in result and result["npu_busy_delta_us"] > 0

    run_with_dispatcher(config, FakeLoader(behaviour), body)


def test_a_failed_load_then_recovery_in_a_real_process(tmp_path: Path) -> None:
    """The npud process (fake engine): the first load fails with a lost device; STATUS says when
    the next attempt is, health answers meanwhile, then the model loads and jobs run."""
    listener = NotifyListener()
    name = unique_socket()
    env = daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, NPUD_FAKE_LOAD_FAILURES="1")
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--load-retry-delay", "0.5"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = listener.wait_for("STATUS=model failed to load (attempt 1), retrying in ")
        assert seen[0] == "READY=1"
        status = next(line for line in seen if line.startswith("STATUS=model failed"))
        assert "ZE_RESULT_ERROR_DEVICE_LOST" in status
        listener.wait_for("STATUS=ready, 0 queued")
        with RawConnection.open(name) as conn:
            health = conn.call("health")["result"]
            assert health["status"] == "ready" and health["load_attempts"] == 2
            assert conn.call("generate", {"job": "title", "input": "x"})["result"]["job"] == "title"
    finally:
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "model load failed with a transient error; attempt 2 of 11 in 0.5s" in log


def test_http_retry_after_follows_the_scheduled_attempt() -> None:
    from npuclient.errors import NotReady
    from npuclient.protocol import NotReadyData
    from npud.http import RETRY_NOT_READY_S, _retry_after

    scheduled = NotReady("model failed to load; the next attempt is in 12.3 s",
                         NotReadyData(status="error", error="x", retry_in_s=12.3)).to_object()
    assert _retry_after(scheduled) == 13
    assert NotReady(data={"status": "error", "retry_in_s": 0.2}).retry_in_s == 0.2  # as a client decodes it
    final = NotReady("model failed to load", NotReadyData(status="error", error="x")).to_object()
    assert _retry_after(final) == RETRY_NOT_READY_S


def test_a_lock_held_through_the_model_load_does_not_break_the_daemon_for_good(
        daemon_factory: Any, tmp_path: Path) -> None:
    """Attack review finding W1. Another NPU user (a chat model compiling at boot: 'the first NPU compile can take minutes')
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
                            lock_file=str(lock), lock_timeout_s=0.3,
                            load_retry_delay_s=0.2)
    wait_until(lambda: daemon.call("health")["result"]["status"] != "loading" or daemon.daemon.worker.wait_loaded(0),
             "the load to give up on the lock", bound_s=5)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)  # the NPU is free again
    wait_until(lambda: daemon.call("health")["result"]["status"] == "ready" or not daemon.thread.is_alive(),
             "npud to recover (ready) or to exit for a restart, once the lock was free", bound_s=15)
    if daemon.thread.is_alive():
        assert daemon.call("generate", reliability_title())["result"]["job"] == "title"
    else:
        assert daemon.daemon.exit_code != 0, "exited with status 0: systemd's Restart=on-failure would not restart it"


def test_shutdown_while_the_load_waits_for_the_npu_lock_is_an_orderly_stop(
        daemon_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM while the model load waits for a lock another NPU user holds: npud stops at once
    and says so, without an ERROR "model load failed" for a load nobody let fail (verify review 2)."""
    lock = tmp_path / "npu.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the other NPU user, for longer than this test
    try:
        behaviour = FakeBehaviour(busy_file=make_npu_sysfs(tmp_path / "sys"))
        daemon = daemon_factory(FakeLoader(behaviour), wait_ready=False, device="NPU",
                                sysfs_root=str(tmp_path / "sys"), lock_file=str(lock), lock_timeout_s=300)
        # The first attempt has begun: from here on its only way on is through the lock wait.
        wait_until(lambda: daemon.daemon.worker.snapshot().load_attempts >= 1, "the load to start")
        assert daemon.call("health")["result"]["status"] == "loading"
        with caplog.at_level("INFO"):
            daemon.stop()
        assert daemon.daemon.exit_code == 0
        assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], caplog.text
        assert "shutting down" in caplog.text and "waiting for the NPU lock" in caplog.text
    finally:
        os.close(fd)
