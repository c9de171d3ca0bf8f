"""The model load on the emulated NPU (the NPU plugin's own pipeline computing on the CPU), in a
real npud process: what an NPU owner's first start and a start at login depend on.

- The pipeline constructor releases the GIL, so the event loop keeps answering `health` while the
  model compiles (an NPU compile can take minutes; health must not stall for that long).
- A load that finds the NPU lock held by another process (a chat model compiling at login) fails
  transiently, is retried with backoff, and recovers by itself once the lock is free.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RawConnection, unique_socket
from .emulated import MODELS, RESPONSE_LEN, Prompts, model_dir
from .test_systemd import NotifyListener, daemon_env

pytestmark = pytest.mark.realmodel

NPUD = [sys.executable, "-m", "npud"]


def emulated_env(tmp_path: Path, model: str, budget: int, **extra: str) -> dict[str, str]:
    return daemon_env(tmp_path, OV_GENAI_NPU_DEVICE="NPU", OV_GENAI_NPU_EMULATION="1",
                      OV_GENAI_NPU_MODEL=str(model_dir(model)), OV_GENAI_NPU_NO_BUSY_CHECK="1",
                      OV_GENAI_NPU_MAX_PROMPT_LEN=str(budget), OV_GENAI_NPU_MIN_RESPONSE_LEN=str(RESPONSE_LEN),
                      OV_GENAI_NPU_LOCK_FILE=str(tmp_path / "npu.lock"), **extra)


def npud(env: dict[str, str], name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*NPUD, "--socket", name, "--no-http"], env=env, stderr=subprocess.DEVNULL, text=True)


#: Polls health from a fresh process until the model is ready and prints the reply times: the
#: test process itself holds model pipelines of other tests, whose garbage collection can stall
#: it for a second, which would look like a stall of the daemon.
POLL_HEALTH = """
import json, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(b"\\0" + sys.argv[1][1:].encode())
reader = sock.makefile("rb")
times = []
while True:
    sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"health"}\\n')
    health = json.loads(reader.readline())["result"]
    if health["status"] != "loading":
        break
    times.append(time.monotonic())
print(json.dumps({"times": times, "health": health}))
"""


def test_health_keeps_answering_while_the_npu_pipeline_compiles(tmp_path: Path) -> None:
    """A cold compile (empty cache) with a large MAX_PROMPT_LEN, so that the load takes a while.
    If the constructor held the GIL, no health reply could come while it runs: the longest gap
    between replies would be most of the load. Measured here: a few tens of ms in a 1-2 s load."""
    listener = NotifyListener()
    name = unique_socket()
    proc = npud(emulated_env(tmp_path, MODELS[0], 1024, NOTIFY_SOCKET=listener.name), name)
    try:
        listener.wait_for("READY=1")
        poll = subprocess.run([sys.executable, "-c", POLL_HEALTH, name], capture_output=True, text=True,
                              timeout=120, check=True)
        measured = json.loads(poll.stdout)
        replies, health = measured["times"], measured["health"]
        assert health["status"] == "ready", health
        load_s = health["load_time_ms"] / 1000
        assert load_s >= 0.3, f"the load took {load_s:.2f}s: too quick to tell anything"
        gaps = [b - a for a, b in zip(replies, replies[1:])]
        assert len(replies) >= 10 and max(gaps) < load_s / 2, (len(replies), max(gaps, default=None), load_s)
    finally:
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0


def test_a_load_that_finds_the_npu_lock_held_recovers_once_it_is_free(tmp_path: Path) -> None:
    """Another NPU user holds the lock while npud starts: the load fails (lock timeout), health
    and STATUS say when the next attempt is, and once the lock is released the real pipeline
    loads and jobs run, without a restart."""
    model = MODELS[1]
    lock = tmp_path / "npu.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    listener = NotifyListener()
    name = unique_socket()
    env = emulated_env(tmp_path, model, Prompts(model).budget(), OV_GENAI_NPU_LOCK_TIMEOUT="0.2",
                       OV_GENAI_NPU_LOAD_RETRY_DELAY="0.2", NOTIFY_SOCKET=listener.name)
    proc = npud(env, name)
    try:
        listener.wait_for("STATUS=model failed to load (attempt 1), retrying in ")
        with RawConnection.open(name) as conn:
            health = conn.call("health")["result"]
            assert health["status"] == "error" and health["load_attempts"] >= 1 and "retry_in_s" in health
            refused = conn.call("generate", {"job": "title", "input": "We moved the standup to 9:30."})["error"]
            assert refused["code"] == -32001 and "retry_in_s" in refused["data"]
        fcntl.flock(holder, fcntl.LOCK_UN)
        listener.wait_for("STATUS=ready (NPU emulated on the CPU)")
        with RawConnection.open(name) as conn:
            health = conn.call("health")["result"]
            result = conn.call("generate", {"job": "title", "input": "We moved the standup to 9:30."})["result"]
        assert health["status"] == "ready" and health["load_attempts"] >= 2
        assert result["emulated"] is True and result["job"] == "title"
    finally:
        os.close(holder)
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0
