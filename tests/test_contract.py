"""Every ```jsonrpc example in CONTRACT.md, executed against a daemon in the named scenario."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest

from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import REPO, RawConnection, RunningDaemon, as_nobody

CONTRACT = REPO / "CONTRACT.md"
FENCE = re.compile(r"```jsonrpc scenario=(\w+)\n(.*?)```", re.S)
MODEL = "Qwen2.5-1.5B-Instruct-int4-ov"
BUSY_STEP = 183214


def examples() -> list[tuple[str, list[str], list[str]]]:
    found = []
    for scenario, body in FENCE.findall(CONTRACT.read_text()):
        lines = [line for line in body.splitlines() if line.strip()]
        sent = [line[4:] for line in lines if line.startswith("--> ")]
        expected = [line[4:] for line in lines if line.startswith("<-- ")]
        if len(sent) + len(expected) != len(lines):
            raise ValueError(f"malformed example in scenario {scenario}: {body!r}")
        found.append((scenario, sent, expected))
    return found


def matches(expected: Any, actual: Any) -> bool:
    if expected == "...":
        return True
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys()
                and all(matches(v, actual[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(matches(e, a) for e, a in zip(expected, actual)))
    return bool(expected == actual and type(expected) is type(actual))


REPLIES = {
    "ready": "Migrating Postgres From 12 To 16",
    "memory": "- The user is vegetarian.\n- The user lives in Lyon.",
    "notification": "Staging is down tonight 22:00-23:30 UTC; do not deploy.",
}


@contextmanager
def scenario_daemon(name: str, factory: Any, tmp_path: Path) -> Iterator[RunningDaemon]:
    busy = make_npu_sysfs(tmp_path / "sys", busy_us=5_000_000)
    behaviour = FakeBehaviour(reply=REPLIES.get(name), busy_file=busy, busy_step_us=BUSY_STEP)
    loader = FakeLoader(behaviour, model_id=MODEL)
    options: dict[str, Any] = {"device": "NPU", "sysfs_root": str(tmp_path / "sys"), "lock_timeout_s": 0.2,
                               "model": f"/home/me/.local/share/npud/models/{MODEL}"}
    gate = threading.Event()
    if name == "loading":
        loader.load_gate = gate
    elif name == "load_error":
        loader.load_error = "RuntimeError: Exception from src/inference/src/cpp/core.cpp:117"
    elif name == "small_budget":
        options["max_prompt_tokens"] = 64
    elif name == "not_verified":
        behaviour.busy_step_us = 0
    elif name == "failing":
        behaviour.fail_with = RuntimeError("Infer Request is busy")
    elif name == "deadline":
        behaviour.gate = gate  # never opened before the deadline: the streamer stops the job
    elif name == "emulated":
        options["npu_emulation"] = True
    elif name == "one_connection":
        options["max_connections"] = 1
    elif name == "queue_full":
        options["queue_depth"] = 1
        behaviour.gate = gate
    daemon = factory(loader, wait_ready=name != "loading", **options)
    held: list[RawConnection] = []
    lock_fd = None
    try:
        if name == "queue_full":
            for i in (1, 2):
                conn = daemon.connect()
                conn.send_json({"jsonrpc": "2.0", "id": i, "method": "generate",
                                "params": {"job": "title", "input": "occupying"}})
                held.append(conn)
                if i == 1:
                    assert behaviour.started.wait(10)
            while daemon.call("health")["result"]["queue"]["depth"] < 1:
                pass
        elif name == "lock_held":
            lock_fd = os.open(daemon.config.lock_file, os.O_RDWR | os.O_CREAT)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        elif name == "shutting_down":
            daemon.daemon.worker.stop()
        yield daemon
    finally:
        gate.set()
        for conn in held:
            conn.sock.close()
        if lock_fd is not None:
            os.close(lock_fd)


def read_as_nobody(name: str) -> bytes:
    def read_rejection() -> bytes:
        with RawConnection.open(name) as conn:
            line = conn.read_line()
            conn.sock.shutdown(socket.SHUT_WR)
            return line

    return as_nobody(read_rejection)


ALL = examples()


def test_contract_has_examples_for_every_error_code() -> None:
    text = "\n".join(line for _, _, expected in ALL for line in expected)
    for code in (-32700, -32600, -32601, -32602, -32000, -32001, -32002, -32003, -32004, -32005, -32006,
                 -32007, -32009):
        assert f'"code":{code}' in text, code
    assert len(ALL) >= 15


@pytest.mark.parametrize(("scenario", "sent", "expected"), ALL, ids=[f"{s}-{i}" for i, (s, _, _) in enumerate(ALL)])
def test_contract_example(scenario: str, sent: list[str], expected: list[str], daemon_factory: Any,
                          tmp_path: Path) -> None:
    with scenario_daemon(scenario, daemon_factory, tmp_path) as daemon:
        if scenario == "peer_rejected":
            replies = [read_as_nobody(daemon.socket)]
        elif scenario == "one_connection":
            with daemon.connect() as first:
                assert first.call("health")["result"]["status"] == "ready"
                with daemon.connect() as second:
                    replies = [second.read_line()]
        else:
            with daemon.connect() as conn:
                replies = []
                for line in sent:
                    conn.send(line.encode() + b"\n")
                    replies.append(conn.read_line())
        assert len(replies) == len(expected)
        for want, got in zip(expected, replies):
            actual = msgspec.json.decode(got)
            assert matches(msgspec.json.decode(want), actual), f"\nexpected {want}\nactual   {got.decode()}"


def test_the_contract_names_this_npud_version() -> None:
    """CONTRACT.md said 'npud 0.1' while the daemon reported 0.2.0."""
    from npud import __version__

    line = next(line for line in CONTRACT.read_text().splitlines() if line.startswith("Version: "))
    major_minor = ".".join(__version__.split(".")[:2])
    assert line.startswith(f"Version: 1 (npud {major_minor})"), line
