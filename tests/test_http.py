"""The loopback HTTP shim with real HTTP requests (stdlib http.client)."""

from __future__ import annotations

import fcntl
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate

from npuclient import Client
from npud.engine import StartupError
from npud.http import check_loopback, openapi_document
from npud.daemon import open_listeners
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import make_config, unique_socket
from .test_http_boundaries import Raw


class Reply:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.getheaders()}
        raw = response.read()
        self.body: Any = json.loads(raw) if raw else None


def request(port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
            raw: bytes | None = None, conn: http.client.HTTPConnection | None = None) -> Reply:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Content-Type": "application/json"} if data is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=data, headers=all_headers)
        return Reply(conn.getresponse())
    finally:
        if own:
            conn.close()


@pytest.fixture
def shim(daemon_factory: Any) -> Any:
    return daemon_factory(http=True)


def test_every_endpoint(shim: Any) -> None:
    port = shim.http_port
    health = request(port, "GET", "/healthz")
    assert health.status == 200 and health.body["status"] == "ready"
    assert request(port, "GET", "/models").body["models"][0]["id"] == "fake-model"
    gen = request(port, "POST", "/v1/worker/generate", {"job": "title", "input": "hello", "max_new_tokens": 8})
    assert gen.status == 200 and gen.body["text"] == "Fake Title About The Input"
    memory = request(port, "POST", "/v1/worker/extract-memory-candidates", {"input": "x"})
    assert memory.body["candidates"] == ["The user likes fakes.", "The user tests things."]
    condensed = request(port, "POST", "/v1/worker/condense-notification", {"input": "x"})
    assert condensed.body["job"] == "notification"
    for reply in (health, gen, memory):
        assert reply.headers["content-type"] == "application/json"
        assert not any(name.startswith("access-control-") for name in reply.headers)  # no CORS, ever


def test_same_fields_three_ways(shim: Any) -> None:
    """curl, npuctl --json and Client().generate give the same result for the same input."""
    text = "The quarterly review covered revenue, the delayed app release and hiring."
    via_http = request(shim.http_port, "POST", "/v1/worker/generate",
                       {"job": "summary", "input": text, "max_new_tokens": 80}).body
    cli = subprocess.run([sys.executable, "-m", "npuclient.cli", "--socket", shim.socket, "--json", "generate",
                          "--job", "summary", "--input", text, "--max-new-tokens", "80"],
                         capture_output=True, text=True, check=True)
    via_cli = json.loads(cli.stdout)
    with Client(shim.socket) as client:
        via_lib = msgspec.to_builtins(client.generate("summary", text, max_new_tokens=80))
    for result in (via_http, via_cli, via_lib):
        assert result.keys() == via_lib.keys()
        assert result["timing_ms"].keys() == {"queue", "generate", "total"}
    strip = lambda r: {k: v for k, v in r.items() if k != "timing_ms"}  # noqa: E731
    assert strip(via_http) == strip(via_cli) == strip(via_lib)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("POST", "/v1/worker/generate", {"raw": b"{not json"}, 400, -32700),
        ("POST", "/v1/worker/generate", {"body": ["a list"]}, 400, -32602),
        ("POST", "/v1/worker/generate", {"body": {"job": "poem", "input": "x"}}, 400, -32602),
        ("POST", "/v1/worker/generate", {"body": {"job": "title", "input": "x" * 6001}}, 400, -32602),
        ("POST", "/v1/worker/generate", {"body": {"job": "title", "input": "x", "extra": 1}}, 400, -32602),
        ("GET", "/nope", {}, 404, -32600),
        ("GET", "/v1/worker/generate", {}, 405, -32600),
        ("DELETE", "/healthz", {}, 405, -32600),
        ("OPTIONS", "/v1/worker/generate", {}, 405, -32600),
        ("POST", "/v1/worker/generate", {"raw": b'{"job":"title","input":"x"}', "headers": {"Content-Type": "text/plain"}},
         415, -32600),
    ],
)
def test_client_errors(shim: Any, method: str, path: str, kwargs: dict[str, Any], status: int, code: int) -> None:
    reply = request(shim.http_port, method, path, **kwargs)
    assert reply.status == status
    assert reply.body["error"]["code"] == code
    if status == 405:
        assert reply.headers["allow"] in {"GET", "POST"}
    assert request(shim.http_port, "GET", "/healthz").status == 200


def test_limit_error_has_the_same_object_as_json_rpc(shim: Any) -> None:
    body = {"job": "title", "input": "x" * 6001}
    via_http = request(shim.http_port, "POST", "/v1/worker/generate", body).body["error"]
    via_rpc = shim.call("generate", body)["error"]
    assert via_http == via_rpc and via_http["data"]["limit"] == 6000


def test_body_too_large(daemon_factory: Any) -> None:
    daemon = daemon_factory(http=True, max_line_bytes=1000)
    big = json.dumps({"job": "title", "input": "x" * 2000}).encode()
    assert request(daemon.http_port, "POST", "/v1/worker/generate", raw=big).status == 413
    # Without Content-Length (chunked), the limit applies while reading.
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    conn.putrequest("POST", "/v1/worker/generate")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for _ in range(3):
        conn.send(b"200\r\n" + b"x" * 512 + b"\r\n")
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 413
    conn.close()
    assert request(daemon.http_port, "GET", "/healthz").status == 200


def test_malformed_http_gets_400_and_others_are_served(shim: Any) -> None:
    with socket.create_connection(("127.0.0.1", shim.http_port), timeout=10) as sock:
        sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 400")
    assert request(shim.http_port, "GET", "/healthz").status == 200


def test_keep_alive(shim: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", shim.http_port, timeout=30)
    try:
        first = request(shim.http_port, "GET", "/healthz", conn=conn)
        sock = conn.sock
        second = request(shim.http_port, "POST", "/v1/worker/generate", {"job": "title", "input": "x"}, conn=conn)
        third = request(shim.http_port, "GET", "/nope", conn=conn)  # an error does not end keep-alive
        fourth = request(shim.http_port, "GET", "/models", conn=conn)
        assert [first.status, second.status, third.status, fourth.status] == [200, 200, 404, 200]
        assert conn.sock is sock  # all on one TCP connection
    finally:
        conn.close()


def test_service_errors_and_retry_after(daemon_factory: Any, tmp_path: Path) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), http=True, queue_depth=1)
    port = daemon.http_port
    body = {"job": "title", "input": "x"}
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(request(port, "POST", "/v1/worker/generate", body).status))
               for _ in range(2)]
    try:
        threads[0].start()
        assert behaviour.started.wait(10)
        threads[1].start()
        while request(port, "GET", "/healthz").body["queue"]["depth"] < 1:
            pass
        full = request(port, "POST", "/v1/worker/generate", body)
        assert full.status == 503 and full.body["error"]["code"] == -32000
        retry_ms = full.body["error"]["data"]["retry_after_ms"]
        assert int(full.headers["retry-after"]) == max(1, -(-retry_ms // 1000))
    finally:
        gate.set()
        for thread in threads:
            thread.join(10)
    assert results == [200, 200]

    behaviour.gate = None
    behaviour.fail_with = RuntimeError("boom")
    failed = request(port, "POST", "/v1/worker/generate", body)
    assert failed.status == 500 and failed.body["error"]["code"] == -32003

    broken = daemon_factory(FakeLoader(load_error="weights missing"), http=True)
    reply = request(broken.http_port, "POST", "/v1/worker/generate", body)
    assert reply.status == 503 and reply.headers["retry-after"] == "5" and reply.body["error"]["code"] == -32001
    assert request(broken.http_port, "GET", "/healthz").body["status"] == "error"

    busy = make_npu_sysfs(tmp_path / "sys")
    npu = daemon_factory(FakeLoader(FakeBehaviour(busy_file=busy, busy_step_us=0)), http=True, device="NPU",
                         sysfs_root=str(tmp_path / "sys"), lock_timeout_s=0.1, socket=unique_socket())
    unverified = request(npu.http_port, "POST", "/v1/worker/generate", body)
    assert unverified.status == 500 and unverified.body["error"]["code"] == -32002
    fd = os.open(npu.config.lock_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        held = request(npu.http_port, "POST", "/v1/worker/generate", body)
        assert held.status == 503 and held.headers["retry-after"] == "1" and held.body["error"]["code"] == -32005
    finally:
        os.close(fd)


def test_bearer_token(daemon_factory: Any, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    token_file.chmod(0o600)
    daemon = daemon_factory(http=True, token_file=str(token_file))
    port = daemon.http_port
    missing = request(port, "GET", "/healthz")
    assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert request(port, "GET", "/healthz", headers={"Authorization": "Bearer wrong"}).status == 401
    ok = request(port, "GET", "/healthz", headers={"Authorization": "Bearer s3cret-token-0123456789"})
    assert ok.status == 200
    assert daemon.call("health")["result"]["status"] == "ready"  # the Unix socket is gated by SO_PEERCRED instead


def test_the_bearer_scheme_is_case_insensitive_and_given_once(daemon_factory: Any, tmp_path: Path) -> None:
    """RFC 9110 §11.1: the auth-scheme is case-insensitive; 'bearer <token>' with the right token
    got 401. Two Authorization headers are refused rather than picking one."""
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    token.chmod(0o600)
    daemon = daemon_factory(http=True, token_file=str(token))
    for value, status in (("bearer 0123456789abcdef-token", 200), ("BEARER  0123456789abcdef-token", 200),
                          ("Bearer 0123456789abcdef-token", 200), ("Bearer wrong", 401), ("bearer", 401),
                          ("Basic 0123456789abcdef-token", 401), ("Bearer0123456789abcdef-token", 401)):
        with Raw(daemon.http_port) as raw:
            assert raw.exchange("GET", "/healthz", headers={"Authorization": value}).status == status, value
    with Raw(daemon.http_port) as raw:
        twice = b"Authorization: Bearer wrong\r\nAuthorization: Bearer 0123456789abcdef-token\r\n\r\n"
        raw.send(raw.request("GET", "/healthz")[:-2] + twice)
        reply = raw.response()
        assert reply is not None and reply.status == 401


def test_token_file_must_be_private(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    token_file.chmod(0o644)
    with pytest.raises(StartupError, match="mode 0600"):
        open_listeners(make_config(tmp_path, http=True, token_file=str(token_file)))
    token_file.chmod(0o600)
    token_file.write_text("short")
    with pytest.raises(StartupError, match="at least 16"):
        open_listeners(make_config(tmp_path, http=True, token_file=str(token_file)))
    token_file.write_text("x" * 4097)  # bounded like the busy counter: a wrong file is not read whole
    with pytest.raises(StartupError, match="more than 4096 bytes: not a token"):
        open_listeners(make_config(tmp_path, http=True, token_file=str(token_file)))


def test_a_token_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """The token file is checked through the opened file (fstat), so a file swapped in after the
    check cannot be read; a FIFO at the path used to block the start in open() for ever."""
    fifo = tmp_path / "token"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            open_listeners(make_config(tmp_path, http=True, token_file=str(fifo)))
        except BaseException as exc:
            outcome.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(10)
    if starter.is_alive():
        with open(fifo, "wb"):  # release the blocked open(), then fail
            pass
        pytest.fail("npud blocked opening a FIFO as its token file")
    assert len(outcome) == 1 and isinstance(outcome[0], StartupError)
    assert "is not a regular file" in str(outcome[0])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "example.org", "10.0.0.1"])
def test_non_loopback_hosts_are_refused(host: str) -> None:
    with pytest.raises(StartupError, match="loopback"):
        check_loopback(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert check_loopback(host)


def test_port_in_use_is_refused_and_releases_the_unix_socket(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = make_config(tmp_path, http=True, port=taken.getsockname()[1])
        with pytest.raises(StartupError, match="already in use"):
            open_listeners(config)
    listeners = open_listeners(config)  # nothing leaked: the same name binds again
    listeners.close()


def test_openapi_is_valid_and_matches_what_the_shim_returns(shim: Any) -> None:
    port = shim.http_port
    document = request(port, "GET", "/openapi.json").body
    assert document["servers"] == [{"url": f"http://127.0.0.1:{port}"}]  # the bound port, not the default
    assert document == json.loads(msgspec.json.encode(openapi_document(f"http://127.0.0.1:{port}")))
    validate(document)
    assert set(document["paths"]) == {"/healthz", "/models", "/v1/worker/generate",
                                      "/v1/worker/extract-memory-candidates", "/v1/worker/condense-notification"}

    def check(path: str, method: str, status: str, instance: Any) -> None:
        schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**document, **schema}).validate(instance)

    check("/healthz", "get", "200", request(port, "GET", "/healthz").body)
    check("/models", "get", "200", request(port, "GET", "/models").body)
    for path, body in (("/v1/worker/generate", {"job": "title", "input": "x"}),
                       ("/v1/worker/extract-memory-candidates", {"input": "x"}),
                       ("/v1/worker/condense-notification", {"input": "x"})):
        reply = request(port, "POST", path, body)
        check(path, "post", "200", reply.body)
        request_schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**document, **request_schema}).validate(body)
    bad = request(port, "POST", "/v1/worker/generate", {"job": "title", "input": ""})
    check("/v1/worker/generate", "post", "400", bad.body)
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict enough to catch a wrong body
        check("/healthz", "get", "200", {"status": "sleeping"})


def test_metrics_say_when_the_npu_is_emulated(daemon_factory: Any, tmp_path: Path) -> None:
    """/metrics showed NPU busy microseconds from a synthetic counter with nothing saying so."""
    from prometheus_client.parser import text_string_to_metric_families

    busy = make_npu_sysfs(tmp_path / "sys")
    daemon = daemon_factory(FakeLoader(FakeBehaviour(busy_file=busy)), http=True, device="NPU", npu_emulation=True,
                            sysfs_root=str(tmp_path / "sys"))
    assert request(daemon.http_port, "POST", "/v1/worker/generate", {"job": "title", "input": "x"}).status == 200
    raw = http.client.HTTPConnection("127.0.0.1", daemon.http_port, timeout=30)
    raw.request("GET", "/metrics")
    text = raw.getresponse().read().decode()
    raw.close()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert samples["npud_emulated"] == 1
    assert "# HELP npud_emulated 1 with --npu-emulation" in text and "synthetic counter" in text


def test_metrics_scrape_parses_and_matches_health_stats(daemon_factory: Any, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    busy = make_npu_sysfs(tmp_path / "sys")
    behaviour = FakeBehaviour(busy_file=busy, busy_step_us=700)
    daemon = daemon_factory(FakeLoader(behaviour), http=True, device="NPU", sysfs_root=str(tmp_path / "sys"))
    port = daemon.http_port
    marker = "METRICS-MARKER-55"
    for _ in range(3):
        assert request(port, "POST", "/v1/worker/generate", {"job": "title", "input": marker}).status == 200
    assert daemon.call("generate", {"job": "summary", "input": marker})["result"]["npu_busy_delta_us"] == 700
    daemon.call("generate", {"job": "title", "input": "x" * 6001})
    daemon.call(marker)
    raw = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    raw.request("GET", "/metrics")
    response = raw.getresponse()
    assert response.getheader("content-type").startswith("text/plain; version=0.0.4")
    text = response.read().decode()
    raw.close()
    assert marker not in text  # labels never carry content
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert samples[("npud_requests_total", (("method", "generate"), ("outcome", "ok")))] == 4
    assert samples[("npud_requests_total", (("method", "generate"), ("outcome", "InvalidParams")))] == 1
    assert samples[("npud_requests_total", (("method", "-"), ("outcome", "MethodNotFound")))] == 1
    assert samples[("npud_npu_busy_microseconds_total", (("job", "title"),))] == 2100
    assert samples[("npud_generated_tokens_total", (("job", "title"),))] == 15
    assert samples[("npud_job_total_milliseconds_count", (("job", "title"),))] == 3
    assert samples[("npud_job_total_milliseconds_bucket", (("job", "title"), ("le", "+Inf")))] == 3
    assert samples[("npud_queue_capacity", ())] == 8 and samples[("npud_model_ready", ())] == 1
    assert samples[("npud_emulated", ())] == 0
    assert families["npud_job_queue_milliseconds"].type == "histogram"
    stats = daemon.call("health")["result"]["stats"]
    assert stats["requests"]["generate:ok"] == 4 and stats["npu_busy_us"] == {"title": 2100, "summary": 700}
    assert stats["latency_ms"]["total:title"]["count"] == 3
