"""Benchmark plumbing: daemons in child processes, clients, timing statistics, machine facts."""

from __future__ import annotations

import asyncio
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from npuclient.client import socket_address


def ms(ns: int) -> float:
    return ns / 1e6


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


@dataclass
class Summary:
    p50: float
    p99: float
    iqr: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), percentile(values, 99),
                   percentile(values, 75) - percentile(values, 25), len(values))


def ratio_spread(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Median and p10/p90 of the per-pair ratios a[i] / b[i] (pairs measured back to back)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"need the same non-zero number of values on both sides, got {len(a)} and {len(b)}")
    ratios = [x / y for x, y in zip(a, b)]
    return {"p10": percentile(ratios, 10), "p50": statistics.median(ratios), "p90": percentile(ratios, 90),
            "n": len(ratios)}


def rotated(subject: str, others: Sequence[str], k: int) -> list[str]:
    """``others`` in their order with ``subject`` inserted at position k mod (len(others) + 1).

    Successive k move the subject through every slot, so no arm always runs first (or right after
    another), while the others keep their relative order (which the peer's KV reuse relies on)."""
    order = list(others)
    order.insert(k % (len(others) + 1), subject)
    return order


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat): other processes' load, if we are idle."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values[:8]), idle  # user … steal; guest time is already counted in user

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def machine() -> dict[str, Any]:
    import openvino_genai as og

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "openvino_genai": og.__version__,
        "kernel": platform.release(),
        # Measured before anything of the benchmark runs: other processes' share of the CPU.
        "cpu_busy_before": cpu_busy(),
    }


class DaemonProcess:
    """`npud` (or the fake-engine npud) in a child process, ready when its log says so."""

    def __init__(self, args: Sequence[str], module: str = "npud", env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> None:
        # ``prefix`` wraps the command (e.g. ``nice -n 10``); such wrappers exec, so the pid is npud's.
        self.socket = f"@npud-bench-{os.getpid()}-{id(self)}"
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, "--socket", self.socket, "--port", "0", "--log-level", "INFO",
             *args],
            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
        )
        self.http_port: int | None = None
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            found = re.search(r"http 127\.0\.0\.1:(\d+)", line)
            if found:
                self.http_port = int(found.group(1))
            if "ready on" in line:
                break
        else:
            raise RuntimeError(f"{module} exited with {self.proc.wait()} before it was ready")
        # Keep draining the log: a full pipe would block the daemon.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


class LineClient:
    """A bare newline-JSON client: the cheapest possible way to talk to a socket."""

    def __init__(self, name: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_address(name))
        self.buffer = b""
        self.next_id = 0

    def request_bytes(self, method: str, params: Any = None) -> bytes:
        self.next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            body["params"] = params
        return msgspec.json.encode(body) + b"\n"

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def roundtrip(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.read_line()

    def close(self) -> None:
        self.sock.close()


ECHO_SERVER = """
import asyncio, socket, sys
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, data):
        self.buf += data
        *lines, self.buf = self.buf.split(b"\\n")
        for line in lines: self.t.write(line + b"\\n")
async def main():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(b"\\0" + sys.argv[1].encode()); sock.listen(128)
    server = await asyncio.get_running_loop().create_unix_server(Echo, sock=sock)
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


class EchoServer:
    """The floor for a Python daemon: an asyncio line echo on the same kind of socket."""

    def __init__(self) -> None:
        self.socket = f"@npud-bench-echo-{os.getpid()}"
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, self.socket[1:]], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def timed(fn: Callable[[], Any]) -> int:
    start = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - start


def alternate(a: Callable[[], Any], b: Callable[[], Any], n: int, warmup: int = 3) -> tuple[list[int], list[int]]:
    """Run a and b alternately n times each (after warm-ups): both see the same machine noise."""
    for _ in range(warmup):
        a()
        b()
    times_a, times_b = [], []
    for i in range(n):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = timed(first), timed(second)
        times_a.append(t1 if i % 2 == 0 else t2)
        times_b.append(t2 if i % 2 == 0 else t1)
    return times_a, times_b


def npud_job(client: LineClient, job: str, text: str) -> dict[str, Any]:
    """One ``generate`` job's result; a JSON-RPC error stops the benchmark (it measured nothing)."""
    reply = msgspec.json.decode(client.roundtrip(client.request_bytes("generate", {"job": job, "input": text})))
    if "result" not in reply:
        raise RuntimeError(f"npud {job} failed: {reply.get('error')}")
    result: dict[str, Any] = reply["result"]
    return result


def overhead_summary(npud_ns: Sequence[int], direct_ns: Sequence[int], n: int) -> dict[str, Any]:
    """npud against the same generation in-process, timed in alternating pairs: medians, their
    ratio, and the per-pair difference at p50 and p99."""
    diffs_us = [(a - b) / 1000 for a, b in zip(npud_ns, direct_ns)]
    npud_s, direct_s, diffs = Summary.of([ms(t) for t in npud_ns]), Summary.of([ms(t) for t in direct_ns]), Summary.of(diffs_us)
    return {"npud_ms": npud_s.p50, "direct_ms": direct_s.p50, "ratio": npud_s.p50 / direct_s.p50,
            "overhead_us_p50": diffs.p50, "overhead_us_p99": diffs.p99, "n": n}


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)
