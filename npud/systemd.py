"""systemd integration with the standard library only: socket activation and sd_notify.

Socket activation (sd_listen_fds(3)): systemd passes listening sockets as fds 3.. with
``LISTEN_PID``, ``LISTEN_FDS`` and ``LISTEN_FDNAMES``. The names (``FileDescriptorName=``) say
which fd is the JSON-RPC socket (``rpc``) and which the HTTP shim (``http``).

sd_notify(3): one datagram per message to ``$NOTIFY_SOCKET`` (a leading ``@`` means abstract).
Notification is best effort: without ``NOTIFY_SOCKET`` nothing happens and a failed send is
logged at debug, never fatal.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass

from .engine import StartupError

log = logging.getLogger("npud.systemd")

SD_LISTEN_FDS_START = 3
ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@dataclass
class ActivatedSockets:
    rpc: socket.socket
    http: socket.socket | None


def _socket_from_fd(fd: int, name: str) -> socket.socket:
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise StartupError(f"socket activation: fd {fd} ({name}) is not open: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"socket activation: fd {fd} ({name}) is not a socket")
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)  # CLOEXEC: children (none today) must not keep the listener
    if sock.type != socket.SOCK_STREAM:
        raise StartupError(f"socket activation: fd {fd} ({name}) is not a stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise StartupError(f"socket activation: fd {fd} ({name}) is not listening")
    sock.setblocking(False)
    return sock


_FAMILIES = {"rpc": (socket.AF_UNIX,), "http": (socket.AF_INET, socket.AF_INET6)}


def _role(sock: socket.socket, name: str) -> str:
    """``rpc`` or ``http``: by name when systemd names it, else by address family."""
    if name in _FAMILIES:
        if sock.family not in _FAMILIES[name]:
            raise StartupError(f"socket activation: fd named {name!r} has the wrong address family")
        role = name
    elif sock.family in _FAMILIES["rpc"]:
        role = "rpc"
    elif sock.family in _FAMILIES["http"]:
        role = "http"
    else:
        raise StartupError(f"socket activation: fd named {name!r} is neither a Unix nor a TCP socket")
    if role == "http":
        from .http import check_loopback  # the shim is local only, whoever bound the socket

        check_loopback(sock.getsockname()[0])
    return role


def listen_fds(environ: MutableMapping[str, str], pid: int | None = None) -> ActivatedSockets | None:
    """The sockets systemd passed us, or None when not socket-activated.

    The variables are removed from ``environ`` either way, so they are not inherited by anything
    the daemon might start and are not mistaken for ours by a later exec.
    """
    listen_pid = environ.get("LISTEN_PID")
    count_text = environ.get("LISTEN_FDS")
    names_text = environ.get("LISTEN_FDNAMES")
    for name in ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if listen_pid is None or count_text is None:
        return None
    if listen_pid != str(os.getpid() if pid is None else pid):
        return None  # meant for another process (we were exec'd by the real recipient)
    try:
        count = int(count_text)
    except ValueError:
        raise StartupError(f"socket activation: LISTEN_FDS={count_text!r} is not a number") from None
    names = names_text.split(":") if names_text else []
    if names and len(names) != count:
        raise StartupError(f"socket activation: {count} fds but {len(names)} names in LISTEN_FDNAMES")
    found: dict[str, socket.socket] = {}
    for index in range(count):
        fd = SD_LISTEN_FDS_START + index
        name = names[index] if names else "unknown"
        sock = _socket_from_fd(fd, name)
        role = _role(sock, name)
        if role in found:
            raise StartupError(f"socket activation: more than one {role} socket passed")
        found[role] = sock
    if "rpc" not in found:
        raise StartupError("socket activation: no Unix socket named 'rpc' was passed")
    return ActivatedSockets(rpc=found["rpc"], http=found.get("http"))


class Notifier:
    """Sends sd_notify datagrams; a no-op without ``NOTIFY_SOCKET``.

    Never blocks: notify() runs on the event loop, and a datagram to a receiver whose queue is full
    (systemd busy or stuck) would block the sender. Such a notification is dropped and counted;
    the first drop is logged as a warning.
    """

    def __init__(self, notify_socket: str | None) -> None:
        self._address: str | bytes | None = None
        if notify_socket:
            self._address = b"\0" + notify_socket[1:].encode() if notify_socket.startswith("@") else notify_socket
        self._sock: socket.socket | None = None
        #: Notifications dropped because the notify socket's queue was full.
        self.dropped = 0

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        # Not inherited further: a child that notified would confuse systemd.
        return cls(environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX,
                                           socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto("\n".join(lines).encode(), self._address)
            return True
        except BlockingIOError:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("systemd's notify socket is full: dropping notifications (STATUS, WATCHDOG) "
                            "rather than blocking the daemon")
            return False
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval_s(environ: MutableMapping[str, str], pid: int | None = None) -> float | None:
    """Half of ``WATCHDOG_USEC`` when the watchdog is meant for us, else None."""
    usec = environ.pop("WATCHDOG_USEC", None)
    owner = environ.pop("WATCHDOG_PID", None)
    if usec is None:
        return None
    if owner is not None and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None
