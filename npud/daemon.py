"""The daemon's lifecycle: startup, serve, graceful shutdown; systemd readiness, watchdog, idle exit.

startup: preflight (device, model path, busy counter), listeners (bound here, or handed over by
systemd), servers, then the worker starts loading the model while health already answers.
serve: until SIGTERM/SIGINT, an idle timeout (socket activation only) or a worker crash.
shutdown: stop accepting, fail queued jobs with ShuttingDown, let the running one finish up to
``--shutdown-timeout``, deliver replies, close; signal handlers restored on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import platform
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npuclient.errors import ShuttingDown

from . import __version__
from .accel import current_groups, inspect_nodes, npu_unavailable_message
from .busy import BusyCounter, BusyCounterError, discover_npu
from .config import Config
from .connlog import ConnectionLog
from .engine import DeviceUnavailable, EngineLoader, StartupError
from .http import HttpShim, authority, bind_http_socket, read_token_file
from .metrics import Metrics
from .npulock import LockFileRefused, NpuLock, open_lock_file
from .peercred import PeerPolicy, allow_list_problem, read_id_maps
from .rpc import Dispatcher
from .server import RpcConnection, SocketFile, bind_unix_socket
from .systemd import ActivatedSockets, Notifier
from .worker import Worker, WorkerSnapshot

log = logging.getLogger("npud")

EXIT_OK = 0
EXIT_STARTUP_FAILED = 1
EXIT_WORKER_CRASHED = 70  # EX_SOFTWARE: systemd's Restart=on-failure brings a fresh daemon

# How often STATUS= is refreshed (only sent when it changed) and EXTEND_TIMEOUT_USEC is sent.
STATUS_INTERVAL_S = 1.0
# While the model loads, each tick asks systemd for this much more time.
LOAD_EXTEND_S = 30.0
# At shutdown, after --shutdown-timeout: how long a stopped generation gets to reach its next
# token, and how long the last replies get to be written.
STOP_GRACE_S = 1.0
REPLY_FLUSH_S = 1.0
CLOSE_POLL_S = 0.01


@dataclass
class SystemdContext:
    """What systemd handed us, read from the environment at the edge (cli)."""

    activated: ActivatedSockets | None = None
    notifier: Notifier = field(default_factory=lambda: Notifier(None))
    watchdog_interval_s: float | None = None


def prepare_busy_counter(config: Config, kernel_release: str = "") -> BusyCounter | None:
    """On the NPU the busy counter is required (unless disabled); elsewhere it is not used.

    The intel_vpu device and its counter are looked for separately, so the message says which
    one is missing: no device (the driver is not loaded) or no counter (a kernel before 6.11).
    """
    if not config.is_npu or not config.busy_check:
        return None
    if config.busy_file:
        path = Path(config.busy_file)
        if not path.exists():
            raise StartupError(f"NPU busy counter {path} (--busy-file) does not exist")
    else:
        found = discover_npu(config.sysfs_root)
        problem = found.problem(kernel_release)
        if problem is not None or found.counter is None:
            emulated = (" Emulated NPU: there is no NPU counter; pass --no-busy-check, or --busy-file "
                        "with a synthetic one." if config.npu_emulation else "")
            raise StartupError(f"NPU busy counter npu_busy_time_us not found: {problem}{emulated}")
        path = found.counter
    counter = BusyCounter(path)
    try:
        counter.read()
    except BusyCounterError as exc:
        raise StartupError(f"NPU busy counter unusable: {exc}") from None
    return counter


def explain_missing_device(config: Config, exc: DeviceUnavailable) -> str:
    """Why OpenVINO lists no NPU, from the device nodes, their access and this process's groups."""
    if not config.is_npu:
        return str(exc)
    nodes = inspect_nodes(Path(config.dev_accel))
    return npu_unavailable_message(nodes, current_groups(), discover_npu(config.sysfs_root), exc.devices)


def check_npu_lock(config: Config) -> None:
    """On the NPU: a lock file must be configured (there is no safe default without a runtime
    directory) and usable (a regular file of ours or root's, not a link); checked once at startup
    so that a bad one is a clear exit, not a failed load."""
    if not config.is_npu:
        return
    if not config.lock_file:
        raise StartupError(
            "no place for the NPU lock file: neither $XDG_RUNTIME_DIR nor $RUNTIME_DIRECTORY is set "
            "(sudo, cron, a system service). Pass --lock-file (OV_GENAI_NPU_LOCK_FILE) in a directory only "
            "trusted users can write, the same path for every process that shares the NPU, e.g. "
            "/run/npu.lock made by root with systemd-tmpfiles (README 'Configuration'); never /tmp.")
    try:
        os.close(open_lock_file(config.lock_file))
    except LockFileRefused as exc:
        raise StartupError(str(exc)) from None


NO_HTTP_BUT_PASSED = (
    "systemd passed an HTTP socket (npud-http.socket, fd name 'http') but --no-http "
    "(OV_GENAI_NPU_NO_HTTP=1) says not to serve HTTP. systemd keeps listening on it anyway, so HTTP "
    "clients would hang, neither answered nor refused. Disable the socket: 'systemctl --user disable "
    "--now npud-http.socket' (system units: 'sudo systemctl disable --now npud-http.socket'), or serve "
    "HTTP: OV_GENAI_NPU_NO_HTTP=0 (for the system units with a token: README 'Serving other users').")


@dataclass
class Listeners:
    """The sockets a daemon serves, bound here or handed over by systemd."""

    rpc: socket.socket
    http: socket.socket | None = None
    http_token: bytes | None = None
    #: A filesystem socket this process created and removes at exit (not systemd's).
    owned: SocketFile | None = None
    activated: bool = False

    @property
    def http_port(self) -> int | None:
        return self.http.getsockname()[1] if self.http is not None else None

    def close(self) -> None:
        self.rpc.close()
        if self.http is not None:
            self.http.close()


def open_listeners(config: Config, activated: ActivatedSockets | None = None) -> Listeners:
    """The Unix socket and, unless disabled, the loopback HTTP shim.

    Sockets passed by systemd are used as they are and nothing else is bound (no HTTP socket passed:
    no HTTP shim). Without systemd both are bound here, the Unix socket
    first: "another daemon is already listening" is the useful message when a second npud starts,
    not the HTTP port clash that follows from it. An HTTP socket passed while --no-http says not
    to serve one is refused: systemd keeps listening on it whatever npud does, so its clients
    would be neither answered nor refused, and with idle exit each of them would start npud again.
    """
    if activated is not None and activated.http is not None and not config.http:
        raise StartupError(NO_HTTP_BUT_PASSED)
    token = read_token_file(config.token_file) if config.http and config.token_file else None
    if activated is not None:
        rpc_sock, owned = activated.rpc, None
    else:
        rpc_sock, owned = bind_unix_socket(config.socket)
    # Under socket activation the HTTP listener is the one systemd passes, or none: not enabling
    # npud-http.socket is how the units turn the shim off (binding it here would open a port the
    # owner believes closed, to every local user).
    http_sock = activated.http if activated is not None else None
    if config.http and activated is None:
        try:
            http_sock = bind_http_socket(config.host, config.port)
        except StartupError:
            if activated is None:
                rpc_sock.close()
            raise
    return Listeners(rpc_sock, http_sock, token, owned, activated is not None)


class Daemon:
    """Owns the worker, the dispatcher and the listening sockets for one run."""

    def __init__(self, config: Config, loader: EngineLoader, listeners: Listeners,
                 busy_counter: BusyCounter | None, systemd: SystemdContext | None = None) -> None:
        self.config = config
        self.policy = PeerPolicy.for_this_process(config.allow_uids, config.allow_gids)
        npu_lock = NpuLock(config.lock_file, config.lock_timeout_s) if config.is_npu else None
        self.worker = Worker(config, loader, busy_counter, npu_lock)
        self.worker.on_crash = self._on_worker_crash
        self.metrics = Metrics()
        self.dispatcher = Dispatcher(config, self.worker, busy_counter,
                                     self.metrics)
        self.connections: set[RpcConnection] = set()
        self.lingering: set[RpcConnection] = set()
        self.connection_log = ConnectionLog(log)
        self.listeners = listeners
        self.http_shim = (HttpShim(self.dispatcher, config, listeners.http_token, listeners.http.getsockname())
                          if listeners.http is not None else None)
        self.systemd = systemd or SystemdContext()
        #: On the NPU without the busy counter: say so wherever the owner looks (log, STATUS).
        self._unverified = config.is_npu and busy_counter is None
        self.exit_code = EXIT_OK
        self._background: set[asyncio.Task[None]] = set()
        self._servers: list[asyncio.AbstractServer] = []
        self._stop: asyncio.Event | None = None
        self._status_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("daemon is not running")
        return self._loop

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_stop(self) -> None:
        """Ask :meth:`serve` to shut down (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    @property
    def active_connections(self) -> int:
        http = self.http_shim.active_connections if self.http_shim is not None else 0
        return len(self.connections) + http

    def _on_worker_crash(self) -> None:
        self.exit_code = EXIT_WORKER_CRASHED
        self.request_stop()

    # ------------------------------------------------------------ serve

    async def serve(self, on_ready: Callable[[], None] | None = None, handle_signals: bool = False) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._status_event = status_event = asyncio.Event()
        loop = self._loop
        self.worker.on_status_change = lambda: _call_soon(loop, status_event.set)
        self.connection_log.attach(self._loop.call_later)
        notifier = self.systemd.notifier
        # Handlers first: a SIGTERM that arrives once we serve (or once the log says "ready",
        # which the worker thread writes) must shut down gracefully, not kill the process.
        restore = self._install_signal_handlers() if handle_signals else None
        servers = self._servers
        try:
            servers.append(await self._loop.create_unix_server(lambda: RpcConnection(self), sock=self.listeners.rpc))
            if self.http_shim is not None and self.listeners.http is not None:
                servers.append(await asyncio.start_server(self.http_shim.handle_connection, sock=self.listeners.http))
            # Listening first, loading second: health answers "loading" while the model compiles.
            self._log_listening()
            self.worker.start()
            first_status = self._status_line(self.worker.snapshot())
            notifier.notify("READY=1", f"STATUS={first_status}")
            self.spawn(self._report_status(first_status))
            if self.systemd.watchdog_interval_s is not None:
                self.spawn(self._feed_watchdog(self.systemd.watchdog_interval_s))
            if self.config.exit_idle_after_s is not None:
                self.spawn(self._exit_when_idle(self.config.exit_idle_after_s))
            if on_ready is not None:
                on_ready()
            await self._stop.wait()
            log.info("shutting down")
            timeout_us = int((self.config.shutdown_timeout_s + 5) * 1_000_000)
            notifier.notify("STOPPING=1", "STATUS=shutting down", f"EXTEND_TIMEOUT_USEC={timeout_us}")
            await self._shutdown(servers)
        finally:
            if restore is not None:
                restore()
            if self.listeners.owned is not None:
                self.listeners.owned.remove()  # only if it is still our socket
            notifier.close()

    def _log_listening(self) -> None:
        where = "socket-activated fds" if self.listeners.activated else self.config.socket
        # The bound address (--host ::1 or 127.0.0.2, or systemd's socket), not a default.
        http = f", http {authority(self.listeners.http.getsockname())}" if self.listeners.http else ""
        log.info("npud %s listening on %s%s (device %s, model %s)",
                 __version__, where, http, self.config.device_label, self.config.model)
        if self._unverified:
            log.warning("--no-busy-check: results are not verified to have run on the NPU "
                        "(they carry \"verified\": false)")

    def _status_line(self, snap: WorkerSnapshot) -> str:
        """systemd's STATUS=: one line (a newline would end the sd_notify field)."""
        return one_line(self._status_text(snap))

    def _status_text(self, snap: WorkerSnapshot) -> str:
        if snap.status == "loading":
            attempt = f" (attempt {snap.load_attempts})" if snap.load_attempts > 1 else ""
            return f"loading {self.config.model} on {self.config.device_label}{attempt}"
        if snap.status == "error":
            if snap.retry_in_s is not None:
                # Whole seconds: the line is re-sent only when it changes, at most once a second.
                return (f"model failed to load (attempt {snap.load_attempts}), retrying in "
                        f"{math.ceil(snap.retry_in_s)}s: {snap.error}")
            return f"model failed to load: {snap.error}"
        running = ", 1 running" if snap.running else ""
        ready = "ready (NPU emulated on the CPU)" if self.config.npu_emulation else "ready"
        unverified = ", NPU use NOT verified (--no-busy-check)" if self._unverified else ""
        return (f"{ready}, {snap.queue_depth} queued{running}, {snap.jobs_served} jobs served, "
                f"{snap.jobs_failed} failed, {snap.jobs_cancelled} cancelled{unverified}")

    async def _report_status(self, last: str = "") -> None:
        """STATUS= whenever the line changes (checked every second, and at once when the worker
        reports a load status change); EXTEND_TIMEOUT_USEC while the model loads."""
        notifier = self.systemd.notifier
        while True:
            if self._status_event is not None:
                self._status_event.clear()  # before the snapshot: a later change sets it again
            snap = self.worker.snapshot()
            line = self._status_line(snap)
            if snap.status == "loading":
                # An NPU compile can take minutes: keep systemd from timing us out meanwhile.
                notifier.notify(f"EXTEND_TIMEOUT_USEC={int(LOAD_EXTEND_S * 1_000_000)}")
            if line != last:
                notifier.notify(f"STATUS={line}")
                last = line
            # Woken early by a load status change (a failure, a retry): STATUS follows at once.
            if self._status_event is None:
                await asyncio.sleep(STATUS_INTERVAL_S)
                continue
            try:
                await asyncio.wait_for(self._status_event.wait(), STATUS_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    async def _feed_watchdog(self, interval_s: float) -> None:
        """WATCHDOG=1 only while the worker is alive and not stuck: a hung worker lets it fire."""
        while True:
            if self.worker.is_responsive():
                self.systemd.notifier.notify("WATCHDOG=1")
            else:
                log.error("worker unresponsive: not feeding the systemd watchdog")
            await asyncio.sleep(interval_s)

    async def _exit_when_idle(self, idle_after_s: float) -> None:
        """Exit after ``idle_after_s`` with no connection and no job, giving the NPU back.

        Only with socket activation: systemd keeps the listening socket and starts a fresh daemon
        for the next connection. To lose nothing, accepting stops first; a connection accepted
        just before that is still served normally, and the daemon exits once it is gone. Anything
        that connects later waits in the listening socket's backlog for the next instance.
        """
        tick = min(1.0, idle_after_s / 4)
        idle_since: float | None = None
        while idle_since is None or time.monotonic() - idle_since < idle_after_s:
            await asyncio.sleep(tick)
            busy = self.active_connections > 0 or not self.worker.idle
            idle_since = None if busy else (idle_since or time.monotonic())
        for server in self._servers:
            server.close()
        log.info("idle for %.0fs: exiting (systemd starts npud again on the next connection)", idle_after_s)
        while self.active_connections > 0 or not self.worker.idle:
            await asyncio.sleep(tick)
        if self._stop is not None:
            self._stop.set()

    async def _shutdown(self, servers: list[asyncio.AbstractServer]) -> None:
        """Stop accepting, fail queued jobs, give the running one until the deadline (then stop
        it), deliver every reply, close. Every job gets an answer; nothing waits past the deadline
        (plus REPLY_FLUSH_S to write the last replies)."""
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        for server in servers:
            server.close()  # stop accepting; existing connections stay to receive their replies
        self.worker.stop()  # queued jobs fail with ShuttingDown at once; none starts from now on
        await self._finish_running_job(deadline)
        # Both transports drain at once: one after the other could wait twice the deadline.
        drains = [self._drain_socket_connections(deadline)]
        if self.http_shim is not None:
            drains.append(self.http_shim.shutdown(deadline))
        await asyncio.gather(*drains)
        await self._close_socket_connections()
        self.connection_log.flush()
        for task in list(self._background):
            task.cancel()

    async def _finish_running_job(self, deadline: float) -> None:
        """Let the running job finish until ``deadline``; then stop it and answer it with -32006."""
        timeout = self.config.shutdown_timeout_s
        if await asyncio.to_thread(self.worker.join, max(0.0, deadline - time.monotonic())):
            return
        error = ShuttingDown(f"daemon is shutting down; the running job was stopped after "
                             f"--shutdown-timeout {timeout:g}s")
        stopped = self.worker.stop_running(error)
        if stopped == "answered":
            log.warning("running job did not finish within %gs of shutdown: stopped and answered with "
                        "-32006", timeout)
        elif stopped == "already_answered":  # cancelled, its deadline or its client gone: answered then
            log.warning("running job, already answered, had not stopped within %gs of shutdown: "
                        "stopping it", timeout)
        else:
            log.warning("the model load did not finish within %gs of shutdown; exiting anyway", timeout)
        # A live generation stops at its next token; a hung one is left to os._exit in run().
        await asyncio.to_thread(self.worker.join, STOP_GRACE_S)

    async def _drain_socket_connections(self, deadline: float) -> None:
        """Wait for the in-flight requests of socket connections, so their replies are written."""
        pending = [asyncio.ensure_future(conn.drain()) for conn in list(self.connections)]
        if pending:
            await asyncio.wait(pending, timeout=max(REPLY_FLUSH_S, deadline - time.monotonic()))

    async def _close_socket_connections(self) -> None:
        """Close every connection once its replies are written; a client too slow to read them
        within REPLY_FLUSH_S is aborted (the loop ends next, and unwritten replies with it)."""
        for conn in list(self.connections):
            conn.close()
        for conn in list(self.lingering):
            conn.abort_or_close()
        give_up = time.monotonic() + REPLY_FLUSH_S
        while self.connections and time.monotonic() < give_up:
            await asyncio.sleep(CLOSE_POLL_S)
        for conn in list(self.connections):
            conn.abort()

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = self.loop
        signals = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.getsignal(sig) for sig in signals}
        received = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal received
            received += 1
            if received > 1:
                log.warning("second %s: exiting at once", sig.name)
                logging.shutdown()
                os._exit(1)
            log.info("received %s", sig.name)
            if self._stop is not None:
                self._stop.set()

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)

        def restore() -> None:
            for sig in signals:
                loop.remove_signal_handler(sig)
                signal.signal(sig, previous[sig])

        return restore


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(text.split())


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Schedule ``callback`` on ``loop`` from another thread; a closed loop (exiting) is ignored."""
    try:
        loop.call_soon_threadsafe(callback)
    except RuntimeError:
        pass


def run(config: Config, loader: EngineLoader, systemd: SystemdContext | None = None) -> int:
    """Start, serve until told to stop, shut down. Returns the process exit code."""
    systemd = systemd or SystemdContext()
    try:
        if config.exit_idle_after_s is not None and systemd.activated is None:
            raise StartupError("--exit-idle-after needs socket activation: without it the socket "
                               "would vanish with the daemon and clients would be refused")
        namespace_problem = allow_list_problem(*read_id_maps(), config.allow_uids, config.allow_gids)
        if namespace_problem is not None:
            raise StartupError(namespace_problem)
        try:
            loader.preflight(config)
        except DeviceUnavailable as exc:
            raise StartupError(explain_missing_device(config, exc)) from None
        busy_counter = prepare_busy_counter(config, platform.release())
        check_npu_lock(config)
        listeners = open_listeners(config, systemd.activated)
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        systemd.notifier.notify(f"STATUS=cannot start: {one_line(str(exc))}")
        return EXIT_STARTUP_FAILED
    daemon = Daemon(config, loader, listeners, busy_counter, systemd)
    asyncio.run(daemon.serve(handle_signals=True))
    if not daemon.worker.join(0):
        # A generation is stuck inside OpenVINO; interpreter teardown would wait on it forever.
        logging.shutdown()
        os._exit(daemon.exit_code)
    return daemon.exit_code
