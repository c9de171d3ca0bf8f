"""Which server a client may talk to: the defence against socket squatting.

``@npud`` is an abstract socket name: it has no file and no permissions, and while npud is not
running (not activated yet, restarting, stopped) *any* local user can bind it. A client that just
connected would then send its private text to that user and believe whatever comes back. So a
client checks the server right after ``connect`` and before sending a byte: ``SO_PEERCRED`` on
the client's side of a Unix socket is the kernel's record of the process that called ``listen``
on it. Trusted: the client's own uid, root (uid 0, which can read everything anyway, and which
is the uid a *system* socket unit's listener has), and the uids the user names with
``server_uids=`` or ``OV_GENAI_NPU_SERVER_UID`` (for npud running as a system service user).
"""

from __future__ import annotations

import os
import pwd
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import InvalidServerUid, ServerNotTrusted

SERVER_UID_ENV = "OV_GENAI_NPU_SERVER_UID"
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: What a caller may pass as ``server_uids``: a uid, uids or user names, or one comma-separated string.
ServerUids = Iterable[int | str] | str | int


@dataclass(frozen=True)
class ServerCred:
    pid: int
    uid: int
    gid: int


def server_credentials(sock: socket.socket) -> ServerCred:
    """Who listens at the other end of a connected Unix socket (pid 0: in another pid namespace)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return ServerCred(pid=pid, uid=uid, gid=gid)


def resolve_uid(entry: int | str) -> int:
    """A uid from a number or a user name (a system service user such as ``npud``)."""
    if isinstance(entry, int) and not isinstance(entry, bool):
        if entry < 0:
            raise InvalidServerUid(f"server uid {entry} is negative")
        return entry
    if not isinstance(entry, str):
        raise InvalidServerUid(f"server uid must be a number or a user name, not {entry!r}")
    text = entry.strip()
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise InvalidServerUid(f"server user {text!r} is neither a uid nor a known user name") from None


def parse_server_uids(value: ServerUids) -> frozenset[int]:
    """``"npud, 1001"`` or ``["npud", 1001]`` as uids; empty entries are ignored."""
    entries: Iterable[int | str]
    if isinstance(value, str):
        entries = value.split(",")
    elif isinstance(value, int):
        entries = (value,)
    else:
        entries = value
    return frozenset(resolve_uid(e) for e in entries if not (isinstance(e, str) and not e.strip()))


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


@dataclass(frozen=True)
class ServerTrust:
    """The uids a client accepts as its server: its own, root, and the configured ones."""

    own_uid: int
    extra_uids: frozenset[int] = frozenset()

    @classmethod
    def for_this_process(cls, server_uids: ServerUids | None = None,
                         environ: Mapping[str, str] | None = None) -> ServerTrust:
        """``server_uids`` if given, else ``$OV_GENAI_NPU_SERVER_UID``; resolved once, here."""
        if server_uids is None:
            env = os.environ if environ is None else environ
            server_uids = env.get(SERVER_UID_ENV, "")
        return cls(own_uid=os.getuid(), extra_uids=parse_server_uids(server_uids))

    def trusts(self, uid: int) -> bool:
        return uid in (0, self.own_uid) or uid in self.extra_uids

    def check(self, sock: socket.socket, socket_name: str) -> None:
        """Raise :class:`ServerNotTrusted` unless the listener on ``sock`` runs as a trusted uid."""
        server = server_credentials(sock)
        if not self.trusts(server.uid):
            raise ServerNotTrusted(self._refusal(server, socket_name), server.uid, server.gid, server.pid)

    def _refusal(self, server: ServerCred, socket_name: str) -> str:
        name = _user_name(server.uid)
        who = f"uid {server.uid}" + (f" ({name})" if name else "")
        trusted = ", ".join(str(uid) for uid in sorted({0, self.own_uid} | self.extra_uids))
        return (
            f"refusing to talk to the server on {socket_name}: it runs as {who}, pid {server.pid}, "
            f"and this client trusts only uids {trusted} (itself, root and {SERVER_UID_ENV}). Nothing was sent. "
            f"Another local user may be holding the name while npud is not running; if it is your npud "
            f"running as a system service user, trust that user with {SERVER_UID_ENV}={name or server.uid} "
            f"(npuctl --server-uid {name or server.uid})."
        )
