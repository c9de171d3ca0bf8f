"""npuclient against a real daemon: typed results, every error class from a real error,
reconnects, timeouts, deadlines, cancellation, thread safety, the asyncio client, and mypy --strict."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import npuclient
from npuclient import (
    AsyncClient,
    CallTimeout,
    Client,
    DaemonUnavailable,
    DeadlineExceeded,
    DeviceBusy,
    GenerationFailed,
    InternalError,
    InvalidParams,
    MethodNotFound,
    NotReady,
    NotVerified,
    PeerNotAllowed,
    ProtocolViolation,
    QueueFull,
    ShuttingDown,
)
from npuclient.protocol import HealthResult, JobResult, ModelsResult
from npud.config import Config
from npud.engine import DecodeSettings, Engine, Generation
from npud.testing.fake import FakeBehaviour, FakeEngine, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import REPO, as_nobody, make_config, start_daemon, unique_socket


def test_operations_return_typed_results(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    with Client(daemon.socket) as client:
        assert isinstance(client.health(), HealthResult)
        assert isinstance(client.models(), ModelsResult)
        result = client.generate("title", "hello there", max_new_tokens=8)
        assert isinstance(result, JobResult) and result.text == "Fake Title About The Input"
        assert client.extract_memory_candidates("x").candidates == ["The user likes fakes.", "The user tests things."]
        assert client.condense_notification("x").job == "notification"


def test_socket_from_environment(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = daemon_factory()
    monkeypatch.setenv("OV_GENAI_NPU_SOCKET", daemon.socket)
    with Client() as client:
        assert client.socket_name == daemon.socket and client.health().status == "ready"


def test_error_classes_from_real_errors(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), max_prompt_tokens=150)
    with Client(daemon.socket) as client:
        with pytest.raises(InvalidParams) as limit:
            client.generate("title", "x" * 6001)
        assert (limit.value.limit, limit.value.actual, limit.value.code) == (6000, 6001, -32602)
        with pytest.raises(InvalidParams) as tokens:
            client.generate("summary", "word " * 200)
        assert tokens.value.limit == 150 and (tokens.value.actual or 0) > 150
        with pytest.raises(MethodNotFound):
            client.call("summon", None, HealthResult)
        behaviour.fail_with = RuntimeError("boom")
        with pytest.raises(GenerationFailed, match="RuntimeError: boom"):
            client.generate("title", "x")
        behaviour.fail_with = None
        monkeypatch.setattr(daemon.daemon.worker, "snapshot", lambda: 1 / 0)
        with pytest.raises(InternalError):
            client.health()
        monkeypatch.undo()
        assert client.health().status == "ready"  # every error left the connection usable


def test_npu_error_classes(daemon_factory: Any, tmp_path: Path) -> None:
    import fcntl

    busy = make_npu_sysfs(tmp_path / "sys")
    behaviour = FakeBehaviour(busy_file=busy, busy_step_us=0)
    daemon = daemon_factory(FakeLoader(behaviour), device="NPU", sysfs_root=str(tmp_path / "sys"),
                            lock_timeout_s=0.1)
    with Client(daemon.socket) as client:
        with pytest.raises(NotVerified) as info:
            client.generate("title", "x")
        assert info.value.npu_busy_delta_us == 0
        fd = os.open(daemon.config.lock_file, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(DeviceBusy):
                client.generate("title", "x")
        finally:
            os.close(fd)


def test_queue_full_not_ready_and_shutting_down(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), queue_depth=1)
    holders = [Client(daemon.socket), Client(daemon.socket)]
    outcomes: list[Any] = []
    threads = [threading.Thread(target=lambda c=c: outcomes.append(_try(c.generate, "title", "x"))) for c in holders]
    try:
        threads[0].start()
        assert behaviour.started.wait(10)
        threads[1].start()
        with Client(daemon.socket) as client:
            while client.health().queue.depth < 1:
                pass
            with pytest.raises(QueueFull) as full:
                client.generate("title", "x")
            assert (full.value.retry_after_ms or 0) >= 100
            daemon.daemon.worker.stop()
            with pytest.raises(ShuttingDown):
                client.generate("title", "x")
    finally:
        gate.set()
        for thread in threads:
            thread.join(10)
        for holder in holders:
            holder.close()
    kinds = sorted(type(o).__name__ for o in outcomes)
    assert kinds == ["JobResult", "ShuttingDown"]

    failed = daemon_factory(FakeLoader(load_error="weights missing"))
    with Client(failed.socket) as client, pytest.raises(NotReady) as info:
        client.generate("title", "x")
    assert info.value.data_field("status") == "error" and info.value.data_field("error") == "weights missing"


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except npuclient.NpuClientError as exc:
        return exc


def test_peer_not_allowed(daemon_factory: Any) -> None:
    daemon = daemon_factory()

    def health_as_nobody() -> bytes:
        try:
            Client(daemon.socket, timeout=10).health()
            return b"allowed"
        except PeerNotAllowed as exc:
            return f"PeerNotAllowed {exc.data_field('uid')}".encode()

    assert as_nobody(health_as_nobody) == b"PeerNotAllowed 65534"


def test_daemon_not_running_has_a_hint() -> None:
    with pytest.raises(DaemonUnavailable, match=r"systemctl --user start npud\.socket"):
        Client(unique_socket()).health()


def test_reconnects_once_after_a_daemon_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    first = start_daemon(config, FakeLoader())
    client = Client(config.socket)
    try:
        assert client.health().jobs_served == 0
        client.generate("title", "x")
        first.stop()
        second = start_daemon(config, FakeLoader())
        try:
            # The old connection is dead; the client notices and reconnects without an error.
            assert client.health().jobs_served == 0
        finally:
            second.stop()
        with pytest.raises(DaemonUnavailable):
            client.health()
    finally:
        client.close()


def test_timeout_then_connection_is_fresh(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    with Client(daemon.socket) as client:
        with pytest.raises(CallTimeout):
            client.generate("title", "x", timeout=0.2)
        gate.set()
        assert client.health(timeout=5).status == "ready"  # no stale reply is mixed in


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_an_unusable_timeout_is_a_value_error_at_once(daemon_factory: Any, bad: float) -> None:
    """timeout=0 made the socket non-blocking: health worked, a job failed as 'connection to npud
    lost: Resource temporarily unavailable'. -1, nan and inf raised from inside the socket module.
    Both clients refuse such a timeout where it is given, before anything is sent."""
    daemon = daemon_factory()
    with pytest.raises(ValueError, match="timeout must be None or a number of seconds above 0"):
        Client(daemon.socket, timeout=bad)
    with Client(daemon.socket) as client:
        with pytest.raises(ValueError, match="timeout must be"):
            client.generate("title", "hello", timeout=bad)
        assert client.generate("title", "hello").job == "title"  # the client is still usable

    async def asynchronous() -> None:
        with pytest.raises(ValueError, match="timeout must be"):
            AsyncClient(daemon.socket, timeout=bad)
        async with AsyncClient(daemon.socket) as client:
            with pytest.raises(ValueError, match="timeout must be"):
                await client.health(timeout=bad)

    asyncio.run(asynchronous())
    assert daemon.daemon.worker.snapshot().jobs_served == 1


def test_one_client_shared_by_threads(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    errors: list[BaseException] = []
    with Client(daemon.socket) as client:
        def work(i: int) -> None:
            try:
                for _ in range(20):
                    if i % 2:
                        assert client.health().status == "ready"
                    else:
                        assert client.generate("title", f"text {i}").job == "title"
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []


def test_protocol_violation_from_a_bad_server() -> None:
    name = unique_socket()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(b"\0" + name[1:].encode())
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"this is not json\n")
            conn.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with Client(name, timeout=5) as client, pytest.raises(ProtocolViolation):
            client.health()
    finally:
        thread.join(5)
        server.close()


def test_async_client(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_prompt_tokens=150)

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:
            assert (await client.health()).status == "ready"
            assert (await client.models()).models[0].id == "fake-model"
            results = await asyncio.gather(*(client.generate("title", f"t{i}") for i in range(10)))
            assert {r.job for r in results} == {"title"}
            assert (await client.extract_memory_candidates("x")).candidates
            assert (await client.condense_notification("x")).job == "notification"
            with pytest.raises(InvalidParams) as info:
                await client.generate("summary", "word " * 200)
            assert info.value.limit == 150
        with pytest.raises(DaemonUnavailable):
            await AsyncClient(unique_socket()).health()

    asyncio.run(main())


def test_mypy_strict_on_npuclient() -> None:
    mypy = shutil.which("mypy", path=os.path.dirname(sys.executable))
    if mypy is None:
        pytest.fail("mypy is a test dependency: pip install -e '.[test]'")
    proc = subprocess.run([mypy, "--strict", "--no-incremental", "npuclient"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_async_client_reconnects_after_a_daemon_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path)

    async def main() -> None:
        first = start_daemon(config, FakeLoader())
        client = AsyncClient(config.socket)
        try:
            await client.generate("title", "x")
            await asyncio.to_thread(first.stop)
            second = start_daemon(config, FakeLoader())
            try:
                assert (await client.health()).jobs_served == 0
            finally:
                await asyncio.to_thread(second.stop)
        finally:
            await client.close()

    asyncio.run(main())


# ------------------------------------------------------------------ a caller gives up: the job goes

# Far beyond any test: a job that stops was stopped by the client going away, not by its deadline.
FAR_DEADLINE_MS = 600_000


class StopWatchingEngine(FakeEngine):
    """The fake engine, recording the moment the worker tells the generation to stop."""

    def __init__(self, behaviour: FakeBehaviour, stopped: threading.Event) -> None:
        super().__init__(behaviour)
        self.stopped = stopped

    def generate(self, prompt: str, settings: DecodeSettings, should_stop: Callable[[], bool]) -> Generation:
        def watched() -> bool:
            if should_stop():
                self.stopped.set()
                return True
            return False

        return super().generate(prompt, settings, watched)


@dataclass
class StopWatchingLoader(FakeLoader):
    stopped: threading.Event = field(default_factory=threading.Event)

    def load(self, config: Config) -> Engine:
        super().load(config)
        return StopWatchingEngine(self.behaviour, self.stopped)


def gated_daemon(daemon_factory: Any) -> tuple[Any, FakeBehaviour, StopWatchingLoader]:
    """A daemon whose jobs block until ``behaviour.gate`` is set (or the worker stops them)."""
    behaviour = FakeBehaviour(gate=threading.Event())
    loader = StopWatchingLoader(behaviour)
    return daemon_factory(loader), behaviour, loader


def release(behaviour: FakeBehaviour) -> None:
    if behaviour.gate is not None:
        behaviour.gate.set()


def withdrawn(behaviour: FakeBehaviour, loader: StopWatchingLoader) -> bool:
    """The daemon gave the job up: stopped while running, or removed before it ever started."""
    return loader.stopped.wait(20) or not behaviour.started.is_set()


def test_async_cancel_withdraws_the_running_job(daemon_factory: Any) -> None:
    daemon, behaviour, loader = gated_daemon(daemon_factory)

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:
            task = asyncio.create_task(client.generate("title", "private", timeout_ms=FAR_DEADLINE_MS))
            assert await asyncio.to_thread(behaviour.started.wait, 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(loader.stopped.wait, 20), "the daemon still runs the cancelled job"
            release(behaviour)
            # The next call on the same client gets its own reply, not the cancelled one's.
            assert (await client.condense_notification("x")).job == "notification"

    asyncio.run(main())


def test_async_wait_for_timeout_withdraws_the_job(daemon_factory: Any) -> None:
    daemon, behaviour, loader = gated_daemon(daemon_factory)

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.generate("title", "private", timeout_ms=FAR_DEADLINE_MS), 1.0)
            assert await asyncio.to_thread(withdrawn, behaviour, loader), "the daemon still runs the job"
            release(behaviour)
            assert (await client.health()).queue.depth == 0

    asyncio.run(main())


def test_call_timeout_withdraws_the_job(daemon_factory: Any) -> None:
    daemon, behaviour, loader = gated_daemon(daemon_factory)
    with Client(daemon.socket) as client:
        with pytest.raises(CallTimeout):
            client.generate("title", "private", timeout=1.0, timeout_ms=FAR_DEADLINE_MS)
        assert withdrawn(behaviour, loader), "the daemon still runs the job"

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:
            with pytest.raises(CallTimeout):
                await client.generate("title", "private", timeout=1.0, timeout_ms=FAR_DEADLINE_MS)

    loader.stopped.clear()
    behaviour.started.clear()
    asyncio.run(main())
    assert withdrawn(behaviour, loader), "the daemon still runs the job"


class Interrupted(Exception):
    pass


def test_interrupted_sync_call_withdraws_the_job(daemon_factory: Any) -> None:
    """A signal handler raising in the middle of a call (Ctrl-C in a script) must not leave the
    job running on the daemon, nor its late reply in front of the next call."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    daemon, behaviour, loader = gated_daemon(daemon_factory)

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted()

    def interrupt_when_started() -> None:
        if behaviour.started.wait(30):
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    killer = threading.Thread(target=interrupt_when_started)
    try:
        with Client(daemon.socket) as client:
            killer.start()
            with pytest.raises(Interrupted):
                client.generate("title", "private", timeout_ms=FAR_DEADLINE_MS)
            assert loader.stopped.wait(20), "the daemon still runs the interrupted job"
            release(behaviour)
            assert client.condense_notification("x").job == "notification"
    finally:
        killer.join(30)
        signal.signal(signal.SIGUSR1, previous)


# ------------------------------------------------------------------ timeout_ms reaches the daemon


def test_timeout_ms_is_sent_by_both_clients(daemon_factory: Any) -> None:
    daemon, behaviour, _ = gated_daemon(daemon_factory)  # the gate stays closed: only the deadline ends a job
    with Client(daemon.socket) as client:
        calls: list[Callable[[], JobResult]] = [
            lambda: client.generate("summary", "x", timeout_ms=150),
            lambda: client.extract_memory_candidates("x", timeout_ms=150),
            lambda: client.condense_notification("x", timeout_ms=150),
        ]
        for call in calls:
            with pytest.raises(DeadlineExceeded) as info:
                call()
            assert info.value.data_field("timeout_ms") == 150
        with pytest.raises(InvalidParams):
            client.generate("title", "x", timeout_ms=0)

    async def main() -> None:
        async with AsyncClient(daemon.socket) as client:
            for call in (client.generate("title", "x", timeout_ms=120),
                         client.extract_memory_candidates("x", timeout_ms=120),
                         client.condense_notification("x", timeout_ms=120)):
                with pytest.raises(DeadlineExceeded) as info:
                    await call
                assert info.value.data_field("timeout_ms") == 120

    asyncio.run(main())
    release(behaviour)
