"""A minimal socket activator for tests: what systemd's .socket units do, in a thread.

It binds the listening sockets, and whenever one is readable while no daemon runs, starts the
daemon with them as fds 3.. (``LISTEN_FDS``, ``LISTEN_FDNAMES``, ``LISTEN_PID``). Unlike
``systemd-socket-activate`` it starts a new daemon after the previous one exited, which is what
idle exit relies on.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence

# Runs in the child: move the passed fds to 3.., set LISTEN_PID to its own pid (which exec keeps).
_EXEC_WITH_FDS = """
import os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
high = [os.dup(fd) + 0 for fd in fds]
high = [os.dup2(fd, 200 + i) or 200 + i for i, fd in enumerate(high)]
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


class Activator:
    def __init__(self, sockets: Sequence[tuple[str, socket.socket]], command: Sequence[str],
                 env: dict[str, str] | None = None) -> None:
        self.sockets = list(sockets)
        self.command = list(command)
        self.env = dict(os.environ if env is None else env)
        self.env["LISTEN_FDNAMES"] = ":".join(name for name, _ in self.sockets)
        self.starts = 0
        self.exit_codes: list[int] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activator", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        fds = [sock.fileno() for _, sock in self.sockets]
        self.starts += 1
        return subprocess.Popen(
            [sys.executable, "-c", _EXEC_WITH_FDS, ",".join(map(str, fds)), *self.command],
            env=self.env, pass_fds=fds, stderr=subprocess.DEVNULL,
        )

    def run_once(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Start the daemon once with the sockets, without waiting for a client, and wait for it
        to exit (for a daemon expected to refuse to start); its stderr is returned."""
        fds = [sock.fileno() for _, sock in self.sockets]
        self.starts += 1
        return subprocess.run(
            [sys.executable, "-c", _EXEC_WITH_FDS, ",".join(map(str, fds)), *self.command],
            env=self.env, pass_fds=fds, capture_output=True, text=True, timeout=timeout,
        )

    def _run(self) -> None:
        poller = select.poll()
        for _, sock in self.sockets:
            poller.register(sock.fileno(), select.POLLIN)
        while not self._stop.is_set():
            if self.process is not None:
                try:
                    self.exit_codes.append(self.process.wait(0.02))
                    self.process = None
                except subprocess.TimeoutExpired:
                    continue
            if poller.poll(20):  # a client waits in a backlog: start the daemon for it
                self.process = self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        if self.process is not None:
            self.process.terminate()
            self.exit_codes.append(self.process.wait(30))
        for _, sock in self.sockets:
            sock.close()
