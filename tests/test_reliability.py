"""Deadlines, cancellation, connection limits and injected faults, through a real socket.
After each: the exact error, and the daemon still serving."""

from __future__ import annotations

import fcntl
import http.client
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from npud import rpc
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import RawConnection, RunningDaemon, as_nobody, unique_socket
from .test_systemd import FAKE_DAEMON, daemon_env


def title(text: str = "x", **extra: Any) -> dict[str, Any]:
    return {"job": "title", "input": text, **extra}


def request(i: Any, method: str = "generate", params: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": i, "method": method}
    body["params"] = params if params is not None else title()
    if method in ("health", "models"):
        body.pop("params")
    return body


def assert_serving(daemon: RunningDaemon) -> None:
    assert daemon.call("health", request_id="after")["result"]["status"] == "ready"
    assert daemon.call("generate", title("after"))["result"]["job"] == "title"


# ---------------------------------------------------------------- deadlines


def test_deadline_while_running_and_while_queued(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour(gate=threading.Event())  # never opened: only deadlines end these jobs
    daemon = daemon_factory(FakeLoader(behaviour))
    with daemon.connect() as conn:
        conn.send_json(request(1, params=title(timeout_ms=300)))
        assert behaviour.started.wait(10)
        conn.send_json(request(2, params=title("queued", timeout_ms=50)))
        replies = {r["id"]: r for r in (conn.read_json(), conn.read_json())}
    running, queued = replies[1]["error"], replies[2]["error"]
    assert running["code"] == -32007 and running["data"] == {"timeout_ms": 300, "stage": "running"}
    assert queued["code"] == -32007 and queued["data"] == {"timeout_ms": 50, "stage": "queued"}
    assert len(behaviour.calls) == 1  # the queued job never reached the engine
    behaviour.gate = None
    assert_serving(daemon)


def hung_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "looks hung" in r.getMessage()]


def test_queued_job_is_answered_at_its_deadline_not_after_the_grace(daemon_factory: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The queued job's deadline passes while another job runs on: it is withdrawn and answered
    at its deadline with stage "queued" (it used to wait 5 s more and say "running")."""
    caplog.set_level(logging.INFO)
    gate = threading.Event()  # opened only at the end: the first job runs throughout
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    try:
        with daemon.connect() as conn:
            conn.send_json(request(1, params=title("running", timeout_ms=600_000)))
            assert behaviour.started.wait(10)
            conn.send_json(request(2, params=title("queued", timeout_ms=100)))
            reply = conn.read_json()
            assert reply["id"] == 2
            assert reply["error"]["data"] == {"timeout_ms": 100, "stage": "queued"}
            health = conn.call("health", request_id=3)["result"]
            assert health["queue"] == {"depth": 0, "capacity": 8, "running": True}  # job 1 still runs
            assert health["jobs_failed"] == 1
            gate.set()
            assert conn.read_json()["id"] == 1
    finally:
        gate.set()
    assert hung_warnings(caplog) == []
    assert not any("queued" in prompt for prompt in behaviour.calls)
    behaviour.gate = None
    assert_serving(daemon)


def test_job_queued_while_the_model_loads_is_answered_at_its_deadline(daemon_factory: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    load_gate = threading.Event()
    daemon = daemon_factory(FakeLoader(load_gate=load_gate), wait_ready=False)
    try:
        with daemon.connect() as conn:
            conn.send_json(request(1, params=title(timeout_ms=100)))
            error = conn.read_json()["error"]
            assert error["code"] == -32007 and error["data"]["stage"] == "queued"
            health = conn.call("health", request_id=2)["result"]
            assert health["status"] == "loading" and health["queue"]["depth"] == 0
    finally:
        load_gate.set()
    assert hung_warnings(caplog) == []
    daemon.daemon.worker.wait_loaded(30)
    assert_serving(daemon)


def test_no_queued_job_starts_once_the_worker_is_stopping(daemon_factory: Any) -> None:
    """stop() used to set the flag and drain the queue in two lock sections: a job that finished in
    between let the worker take the next queued job and start it during shutdown. The worker now
    checks the flag under the lock before taking a job; here the flag is set first, as in that
    window, and the running job then finishes."""
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour))
    running, queued = daemon.connect(), daemon.connect()
    try:
        running.send_json(request(1, params=title("first")))
        assert behaviour.started.wait(10)
        queued.send_json(request(2, params=title("second")))
        with daemon.connect() as probe:
            while probe.call("health")["result"]["queue"]["depth"] < 1:
                pass
        worker = daemon.daemon.worker
        worker._stopping.set()  # the window between stop()'s two lock sections
        gate.set()
        assert running.read_json()["result"]["job"] == "title"
        assert worker.join(10)  # the worker ended without taking the queued job
        daemon.stop()
        error = queued.read_json()["error"]
        assert error["code"] == -32006 and "not started" in error["message"]
        assert not any("second" in prompt for prompt in behaviour.calls)
    finally:
        gate.set()
        running.sock.close()
        queued.sock.close()


def test_timeout_ms_is_validated_and_works_over_http(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    error = daemon.call("generate", title(timeout_ms=0))["error"]
    assert error["code"] == -32602 and error["data"]["field"] == "timeout_ms"
    assert daemon.call("condense_notification", {"input": "x", "timeout_ms": 600_001})["error"]["code"] == -32602
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    conn.request("POST", "/v1/worker/condense-notification", body=json.dumps({"input": "x", "timeout_ms": 100}),
                 headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 504 and json.loads(reply.read())["error"]["code"] == -32007
    conn.close()
    behaviour.gate = None
    assert_serving(daemon)


def test_hung_pipeline_still_answers_the_client(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rpc, "HANG_GRACE_S", 0.2)
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate, ignore_stop=True)  # the pipeline ignores the streamer
    daemon = daemon_factory(FakeLoader(behaviour))
    error = daemon.call("generate", title(timeout_ms=100))["error"]
    assert error["code"] == -32007 and "did not stop" in error["message"]
    assert daemon.call("health")["result"]["queue"]["running"] is True  # honest: the worker is stuck
    gate.set()
    behaviour.gate = None
    assert_serving(daemon)


# ---------------------------------------------------------------- the NPU lock wait


@pytest.fixture
def npu_daemon_with_lock_held(daemon_factory: Any, tmp_path: Path) -> Any:
    """An NPU daemon (fake engine, synthetic busy counter) whose lock another process holds."""
    behaviour = FakeBehaviour(busy_file=make_npu_sysfs(tmp_path / "sys"))
    daemon = daemon_factory(FakeLoader(behaviour), device="NPU", sysfs_root=str(tmp_path / "sys"),
                            lock_timeout_s=60)
    fd = os.open(daemon.config.lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield daemon, behaviour, fd
    finally:
        os.close(fd)


def wait_running(daemon: RunningDaemon) -> None:
    with daemon.connect() as probe:
        while not probe.call("health")["result"]["queue"]["running"]:
            pass


def test_lock_wait_ends_on_cancel(npu_daemon_with_lock_held: Any) -> None:
    daemon, behaviour, fd = npu_daemon_with_lock_held
    with daemon.connect() as conn:
        conn.send_json(request("alpha", params=title("alpha")))
        wait_running(daemon)
        conn.send_json(request("c", "cancel", {"id": "alpha"}))
        replies = {r["id"]: r for r in (conn.read_json(), conn.read_json())}
        assert replies["c"]["result"] == {"cancelled": True} and replies["alpha"]["error"]["code"] == -32008
        fcntl.flock(fd, fcntl.LOCK_UN)  # the NPU is free again: the cancelled job must not take it
        assert conn.call("generate", title("beta"), request_id="beta")["result"]["npu_busy_delta_us"] > 0
    assert len(behaviour.calls) == 1 and "alpha" not in behaviour.calls[0]


def test_lock_wait_ends_at_the_deadline(npu_daemon_with_lock_held: Any) -> None:
    daemon, behaviour, _ = npu_daemon_with_lock_held
    error = daemon.call("generate", title(timeout_ms=200))["error"]
    assert error["code"] == -32007 and error["data"] == {"timeout_ms": 200, "stage": "queued"}
    assert behaviour.calls == []


def test_lock_wait_ends_at_shutdown(npu_daemon_with_lock_held: Any) -> None:
    """The job waiting for the lock has not started: at shutdown it gets -32006 like a queued job
    (it used to be reported as a deadline, or a busy device)."""
    daemon, behaviour, _ = npu_daemon_with_lock_held
    with daemon.connect() as conn:
        conn.send_json(request(1))
        wait_running(daemon)
        stopper = threading.Thread(target=daemon.stop)
        stopper.start()
        error = conn.read_json()["error"]
        stopper.join(30)
    assert error["code"] == -32006 and "not started" in error["message"]
    assert behaviour.calls == [] and not daemon.thread.is_alive()


# ---------------------------------------------------------------- cancel


def test_cancel_by_request_id(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour))
    with daemon.connect() as conn, daemon.connect() as other:
        conn.send_json(request("job-1"))
        assert behaviour.started.wait(10)
        conn.send_json(request("job-2"))
        # Ids are per connection: another connection cannot cancel this one's jobs.
        assert other.call("cancel", {"id": "job-1"})["result"] == {"cancelled": False}
        conn.send_json(request("c1", "cancel", {"id": "job-2"}))  # the queued one
        conn.send_json(request("c2", "cancel", {"id": "job-1"}))  # the running one
        replies = {r["id"]: r for r in (conn.read_json() for _ in range(4))}
        assert replies["c1"]["result"] == {"cancelled": True} and replies["c2"]["result"] == {"cancelled": True}
        assert replies["job-1"]["error"]["code"] == -32008 and replies["job-2"]["error"]["code"] == -32008
        assert conn.call("cancel", {"id": "job-1"})["result"] == {"cancelled": False}  # already over
        assert conn.call("cancel", {"id": 99})["result"] == {"cancelled": False}
        assert conn.call("cancel", {})["error"]["code"] == -32602
    assert len(behaviour.calls) == 1  # job-2 never ran
    behaviour.gate = None
    assert_serving(daemon)


def test_cancel_sent_right_behind_its_request_finds_it(daemon_factory: Any) -> None:
    """A request and its cancel in one write (one read for the daemon): the cancel used to be
    answered before the request's task had registered its id, so it said false and the job ran."""
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour))
    try:
        with daemon.connect() as conn:
            conn.send(json.dumps(request(1)).encode() + b"\n" +
                      json.dumps(request("c", "cancel", {"id": 1})).encode() + b"\n")
            replies = {r["id"]: r for r in (conn.read_json(), conn.read_json())}
        assert replies["c"]["result"] == {"cancelled": True}
        assert replies[1]["error"]["code"] == -32008
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()
    assert_serving(daemon)


# ---------------------------------------------------------------- connection limits


def test_connection_limits(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_connections=3, max_connections_per_uid=3)
    held = [daemon.connect() for _ in range(3)]
    try:
        for conn in held:
            assert conn.call("health")["result"]["status"] == "ready"
        with daemon.connect() as refused:
            error = refused.read_json()["error"]
            assert error["code"] == -32009 and error["data"]["field"] == "connections"
            assert refused.at_eof()
    finally:
        for conn in held:
            conn.sock.close()
    per_uid = daemon_factory(max_connections=10, max_connections_per_uid=2)
    held = [per_uid.connect() for _ in range(2)]
    try:
        for conn in held:
            conn.call("health")
        with per_uid.connect() as refused:
            error = refused.read_json()["error"]
            assert error["data"]["field"] == "connections_per_uid" and error["data"]["limit"] == 2
    finally:
        for conn in held:
            conn.sock.close()
    health = per_uid.call("health")["result"]
    assert health["status"] == "ready"  # slots free again
    assert health["stats"]["rejections"] == {"connections_per_uid": 1}


def test_in_flight_limit(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), max_in_flight=2)
    with daemon.connect() as conn:
        conn.send_json(request(1))
        assert behaviour.started.wait(10)
        conn.send_json(request(2))
        conn.send_json(request(3))
        error = conn.read_json()
        assert error["id"] == 3 and error["error"]["code"] == -32009 and error["error"]["data"]["field"] == "in_flight"
        conn.send(b'[{"jsonrpc":"2.0","id":4,"method":"health"},{"jsonrpc":"2.0","method":"health"}]\n')
        assert [r["id"] for r in conn.read_json()] == [4]  # a refused batch answers each request once
        gate.set()
        assert {conn.read_json()["id"], conn.read_json()["id"]} == {1, 2}
    assert_serving(daemon)


def test_in_flight_limit_counts_the_requests_of_a_batch(daemon_factory: Any) -> None:
    """CONTRACT §5: '--max-in-flight unanswered requests per connection'. It counted lines: one
    batch line of 10 jobs on a connection limited to 2 left 10 unanswered requests (16 lines x 32
    with the defaults). A batch now counts as its requests, and a line that would pass the limit
    is refused whole, before any of it runs."""
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), max_in_flight=3, queue_depth=64)
    try:
        with daemon.connect() as conn:
            conn.send_json([request(1), request(2)])
            assert behaviour.started.wait(10)
            conn.send_json([request(3), request(4)])  # 2 + 2 > 3
            refused = conn.read_json()
            assert [r["id"] for r in refused] == [3, 4]
            assert all(r["error"]["code"] == -32009 for r in refused)
            assert refused[0]["error"]["data"] == {"limit": 3, "actual": 4, "unit": "requests", "field": "in_flight"}
            conn.send_json(request(5))  # 2 + 1 fits
            conn.send_json(request(6))
            assert conn.read_json()["error"]["data"]["actual"] == 4
            assert conn.call("health", request_id=7)["result"]["status"] == "ready"  # answered at once: not counted
            queue = daemon.call("health")["result"]["queue"]
            assert queue["depth"] + int(queue["running"]) == 3, queue
            with daemon.connect() as other:
                other.send_json([request(i) for i in range(10, 14)])  # 4 > 3 even on an idle connection
                big = other.read_json()
                assert len(big) == 4 and "a batch of 4 requests exceeds" in big[0]["error"]["message"]
            assert behaviour.gate is not None
            behaviour.gate.set()
            replies = [conn.read_json(), conn.read_json()]
            ids = sorted(str([x["id"] for x in r]) if isinstance(r, list) else str(r["id"]) for r in replies)
            assert ids == ["5", "[1, 2]"]
        assert len(behaviour.calls) == 3
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()


def test_slowloris_partial_line_is_closed(daemon_factory: Any) -> None:
    daemon = daemon_factory(line_timeout_s=0.2)
    with daemon.connect() as slow:
        slow.send(b'{"jsonrpc":"2.0","id":1,"meth')
        assert slow.at_eof()  # closed by the daemon, no reply to half a message
    assert_serving(daemon)


def test_idle_connection_is_closed_but_a_busy_one_is_not(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), idle_timeout_s=0.2)
    with daemon.connect() as busy, daemon.connect() as idle:
        busy.send_json(request(1, params=title(timeout_ms=2000)))
        assert idle.at_eof()  # the idle one goes after 0.2 s...
        gate.set()
        assert busy.read_json()["result"]["job"] == "title"  # ...the one waiting for a job stays
    behaviour.gate = None
    assert_serving(daemon)


def test_client_that_does_not_read_is_disconnected(daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    daemon = daemon_factory(write_buffer_bytes=4096, max_in_flight=10_000)
    batch = b"[" + b",".join([b'{"jsonrpc":"2.0","id":1,"method":"models"}'] * 32) + b"]\n"
    with daemon.connect() as greedy:
        greedy.sock.settimeout(30)
        try:
            for _ in range(200):  # ~3 MB of replies requested, none read
                greedy.send(batch)
        except (BrokenPipeError, ConnectionResetError):
            pass  # dropped while still sending: that is the point
    assert any("reply bytes unread" in r.getMessage() for r in caplog.records)
    assert_serving(daemon)


def _connect_when_a_slot_is_free(daemon: RunningDaemon) -> dict[str, Any]:
    """Health over a new connection, retrying while the connection limit refuses it (-32009)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with daemon.connect() as probe:
            probe.send_json(request("probe", "health"))
            reply = probe.read_json()
            if "result" in reply:
                return reply
            assert reply["error"]["code"] == -32009
    raise AssertionError("the connection slot was never freed")


@pytest.mark.parametrize("timeout", ["idle_timeout_s", "line_timeout_s"])
def test_timeouts_free_a_connection_whose_replies_are_unread(daemon_factory: Any, timeout: str) -> None:
    """A client that asked for ~2 MB of replies and reads none: at the idle (or slow-line) timeout
    its connection is aborted, not closed politely (a close would wait for the unread replies
    forever, and the connection would stay counted against the limit)."""
    daemon = daemon_factory(max_connections_per_uid=1, write_buffer_bytes=64 * 1024 * 1024, **{timeout: 0.3})
    with daemon.connect() as greedy:
        greedy.send(b'{"jsonrpc":"2.0","id":1,"method":"models"}\n' * 2000)
        if timeout == "line_timeout_s":
            greedy.send(b'{"jsonrpc":"2.0","id":2,')  # and a line it never finishes
        assert _connect_when_a_slot_is_free(daemon)["result"]["status"] == "ready"
    assert_serving(daemon)


def test_hundreds_of_idle_connections(daemon_factory: Any) -> None:
    daemon = daemon_factory(max_connections=1000, max_connections_per_uid=1000)
    conns = [RawConnection.open(daemon.socket) for _ in range(300)]
    try:
        assert_serving(daemon)
        assert conns[-1].call("health")["result"]["status"] == "ready"
    finally:
        for conn in conns:
            conn.sock.close()


def test_http_connection_limit(daemon_factory: Any) -> None:
    daemon = daemon_factory(http=True, max_connections=2)
    held = [socket.create_connection(("127.0.0.1", daemon.http_port)) for _ in range(2)]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        assert reply.status == 503 and json.loads(reply.read())["error"]["code"] == -32009
        conn.close()
    finally:
        for sock in held:
            sock.close()


# ---------------------------------------------------------------- faults in a real process


def test_worker_crash_exits_70_and_answers_the_client(tmp_path: Path) -> None:
    name = unique_socket()
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=daemon_env(tmp_path, NPUD_FAKE_CRASH="1"),
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready on CPU" in line:
                break
        with RawConnection.open(name) as conn:
            error = conn.call("generate", title())["error"]
        assert error["code"] == -32603 and "worker crashed" in error["message"]
        assert proc.wait(30) == 70
        assert "worker thread crashed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_timeout_stops_the_running_job_and_answers_it(tmp_path: Path) -> None:
    """A job still running at --shutdown-timeout is stopped (its should_stop turns true) and
    answered with -32006, and the log says so (it used to be dropped without a word)."""
    name = unique_socket()
    hang = tmp_path / "never"  # never created: only should_stop can end this generation
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--shutdown-timeout", "0.5"],
                            env=daemon_env(tmp_path, NPUD_FAKE_HANG_FILE=str(hang)), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready on CPU" in line:
                break
        with RawConnection.open(name) as conn:
            conn.send_json(request(1))
            with RawConnection.open(name) as probe:
                while not probe.call("health")["result"]["queue"]["running"]:
                    pass
            proc.send_signal(signal.SIGTERM)
            error = conn.read_json()["error"]
        assert error["code"] == -32006 and "stopped after --shutdown-timeout 0.5s" in error["message"]
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "running job did not finish within 0.5s of shutdown: stopped and answered with -32006" in rest
        assert "request method=generate job=title" in rest and "outcome=error=-32006" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_under_load_answers_every_request(tmp_path: Path) -> None:
    name = unique_socket()
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--queue-depth", "64"],
                            env=daemon_env(tmp_path, OV_GENAI_NPU_LOG_LEVEL="INFO"), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready on CPU" in line:
                break
        outcomes: list[str] = []
        lock = threading.Lock()
        started = threading.Barrier(21)

        def client(i: int) -> None:
            with RawConnection.open(name) as conn:
                started.wait()
                for n in range(20):
                    try:
                        reply = conn.call("generate", title(f"{i}-{n}"), request_id=n)
                    except (ConnectionError, OSError):
                        with lock:
                            outcomes.append("closed")
                        return
                    kind = "ok" if "result" in reply else str(reply["error"]["code"])
                    with lock:
                        outcomes.append(kind)
                    if kind != "ok":
                        return

        threads = [threading.Thread(target=client, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        started.wait()
        proc.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(30)
        assert proc.wait(30) == 0
        assert set(outcomes) <= {"ok", "-32006", "closed"}
        assert "-32603" not in outcomes
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- privacy


def test_nothing_is_logged_from_either_transport(tmp_path: Path) -> None:
    """DEBUG logs of a real npud process, valid and invalid requests on both transports."""
    marker = "SECRET-7Qx9-MARKER"
    name = unique_socket()
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--port", "0", "--max-prompt-len", "200"],
                            env=daemon_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if "http 127.0.0.1:" in line:
                port = int(line.split("http 127.0.0.1:")[1].split()[0])
            if "ready on CPU" in line:
                break
        assert port is not None
        with RawConnection.open(name) as conn:
            conn.call("generate", title(marker))
            conn.call("generate", title(marker * 200))
            conn.call("generate", {"job": marker, "input": marker})
            conn.call(marker, {"input": marker})
            conn.call("cancel", {"id": marker})
            conn.send(f'{{"id":"{marker}",'.encode() + b"\n")
            conn.read_json()
            conn.send(f'[{{"jsonrpc":"2.0","id":"{marker}","method":"{marker}"}}]'.encode() + b"\n")
            conn.read_json()
        for path, body in (("/v1/worker/generate", {"job": "title", "input": marker}),
                           ("/v1/worker/generate", {"job": marker, "input": marker}),
                           (f"/{marker}", {"input": marker}),
                           ("/v1/worker/condense-notification", marker)):
            http_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            http_conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json",
                                                                           "X-Marker": marker})
            http_conn.getresponse().read()
            http_conn.close()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0
        assert "via=http" in rest and "via=unix" in rest  # requests were logged...
        assert marker not in rest  # ...without any of their content
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_peer_check_happens_before_any_byte_is_read(daemon_factory: Any) -> None:
    """A rejected peer's bytes never reach the parser: the rejection comes unprompted."""
    daemon = daemon_factory()

    def connect_silently() -> bytes:
        with RawConnection.open(daemon.socket) as conn:  # sends nothing at all
            return conn.read_line()

    line = as_nobody(connect_silently)
    assert json.loads(line)["error"]["code"] == -32004
