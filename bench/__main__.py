"""npud benchmarks: every figure is a ratio (or difference) of two things measured in the same run,
alternating, on this machine. Not part of the test suite.

usage: python -m bench [--json results.json] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import (
    DaemonProcess,
    EchoServer,
    LineClient,
    Summary,
    alternate,
    machine,
    ms,
    rss_kib,
    timed,
)
from bench.npu_emulated import npu_emulated_overhead, table_row as npu_emulated_row
from npud.config import Config
from npud.engine import DecodeSettings, resolve_model_path
from npud.jobs import JOBS
from npud.testing.activator import _EXEC_WITH_FDS
from npud.testing.tiny_model import build_tiny_gguf

TEXT = ("The quarterly review covered three topics. Revenue grew 12 percent on the new subscription "
        "tier; the mobile release slips two weeks because of an App Store review; two support "
        "engineers will be hired before March.")
TOKENS = 32


class Baseline:
    """The same prompt and decoding through a plain in-process LLMPipeline: what npud must not add to."""

    def __init__(self, model_path: Path, cache: Path) -> None:
        import openvino_genai as og

        self.pipe = og.LLMPipeline(str(model_path), "CPU", CACHE_DIR=str(cache / "compiled"))
        spec = JOBS["summary"]
        self.prompt = self.pipe.get_tokenizer().apply_chat_template(spec.messages(TEXT), add_generation_prompt=True)
        settings = DecodeSettings.for_job(spec, TOKENS)
        self.config = self.pipe.get_generation_config()
        self.config.max_new_tokens = settings.max_new_tokens
        self.config.do_sample = False
        self.config.apply_chat_template = False
        self.config.repetition_penalty = settings.repetition_penalty

    def generate(self) -> int:
        result = self.pipe.generate([self.prompt], self.config)
        return int(result.perf_metrics.get_num_generated_tokens())


def generate_via(client: LineClient) -> int:
    reply = msgspec.json.decode(client.roundtrip(client.request_bytes(
        "generate", {"job": "summary", "input": TEXT, "max_new_tokens": TOKENS})))
    return int(reply["result"]["tokens"]["generated"])


def overhead(model: str, model_path: Path, cache: Path, n: int) -> dict[str, Any]:
    daemon = DaemonProcess(["--device", "CPU", "--model", model, "--cache-dir", str(cache)])
    baseline = Baseline(model_path, cache)
    client = LineClient(daemon.socket)
    try:
        assert generate_via(client) == baseline.generate(), "different token counts: not the same work"
        via_npud, direct = alternate(lambda: generate_via(client), baseline.generate, n)
    finally:
        client.close()
        daemon.stop()
    diffs_us = [(a - b) / 1000 for a, b in zip(via_npud, direct)]
    npud_s, direct_s = Summary.of([ms(t) for t in via_npud]), Summary.of([ms(t) for t in direct])
    return {"npud_ms": npud_s.p50, "direct_ms": direct_s.p50, "ratio": npud_s.p50 / direct_s.p50,
            "overhead_us_p50": Summary.of(diffs_us).p50, "overhead_us_p99": Summary.of(diffs_us).p99, "n": n}


def control_plane(daemon: DaemonProcess, n: int) -> dict[str, Any]:
    echo = EchoServer()
    npud_client, echo_client = LineClient(daemon.socket), LineClient(echo.socket)
    health = npud_client.request_bytes("health")
    try:
        via_npud, via_echo = alternate(lambda: npud_client.roundtrip(health), lambda: echo_client.roundtrip(health), n,
                                       warmup=50)
        burst = 2000

        def pipelined(client: LineClient) -> float:
            start = time.perf_counter()
            client.sock.sendall(health * burst)
            for _ in range(burst):
                client.read_line()
            return burst / (time.perf_counter() - start)

        rates_npud, rates_echo = [], []
        for _ in range(5):
            rates_npud.append(pipelined(npud_client))
            rates_echo.append(pipelined(echo_client))
    finally:
        npud_client.close()
        echo_client.close()
        echo.stop()
    a, b = Summary.of([ms(t) for t in via_npud]), Summary.of([ms(t) for t in via_echo])
    return {"health_ms_p50": a.p50, "health_ms_p99": a.p99, "echo_ms_p50": b.p50, "echo_ms_p99": b.p99,
            "ratio_p50": a.p50 / b.p50, "pipelined_rps": sorted(rates_npud)[2], "echo_rps": sorted(rates_echo)[2],
            "rps_ratio": sorted(rates_npud)[2] / sorted(rates_echo)[2]}


def head_of_line(daemon: DaemonProcess, n: int) -> dict[str, Any]:
    """health while a long generation runs vs idle, and how fast a full queue says no."""
    client = LineClient(daemon.socket)
    health = client.request_bytes("health")
    idle = [timed(lambda: client.roundtrip(health)) for _ in range(n)]
    stop = threading.Event()

    def keep_busy() -> None:
        worker = LineClient(daemon.socket)
        while not stop.is_set():
            worker.roundtrip(worker.request_bytes("generate", {"job": "summary", "input": TEXT, "max_new_tokens": 256}))
        worker.close()

    busy_threads = [threading.Thread(target=keep_busy) for _ in range(2)]  # one running, one queued
    for thread in busy_threads:
        thread.start()
    while msgspec.json.decode(client.roundtrip(health))["result"]["queue"]["depth"] < 1:
        time.sleep(0.01)
    busy = [timed(lambda: client.roundtrip(health)) for _ in range(n)]
    reject = client.request_bytes("generate", {"job": "title", "input": "one more"})
    rejections = []
    for _ in range(n):
        start = time.perf_counter_ns()
        reply = msgspec.json.decode(client.roundtrip(reject))
        rejections.append(time.perf_counter_ns() - start)
        if "error" not in reply or reply["error"]["code"] != -32000:
            rejections.pop()  # a slot was free for a moment: not a rejection
    stop.set()
    for thread in busy_threads:
        thread.join()
    client.close()
    a, b, r = Summary.of([ms(t) for t in idle]), Summary.of([ms(t) for t in busy]), Summary.of([ms(t) for t in rejections])
    return {"idle_health_ms_p99": a.p99, "busy_health_ms_p99": b.p99, "ratio_p99": b.p99 / a.p99,
            "queue_full_ms_p50": r.p50, "queue_full_ms_p99": r.p99, "rejections": r.n}


def http_vs_socket(daemon: DaemonProcess, n: int) -> dict[str, Any]:
    client = LineClient(daemon.socket)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.http_port or 0, timeout=60)
    body = json.dumps({"job": "summary", "input": TEXT, "max_new_tokens": TOKENS})

    def http_get() -> None:
        conn.request("GET", "/healthz")
        conn.getresponse().read()

    def http_generate() -> None:
        conn.request("POST", "/v1/worker/generate", body=body, headers={"Content-Type": "application/json"})
        conn.getresponse().read()

    health = client.request_bytes("health")
    via_http, via_sock = alternate(http_get, lambda: client.roundtrip(health), n, warmup=20)
    gen_http, gen_sock = alternate(http_generate, lambda: generate_via(client), max(10, n // 20))
    conn.close()
    client.close()
    h, s = Summary.of([ms(t) for t in via_http]), Summary.of([ms(t) for t in via_sock])
    gh, gs = Summary.of([ms(t) for t in gen_http]), Summary.of([ms(t) for t in gen_sock])
    return {"health_http_ms": h.p50, "health_socket_ms": s.p50, "health_ratio": h.p50 / s.p50,
            "generate_http_ms": gh.p50, "generate_socket_ms": gs.p50, "generate_ratio": gh.p50 / gs.p50}


COLD_BASELINE = """
import sys, openvino_genai as og
from npud.jobs import JOBS
pipe = og.LLMPipeline(sys.argv[1], "CPU", CACHE_DIR=sys.argv[2])
prompt = pipe.get_tokenizer().apply_chat_template(JOBS["title"].messages(sys.argv[3]), add_generation_prompt=True)
config = pipe.get_generation_config(); config.max_new_tokens = 24; config.apply_chat_template = False
pipe.generate([prompt], config)
"""


def socket_activated_start(model: str, cache: Path, first: dict[str, Any]) -> tuple[float, float]:
    """Spawn npud on a socket we already listen on (as systemd would) with a request waiting.

    Returns (seconds until the first reply, seconds until the reply to ``first``)."""
    name = f"@npud-bench-cold-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(b"\0" + name[1:].encode())
    listener.listen(16)
    env = {**os.environ, "LISTEN_FDNAMES": "rpc"}
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _EXEC_WITH_FDS, str(listener.fileno()), "-m", "npud",
                             "--device", "CPU", "--model", model, "--cache-dir", str(cache), "--no-http"],
                            pass_fds=[listener.fileno()], env=env, stderr=subprocess.DEVNULL)
    health_client, job_client = LineClient(name), LineClient(name)
    health_client.sock.sendall(health_client.request_bytes("health"))
    job_client.sock.sendall(job_client.request_bytes(first["method"], first["params"]))
    health_client.read_line()
    to_health = time.perf_counter() - start
    reply = msgspec.json.decode(job_client.read_line())  # the job waits in the queue while the model loads
    if "result" not in reply:
        raise RuntimeError(f"cold start job failed: {reply}")
    to_result = time.perf_counter() - start
    for c in (health_client, job_client):
        c.close()
    proc.terminate()
    proc.wait(60)
    listener.close()
    return to_health, to_result


def cold_start(model: str, model_path: Path, cache: Path, runs: int) -> dict[str, Any]:
    first = {"method": "generate", "params": {"job": "title", "input": TEXT}}
    npud_times, health_times, direct_times = [], [], []
    for _ in range(runs):
        to_health, to_result = socket_activated_start(model, cache, first)
        health_times.append(to_health)
        npud_times.append(to_result)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD_BASELINE, str(model_path), str(cache / "compiled"), TEXT], check=True)
        direct_times.append(time.perf_counter() - start)
    a, b, h = Summary.of(npud_times), Summary.of(direct_times), Summary.of(health_times)
    return {"activated_to_result_s": a.p50, "direct_load_and_generate_s": b.p50, "ratio": a.p50 / b.p50,
            "activated_to_health_s": h.p50, "runs": runs}


MEMORY_BASELINE = COLD_BASELINE + """
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(line.split()[1])
"""


def memory(model: str, model_path: Path, cache: Path) -> dict[str, Any]:
    # The daemon's own machinery: npud with the fake engine (no OpenVINO model in memory).
    fake = DaemonProcess(["--device", "CPU", "--model", "fake", "--cache-dir", str(cache)],
                         module="npud.testing.fake_daemon")
    idle_kib = rss_kib(fake.proc.pid)
    fake.stop()
    daemon = DaemonProcess(["--device", "CPU", "--model", model, "--cache-dir", str(cache)])
    client = LineClient(daemon.socket)
    client.roundtrip(client.request_bytes("generate", {"job": "title", "input": TEXT}))
    loaded_kib = rss_kib(daemon.proc.pid)
    client.close()
    daemon.stop()
    direct = subprocess.run([sys.executable, "-c", MEMORY_BASELINE, str(model_path), str(cache / "compiled"), TEXT],
                            capture_output=True, text=True, check=True)
    direct_kib = int(direct.stdout.split()[-1])
    return {"idle_no_model_mib": idle_kib / 1024, "loaded_mib": loaded_kib / 1024, "direct_mib": direct_kib / 1024,
            "ratio": loaded_kib / direct_kib}


def table(results: dict[str, Any]) -> str:
    o, s, c, h, w, cold, mem = (results[k] for k in ("overhead_tiny", "overhead_smollm2", "control_plane",
                                                      "head_of_line", "http", "cold_start", "memory"))
    rows = [
        ("overhead, tiny model (npud − direct, p50 / p99)", f"{o['overhead_us_p50']:.0f} µs / {o['overhead_us_p99']:.0f} µs",
         "p50 ≤ 1000 µs"),
        ("overhead, smollm2-135m (npud ÷ direct, p50)", f"{s['ratio']:.3f} ({s['npud_ms']:.0f} vs {s['direct_ms']:.0f} ms)",
         "≤ 1.02"),
        npu_emulated_row(results["overhead_npu_emulated"]),
        ("health round trip ÷ asyncio echo (p50)", f"{c['ratio_p50']:.2f} ({c['health_ms_p50'] * 1000:.0f} vs "
         f"{c['echo_ms_p50'] * 1000:.0f} µs)", "≤ 1.5"),
        ("pipelined health req/s ÷ echo", f"{c['rps_ratio']:.2f} ({c['pipelined_rps']:.0f} vs {c['echo_rps']:.0f}/s)", "—"),
        ("health p99 during generation ÷ idle", f"{h['ratio_p99']:.2f} ({h['busy_health_ms_p99']:.2f} vs "
         f"{h['idle_health_ms_p99']:.2f} ms)", "≤ 2"),
        ("queue-full rejection p99", f"{h['queue_full_ms_p99']:.2f} ms", "≤ 5 ms"),
        ("HTTP ÷ socket: health p50", f"{w['health_ratio']:.2f} ({w['health_http_ms'] * 1000:.0f} vs "
         f"{w['health_socket_ms'] * 1000:.0f} µs)", "—"),
        ("HTTP ÷ socket: generate p50", f"{w['generate_ratio']:.3f}", "—"),
        ("cold start: activated → result ÷ load + generate", f"{cold['ratio']:.3f} ({cold['activated_to_result_s']:.2f} vs "
         f"{cold['direct_load_and_generate_s']:.2f} s)", "≤ 1.05"),
        ("cold start: activated → first health", f"{cold['activated_to_health_s'] * 1000:.0f} ms", "≪ 1 s"),
        ("RSS: idle daemon without a model", f"{mem['idle_no_model_mib']:.0f} MiB", "—"),
        ("RSS: daemon with smollm2 ÷ in-process pipeline", f"{mem['ratio']:.2f} ({mem['loaded_mib']:.0f} vs "
         f"{mem['direct_mib']:.0f} MiB)", "—"),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"| {'measure'.ljust(width)} | result | target |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {name.ljust(width)} | {value} | {target} |" for name, value, target in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(os.environ.get("NPUD_BENCH_CACHE", Path.home() / ".cache" / "npud"))
        tiny = build_tiny_gguf(Path(tmp) / "tiny-qwen2.gguf")
        smollm2_ir = resolve_model_path(Config(model="smollm2-135m", cache_dir=str(cache), lock_file=f"{tmp}/lock"))
        print("overhead (tiny)…", file=sys.stderr)
        results["overhead_tiny"] = overhead(str(tiny), tiny, cache, int(300 * scale))
        print("overhead (smollm2)…", file=sys.stderr)
        results["overhead_smollm2"] = overhead("smollm2-135m", smollm2_ir, cache, max(5, int(30 * scale)))
        print("overhead (emulated NPU)…", file=sys.stderr)
        results["overhead_npu_emulated"] = npu_emulated_overhead(int(300 * scale), TEXT, TOKENS)
        daemon = DaemonProcess(["--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache),
                                "--queue-depth", "1", "--max-in-flight", "4096",
                                # the pipelined burst is sent before any reply is read
                                "--write-buffer-limit", str(64 * 1024 * 1024)])
        try:
            print("control plane…", file=sys.stderr)
            results["control_plane"] = control_plane(daemon, int(3000 * scale))
            print("head of line…", file=sys.stderr)
            results["head_of_line"] = head_of_line(daemon, int(500 * scale))
            print("http…", file=sys.stderr)
            results["http"] = http_vs_socket(daemon, int(1000 * scale))
        finally:
            daemon.stop()
        print("cold start…", file=sys.stderr)
        results["cold_start"] = cold_start("smollm2-135m", smollm2_ir, cache, 3 if not args.quick else 1)
        print("memory…", file=sys.stderr)
        results["memory"] = memory("smollm2-135m", smollm2_ir, cache)
    print(f"npud benchmarks, {results['machine']['date']}, {results['machine']['cpu']}, "
          f"{results['machine']['cores']} cores, openvino-genai {results['machine']['openvino_genai']}")
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
