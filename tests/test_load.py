"""Bounded load: dozens of concurrent clients mixing every operation against a real npud process
(fake engine), then the tiny real model. Every request gets exactly one reply with its own id;
queue-full errors come only from a full queue; memory does not grow across rounds."""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from npud.engine import OpenVinoLoader

from .conftest import RawConnection, make_config, start_daemon, unique_socket, wait_until_ready
from .test_systemd import FAKE_DAEMON, daemon_env

CLIENTS = 40
PER_CLIENT = 15
ROUNDS = 3

OPERATIONS: list[tuple[str, dict[str, Any] | None]] = [
    ("health", None),
    ("models", None),
    ("generate", {"job": "title", "input": "Now is better than never."}),
    ("generate", {"job": "summary", "input": "Flat is better than nested.", "max_new_tokens": 6}),
    ("extract_memory_candidates", {"input": "I prefer tea."}),
    ("condense_notification", {"input": "Build 812 passed."}),
    ("generate", {"job": "title", "input": "x" * 7000}),  # invalid: over the input limit
    ("nonexistent", None),  # invalid: unknown method
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def run_round(socket_name: str, clients: int, per_client: int, capacity: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        with RawConnection.open(socket_name, timeout=120) as conn:
            barrier.wait()
            # Pipeline everything, then read: replies may come in any order; ids must match 1:1.
            sent = {}
            for n in range(per_client):
                method, params = OPERATIONS[(index + n) % len(OPERATIONS)]
                request_id = f"{index}-{n}"
                request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
                if params is not None:
                    request["params"] = params
                conn.send_json(request)
                sent[request_id] = method
            for _ in range(per_client):
                reply = conn.read_json()
                method = sent.pop(reply["id"], None)
                with lock:
                    if method is None:
                        problems.append(f"unexpected or duplicate reply {reply['id']}")
                    elif "result" in reply:
                        outcomes["ok"] += 1
                    else:
                        code = reply["error"]["code"]
                        outcomes[str(code)] += 1
                        if code == -32000 and reply["error"]["data"]["queue_depth"] < capacity:
                            problems.append("queue full while the queue was not full")
                        if code == -32603:
                            problems.append("internal error")
            if sent:
                with lock:
                    problems.append(f"missing replies: {sorted(sent)}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert problems == []
    assert sum(outcomes.values()) == clients * per_client
    return outcomes


def test_load_with_fake_engine_and_stable_memory(tmp_path: Path) -> None:
    name = unique_socket()
    proc = subprocess.Popen(
        [*FAKE_DAEMON, "--socket", name, "--no-http", "--queue-depth", "4", "--max-in-flight", "64",
         "--max-connections-per-uid", "100"],
        env=daemon_env(tmp_path, OV_GENAI_NPU_LOG_LEVEL="INFO"), stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until_ready(proc)
        # Keep reading its log: a full stderr pipe would block the daemon's logging (and the daemon).
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["status"] == "ready"
        memory = []
        for _ in range(ROUNDS):
            outcomes = run_round(name, CLIENTS, PER_CLIENT, capacity=4)
            assert outcomes["ok"] > 0 and outcomes["-32602"] > 0 and outcomes["-32601"] > 0
            memory.append(rss_kib(proc.pid))
        # After a warm-up round, further rounds must not grow the daemon (leaks per request).
        assert memory[-1] - memory[1] < 4096, memory
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["status"] == "ready"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.mark.realmodel
def test_load_with_the_tiny_real_model(tiny_ir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, model=str(tiny_ir), queue_depth=4, max_in_flight=64, log_level="WARNING")
    running = start_daemon(config, OpenVinoLoader())
    try:
        outcomes = run_round(running.socket, clients=12, per_client=8, capacity=4)
        assert outcomes["ok"] > 0
        assert set(outcomes) <= {"ok", "-32000", "-32602", "-32601"}
        assert running.call("health")["result"]["status"] == "ready"
    finally:
        running.stop()

