"""Attack review (issue 14 follow-up): the HTTP shim, through real TCP connections.

These tests fail on purpose until the findings are fixed; see the attack14 report.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from npud.testing.fake import FakeBehaviour, FakeLoader

from .test_http_boundaries import GENERATE, JOB, Raw, health, wait_for


def test_head_is_answered_405_not_dropped(daemon_factory: Any) -> None:
    """CONTRACT §11: wrong method -> 405 with Allow. A HEAD request gets no reply at all: the
    shim builds a 405 with a body, h11 refuses to send a body in answer to HEAD
    (LocalProtocolError), and _send() drops the connection. curl -I: 'Empty reply from server'."""
    daemon = daemon_factory(http=True)
    with Raw(daemon.http_port) as raw:
        raw.send(raw.request("HEAD", "/healthz"))
        reply = raw.response()
    assert reply is not None, "HEAD /healthz: the connection was closed without any reply"
    assert reply.status in (200, 405)


def test_over_the_connection_limit_a_foreign_host_still_gets_421(daemon_factory: Any) -> None:
    """CONTRACT §9/§11: a request whose Host is not loopback is refused with 421 and 'nothing is
    returned but the error'. Over --max-connections the 503 refusal is sent after reading the head
    but without the Host/Origin/Sec-Fetch checks, so a DNS-rebinding page (Host: attacker.example)
    reads the daemon's live connection counts (data.limit, data.actual)."""
    daemon = daemon_factory(http=True, max_connections=1)
    with Raw(daemon.http_port) as holder:
        holder.send(b"")
        wait_for(lambda: daemon.daemon.http_shim is not None and daemon.daemon.http_shim.active_connections == 1,
                 "the first connection to be counted")
        with Raw(daemon.http_port) as page:
            reply = page.exchange("GET", "/healthz", host=f"attacker.example:{daemon.http_port}",
                                  headers={"Origin": f"http://attacker.example:{daemon.http_port}",
                                           "Sec-Fetch-Site": "cross-site"})
    assert reply.status == 421, f"{reply.status} {reply.body!r}"


def test_closing_the_connection_cancels_the_job_even_after_pipelined_bytes(daemon_factory: Any) -> None:
    """CONTRACT §11: 'Closing the connection cancels its job ... Bytes of a pipelined next request
    that arrive meanwhile are kept'. Once the client has sent more than --max-line-bytes + 16 KiB
    while its job runs, the shim stops watching the connection; a close then goes unnoticed and
    the job runs on for nobody until its deadline (120 s for a summary)."""
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    try:
        raw = Raw(daemon.http_port)
        raw.send(raw.request("POST", GENERATE, JOB))
        assert behaviour.started.wait(10)
        raw.send(b"G" * 400_000)  # a careless client's next "request", pipelined
        raw.sock.close()
        wait_for(lambda: not health(daemon)["queue"]["running"], "the job to be cancelled by the hang-up",
                 bound_s=10)
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("0123456789abcdef-token\n")
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


def test_the_bearer_scheme_is_case_insensitive(daemon_factory: Any, token_file: Path) -> None:
    """RFC 7235 §2.1 / RFC 6750: the auth-scheme is case-insensitive; 'bearer <token>' with the
    right token gets 401."""
    daemon = daemon_factory(http=True, token_file=str(token_file))
    with Raw(daemon.http_port) as raw:
        reply = raw.exchange("GET", "/healthz", headers={"Authorization": "bearer 0123456789abcdef-token"})
    assert reply.status == 200, f"{reply.status} {reply.body!r}"


def test_the_listening_log_line_names_the_bound_http_address(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """`npud ... listening on @npud, http 127.0.0.1:PORT` is hard-coded: with --host ::1 (or
    127.0.0.2, or a socket from systemd) the log names an address nothing listens on."""
    if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
        pytest.skip("no IPv6 loopback")
    caplog.set_level(logging.INFO, logger="npud")
    daemon = daemon_factory(http=True, host="::1")
    line = next(r.getMessage() for r in caplog.records if "listening on" in r.getMessage())
    assert f"[::1]:{daemon.http_port}" in line, line
