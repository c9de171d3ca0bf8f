"""Peer credentials of Unix socket connections, and who may talk to the daemon.

An abstract socket has no file and therefore no permissions: anyone in the network namespace
can connect. ``SO_PEERCRED`` (credentials captured by the kernel at ``connect``) is the only
gate, so it is checked on every connection before a single byte is read.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

# SO_PEERGROUPS (Linux >= 4.13) lists the peer's supplementary groups; the socket module has
# no constant for it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("3i")


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
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 256)
    except OSError:
        return ()
    count = len(raw) // 4
    return struct.unpack(f"{count}I", raw[: count * 4])


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
