"""SO_PEERCRED on real sockets, and the allow policy as a table."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from npud.peercred import PeerCred, PeerPolicy, allow_list_problem, parse_id_map, peer_credentials

from .conftest import npud_command, unique_socket


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


# ---------------------------------------------------------------- user namespaces

HOST_MAP = "         0          0 4294967295\n"
PRIVATE_USERS_MAP = "         0          0          1\n      1000       1000          1\n"  # systemd PrivateUsers=


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        (HOST_MAP, ((0, 0, 4294967295),)),
        (PRIVATE_USERS_MAP, ((0, 0, 1), (1000, 1000, 1))),
        ("0 1000 1\n", ((0, 1000, 1),)),  # unshare --user --map-root-user
        ("", ()),  # a namespace whose map was never written
    ],
)
def test_parse_id_map(text: str, entries: tuple[tuple[int, int, int], ...]) -> None:
    assert parse_id_map(text) == entries


@pytest.mark.parametrize("text", ["0 0\n", "0 0 1 2\n", "a b c\n", "0 -1 5\n"])
def test_parse_id_map_refuses_malformed_lines(text: str) -> None:
    with pytest.raises(ValueError, match="malformed id map line"):
        parse_id_map(text)


@pytest.mark.parametrize(
    ("uid_map", "gid_map", "uids", "gids", "refused"),
    [
        (HOST_MAP, HOST_MAP, (1001,), (), False),  # the host namespace: allow-lists work
        (None, None, (1001,), (50,), False),  # no user namespaces in the kernel
        (PRIVATE_USERS_MAP, PRIVATE_USERS_MAP, (), (), False),  # nothing to allow: serving yourself works
        (PRIVATE_USERS_MAP, PRIVATE_USERS_MAP, (1001,), (), True),
        (PRIVATE_USERS_MAP, PRIVATE_USERS_MAP, (), (50,), True),
        (HOST_MAP, PRIVATE_USERS_MAP, (), (50,), True),  # either map
        ("0 1000 1\n", "0 1000 1\n", (1001,), (), True),
        ("garbage\n", HOST_MAP, (1001,), (), True),  # unreadable: refuse rather than guess
    ],
)
def test_allow_lists_need_the_host_user_namespace(uid_map: str | None, gid_map: str | None,
                                                  uids: tuple[int, ...], gids: tuple[int, ...], refused: bool) -> None:
    problem = allow_list_problem(uid_map, gid_map, uids, gids)
    assert (problem is not None) == refused
    if problem is not None and "garbage" not in str(uid_map):
        assert "user namespace" in problem and "65534" in problem and "system unit" in problem
        assert 'README: "Serving other users"' in problem


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --user --map-root-user is not available here")
def test_npud_in_a_user_namespace_refuses_allow_lists(tmp_path: Path) -> None:
    """A real npud started in a user namespace (as systemd's PrivateUsers= does) refuses
    --allow-uid with the reason; without an allow-list it gets past that check."""
    base = ["unshare", "--user", "--map-root-user", *npud_command("--model", str(tmp_path / "absent"),
            "--device", "CPU", "--socket", unique_socket(), "--no-http")]
    env = {**os.environ, "HOME": str(tmp_path)}
    refused = subprocess.run([*base, "--allow-uid", "1234"], capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode == 1
    assert "--allow-uid/--allow-gid cannot work here: npud runs in a user namespace" in refused.stderr
    assert "/proc/self/uid_map: 0 " in refused.stderr and "system unit" in refused.stderr
    served = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert served.returncode == 1 and "no such file or folder" in served.stderr  # the next check
    assert "user namespace" not in served.stderr
