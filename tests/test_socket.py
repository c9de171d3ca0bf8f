"""The daemon on a real abstract socket (fake engine): every contract error through the wire,
transport-level faults, peer checks, disconnects, privacy. After each fault, health still answers."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import socket
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from npuclient import Client, QueueFull
from npud import server
from npud.engine import StartupError
from npud.server import bind_unix_socket
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import NOBODY, RawConnection, RunningDaemon, as_nobody, as_nobody_holding, open_fds
from .test_systemd import FAKE_DAEMON, daemon_env


def assert_serving(daemon: RunningDaemon) -> None:
    assert daemon.call("health", request_id="after")["result"]["status"] in {"ready", "loading", "error"}


def title(text: str = "A meeting moved to Friday.", **extra: Any) -> dict[str, Any]:
    return {"job": "title", "input": text, **extra}


# ---------------------------------------------------------------- the standard codes


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{oops\n", -32700),
        (b"\xff\xfe\xfd\n", -32700),
        (b'"\\udc00"\n', -32700),
        (b"[" * 5000 + b"]" * 5000 + b"\n", -32700),
        (b"[]\n", -32600),
        (b'{"jsonrpc":"2.0","id":1}\n', -32600),
        (b'{"jsonrpc":"2.0","id":1,"method":"summon"}\n', -32601),
        (b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"poem","input":"x"}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title"}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"x","n":2}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"health","params":{"verbose":true}}\n', -32602),
        (b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"\\u0000 x",'
         b'"max_new_tokens":1e400}}\n', -32700),
    ],
)
def test_standard_errors_over_the_socket(daemon_factory: Any, line: bytes, code: int) -> None:
    daemon = daemon_factory()
    with daemon.connect() as conn:
        conn.send(line)
        reply = conn.read_json()
        assert reply["jsonrpc"] == "2.0" and reply["error"]["code"] == code and "result" not in reply
        # The same connection keeps working after a bad line.
        assert conn.call("health", request_id=2)["result"]["status"] == "ready"
    assert_serving(daemon)


def test_limits_over_the_socket(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_prompt_tokens=60)
    with daemon.connect() as conn:
        error = conn.call("generate", title("x" * 6001))["error"]
        assert error["code"] == -32602 and error["data"]["limit"] == 6000 and error["data"]["actual"] == 6001
        error = conn.call("generate", title("word " * 100))["error"]
        assert error["code"] == -32602 and error["data"]["unit"] == "tokens" and error["data"]["limit"] == 60
        error = conn.call("generate", title("ok", max_new_tokens=0))["error"]
        assert error["code"] == -32602 and error["data"]["field"] == "max_new_tokens"
        error = conn.call("generate", {"job": "summary", "input": "ok", "max_new_tokens": 257})["error"]
        assert error["data"] == {"limit": 256, "actual": 257, "unit": "tokens", "field": "max_new_tokens"}
        error = conn.call("generate", title("ok", max_new_tokens=10**30))["error"]
        assert error["code"] == -32602
    assert_serving(daemon)


def test_internal_error_over_the_socket(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = daemon_factory()

    def broken() -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(daemon.daemon.worker, "snapshot", broken)
    assert daemon.call("health")["error"] == {"code": -32603, "message": "internal error: ZeroDivisionError"}
    monkeypatch.undo()
    assert_serving(daemon)


# ---------------------------------------------------------------- npud's own codes


def test_queue_full_over_the_socket(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), queue_depth=1)
    first, second = daemon.connect(), daemon.connect()
    try:
        first.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": title()})
        assert behaviour.started.wait(10)
        second.send_json({"jsonrpc": "2.0", "id": 2, "method": "generate", "params": title()})
        # The second job is queued once health shows it (health is never queued behind jobs).
        with daemon.connect() as probe:
            while probe.call("health")["result"]["queue"]["depth"] < 1:
                pass
            error = probe.call("generate", title(), request_id=3)["error"]
        assert error["code"] == -32000 and error["data"]["retry_after_ms"] >= 100
        with Client(daemon.socket) as client, pytest.raises(QueueFull) as info:
            client.generate("title", "x")
        assert info.value.retry_after_ms is not None and info.value.retry_after_ms >= 100
        gate.set()
        assert first.read_json()["id"] == 1 and second.read_json()["id"] == 2
    finally:
        gate.set()
        first.sock.close()
        second.sock.close()
    assert_serving(daemon)


def test_job_sent_while_loading_is_answered_when_ready(daemon_factory: Any) -> None:
    gate = threading.Event()
    daemon = daemon_factory(FakeLoader(load_gate=gate), wait_ready=False)
    try:
        with Client(daemon.socket) as client, daemon.connect() as conn:
            assert client.health().status == "loading"
            conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": title()})
            while client.health().queue.depth < 1:
                pass
            gate.set()
            assert conn.read_json()["result"]["job"] == "title"
    finally:
        gate.set()
    assert daemon.call("health")["result"]["status"] == "ready"


def test_load_error_over_the_socket(daemon_factory: Any) -> None:
    daemon = daemon_factory(FakeLoader(load_error="ModelLoadError: not a model"))
    error = daemon.call("generate", title())["error"]
    assert error["code"] == -32001 and error["data"]["error"] == "ModelLoadError: not a model"
    assert daemon.call("health")["result"]["error"] == "ModelLoadError: not a model"


def test_npu_errors_over_the_socket(daemon_factory: Any, tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path / "sys")
    behaviour = FakeBehaviour(busy_file=busy, busy_step_us=0)
    daemon = daemon_factory(FakeLoader(behaviour), device="NPU", sysfs_root=str(tmp_path / "sys"),
                            lock_timeout_s=0.2)
    error = daemon.call("generate", title())["error"]
    assert error["code"] == -32002 and error["data"]["reason"] == "no_growth"
    behaviour.busy_step_us = 900
    assert daemon.call("generate", title())["result"]["npu_busy_delta_us"] == 900
    fd = os.open(daemon.config.lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert daemon.call("generate", title())["error"]["code"] == -32005
    finally:
        os.close(fd)
    assert_serving(daemon)


def test_generation_failed_over_the_socket(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour(fail_with=RuntimeError("device lost"))
    daemon = daemon_factory(FakeLoader(behaviour))
    error = daemon.call("condense_notification", {"input": "hi"})["error"]
    assert error == {"code": -32003, "message": "generation failed: RuntimeError: device lost"}
    behaviour.fail_with = None
    assert daemon.call("condense_notification", {"input": "hi"})["result"]["job"] == "notification"


def test_shutting_down_over_the_socket(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    running, queued = daemon.connect(), daemon.connect()
    try:
        running.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": title()})
        assert behaviour.started.wait(10)
        queued.send_json({"jsonrpc": "2.0", "id": 2, "method": "generate", "params": title()})
        with daemon.connect() as probe:
            while probe.call("health")["result"]["queue"]["depth"] < 1:
                pass
        stopper = threading.Thread(target=daemon.stop)
        stopper.start()
        error = queued.read_json()["error"]
        assert error["code"] == -32006
        gate.set()  # the running job completes and is delivered before exit
        assert running.read_json()["result"]["job"] == "title"
        stopper.join(30)
        assert not daemon.thread.is_alive()
    finally:
        gate.set()
        running.sock.close()
        queued.sock.close()


# ---------------------------------------------------------------- transport


def test_oversize_line_closes_only_that_connection(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_line_bytes=1024)
    with daemon.connect() as bystander, daemon.connect() as conn:
        conn.send(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n' + b"x" * 2000)
        assert conn.read_json()["result"]["status"] == "ready"  # the line before it is answered
        error = conn.read_json()["error"]
        assert error["code"] == -32600 and error["data"]["limit"] == 1024 and error["data"]["unit"] == "bytes"
        assert conn.at_eof()
        assert bystander.call("health")["result"]["status"] == "ready"


def test_oversize_line_ends_in_a_clean_end_of_file_not_a_reset(daemon_factory: Any) -> None:
    """Like socat, the client writes all it has (an oversize line and more after it) and reads
    meanwhile: it gets the replies, the error line and then a clean end of file, no ECONNRESET."""
    daemon = daemon_factory(max_line_bytes=1024)
    payload = b'{"jsonrpc":"2.0","id":1,"method":"health"}\n' + b"x" * 2000 + b"\n" + b"y" * 300_000
    send_errors: list[BaseException] = []

    def send_all_then_shut_down(conn: RawConnection) -> None:
        try:
            conn.sock.sendall(payload)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            send_errors.append(exc)

    with daemon.connect() as conn:
        sender = threading.Thread(target=send_all_then_shut_down, args=(conn,))
        sender.start()
        assert conn.read_json()["result"]["status"] == "ready"
        error = conn.read_json()["error"]
        assert error["code"] == -32600 and error["data"]["unit"] == "bytes"
        assert conn.at_eof()  # raised ConnectionResetError before the daemon drained
        sender.join(30)
    assert send_errors == []  # what the client still sent was read (and discarded), not refused
    assert_serving(daemon)


def test_line_framing_details(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    with daemon.connect() as conn:
        conn.send(b'\n\r\n{"jsonrpc":"2.0","id":1,"method":"health"}\r\n')  # blank lines, CRLF
        assert conn.read_json()["id"] == 1
        conn.send(b'{"jsonrpc":"2.0","id":2,')  # a line split across writes
        conn.send(b'"method":"health"}\n{"jsonrpc":"2.0","id":3,"method":"models"}\n')
        ids = {conn.read_json()["id"], conn.read_json()["id"]}
        assert ids == {2, 3}


def test_health_is_not_queued_behind_a_generation(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    with daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "id": "job", "method": "generate", "params": title()})
        assert behaviour.started.wait(10)
        # Pipelined on the same connection: health answers while the job still runs.
        reply = conn.call("health", request_id="h")
        assert reply["id"] == "h" and reply["result"]["queue"]["running"] is True
        gate.set()
        assert conn.read_json()["id"] == "job"


def test_half_closed_client_still_gets_its_reply(daemon_factory: Any) -> None:
    """`printf ... | socat - ABSTRACT-CONNECT:npud` shuts down its sending side after the request."""
    daemon = daemon_factory()
    with daemon.connect() as conn:
        conn.send(b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"hi"}}\n')
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.read_json()["result"]["text"] == "Fake Title About The Input"
        assert conn.at_eof()


def test_half_close_after_a_last_line_without_newline_answers_it_and_keeps_pending_replies(
        daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """CONTRACT §2: a client that half-closes still gets its pending replies. A client whose
    input ends without a final newline (printf without \\n, a file saved without one) and then
    half-closes, as socat does: the fragment was never answered, and the slow-line timer fired
    after --line-timeout, aborted the connection, cancelled the running job and logged a 'slow
    line'. The job's reply was lost. End of input now ends the last line."""
    ticks = threading.Semaphore(0)
    on_timer = server.RpcConnection._on_timer

    def counted(self: server.RpcConnection) -> None:
        on_timer(self)
        ticks.release()

    monkeypatch.setattr(server.RpcConnection, "_on_timer", counted)
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), line_timeout_s=0.3)
    try:
        with daemon.connect() as conn:
            conn.send(b'{"jsonrpc":"2.0","id":1,"method":"generate","params":{"job":"title","input":"hi"}}\n'
                      b'{"jsonrpc":"2.0","id":2,"method":"health"}')
            assert behaviour.started.wait(10)
            conn.sock.shutdown(socket.SHUT_WR)
            health = conn.read_json()  # the unterminated last line, answered
            assert health["id"] == 2 and health["result"]["queue"]["running"] is True
            while ticks.acquire(blocking=False):
                pass
            for _ in range(2):  # the connection's timer ran past --line-timeout after the half-close
                assert ticks.acquire(timeout=10)
            behaviour.gate.set()  # type: ignore[union-attr]
            assert conn.read_json()["result"]["job"] == "title"
            assert conn.at_eof()
    finally:
        behaviour.gate.set()  # type: ignore[union-attr]
    assert daemon.daemon.metrics.stats().rejections == {}  # no 'slow line'


def test_an_oversize_last_line_at_end_of_input_is_refused(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_line_bytes=64)
    with daemon.connect() as conn:
        conn.send(b"x" * 65)
        conn.sock.shutdown(socket.SHUT_WR)
        assert conn.read_json()["error"]["data"]["field"] == "line"
        assert conn.at_eof()


def test_replies_buffered_at_shutdown_are_still_delivered(daemon_factory: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that reads slowly has more replies pending than the kernel buffer holds when the
    daemon closes its connections at shutdown: they are written before the close, not dropped
    with the event loop."""
    daemon = daemon_factory(write_buffer_bytes=64 * 1024 * 1024)
    closing = threading.Event()
    close_connections = daemon.daemon._close_socket_connections

    async def close_when_observed() -> None:
        closing.set()  # the client starts reading only now: its replies are still buffered
        await close_connections()

    monkeypatch.setattr(daemon.daemon, "_close_socket_connections", close_when_observed)
    count = 2000
    with daemon.connect() as conn:
        assert conn.call("health")["result"]["status"] == "ready"  # accepted and served
        conn.send(b'{"jsonrpc":"2.0","id":1,"method":"models"}\n' * count)
        stopper = threading.Thread(target=daemon.stop)
        stopper.start()
        assert closing.wait(30)
        replies = 0
        while conn.read_line():
            replies += 1
        stopper.join(30)
    assert replies == count


def test_client_that_disconnects_while_queued_loses_its_job(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    holder = daemon.connect()
    holder.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": title("first")})
    assert behaviour.started.wait(10)
    leaver = daemon.connect()
    leaver.send_json({"jsonrpc": "2.0", "id": 2, "method": "generate", "params": title("leaver")})
    with daemon.connect() as probe:
        while probe.call("health")["result"]["queue"]["depth"] < 1:
            pass
        leaver.sock.close()
        while probe.call("health")["result"]["queue"]["depth"] > 0:
            pass  # withdrawn as soon as the daemon sees the hang-up
    gate.set()
    assert holder.read_json()["id"] == 1
    holder.sock.close()
    assert daemon.call("generate", title("after"))["result"]["job"] == "title"
    assert not any("leaver" in prompt for prompt in behaviour.calls)


def test_client_that_disconnects_while_running_stops_the_generation(daemon_factory: Any) -> None:
    gate = threading.Event()  # never set: only cancellation can end this generation
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    conn = daemon.connect()
    conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": title()})
    assert behaviour.started.wait(10)
    conn.sock.close()
    behaviour.gate = None
    # The worker is free again: a new job completes although the gate was never opened.
    assert daemon.call("generate", title())["result"]["job"] == "title"


# ---------------------------------------------------------------- peers


def test_other_uid_is_rejected_then_allowed(daemon_factory: Any) -> None:
    def health_request(name: str) -> Any:
        def action() -> bytes:
            with RawConnection.open(name) as conn:
                try:
                    conn.send(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n')
                except BrokenPipeError:
                    pass  # a rejected peer may find the socket already closed: the reply is waiting
                line = conn.read_line()
                conn.sock.shutdown(socket.SHUT_WR)  # done: the daemon closes its side too
                return line + b"\n" + (b"EOF" if conn.at_eof() else b"OPEN")
        return action

    daemon = daemon_factory()
    line, state = as_nobody(health_request(daemon.socket)).rsplit(b"\n", 1)
    assert b'"code":-32004' in line and b'"uid":65534' in line and state == b"EOF"
    assert_serving(daemon)
    allowed = daemon_factory(allow_uids=(NOBODY,))
    line, _ = as_nobody(health_request(allowed.socket)).rsplit(b"\n", 1)
    assert b'"status":"ready"' in line


def _health_as(daemon: RunningDaemon, gid: int, groups: list[int]) -> dict[str, Any]:
    """health from a forked child running as uid 65534 with this primary group and these
    supplementary groups (exactly: nothing inherited from root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.close(read_end)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(NOBODY)
            with RawConnection.open(daemon.socket, timeout=10) as conn:
                os.write(write_end, json.dumps(conn.call("health")).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"exception": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        reply: dict[str, Any] = json.loads(reader.read() or b"{}")
    os.waitpid(pid, 0)
    return reply


@pytest.mark.parametrize("extra_groups", [1, 299], ids=["one-group", "more-than-256-groups"])
def test_allow_gid_admits_a_peer_by_a_supplementary_group(daemon_factory: Any, extra_groups: int) -> None:
    """CONTRACT §1: a peer whose supplementary group is allowed gets in, also with more than 256
    groups (directory-service accounts): SO_PEERGROUPS answers ERANGE to Python's 1 KiB read, and
    the groups used to be dropped, so the allowed peer was refused with -32004."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid with many groups")
    allowed = 4242
    daemon = daemon_factory(allow_gids=(allowed,))
    reply = _health_as(daemon, NOBODY, [*range(20000, 20000 + extra_groups), allowed])
    assert "result" in reply, f"a peer in group {allowed} (and {extra_groups} others) was refused: {reply}"
    # The same peer without the group is refused: the admission came from that group.
    assert _health_as(daemon, NOBODY, list(range(20000, 20000 + extra_groups)))["error"]["code"] == -32004


def test_the_nobody_helper_keeps_none_of_roots_groups(daemon_factory: Any) -> None:
    """The peer tests act as uid/gid 65534 through as_nobody(). It must drop root's supplementary
    groups too (setgroups), or the "other user" still carries group 0 and an --allow-gid rule
    could admit it: the tests would then not test what they say."""
    daemon = daemon_factory(allow_gids=(0,))

    def health() -> bytes:
        with RawConnection.open(daemon.socket) as conn:
            try:
                conn.send(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n')
            except BrokenPipeError:
                pass  # a rejected peer may find the socket closed: its error line is waiting
            return conn.read_line()

    if os.getuid() != 0:
        pytest.skip("needs root to act as another uid")
    saved = os.getgroups()
    os.setgroups([0, *saved])  # root as sudo and most CI runners leave it: group 0 supplementary
    try:
        assert b'"code":-32004' in as_nobody(health)
    finally:
        os.setgroups(saved)


FLOOD = 300


def _rejection_lines(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    """(rejections logged one by one, rejections counted in summary lines)."""
    single = sum("rejected connection" in r.getMessage() for r in caplog.records)
    summarised = sum(int(m.group(1)) for r in caplog.records
                     if (m := re.match(r"(\d+) more connection warnings", r.getMessage())))
    return single, summarised


def test_flood_of_rejected_peers_is_bounded(daemon_factory: Any, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """300 connections of a user who is not allowed: each gets its -32004 line, but the daemon
    holds at most MAX_LINGERING descriptors for them, logs one WARNING and one summary line, and
    keeps serving."""
    monkeypatch.setattr(server, "LINGER_S", 60.0)  # lingering outlasts the flood on any machine
    caplog.set_level(logging.WARNING, logger="npud")
    daemon = daemon_factory()
    before = open_fds()
    held: list[RawConnection] = []  # the child's connections stay open until it is released

    def flood() -> bytes:
        held.extend(RawConnection.open(daemon.socket) for _ in range(FLOOD))
        return b"%d" % sum(b'"code":-32004' in conn.read_line() for conn in held)

    with as_nobody_holding(flood) as answered:
        assert answered == b"%d" % FLOOD  # every peer got its error line
        assert_serving(daemon)  # and, being answered after them, the closes are done
        assert open_fds() - before <= server.MAX_LINGERING + 8  # was one descriptor per connection
        single, _ = _rejection_lines(caplog)
        assert 1 <= single <= 2  # was one WARNING per connection
    daemon.stop()  # flushes the summary
    single, summarised = _rejection_lines(caplog)
    assert single + summarised == FLOOD
    assert daemon.daemon.metrics.stats().rejections == {"peer_not_allowed": FLOOD}


def test_flood_of_over_limit_connections_is_bounded(daemon_factory: Any, caplog: pytest.LogCaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The -32009 refusals share the path: bounded descriptors and log lines too."""
    monkeypatch.setattr(server, "LINGER_S", 60.0)
    caplog.set_level(logging.WARNING, logger="npud")
    daemon = daemon_factory(max_connections=1)
    with daemon.connect() as holder:
        assert holder.call("health")["result"]["status"] == "ready"
        before = open_fds()
        refused = [RawConnection.open(daemon.socket) for _ in range(FLOOD)]
        try:
            for conn in refused:
                assert conn.read_json()["error"]["code"] == -32009
            assert holder.call("health", request_id=2)["result"]["status"] == "ready"
            # FLOOD client descriptors are ours; the daemon's side holds at most MAX_LINGERING.
            assert open_fds() - before <= FLOOD + server.MAX_LINGERING + 8
            assert 1 <= _rejection_lines(caplog)[0] <= 2
        finally:
            for conn in refused:
                conn.sock.close()
    daemon.stop()
    assert sum(_rejection_lines(caplog)) == FLOOD


def test_second_daemon_on_the_same_name_is_refused(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory()
    with pytest.raises(StartupError, match="already listening"):
        bind_unix_socket(daemon.socket)
    path_daemon = daemon_factory(socket=str(tmp_path / "npud.sock"))
    with pytest.raises(StartupError, match="already listening"):
        bind_unix_socket(path_daemon.socket)
    assert_serving(path_daemon)
    assert_serving(daemon)


def test_filesystem_socket_is_private_and_removed(daemon_factory: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "npud.sock")
    daemon = daemon_factory(socket=path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert daemon.call("health")["result"]["status"] == "ready"
    daemon.stop()
    assert not os.path.exists(path)
    # A stale socket file (daemon killed) does not block the next start.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    again = daemon_factory(socket=path)
    assert again.call("health")["result"]["status"] == "ready"


def test_npud_refuses_a_socket_path_that_is_a_regular_file(tmp_path: Path) -> None:
    """`npud --socket notes.txt` once replaced the user's file; a real npud now refuses to start."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    proc = subprocess.run([*FAKE_DAEMON, "--socket", "notes.txt", "--no-http"], cwd=tmp_path,
                          env=daemon_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "--socket notes.txt: a regular file is already there, not a socket" in proc.stderr
    assert "left it untouched" in proc.stderr
    assert notes.read_text() == "my notes\n"


def _make(kind: str, path: Path, tmp_path: Path) -> None:
    if kind == "regular file":
        path.write_text("keep me\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "symbolic link":  # even a link to a stale socket: lstat does not follow it
        target = tmp_path / "target.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(target))
        stale.close()
        path.symlink_to(target)
    elif kind == "named pipe":
        os.mkfifo(path)


@pytest.mark.parametrize("kind", ["regular file", "directory", "symbolic link", "named pipe"])
def test_only_a_stale_socket_is_ever_replaced(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "npud.sock"
    _make(kind, path, tmp_path)
    before = os.lstat(path)
    with pytest.raises(StartupError, match=f"a {kind} is already there, not a socket"):
        bind_unix_socket(str(path))
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (before.st_ino, before.st_mode, before.st_mtime_ns)


def test_another_users_stale_socket_is_left_alone(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to give the socket file to another uid")
    path = tmp_path / "npud.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(StartupError, match="belongs to uid 65534"):
        bind_unix_socket(str(path))
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_a_live_socket_with_a_full_accept_queue_is_not_taken_for_stale(tmp_path: Path) -> None:
    """A second npud probes an existing path socket before replacing it. When the live daemon's
    accept queue is full (busy, or flooded on purpose) connect() fails at once with EAGAIN, which
    used to count as 'nobody listens': the live daemon's socket was unlinked and its name taken."""
    path = tmp_path / "npud.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(path))
    live.listen(0)  # a daemon that does not get to accept(): its queue fills at once
    queued: list[socket.socket] = []
    try:
        while True:
            pending = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            pending.setblocking(False)
            queued.append(pending)
            try:
                pending.connect(str(path))
            except BlockingIOError:
                break  # full
        inode = os.lstat(path).st_ino
        with pytest.raises(StartupError, match="already listening"):
            bind_unix_socket(str(path))
        assert os.lstat(path).st_ino == inode  # still the live daemon's socket
    finally:
        for conn in queued:
            conn.close()
        live.close()


def test_exit_never_removes_a_file_that_replaced_the_socket(daemon_factory: Any, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "npud.sock"
    daemon = daemon_factory(socket=str(path))
    assert daemon.call("health")["result"]["status"] == "ready"
    replacement = tmp_path / "replacement"
    replacement.write_text("put here after npud started\n")
    os.replace(replacement, path)
    daemon.stop()
    assert path.read_text() == "put here after npud started\n"
    assert any("no longer the socket npud created" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- privacy


def test_nothing_sent_is_ever_logged(daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    marker = "PRIVATE-MARKER-7f3a9c"
    behaviour = FakeBehaviour(reply=f"Title with {marker}", fail_with=None)
    caplog.set_level(logging.DEBUG)
    daemon = daemon_factory(FakeLoader(behaviour), max_prompt_tokens=200)
    with daemon.connect() as conn:
        assert marker in conn.call("generate", title(f"about {marker}"))["result"]["text"]
        conn.call("generate", title(f"{marker} " * 300))  # over the token budget
        conn.call("generate", {"job": marker, "input": marker})  # invalid job
        conn.call(marker, {"input": marker})  # unknown method
        conn.send(f'{{"jsonrpc":"2.0","id":"{marker}","method":"{marker}"'.encode() + b"\n")  # malformed
        conn.read_json()
        behaviour.fail_with = RuntimeError(f"failure mentioning {marker}")
        conn.call("generate", title(marker))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "request method=generate job=title" in logged  # the log line exists...
    assert marker not in logged  # ...and never carries content
