"""SO_PEERCRED on real sockets, and the allow policy as a table."""

from __future__ import annotations

import os
import socket

import pytest

from npud.peercred import PeerCred, PeerPolicy, peer_credentials


def test_credentials_of_a_real_unix_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        cred = peer_credentials(a)
    assert (cred.pid, cred.uid, cred.gid) == (os.getpid(), os.getuid(), os.getgid())


def test_socket_without_credentials_is_never_allowed() -> None:
    # Linux reports pid 0, uid/gid -1 for a socket with no peer: that must not pass the policy.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        cred = peer_credentials(s)
    assert cred.uid == -1
    assert not PeerPolicy(own_uid=os.getuid()).allows(cred)


POLICY = PeerPolicy(own_uid=1000, allow_uids=frozenset({1001}), allow_gids=frozenset({50}))


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        (PeerCred(1, 1000, 1000), True),  # the daemon's own uid
        (PeerCred(1, 0, 0), True),  # root
        (PeerCred(1, 1001, 1001), True),  # --allow-uid
        (PeerCred(1, 1002, 50), True),  # --allow-gid, primary group
        (PeerCred(1, 1002, 1002, (20, 50)), True),  # --allow-gid, supplementary group
        (PeerCred(1, 1002, 1002, (20,)), False),
        (PeerCred(1, 65534, 65534), False),
    ],
)
def test_policy(peer: PeerCred, allowed: bool) -> None:
    assert POLICY.allows(peer) is allowed
