"""systemd integration with real file descriptors, real datagrams and real child processes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.engine import StartupError
from npud.systemd import Notifier, listen_fds, watchdog_interval_s
from npud.testing.activator import Activator

from .conftest import REPO, RawConnection, unique_socket

FAKE_DAEMON = [sys.executable, "-m", "npud.testing.fake_daemon"]
UNITS = sorted((REPO / "systemd").glob("*.s*"))


def abstract(name: str) -> bytes:
    return b"\0" + name[1:].encode()


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self) -> None:
        self.name = unique_socket()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(abstract(self.name))
        self.sock.settimeout(30)

    def next(self) -> list[str]:
        return self.sock.recv(4096).decode().split("\n")

    def wait_for(self, prefix: str) -> list[str]:
        """Messages received up to and including the first with a line starting with ``prefix``."""
        seen: list[str] = []
        while True:
            lines = self.next()
            seen.extend(lines)
            if any(line.startswith(prefix) for line in lines):
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    yield listener
    listener.close()


def daemon_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    env.update({"HOME": str(tmp_path), "OV_GENAI_NPU_DEVICE": "CPU", "OV_GENAI_NPU_MODEL": "fake-model",
                "OV_GENAI_NPU_CACHE": str(tmp_path / "cache"), "OV_GENAI_NPU_LOG_LEVEL": "DEBUG"})
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- units


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("mode", ["system", "user"])
def test_units_verify_without_warnings(mode: str, tmp_path: Path) -> None:
    assert {u.name for u in UNITS} == {"npud.socket", "npud-http.socket", "npud.service",
                                       "openvino-genai-npu-worker.service"}
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    args = ["systemd-analyze", "verify", *(["--user"] if mode == "user" else []), *map(str, UNITS)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=REPO / "systemd",
                          env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_installer_writes_verifiable_units(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_RUNTIME_DIR": str(tmp_path)}
    npud = Path(sys.executable).parent / "npud"
    out = subprocess.run([str(REPO / "contrib" / "install-user-units.sh"), str(npud)], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert "systemctl --user enable --now npud.socket npud-http.socket" in out and "render" in out
    units = tmp_path / "config" / "systemd" / "user"
    service = (units / "npud.service").read_text()
    assert f"ExecStart={npud}\n" in service
    assert (tmp_path / "config" / "npud" / "npud.env").exists()
    proc = subprocess.run(["systemd-analyze", "verify", "--user", *map(str, sorted(units.iterdir()))],
                          env=env, capture_output=True, text=True, cwd=units)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_units_keep_the_documented_hardening() -> None:
    """The user service keeps what a user manager enforces; the rest is in the system unit
    (tests/test_units.py checks both against systemd's rules)."""
    service = (REPO / "systemd" / "npud.service").read_text()
    for line in ("Type=notify", "NoNewPrivileges=yes", "CacheDirectory=npud",
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "WatchdogSec="):
        assert line in service
    assert "\nProtectSystem=" not in service and "\nDeviceAllow=" not in service
    assert "\nPrivateNetwork=" not in service  # it would hide @npud from every client
    system = (REPO / "systemd" / "system" / "npud.service").read_text()
    for line in ("ProtectSystem=strict", "DeviceAllow=char-accel rw", "User=npud", "SupplementaryGroups=render"):
        assert f"\n{line}\n" in system
    socket_unit = (REPO / "systemd" / "npud.socket").read_text()
    assert "ListenStream=@npud" in socket_unit and "FileDescriptorName=rpc" in socket_unit
    http_unit = (REPO / "systemd" / "npud-http.socket").read_text()
    assert "ListenStream=127.0.0.1:18820" in http_unit and "FileDescriptorName=http" in http_unit


# ---------------------------------------------------------------- sd_listen_fds / sd_notify units


def test_listen_fds_ignores_other_pids_and_clears_variables() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "rpc", "OTHER": "x"}
    assert listen_fds(env, pid=2) is None
    assert env == {"OTHER": "x"}
    assert listen_fds({}, pid=2) is None


def test_listen_fds_errors(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="not a number"):
        listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "x"}, pid=7)
    with pytest.raises(StartupError, match="2 fds but 1 names"):
        listen_fds({"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "rpc"}, pid=7)


def run_with_fds(fds: list[int], names: str) -> subprocess.CompletedProcess[str]:
    """Call listen_fds in a child that really has the fds at 3.. (what systemd does)."""
    code = ("import os; from npud.systemd import listen_fds; from npud.engine import StartupError\n"
            "try:\n s = listen_fds(os.environ); print('rpc', s.rpc.family.name, 'http', s.http and s.http.family.name,"
            " os.get_inheritable(s.rpc.fileno()), 'LISTEN_FDS' in os.environ)\n"
            "except StartupError as e: print('error', e)")
    from npud.testing.activator import _EXEC_WITH_FDS

    env = {**os.environ, "LISTEN_FDNAMES": names}
    return subprocess.run([sys.executable, "-c", _EXEC_WITH_FDS, ",".join(map(str, fds)), "-c", code],
                          env=env, pass_fds=fds, capture_output=True, text=True, timeout=30)


def test_listen_fds_with_real_descriptors(tmp_path: Path) -> None:
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(abstract(unique_socket()))
    rpc.listen()
    http = socket.create_server(("127.0.0.1", 0))
    public = socket.create_server(("0.0.0.0", 0))
    not_listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    regular = open(tmp_path / "file", "w")
    try:
        ok = run_with_fds([rpc.fileno(), http.fileno()], "rpc:http")
        assert ok.stdout.strip() == "rpc AF_UNIX http AF_INET False False", ok.stderr
        swapped = run_with_fds([http.fileno(), rpc.fileno()], "http:rpc")
        assert swapped.stdout.startswith("rpc AF_UNIX http AF_INET")
        unnamed = run_with_fds([rpc.fileno()], "")
        assert unnamed.stdout.startswith("rpc AF_UNIX http None")
        assert "wrong address family" in run_with_fds([http.fileno()], "rpc").stdout
        assert "no Unix socket named 'rpc'" in run_with_fds([http.fileno()], "http").stdout
        assert "not a socket" in run_with_fds([regular.fileno()], "rpc").stdout
        assert "not listening" in run_with_fds([not_listening.fileno()], "rpc").stdout
        assert "non-loopback" in run_with_fds([rpc.fileno(), public.fileno()], "rpc:http").stdout
    finally:
        for s in (rpc, http, public, not_listening):
            s.close()
        regular.close()


def test_notifier_sends_datagrams_and_never_fails(notify: NotifyListener) -> None:
    env = {"NOTIFY_SOCKET": notify.name}
    notifier = Notifier.from_environ(env)
    assert env == {} and notifier.enabled
    assert notifier.notify("READY=1", "STATUS=hello")
    assert notify.next() == ["READY=1", "STATUS=hello"]
    assert not Notifier(None).notify("READY=1")
    assert not Notifier("@nobody-listens-here-npud").notify("READY=1")  # logged at debug, not raised


def test_a_full_notify_socket_never_blocks_the_daemon(caplog: pytest.LogCaptureFixture) -> None:
    """sd_notify runs on the event loop. The notify socket was blocking: with systemd's queue full
    (systemd busy or stuck), sendto() blocked, and the whole daemon with it. Now the datagram is
    dropped and counted, and the first drop is logged."""
    caplog.set_level(logging.WARNING, logger="npud.systemd")
    receiver = NotifyListener()  # never read: its queue fills (net.unix.max_dgram_qlen)
    notifier = Notifier(receiver.name)
    done = threading.Event()

    def flood() -> None:
        for _ in range(5000):
            notifier.notify("WATCHDOG=1")
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    try:
        assert done.wait(30), "notify() blocked on a full notify socket"
    finally:
        receiver.sock.close()
        notifier.close()
    assert notifier.dropped > 0
    assert [r.getMessage() for r in caplog.records].count(
        "systemd's notify socket is full: dropping notifications (STATUS, WATCHDOG) rather than blocking the "
        "daemon") == 1


def test_watchdog_interval() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}, pid=5) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "5"}, pid=5) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "6"}, pid=5) is None
    assert watchdog_interval_s({}, pid=5) is None


# ---------------------------------------------------------------- real processes


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate is missing")
def test_systemd_socket_activate_serves_a_client_that_came_first(tmp_path: Path, notify: NotifyListener) -> None:
    """(a) the client connects before npud runs; (b) READY, STATUS, WATCHDOG, STOPPING in order."""
    name, port = unique_socket(), free_port()
    env = daemon_env(tmp_path, NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="200000")
    # systemd-socket-activate hands its child a clean environment plus what -E names.
    passed = [f"-E{key}" for key in env if key.startswith(("OV_GENAI_NPU_", "NOTIFY_", "WATCHDOG_", "HOME", "PATH"))]
    activator = subprocess.Popen(
        ["systemd-socket-activate", "-l", name, "-l", f"127.0.0.1:{port}", "--fdname=rpc:http", *passed,
         *FAKE_DAEMON],
        env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        # systemd-socket-activate reports when it listens; connect then, before any npud exists.
        assert activator.stderr is not None
        for line in activator.stderr:
            if f"127.0.0.1:{port}" in line:
                break
        with RawConnection.open(name) as conn:
            reply = conn.call("generate", {"job": "title", "input": "first!"})
        assert reply["result"]["job"] == "title"
        # STATUS=ready and the first WATCHDOG=1 may come in either order (the load and the
        # pings run concurrently): wait for each.
        seen = notify.wait_for("STATUS=ready")
        assert seen[0] == "READY=1" and seen[1].startswith("STATUS=")
        seen += notify.wait_for("WATCHDOG=1")
        import http.client

        conn_http = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn_http.request("GET", "/healthz")
        assert conn_http.getresponse().status == 200  # the passed http fd is served too
        conn_http.close()
        activator.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.wait_for("STOPPING=1")
        assert activator.wait(30) == 0
    finally:
        if activator.poll() is None:
            activator.kill()
            activator.wait()


def test_stuck_worker_stops_the_watchdog(tmp_path: Path, notify: NotifyListener) -> None:
    """(c) while a generation hangs past --stuck-after, no WATCHDOG=1 is sent."""
    name = unique_socket()
    hang = tmp_path / "release"
    env = daemon_env(tmp_path, NOTIFY_SOCKET=notify.name, WATCHDOG_USEC="100000", NPUD_FAKE_HANG_FILE=str(hang))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--stuck-after", "0.3"], env=env,
                            stderr=subprocess.DEVNULL)
    try:
        notify.wait_for("WATCHDOG=1")
        conn = RawConnection.open(name)
        conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": {"job": "title", "input": "x"}})
        started = time.monotonic()
        # Pings go on for up to --stuck-after, then stop: collect for a while and look at the tail.
        notify.sock.settimeout(0.5)
        pings: list[float] = []
        try:
            while time.monotonic() - started < 2.0:
                if "WATCHDOG=1" in notify.next():
                    pings.append(time.monotonic() - started)
        except TimeoutError:
            pass
        assert not [t for t in pings if t > 1.0], pings  # nothing once the worker is stuck (0.3 s + margin)
        hang.touch()  # the generation finishes: the watchdog is fed again
        assert conn.read_json()["result"]["job"] == "title"
        notify.sock.settimeout(30)
        notify.wait_for("WATCHDOG=1")
        conn.sock.close()
    finally:
        hang.touch()
        proc.terminate()
        assert proc.wait(30) == 0


def test_sigterm_with_queued_and_running_jobs(tmp_path: Path) -> None:
    """(d) the running job completes, queued ones get ShuttingDown, nothing hangs, exit 0."""
    name = unique_socket()
    hang = tmp_path / "release"
    env = daemon_env(tmp_path, NPUD_FAKE_HANG_FILE=str(hang))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready on CPU" in line:
                break
        running, queued = RawConnection.open(name), RawConnection.open(name)
        running.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": {"job": "title", "input": "a"}})
        with RawConnection.open(name) as probe:
            while not probe.call("health")["result"]["queue"]["running"]:
                pass
            queued.send_json({"jsonrpc": "2.0", "id": 2, "method": "generate", "params": {"job": "title", "input": "b"}})
            while probe.call("health")["result"]["queue"]["depth"] < 1:
                pass
        proc.send_signal(signal.SIGTERM)
        assert queued.read_json()["error"]["code"] == -32006
        hang.touch()
        assert running.read_json()["result"]["job"] == "title"
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "received SIGTERM" in rest
        for conn in (running, queued):
            conn.sock.close()
    finally:
        hang.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    name = unique_socket()
    hang = tmp_path / "never"
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"],
                            env=daemon_env(tmp_path, NPUD_FAKE_HANG_FILE=str(hang)), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "ready on CPU" in line:
                break
        conn = RawConnection.open(name)
        conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate", "params": {"job": "title", "input": "a"}})
        with RawConnection.open(name) as probe:
            while not probe.call("health")["result"]["queue"]["running"]:
                pass
        proc.send_signal(signal.SIGTERM)
        for line in proc.stderr:
            if "shutting down" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 1
        conn.sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_idle_exit_requires_socket_activation(tmp_path: Path) -> None:
    proc = subprocess.run([*FAKE_DAEMON, "--socket", unique_socket(), "--no-http", "--exit-idle-after", "5"],
                          env=daemon_env(tmp_path), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1 and "--exit-idle-after needs socket activation" in proc.stderr


def test_idle_exit_and_reactivation_lose_no_request(tmp_path: Path) -> None:
    """(e) the daemon exits when idle; clients arriving at any moment are all served."""
    name = unique_socket()
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(abstract(name))
    rpc.listen(64)
    http = socket.create_server(("127.0.0.1", 0))
    activator = Activator([("rpc", rpc), ("http", http)], ["-m", "npud.testing.fake_daemon", "--exit-idle-after", "0.3"],
                          env=daemon_env(tmp_path))
    activator.start()
    try:
        answered = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (activator.starts < 3 or answered < 12):
            with RawConnection.open(name) as conn:
                reply = conn.call("generate", {"job": "title", "input": f"request {answered}"}, request_id=answered)
            assert reply["id"] == answered and reply["result"]["job"] == "title"
            answered += 1
            # Pauses around the idle limit, so some requests meet a daemon that is just exiting.
            time.sleep(0.25 + 0.05 * (answered % 4))  # the stimulus itself, not a wait for an event
        assert activator.starts >= 3, "the daemon never exited when idle"
        assert answered >= 12
        assert all(code == 0 for code in activator.exit_codes)
    finally:
        activator.stop()


def test_an_http_socket_passed_with_no_http_is_refused(tmp_path: Path) -> None:
    """NO_HTTP=1 under socket activation: npud closed the passed HTTP socket, systemd kept
    listening on it, so an HTTP client was neither answered nor refused, and with idle exit its
    pending connection started npud again every idle period. Now npud refuses to start, naming the
    socket unit and both ways out."""
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(abstract(unique_socket()))
    rpc.listen(4)
    http = socket.create_server(("127.0.0.1", 0))
    env = daemon_env(tmp_path, OV_GENAI_NPU_NO_HTTP="1")
    activator = Activator([("rpc", rpc), ("http", http)], ["-m", "npud.testing.fake_daemon"], env=env)
    try:
        proc = activator.run_once(timeout=60)
    finally:
        activator.stop()
    assert proc.returncode == 1
    assert "systemd passed an HTTP socket (npud-http.socket" in proc.stderr
    assert "disable --now npud-http.socket" in proc.stderr and "OV_GENAI_NPU_NO_HTTP=0" in proc.stderr


def test_without_the_http_socket_no_http_starts(tmp_path: Path) -> None:
    """The other side: with npud-http.socket not enabled only the RPC socket is passed, and
    NO_HTTP=1 serves it."""
    name = unique_socket()
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(abstract(name))
    rpc.listen(4)
    activator = Activator([("rpc", rpc)], ["-m", "npud.testing.fake_daemon"],
                          env=daemon_env(tmp_path, OV_GENAI_NPU_NO_HTTP="1"))
    activator.start()
    try:
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["version"]
    finally:
        activator.stop()
    assert activator.exit_codes == [0]


def test_not_enabling_the_http_socket_keeps_the_shim_off(tmp_path: Path) -> None:
    """Verify review 2 (finding A): README "Running under systemd" says "npud.service requires
    npud.socket only, so not enabling npud-http.socket keeps the shim off" (and "Who may connect"
    tells users to turn the shim off that way). Socket-activated with only the RPC socket and the
    default settings, npud bound the HTTP port itself: the shim, which has no peer check, served
    every local user while its owner believed it off. Under socket activation the HTTP listener is
    the one systemd passes, or none."""
    name = unique_socket()
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(abstract(name))
    rpc.listen(4)
    port = free_port()
    activator = Activator([("rpc", rpc)], ["-m", "npud.testing.fake_daemon"],
                          env=daemon_env(tmp_path, OV_GENAI_NPU_PORT=str(port)))
    activator.start()
    try:
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["version"]  # serving: every listener is open by now
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        activator.stop()


def test_status_follows_the_load_and_extends_the_timeout(tmp_path: Path, notify: NotifyListener) -> None:
    """While the model loads (an NPU compile can take minutes): STATUS says so and
    EXTEND_TIMEOUT_USEC keeps systemd waiting; then STATUS follows the queue."""
    name = unique_socket()
    loaded = tmp_path / "loaded"
    env = daemon_env(tmp_path, NOTIFY_SOCKET=notify.name, NPUD_FAKE_LOAD_FILE=str(loaded))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=env, stderr=subprocess.DEVNULL)
    try:
        seen = notify.wait_for("EXTEND_TIMEOUT_USEC=")
        assert seen[0] == "READY=1" and any(line.startswith("STATUS=loading fake-model on CPU") for line in seen)
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["status"] == "loading"  # served while loading
            loaded.touch()
            assert any(line.startswith("STATUS=ready, 0 queued") for line in notify.wait_for("STATUS=ready"))
            conn.call("generate", {"job": "title", "input": "x"})
        assert "STATUS=ready, 0 queued, 1 jobs served, 0 failed, 0 cancelled" in notify.wait_for("STATUS=ready, 0 queued, 1 jobs")
    finally:
        loaded.touch()
        proc.terminate()
        assert proc.wait(30) == 0
