"""Shared fixtures: configs, a daemon running in a thread, raw socket helpers, the tiny model."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from npud.config import Config
from npud.engine import EngineLoader
from npud.daemon import Daemon, open_listeners, prepare_busy_counter
from npud.server import socket_address
from npud.testing.fake import FakeBehaviour, FakeLoader

REPO = Path(__file__).resolve().parent.parent


def unique_socket() -> str:
    return f"@npud-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def make_config(tmp_path: Path, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "socket": unique_socket(),
        "model": "fake-model",
        "device": "CPU",
        "cache_dir": str(tmp_path / "cache"),
        "lock_file": str(tmp_path / "npu.lock"),
        "log_level": "DEBUG",
        "http": False,  # tests that want the shim ask for it, on a free port
        "port": 0,
    }
    values.update(overrides)
    return Config(**values)


@dataclass
class RunningDaemon:
    config: Config
    daemon: Daemon
    thread: threading.Thread

    @property
    def socket(self) -> str:
        return self.config.socket

    @property
    def http_port(self) -> int:
        port = self.daemon.listeners.http_port
        if port is None:
            raise RuntimeError("this daemon has no HTTP shim")
        return port

    def connect(self) -> RawConnection:
        return RawConnection.open(self.config.socket)

    def call(self, method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
        with self.connect() as conn:
            return conn.call(method, params, request_id)

    def stop(self) -> None:
        self.daemon.request_stop()
        self.thread.join(30)
        if self.thread.is_alive():
            raise RuntimeError("daemon did not stop within 30 s")


def start_daemon(config: Config, loader: EngineLoader, wait_ready: bool = True) -> RunningDaemon:
    """Run a Daemon on its own event loop in a thread, as `npud` would run it in its process."""
    busy = prepare_busy_counter(config)
    daemon = Daemon(config, loader, open_listeners(config), busy)
    listening = threading.Event()
    thread = threading.Thread(
        target=lambda: asyncio.run(daemon.serve(on_ready=listening.set)), name="test-daemon", daemon=True
    )
    thread.start()
    if not listening.wait(30):
        raise RuntimeError("daemon did not start")
    running = RunningDaemon(config, daemon, thread)
    if wait_ready and not daemon.worker.wait_loaded(120):
        raise RuntimeError("model did not finish loading")
    return running


class RawConnection:
    """A plain socket speaking newline-delimited JSON, for tests that need exact bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    def open(cls, name: str, timeout: float = 30) -> RawConnection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Blocking connect: a Unix socket with a full backlog makes a non-blocking one fail (EAGAIN).
        sock.connect(socket_address(name))
        sock.settimeout(timeout)
        return cls(sock)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, obj: Any) -> None:
        self.send(msgspec.json.encode(obj) + b"\n")

    def read_line(self) -> bytes:
        """The next line, or b"" if the server closed the connection."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                rest, self._buffer = self._buffer, b""
                return rest
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def read_json(self) -> Any:
        line = self.read_line()
        if not line:
            raise ConnectionError("server closed the connection")
        return msgspec.json.decode(line)

    def call(self, method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        self.send_json(request)
        return self.read_json()

    def at_eof(self) -> bool:
        return self.read_line() == b""


@pytest.fixture
def fake_behaviour() -> FakeBehaviour:
    return FakeBehaviour()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Start daemons with a fake engine (or any loader); all are stopped at teardown."""
    started: list[RunningDaemon] = []

    def factory(loader: EngineLoader | None = None, wait_ready: bool = True, **overrides: Any) -> RunningDaemon:
        config = make_config(tmp_path, **overrides)
        running = start_daemon(config, loader or FakeLoader(), wait_ready=wait_ready)
        started.append(running)
        return running

    yield factory
    for running in started:
        if running.thread.is_alive():
            running.stop()


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from npud.testing.tiny_model import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("tiny") / "tiny-qwen2.gguf")


@pytest.fixture(scope="session")
def tiny_ir(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as an OpenVINO IR folder, converted once per session the way npud converts
    any .gguf (in a child process); for tests that are not about the conversion itself."""
    from npud.engine import convert_gguf_to_ir

    return convert_gguf_to_ir(tiny_gguf, tmp_path_factory.mktemp("tiny-ir") / "tiny-qwen2")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root per test session, so SmolLM2 is converted to IR once."""
    return tmp_path_factory.mktemp("npud-cache")


def npud_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "npud", *args]


def wait_until_ready(proc: subprocess.Popen[str]) -> None:
    """Read a child npud's log until the model is ready (the daemon says so; no polling)."""
    if proc.stderr is None:
        raise RuntimeError("start the daemon with stderr=subprocess.PIPE")
    for line in proc.stderr:
        if "ready on CPU" in line:
            return
    raise RuntimeError(f"npud exited with status {proc.wait()} before it was ready")


NOBODY = 65534


def open_fds() -> int:
    """Descriptors open in this process (the in-thread daemon's included)."""
    return len(os.listdir("/proc/self/fd"))


def _drop_to_nobody() -> None:
    """Become uid/gid 65534 with no supplementary groups. setgroups first: setuid/setgid leave
    the supplementary groups alone, and root's group 0 would follow the child and could match a
    peer-credential rule (--allow-gid 0) that nobody is meant to pass."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def as_nobody(action: Callable[[], bytes]) -> bytes:
    """Run ``action`` in a forked child that dropped to uid/gid 65534 and return its bytes (or the
    repr of its exception). The peer-credential tests need a real other user; CI runs as root."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            _drop_to_nobody()
            os.write(write_end, action())
        except BaseException as exc:
            os.write(write_end, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        data = reader.read()
    os.waitpid(pid, 0)
    return data


@contextlib.contextmanager
def as_nobody_holding(action: Callable[[], bytes]) -> Iterator[bytes]:
    """Like :func:`as_nobody`, but the child keeps running (and keeps whatever ``action`` left
    open, such as sockets) until the ``with`` block ends; yields the bytes ``action`` returned."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid")
    report_read, report_write = os.pipe()
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(report_read)
            os.close(release_write)
            _drop_to_nobody()
            os.write(report_write, action())
        except BaseException as exc:
            os.write(report_write, repr(exc).encode())
        finally:
            os.close(report_write)
            os.read(release_read, 1)  # returns at the parent's release (or its death)
            os._exit(0)
    os.close(report_write)
    os.close(release_read)
    try:
        with os.fdopen(report_read, "rb") as reader:
            yield reader.read()
    finally:
        os.close(release_write)
        os.waitpid(pid, 0)
