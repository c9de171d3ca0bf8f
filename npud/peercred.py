"""Peer credentials of Unix socket connections, and who may talk to the daemon.

An abstract socket has no file and therefore no permissions: anyone in the network namespace
can connect. ``SO_PEERCRED`` (credentials captured by the kernel at ``connect``) is the only
gate, so it is checked on every connection before a single byte is read.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# SO_PEERGROUPS (Linux >= 4.13) lists the peer's supplementary groups; the socket module has
# no constant for it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")
# Python's getsockopt() reads at most 1024 bytes: 256 groups. A peer in more groups (common for
# directory-service accounts) is read through libc with the size the kernel asks for, up to
# NGROUPS_MAX (65536) groups.
_GROUPS_FAST_BYTES = 1024
_GID_BYTES = 4
NGROUPS_MAX = 65536


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def peer_credentials(sock: socket.socket) -> PeerCred:
    """The kernel's record of who connected (raises OSError on a non-Unix socket)."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCred(pid=pid, uid=uid, gid=gid, groups=_peer_groups(sock))


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups; () where the kernel cannot say (then only the primary
    group counts, so a group rule refuses rather than admits)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_FAST_BYTES)
    except OSError as exc:
        if exc.errno != errno.ERANGE:
            return ()
        raw = _peer_groups_large(sock.fileno())
    count = len(raw) // _GID_BYTES
    return struct.unpack(f"{count}I", raw[: count * _GID_BYTES])


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _peer_groups_large(fd: int) -> bytes:
    """SO_PEERGROUPS for more than 256 groups. On ERANGE the kernel stores the size it needs in
    ``optlen``; the peer's credentials are fixed at connect(), so the second call fits."""
    size = ctypes.c_uint32(0)
    libc = _libc()
    for _ in range(3):
        buffer = ctypes.create_string_buffer(max(size.value, 1))
        if libc.getsockopt(fd, socket.SOL_SOCKET, SO_PEERGROUPS, buffer, ctypes.byref(size)) == 0:
            return buffer.raw[: size.value]
        if ctypes.get_errno() != errno.ERANGE or not 0 < size.value <= NGROUPS_MAX * _GID_BYTES:
            return b""
    return b""


@dataclass(frozen=True)
class PeerPolicy:
    """Allowed: the daemon's own uid, root, and the configured uids and groups."""

    own_uid: int
    allow_uids: frozenset[int] = frozenset()
    allow_gids: frozenset[int] = frozenset()

    @classmethod
    def for_this_process(cls, allow_uids: tuple[int, ...], allow_gids: tuple[int, ...]) -> PeerPolicy:
        return cls(own_uid=os.getuid(), allow_uids=frozenset(allow_uids), allow_gids=frozenset(allow_gids))

    def allows(self, peer: PeerCred) -> bool:
        if peer.uid in (0, self.own_uid) or peer.uid in self.allow_uids:
            return True
        groups = {peer.gid, *peer.groups}
        return not groups.isdisjoint(self.allow_gids)


# ---------------------------------------------------------------- user namespaces

# The map of the initial user namespace: every id is itself. (inside, outside, count)
IDENTITY_MAP = ((0, 0, 4294967295),)
IdMap = tuple[tuple[int, int, int], ...]


def parse_id_map(text: str) -> IdMap:
    """Parse /proc/<pid>/uid_map or gid_map: lines of "inside outside count"."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise ValueError(f"malformed id map line {line.strip()!r}")
        inside, outside, count = (int(f) for f in fields)
        entries.append((inside, outside, count))
    return tuple(entries)


def allow_list_problem(uid_map: str | None, gid_map: str | None,
                       allow_uids: Sequence[int], allow_gids: Sequence[int]) -> str | None:
    """Why ``--allow-uid``/``--allow-gid`` cannot work in this user namespace, or None.

    In a user namespace whose map is not the identity, SO_PEERCRED reports a peer from outside it
    as the overflow id (65534) when its id is not mapped: an allow-list then never matches. Newer
    systemd puts user units with sandboxing options in such a namespace (PrivateUsers= is implied),
    so other users would be refused although listed. A missing map (no user namespaces in the
    kernel) is the identity.
    """
    if not allow_uids and not allow_gids:
        return None
    for kind, text in (("uid", uid_map), ("gid", gid_map)):
        if text is None:
            continue
        try:
            entries = parse_id_map(text)
        except ValueError as exc:
            return f"cannot read /proc/self/{kind}_map ({exc}) to check that --allow-uid/--allow-gid can work"
        if entries != IDENTITY_MAP:
            shown = "; ".join(" ".join(map(str, e)) for e in entries) or "empty"
            return (
                f"--allow-uid/--allow-gid cannot work here: npud runs in a user namespace "
                f"(/proc/self/{kind}_map: {shown}), where other users' processes appear as uid/gid "
                "65534 and never match an allow-list. systemd does this to user units with "
                "sandboxing (PrivateUsers= is implied). To serve other users run npud as a system "
                "unit (README: \"Serving other users\"); to serve only yourself drop --allow-uid/--allow-gid."
            )
    return None


def read_id_maps(proc_self: Path = Path("/proc/self")) -> tuple[str | None, str | None]:
    """This process's uid_map and gid_map (None where the kernel has none)."""

    def read(name: str) -> str | None:
        try:
            return (proc_self / name).read_text()
        except FileNotFoundError:
            return None

    return read("uid_map"), read("gid_map")
