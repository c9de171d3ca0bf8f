"""The HTTP shim's boundaries through real TCP connections, raw sockets where exact bytes matter:
Host/Origin (DNS rebinding), connection limits, deadlines, head size, cancel on hang-up, shutdown."""

from __future__ import annotations

import http.client
import json
import logging
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from npud import http as shim
from npud.http import MAX_HEAD_BYTES, loopback_authority, loopback_origin
from npud.testing.activator import Activator
from npud.testing.fake import FakeBehaviour, FakeLoader

from .conftest import RunningDaemon, unique_socket
from .test_systemd import FAKE_DAEMON, daemon_env

JOB = json.dumps({"job": "title", "input": "x"}).encode()
GENERATE = "/v1/worker/generate"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Raw:
    """A TCP connection to the shim that sends exactly the bytes given and parses replies."""

    def __init__(self, port: int, timeout: float = 30, address: str = "127.0.0.1") -> None:
        self.port = port
        self.sock = socket.create_connection((address, port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str, path: str, body: bytes = b"", host: str | None = None,
                headers: dict[str, str] | None = None, version: str = "1.1") -> bytes:
        """The bytes of one request; ``host=None`` means ``127.0.0.1:<port>``, ``""`` no Host at all."""
        lines = [f"{method} {path} HTTP/{version}"]
        host = f"127.0.0.1:{self.port}" if host is None else host
        if host:
            lines.append(f"Host: {host}")
        if body:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def exchange(self, method: str, path: str, body: bytes = b"", **kwargs: Any) -> Response:
        self.send(self.request(method, path, body, **kwargs))
        reply = self.response()
        assert reply is not None, "the shim closed the connection without a reply"
        return reply

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def response(self, to_head: bool = False) -> Response | None:
        """The next response, or None if the connection ended first. ``to_head``: the answer to a
        HEAD request, which has no body whatever its Content-Length says."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
        length = 0 if to_head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                return None
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return Response(int(status_line.split()[1]), headers, body)

    def closed_quietly(self) -> bool:
        """True if the shim closed (or reset) the connection without sending anything more."""
        try:
            return not self.buffer and self.sock.recv(65536) == b""
        except ConnectionResetError:
            return not self.buffer


def health(daemon: RunningDaemon) -> dict[str, Any]:
    return daemon.call("health")["result"]  # over the Unix socket: never affected by the HTTP limits


def wait_for(condition: Any, what: str, bound_s: float = 20.0) -> None:
    """Poll ``condition`` (a cheap call) until true; the bound only matters when it never is."""
    give_up = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------- Host and Origin (DNS rebinding)


def test_host_and_origin_rules_table() -> None:
    port = 18820
    accepted = [f"127.0.0.1:{port}", f"127.8.9.10:{port}", f"localhost:{port}", f"LocalHost:{port}",
                f"app.localhost:{port}", f"a-b.c.localhost:{port}", f"[::1]:{port}", f"[0:0:0:0:0:0:0:1]:{port}"]
    refused = ["attacker.example", f"attacker.example:{port}", "127.0.0.1", "localhost", "[::1]",
               f"127.0.0.1:{port + 1}", f"localhost:{port + 1}", f"10.0.0.1:{port}", f"0.0.0.0:{port}",
               f"127.0.0.1.nip.io:{port}", f"localhost.attacker.example:{port}", f"localhost.:{port}",
               f"attacker-localhost:{port}", f"[::ffff:127.0.0.1]:{port}", f"[::1%lo]:{port}", f"[::2]:{port}",
               f"127.1:{port}", f"2130706433:{port}", f"0x7f.0.0.1:{port}", f"::1:{port}", f"[::1]{port}",
               f"127.0.0.1:{port}:{port}", f"127.0.0.1:+{port}", f"127.0.0.1:", f"user@127.0.0.1:{port}",
               f"-x.localhost:{port}", f"a..localhost:{port}", ""]
    assert [h for h in accepted if not loopback_authority(h.encode(), port)] == []
    assert [h for h in refused if loopback_authority(h.encode(), port)] == []
    assert not loopback_authority(f"l\xf6calhost:{port}".encode("latin-1"), port)
    assert loopback_origin(f"http://localhost:{port}".encode(), port)
    assert loopback_origin(f"HTTP://127.0.0.1:{port}".encode(), port)
    for origin in ["null", "http://attacker.example", f"http://attacker.example:{port}", f"https://localhost:{port}",
                   "http://localhost", f"http://localhost:{port}/", f"http://localhost:{port + 1}", "file://",
                   f"ws://localhost:{port}", ""]:
        assert not loopback_origin(origin.encode(), port), origin


def test_dns_rebinding_page_can_neither_run_jobs_nor_read_anything(daemon_factory: Any) -> None:
    """What a page at http://attacker.example:PORT sends once its name resolves to 127.0.0.1:
    same-origin for the browser (no preflight, no CORS), so only Host tells the shim."""
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    port = daemon.http_port
    page = f"attacker.example:{port}"
    for method, path, body in (("POST", GENERATE, JOB), ("GET", "/healthz", b""), ("GET", "/models", b""),
                               ("GET", "/metrics", b""), ("GET", "/openapi.json", b"")):
        with Raw(port) as conn:
            reply = conn.exchange(method, path, body, host=page, headers={"Origin": f"http://{page}"})
            assert reply.status == 421, path
            assert reply.json()["error"]["code"] == -32600 and reply.headers["connection"] == "close"
            assert conn.closed_quietly()
    assert behaviour.calls == []  # no job ran
    stats = health(daemon)["stats"]
    assert stats["rejections"]["http_host"] == 5
    assert stats["requests"] == {}  # nothing reached the dispatcher


def test_only_loopback_hosts_on_the_bound_port_are_served(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    port = daemon.http_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"npud.localhost:{port}",
                 f"127.0.0.2:{port}", f"[::1]:{port}"):
        with Raw(port) as conn:
            assert conn.exchange("GET", "/healthz", host=host).status == 200, host
    for host in ("localhost", f"localhost:{port + 1}", f"127.0.0.1:{port - 1}", "127.0.0.1",
                 f"192.168.1.10:{port}", f"evil.example:{port}", f"localhost.evil.example:{port}"):
        with Raw(port) as conn:
            assert conn.exchange("POST", GENERATE, JOB, host=host).status == 421, host
    assert behaviour.calls == []


def test_origin_must_be_loopback_on_the_bound_port(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    port = daemon.http_port
    for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://[::1]:{port}"):
        with Raw(port) as conn:
            assert conn.exchange("POST", GENERATE, JOB, headers={"Origin": origin}).status == 200, origin
    assert len(behaviour.calls) == 3
    # null: a sandboxed iframe (or a file: page); the others: another site, or another local
    # web app (another port), or https (not us).
    for origin in ("null", "http://attacker.example", f"http://localhost:{port + 1}", "http://localhost",
                   f"https://localhost:{port}", f"http://localhost:{port}/x"):
        with Raw(port) as conn:
            reply = conn.exchange("POST", GENERATE, JOB, headers={"Origin": origin})
            assert reply.status == 403 and reply.json()["error"]["code"] == -32600, origin
    with Raw(port) as conn:  # two Origin headers: refused
        twice = f"Origin: http://localhost:{port}\r\nOrigin: null\r\n\r\n".encode()
        conn.send(conn.request("GET", "/healthz")[:-2] + twice)
        assert conn.response().status == 403  # type: ignore[union-attr]
    assert len(behaviour.calls) == 3
    # A cross-site GET (an <img>, a link) carries no Origin; the browser still says where it came from.
    for site, status in (("cross-site", 403), ("same-site", 403), ("same-origin", 200), ("none", 200)):
        with Raw(port) as conn:
            assert conn.exchange("GET", "/healthz", headers={"Sec-Fetch-Site": site}).status == status, site
    assert health(daemon)["stats"]["rejections"]["http_origin"] == 9


def test_a_repeated_sec_fetch_site_is_refused_like_a_repeated_origin(daemon_factory: Any) -> None:
    """Repeated Host and Origin headers are refused; a repeated Sec-Fetch-Site took the last value,
    so 'cross-site' followed by 'same-origin' passed. Now any repetition is refused (403)."""
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    for values in (("cross-site", "same-origin"), ("same-origin", "same-origin")):
        with Raw(daemon.http_port) as conn:
            twice = "".join(f"Sec-Fetch-Site: {v}\r\n" for v in values).encode() + b"\r\n"
            conn.send(conn.request("POST", GENERATE, JOB)[:-len(JOB) - 2] + twice + JOB)
            reply = conn.response()
            assert reply is not None and reply.status == 403, values
    assert behaviour.calls == []


def test_an_unknown_transfer_encoding_gets_501(daemon_factory: Any) -> None:
    """RFC 9112 §6.1: a transfer coding the server does not understand is 501 (documented with
    the other statuses, CONTRACT §11); nothing is dispatched."""
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    with Raw(daemon.http_port) as conn:
        reply = conn.exchange("POST", GENERATE, b"", headers={"Transfer-Encoding": "gzip, chunked",
                                                              "Content-Type": "application/json"})
    assert reply.status == 501 and "Transfer-Encoding" in reply.json()["error"]["message"]
    assert reply.headers["connection"] == "close" and behaviour.calls == []


def test_head_is_answered_405_without_a_body(daemon_factory: Any) -> None:
    """CONTRACT §11: wrong method -> 405 with Allow. A HEAD request got no reply at all: the shim
    built a 405 with a body, h11 refuses to send a body in answer to HEAD, and the connection was
    dropped (curl -I: 'Empty reply from server'). The reply to HEAD has its head only."""
    daemon = daemon_factory(http=True)
    with Raw(daemon.http_port) as raw:
        for path, status in (("/healthz", 405), ("/v1/worker/generate", 405), ("/nope", 404)):
            raw.send(raw.request("HEAD", path))
            reply = raw.response(to_head=True)
            assert reply is not None, f"HEAD {path}: the connection was closed without any reply"
            assert reply.status == status and reply.body == b""
            if status == 405:
                assert reply.headers["allow"] in ("GET", "POST")
        # No body was sent: the next reply on this connection starts where it should.
        assert raw.exchange("GET", "/healthz").status == 200


@pytest.mark.parametrize("host", ["127.0.0.2", "::1"])
def test_the_listening_log_line_names_the_bound_http_address(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture, host: str) -> None:
    """`npud ... listening on @npud, http 127.0.0.1:PORT` was hard-coded: with --host ::1 (or
    127.0.0.2, or a socket from systemd) the log named an address nothing listens on."""
    if ":" in host:
        try:
            socket.create_server((host, 0), family=socket.AF_INET6).close()
        except OSError:
            pytest.skip("no IPv6 loopback here")
    caplog.set_level(logging.INFO, logger="npud")
    daemon = daemon_factory(http=True, host=host)
    line = next(r.getMessage() for r in caplog.records if "listening on" in r.getMessage())
    shown = f"[{host}]" if ":" in host else host
    assert f"http {shown}:{daemon.http_port} " in line, line


def test_a_request_needs_exactly_one_host(daemon_factory: Any) -> None:
    daemon = daemon_factory(http=True)
    port = daemon.http_port
    with Raw(port) as conn:  # HTTP/1.0 may omit Host; a browser never does, the shim requires it
        reply = conn.exchange("GET", "/healthz", host="", version="1.0")
        assert reply.status == 400 and "Host" in reply.json()["error"]["message"]
    with Raw(port) as conn:
        reply = conn.exchange("GET", "/healthz", version="1.0")
        assert reply.status == 200 and conn.closed_quietly()  # HTTP/1.0: one request per connection
    with Raw(port) as conn:
        assert conn.exchange("GET", "/healthz", host="").status == 400  # HTTP/1.1: h11 refuses it
    with Raw(port) as conn:
        conn.send(conn.request("GET", "/healthz")[:-2] + f"Host: attacker.example:{port}\r\n\r\n".encode())
        assert conn.response().status == 400  # type: ignore[union-attr]


def test_the_port_is_the_bound_one_under_socket_activation(tmp_path: Path) -> None:
    """systemd passes the HTTP socket: Host and openapi.json follow it, not --port's default."""
    rpc = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rpc.bind(b"\0" + unique_socket()[1:].encode())
    rpc.listen(8)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert port != 18820
    activator = Activator([("rpc", rpc), ("http", listener)], ["-m", "npud.testing.fake_daemon"],
                          env=daemon_env(tmp_path))
    activator.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/openapi.json")  # sends Host: 127.0.0.1:<port>
        reply = conn.getresponse()
        assert reply.status == 200
        assert json.loads(reply.read())["servers"] == [{"url": f"http://127.0.0.1:{port}"}]
        conn.request("GET", "/healthz", headers={"Host": "127.0.0.1:18820"})
        assert conn.getresponse().status == 421  # the configured port is not where we listen
        conn.close()
    finally:
        activator.stop()


def test_ipv6_loopback_shim(daemon_factory: Any) -> None:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    daemon = daemon_factory(http=True, host="::1")
    port = daemon.http_port
    with Raw(port, address="::1") as conn:
        reply = conn.exchange("GET", "/openapi.json", host=f"[::1]:{port}")
        assert reply.status == 200 and reply.json()["servers"] == [{"url": f"http://[::1]:{port}"}]
    with Raw(port, address="::1") as conn:
        assert conn.exchange("GET", "/healthz", host=f"[::1]:{port + 1}").status == 421


# ---------------------------------------------------------------- connection limits


def test_over_the_connection_limit_nothing_is_dispatched(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True, max_connections=1)
    port = daemon.http_port
    held = Raw(port)  # accepted first (the listen backlog is FIFO): it holds the only slot
    try:
        with Raw(port) as conn:
            reply = conn.exchange("POST", GENERATE, JOB)
            assert reply.status == 503 and reply.headers["retry-after"] == "1"
            assert reply.headers["connection"] == "close"
            assert reply.json()["error"] == {
                "code": -32009, "message": "too many connections (1)",
                "data": {"limit": 1, "actual": 2, "unit": "connections", "field": "connections"}}
        assert behaviour.calls == []  # refused before dispatch: the job never ran
        assert held.exchange("POST", GENERATE, JOB).status == 200  # the held one is served
    finally:
        held.sock.close()
    with Raw(port) as conn:  # its slot is free again
        assert conn.exchange("GET", "/healthz").status == 200
    assert health(daemon)["stats"]["rejections"]["http_connections"] == 1


def test_over_the_connection_limit_a_foreign_host_still_gets_421(daemon_factory: Any) -> None:
    """CONTRACT §9/§11: a request whose Host is not loopback is refused with 421 and 'nothing is
    returned but the error'. Over --max-connections the 503 was sent without the Host/Origin
    checks, so a DNS-rebinding page (Host: attacker.example) read the daemon's live connection
    counts (data.limit, data.actual)."""
    daemon = daemon_factory(http=True, max_connections=1)
    port = daemon.http_port
    with Raw(port) as holder:
        holder.send(b"")
        wait_for(lambda: daemon.daemon.http_shim is not None and daemon.daemon.http_shim.active_connections == 1,
                 "the first connection to be counted")
        with Raw(port) as page:
            reply = page.exchange("GET", "/healthz", host=f"attacker.example:{port}",
                                  headers={"Origin": f"http://attacker.example:{port}",
                                           "Sec-Fetch-Site": "cross-site"})
            assert reply.status == 421 and "data" not in reply.json()["error"], reply.body
        with Raw(port) as page:  # a rebinding page cannot fake Host, but another site's Origin: 403
            reply = page.exchange("GET", "/healthz", headers={"Origin": "http://attacker.example"})
            assert reply.status == 403 and "data" not in reply.json()["error"], reply.body
        with Raw(port) as local:  # a local client is told about the limit, as before
            assert local.exchange("GET", "/healthz").status == 503


def test_connections_being_refused_are_counted_and_capped(daemon_factory: Any,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Over --max-connections a connection is refused with 503 once its head arrives; beyond
    MAX_REFUSING of those at once, reset at once. The refused ones wait for their head up to
    --line-timeout: with the default 10 s a loaded machine could take that long between opening
    them and sending on one (it then found the connection closed: ConnectionResetError or no
    reply), so the test gives them a timeout no test step comes near; the caps are what it checks."""
    monkeypatch.setattr(shim, "MAX_REFUSING", 2, raising=False)
    daemon = daemon_factory(http=True, max_connections=1, line_timeout_s=300)
    port = daemon.http_port
    held = [Raw(port, timeout=60) for _ in range(3)]  # one served, two being refused (silent)
    try:
        try:
            with Raw(port, timeout=60) as extra:  # over both caps: reset at once, nothing read or sent
                assert extra.closed_quietly()
        except ConnectionResetError:
            # The shim's reset can reach the client within connect() itself on loopback: the same
            # outcome, a connection that ends without a byte sent or read.
            pass
        held[1].send(held[1].request("GET", "/healthz"))  # the refused ones still get their 503
        reply = held[1].response()
        assert reply is not None and reply.status == 503 and reply.json()["error"]["code"] == -32009
    finally:
        for conn in held:
            conn.sock.close()
    assert health(daemon)["stats"]["rejections"]["http_connections"] == 3


# ---------------------------------------------------------------- deadlines


def trickle(sock: socket.socket, byte: bytes, stop: threading.Event) -> threading.Thread:
    """A slowloris client: one byte at a time until the shim gives up. The pace is the attack
    itself, not a wait for a result: the shim must cut it off whatever the pace."""

    def run() -> None:
        try:
            while not stop.is_set():
                sock.send(byte)
                stop.wait(0.02)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_trickled_request_is_cut_off_with_408(daemon_factory: Any, part: str) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True, line_timeout_s=0.3)
    port = daemon.http_port
    stop = threading.Event()
    with Raw(port, timeout=15) as conn:
        if part == "head":
            conn.send(f"POST {GENERATE} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
        else:
            head = conn.request("POST", GENERATE, b"{")[:-1]  # the head of a 1-byte body, then...
            conn.send(head.replace(b"Content-Length: 1", b"Content-Length: 100000"))  # ...announce more
        thread = trickle(conn.sock, b"a" if part == "head" else b" ", stop)
        try:
            reply = conn.response()
        finally:
            stop.set()
            thread.join(10)
        assert reply is not None and reply.status == 408, reply
        assert part in reply.json()["error"]["message"] and reply.headers["connection"] == "close"
    assert behaviour.calls == []
    assert health(daemon)["stats"]["rejections"]["http_slow_request"] == 1
    with Raw(port) as conn:
        assert conn.exchange("POST", GENERATE, JOB).status == 200


def test_an_idle_connection_is_closed_quietly_after_its_idle_time(daemon_factory: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shim, "KEEPALIVE_IDLE_S", 0.2)
    daemon = daemon_factory(http=True)
    with Raw(daemon.http_port) as conn:
        assert conn.exchange("GET", "/healthz").status == 200
        assert conn.closed_quietly()  # no 408 for a client that sent nothing


def test_a_client_that_does_not_read_its_replies_is_dropped(daemon_factory: Any) -> None:
    daemon = daemon_factory(http=True, line_timeout_s=0.3, write_buffer_bytes=16384, max_connections=1)
    port = daemon.http_port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window fills fast
    sock.connect(("127.0.0.1", port))
    request = f"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    sender = threading.Thread(target=lambda: _send_quietly(sock, request * 3000), daemon=True)
    sender.start()
    try:
        # Never read. The shim's writes stall, then it must drop the connection (FIN or RST).
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLRDHUP)
        events = poller.poll(20_000)
        assert events and events[0][1] & (select.POLLRDHUP | select.POLLHUP | select.POLLERR), events
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        sender.join(10)
    with Raw(port) as conn:  # max_connections=1: its slot was freed
        assert conn.exchange("GET", "/healthz").status == 200
    assert health(daemon)["stats"]["rejections"]["http_unread_replies"] == 1


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass


# ---------------------------------------------------------------- head size


def test_a_head_over_16k_is_refused_even_in_one_piece(daemon_factory: Any) -> None:
    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    port = daemon.http_port
    with Raw(port) as conn:
        reply = conn.exchange("POST", GENERATE, JOB, headers={"X-Big": "b" * 60_000})
        assert reply.status == 431 and reply.headers["connection"] == "close"
        error = reply.json()["error"]
        assert error["data"]["limit"] == MAX_HEAD_BYTES and error["data"]["actual"] > 60_000
        assert error["data"]["unit"] == "bytes" and error["data"]["field"] == "head"
    with Raw(port) as conn:  # an incomplete head past the limit: refused without waiting for the end
        conn.send(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Big: ".encode() + b"b" * 20_000)
        assert conn.response().status == 431  # type: ignore[union-attr]
    with Raw(port) as conn:  # just under the limit: served
        assert conn.exchange("POST", GENERATE, JOB, headers={"X-Big": "b" * (MAX_HEAD_BYTES - 300)}).status == 200
    assert len(behaviour.calls) == 1
    assert health(daemon)["stats"]["rejections"]["http_head_too_large"] == 2


def test_a_big_head_pipelined_behind_a_running_job_is_refused(daemon_factory: Any) -> None:
    """The next head arrives while a job runs: it is whole in the buffer when parsed."""
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    with Raw(daemon.http_port) as conn:
        conn.send(conn.request("POST", GENERATE, JOB))
        assert behaviour.started.wait(10)
        conn.send(conn.request("POST", GENERATE, JOB, headers={"X-Big": "b" * 60_000}))
        gate.set()
        first, second = conn.response(), conn.response()
        assert first is not None and first.status == 200
        assert second is not None and second.status == 431
    assert len(behaviour.calls) == 1


# ---------------------------------------------------------------- cancel on hang-up


def hang_up(sock: socket.socket, how: str) -> None:
    if how == "half-close":
        sock.shutdown(socket.SHUT_WR)  # HTTP has no half-close: EOF means the client is gone
        return
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("how", ["close", "reset", "half-close"])
def test_hanging_up_cancels_the_job(daemon_factory: Any, how: str) -> None:
    gate = threading.Event()  # never opened: only a cancel can end the running job
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    port = daemon.http_port
    running, queued = Raw(port), Raw(port)
    running.send(running.request("POST", GENERATE, JOB))
    assert behaviour.started.wait(10)
    queued.send(queued.request("POST", GENERATE, JOB))
    wait_for(lambda: health(daemon)["queue"]["depth"] == 1, "the second job to be queued")
    hang_up(queued.sock, how)
    wait_for(lambda: health(daemon)["queue"]["depth"] == 0, "the queued job to be withdrawn")
    assert health(daemon)["queue"]["running"] is True
    hang_up(running.sock, how)
    # The engine saw should_stop (the gate is still closed): the generation stopped.
    wait_for(lambda: not health(daemon)["queue"]["running"], "the running generation to stop")
    assert len(behaviour.calls) == 1  # the withdrawn job never reached the engine
    if how == "half-close":
        assert running.closed_quietly() and queued.closed_quietly()  # no reply: the job was given up
    for conn in (running, queued):
        conn.sock.close()
    behaviour.gate = None
    with Raw(port) as conn:
        assert conn.exchange("POST", GENERATE, JOB).status == 200


def test_bytes_pipelined_while_a_job_runs_are_not_lost(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    with Raw(daemon.http_port) as conn:
        conn.send(conn.request("POST", GENERATE, JOB))
        assert behaviour.started.wait(10)
        second = conn.request("GET", "/models")
        conn.send(second[:10])  # read by the hang-up watch while the job runs...
        conn.send(second[10:] + conn.request("POST", GENERATE, JOB))
        gate.set()
        replies = [conn.response() for _ in range(3)]
        assert [r.status for r in replies if r is not None] == [200, 200, 200]
        assert replies[1].json()["models"][0]["id"] == "fake-model"  # type: ignore[union-attr]
    assert len(behaviour.calls) == 2


def test_closing_the_connection_cancels_the_job_even_after_pipelined_bytes(daemon_factory: Any) -> None:
    """CONTRACT §11: 'Closing the connection cancels its job ... Bytes of a pipelined next request
    that arrive meanwhile are kept'. Once the client had sent more than --max-line-bytes + 16 KiB
    while its job ran, the shim stopped watching the connection; a close then went unnoticed and
    the job ran on for nobody until its deadline (120 s for a summary). It is no longer read (the
    bound stays) but still watched."""
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
        assert health(daemon)["jobs_cancelled"] == 1
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()


def test_expect_100_continue(daemon_factory: Any) -> None:
    daemon = daemon_factory(http=True)
    port = daemon.http_port
    with Raw(port) as conn:
        conn.send(conn.request("POST", GENERATE, JOB, headers={"Expect": "100-continue"})[:-len(JOB)])
        interim = conn.response()
        assert interim is not None and interim.status == 100
        conn.send(JOB)
        assert conn.response().status == 200  # type: ignore[union-attr]
    with Raw(port) as conn:  # refused at the head: no 100, the client need not send the body
        conn.send(conn.request("POST", GENERATE, JOB, host="evil.example", headers={"Expect": "100-continue"})
                  [:-len(JOB)])
        assert conn.response().status == 421  # type: ignore[union-attr]


# ---------------------------------------------------------------- shutdown


def test_sigterm_drains_http_like_the_socket(tmp_path: Path) -> None:
    """A real npud: the finished job's reply is written, the queued one gets -32006, an idle
    keep-alive connection is closed quietly, exit 0 and no traceback."""
    hang = tmp_path / "release"
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", unique_socket(), "--port", "0"],
                            env=daemon_env(tmp_path, NPUD_FAKE_HANG_FILE=str(hang)), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            if "http 127.0.0.1:" in line:
                port = int(line.split("http 127.0.0.1:")[1].split()[0])
            if "ready on CPU" in line:
                break
        assert port is not None
        idle = Raw(port)
        assert idle.exchange("GET", "/healthz").status == 200  # then it stays open, idle
        running, queued, probe = Raw(port), Raw(port), Raw(port)
        running.send(running.request("POST", GENERATE, JOB))
        wait_for(lambda: probe.exchange("GET", "/healthz").json()["queue"]["running"], "the job to run")
        queued.send(queued.request("POST", GENERATE, JOB))
        wait_for(lambda: probe.exchange("GET", "/healthz").json()["queue"]["depth"] == 1, "the job to queue")
        probe.sock.close()
        proc.send_signal(signal.SIGTERM)
        refused = queued.response()
        assert refused is not None and refused.status == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == -32006
        hang.touch()
        finished = running.response()
        assert finished is not None and finished.status == 200 and finished.json()["job"] == "title"
        assert running.closed_quietly() and idle.closed_quietly()
        assert proc.wait(30) == 0
        rest = proc.stderr.read()
        assert "Traceback" not in rest and "Unhandled exception" not in rest, rest
        for conn in (idle, running, queued):
            conn.sock.close()
    finally:
        hang.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
