"""Socket squatting: while npud is not running, another local user can bind ``@npud``. Clients
check who listens (SO_PEERCRED on their side) and send nothing to a server that is not their own
uid, root or a configured server user. The squatter here is a real process running as uid 65534."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from npuclient import AsyncClient, Client, DaemonUnavailable, InvalidServerUid, NotReady, ServerNotTrusted
from npuclient.client import socket_address
from npuclient.trust import ServerTrust, parse_server_uids
from npud.testing.fake import FakeLoader

from .conftest import NOBODY, make_config, start_daemon, unique_socket

# What a squatter answers to the one request it reads, so a test can tell it was believed.
FORGED = b'{"jsonrpc":"2.0","id":1,"error":{"code":-32001,"message":"forged by the squatter"}}\n'


class Squatter:
    """A server on ``name`` in a forked child running as uid/gid 65534.

    It accepts one connection, reads one line (or until the client closes), answers FORGED if it
    got a line, and reports every byte it received through a pipe."""

    def __init__(self, name: str) -> None:
        self.name = name
        ready_r, ready_w = os.pipe()
        out_r, out_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child reports through the pipe
            self._child(ready_w, out_w)
        os.close(ready_w)
        os.close(out_w)
        self._out = out_r
        with os.fdopen(ready_r, "rb") as ready:
            if ready.read(1) != b"R":
                raise RuntimeError(f"squatter did not start: {self.report()!r}")

    def _child(self, ready_w: int, out_w: int) -> None:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(socket_address(self.name))
            server.listen(4)  # SO_PEERCRED records who called listen(): uid 65534
            server.settimeout(60)
            os.write(ready_w, b"R")
            conn, _ = server.accept()
            conn.settimeout(60)
            received = b""
            while b"\n" not in received and (chunk := conn.recv(65536)):
                received += chunk
            if received:
                conn.sendall(FORGED)
                while conn.recv(65536):  # until the client closes
                    pass
            os.write(out_w, b"received:" + received)
        except BaseException as exc:
            os.write(out_w, b"error:" + repr(exc).encode())
        finally:
            os._exit(0)

    def report(self) -> bytes:
        """Wait for the child and return ``received:<bytes>`` (or ``error:...``)."""
        with os.fdopen(self._out, "rb") as out:
            data = out.read()
        os.waitpid(self.pid, 0)
        return data


@contextmanager
def squatter(name: str) -> Iterator[Squatter]:
    if os.getuid() != 0:
        pytest.skip("needs root to run the squatter as another uid")
    squat = Squatter(name)
    try:
        yield squat
    finally:
        # Unblocks a child still waiting in accept() (a test that never connected).
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as poke:
                poke.connect(socket_address(name))
        except OSError:
            pass


def npuctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "npuclient.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def assert_refused(error: ServerNotTrusted) -> None:
    assert isinstance(error, DaemonUnavailable)  # callers that fall back when npud is down keep doing so
    assert error.uid == NOBODY and error.gid == NOBODY and error.pid > 0
    message = str(error)
    assert "uid 65534 (nobody" in message and "Nothing was sent" in message
    assert "OV_GENAI_NPU_SERVER_UID=nobody" in message and "--server-uid nobody" in message


def test_client_sends_nothing_to_a_squatter() -> None:
    name = unique_socket()
    with squatter(name) as squat:
        with Client(name, timeout=30) as client, pytest.raises(ServerNotTrusted) as info:
            client.generate("summary", "my private diary entry")
        assert squat.report() == b"received:"
    assert_refused(info.value)


def test_async_client_sends_nothing_to_a_squatter() -> None:
    name = unique_socket()

    async def main() -> ServerNotTrusted:
        async with AsyncClient(name, timeout=30) as client:
            with pytest.raises(ServerNotTrusted) as info:
                await client.generate("summary", "my private diary entry")
            return info.value

    with squatter(name) as squat:
        error = asyncio.run(main())
        assert squat.report() == b"received:"
    assert_refused(error)


def test_npuctl_sends_nothing_to_a_squatter() -> None:
    name = unique_socket()
    with squatter(name) as squat:
        proc = npuctl("generate", "--job", "title", "--input", "my private text", "--socket", name)
        assert squat.report() == b"received:"
    assert proc.returncode == 3, proc.stderr
    assert "uid 65534" in proc.stderr and "--server-uid nobody" in proc.stderr and proc.stdout == ""
    # --wait does not keep polling a squatter as if npud were still starting: refused at once.
    with squatter(name) as squat:
        proc = npuctl("--wait", "--timeout", "60", "health", "--socket", name)
        assert squat.report() == b"received:"
    assert proc.returncode == 3 and "uid 65534" in proc.stderr


def test_squatter_after_a_daemon_restart_is_refused(tmp_path: Path) -> None:
    """The window the issue describes: npud stopped, someone else took its name, and a client
    that was talking to npud reconnects transparently."""
    config = make_config(tmp_path)
    daemon = start_daemon(config, FakeLoader())
    with Client(config.socket, timeout=30) as client:
        assert client.health().status == "ready"
        daemon.stop()
        with squatter(config.socket) as squat:
            with pytest.raises(ServerNotTrusted):
                client.generate("title", "private")
            assert squat.report() == b"received:"


def test_a_configured_server_user_is_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trusting a system service's user: by name or uid, by argument, environment or option."""
    name = unique_socket()
    with squatter(name) as squat:
        with Client(name, timeout=30, server_uids=["nobody"]) as client, pytest.raises(NotReady, match="forged"):
            client.health()
        assert squat.report().startswith(b'received:{"jsonrpc":"2.0","method":"health"')

    monkeypatch.setenv("OV_GENAI_NPU_SERVER_UID", f" 4242 ,{NOBODY}")

    async def main() -> None:
        async with AsyncClient(name, timeout=30) as client:
            with pytest.raises(NotReady, match="forged"):
                await client.health()

    with squatter(name) as squat:
        asyncio.run(main())
        assert squat.report().startswith(b"received:")
    monkeypatch.delenv("OV_GENAI_NPU_SERVER_UID")

    with squatter(name) as squat:
        proc = npuctl("health", "--socket", name, "--server-uid", "nobody")  # option after the command
        assert squat.report().startswith(b"received:")
    assert proc.returncode == 5 and "forged by the squatter" in proc.stderr


def test_an_explicit_argument_replaces_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OV_GENAI_NPU_SERVER_UID", "nobody")
    assert Client("@x").trust.extra_uids == frozenset({NOBODY})
    assert Client("@x", server_uids=[]).trust.extra_uids == frozenset()
    assert AsyncClient("@x", server_uids="0").trust.extra_uids == frozenset({0})


def test_unknown_server_user_is_an_error_up_front(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidServerUid, match="'no-such-user-npud' is neither a uid nor a known user"):
        Client("@x", server_uids="no-such-user-npud")
    with pytest.raises(InvalidServerUid, match="negative"):
        AsyncClient("@x", server_uids=[-1])
    monkeypatch.setenv("OV_GENAI_NPU_SERVER_UID", "no-such-user-npud")
    with pytest.raises(InvalidServerUid):
        Client("@x")
    env = {**os.environ, "OV_GENAI_NPU_SERVER_UID": "no-such-user-npud"}
    proc = npuctl("health", "--socket", unique_socket(), env=env)
    assert proc.returncode == 2 and "no-such-user-npud" in proc.stderr
    proc = npuctl("--server-uid", "1000,no-such-user-npud", "health", "--socket", unique_socket())
    assert proc.returncode == 2 and "no-such-user-npud" in proc.stderr


@pytest.mark.parametrize(
    ("value", "uids"),
    [
        ("", frozenset()),
        ("nobody", frozenset({NOBODY})),
        (" 1001, nobody ,", frozenset({1001, NOBODY})),
        (["root", 7], frozenset({0, 7})),
        (NOBODY, frozenset({NOBODY})),
    ],
)
def test_parse_server_uids(value: Any, uids: frozenset[int]) -> None:
    assert parse_server_uids(value) == uids


def test_trust_policy() -> None:
    trust = ServerTrust(own_uid=1000, extra_uids=frozenset({998}))
    assert [trust.trusts(uid) for uid in (1000, 0, 998, 1001, NOBODY, -1)] == [True, True, True, False, False, False]
