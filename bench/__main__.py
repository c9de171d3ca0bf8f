"""npud benchmarks: every figure is a ratio (or difference) of two things measured in the same run,
alternating, on this machine. Not part of the test suite.

usage: python -m bench [--json results.json] [--quick] [--only SECTIONS] [--peer-threads N]
                       [--peer-npud-flags FLAGS] [--bg-variant LABEL=COMMAND ...]

Sections (``--only overhead,control,peer,lookup,background,cold``):
  overhead    npud ÷ a plain in-process LLMPipeline, same prompt, settings and token count
  control     the control plane: health ÷ an asyncio echo, queue-full rejections, HTTP ÷ socket
  peer        per job, npud ÷ llama.cpp (xllamacpp) on the same GGUF: bench/peer.py
              (skipped, with the install hint, when the ``bench`` extra is not installed)
  lookup      per job, npud with ÷ without prompt-lookup decoding, and how many texts differ:
              bench/lookup.py
  background  per daemon variant: health p99 busy ÷ idle, a CPU-bound foreground process's
              slowdown while npud generates, nice values of the working threads: bench/background.py
  cold        socket-activated cold start and memory
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from bench.background import DEFAULT_VARIANTS, Busy, Variant, background
from bench.harness import (
    DaemonProcess,
    EchoServer,
    LineClient,
    Summary,
    alternate,
    machine,
    ms,
    overhead_summary,
    rss_kib,
)
from bench.npu_emulated import npu_emulated_overhead, table_row as npu_emulated_row
from bench.lookup import columns as lookup_columns, lookup_comparison
from bench.peer import peer_comparison, peer_missing, physical_cores
from npud.config import Config
from npud.engine import DecodeSettings, builtin_smollm2_gguf, generation_config, resolve_model_path
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

        # Built and configured as npud's default CPU pipeline is (prompt lookup included).
        self.pipe = og.LLMPipeline(str(model_path), "CPU", CACHE_DIR=str(cache / "compiled"), prompt_lookup=True)
        spec = JOBS["summary"]
        self.prompt = self.pipe.get_tokenizer().apply_chat_template(spec.messages(TEXT), add_generation_prompt=True)
        self.config = generation_config(og, self.pipe.get_generation_config(), DecodeSettings.for_job(spec, TOKENS),
                                        prompt_lookup=True)

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
    return overhead_summary(via_npud, direct, n)


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
    """How fast a full queue says no while a long generation runs (one running, one queued).

    health during a generation ÷ idle is measured per daemon variant in the background section."""
    client = LineClient(daemon.socket)
    reject = client.request_bytes("generate", {"job": "title", "input": "one more"})
    rejections = []
    with Busy(daemon.socket).running(client):
        health = client.request_bytes("health")
        while msgspec.json.decode(client.roundtrip(health))["result"]["queue"]["depth"] < 1:
            time.sleep(0.01)
        for _ in range(n):
            start = time.perf_counter_ns()
            reply = msgspec.json.decode(client.roundtrip(reject))
            elapsed = time.perf_counter_ns() - start
            if "error" in reply and reply["error"]["code"] == -32000:
                rejections.append(elapsed)  # otherwise a slot was free for a moment: not a rejection
    client.close()
    r = Summary.of([ms(t) for t in rejections])
    return {"queue_full_ms_p50": r.p50, "queue_full_ms_p99": r.p99, "rejections": r.n}


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


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


def spread(r: dict[str, float], digits: int = 2) -> str:
    """A ratio's median with its p10–p90 range."""
    return f"{r['p50']:.{digits}f} ({r['p10']:.{digits}f}–{r['p90']:.{digits}f})"


def table(results: dict[str, Any]) -> str:
    rows: list[tuple[str, str, str]] = []
    if "overhead_tiny" in results:
        o, s = results["overhead_tiny"], results["overhead_smollm2"]
        rows += [
            ("overhead, tiny model (npud − direct, p50 / p99)",
             f"{o['overhead_us_p50']:.0f} µs / {o['overhead_us_p99']:.0f} µs", "p50 ≤ 1000 µs"),
            ("overhead, smollm2-135m (npud ÷ direct, p50)",
             f"{s['ratio']:.3f} ({s['npud_ms']:.0f} vs {s['direct_ms']:.0f} ms)", "≤ 1.02"),
        ]
    if "overhead_npu_emulated" in results:
        rows.append(npu_emulated_row(results["overhead_npu_emulated"]))
    if "control_plane" in results:
        c, h, w = results["control_plane"], results["head_of_line"], results["http"]
        rows += [
            ("health round trip ÷ asyncio echo (p50)", f"{c['ratio_p50']:.2f} ({c['health_ms_p50'] * 1000:.0f} vs "
             f"{c['echo_ms_p50'] * 1000:.0f} µs)", "≤ 1.5"),
            ("pipelined health req/s ÷ echo", f"{c['rps_ratio']:.2f} ({c['pipelined_rps']:.0f} vs {c['echo_rps']:.0f}/s)",
             "—"),
            ("queue-full rejection p99", f"{h['queue_full_ms_p99']:.2f} ms", "≤ 5 ms"),
            ("HTTP ÷ socket: health p50", f"{w['health_ratio']:.2f} ({w['health_http_ms'] * 1000:.0f} vs "
             f"{w['health_socket_ms'] * 1000:.0f} µs)", "—"),
            ("HTTP ÷ socket: generate p50", f"{w['generate_ratio']:.3f}", "—"),
        ]
    if "background" in results:
        for v in results["background"]["variants"]:
            h, f = v["health"], v["foreground"]
            rows += [
                (f"health p99 during generation ÷ idle [{v['label']}]",
                 f"{h['ratio_p99']:.2f} ({h['busy_ms_p99']:.2f} vs {h['idle_ms_p99']:.2f} ms)", "≤ 2"),
                (f"CPU-bound foreground, npud generating ÷ idle [{v['label']}]",
                 f"{spread(f['slowdown'])} ({f['busy_ms_p50']:.0f} vs {f['idle_ms_p50']:.0f} ms; "
                 f"npud {f.get('npud_jobs_per_s', 0):.1f} jobs/s meanwhile, {h.get('npud_jobs_per_s', 0):.1f} without it)",
                 "—"),
            ]
    if "cold_start" in results:
        cold, mem = results["cold_start"], results["memory"]
        rows += [
            ("cold start: activated → result ÷ load + generate",
             f"{cold['ratio']:.3f} ({cold['activated_to_result_s']:.2f} vs {cold['direct_load_and_generate_s']:.2f} s)",
             "≤ 1.05"),
            ("cold start: activated → first health", f"{cold['activated_to_health_s'] * 1000:.0f} ms", "≪ 1 s"),
            ("RSS: idle daemon without a model", f"{mem['idle_no_model_mib']:.0f} MiB", "—"),
            ("RSS: daemon with smollm2 ÷ in-process pipeline",
             f"{mem['ratio']:.2f} ({mem['loaded_mib']:.0f} vs {mem['direct_mib']:.0f} MiB)", "—"),
        ]
    return markdown(("measure", "result", "target"), rows) if rows else ""


#: Targets of the per-job comparison with llama.cpp (issue 11).
PEER_TARGETS = {"title": "≤ 1.0", "summary": "≤ 0.8", "notification": "≤ 0.8", "memory_candidate": "—"}


def job_table(results: dict[str, Any]) -> str:
    """One row per job: npud ÷ llama.cpp on the same GGUF, messages and token counts; and npud with
    ÷ without prompt lookup, with how many texts differ."""
    peer = results.get("peer")
    if peer and "skipped" in peer:
        peer = None
    lookup = results.get("lookup")
    if not peer and not lookup:
        return ""
    rows = []
    for job in (j for j in PEER_TARGETS if j in (peer or {}).get("jobs", {}) or j in (lookup or {}).get("jobs", {})):
        cells: tuple[str, ...] = ("—",) * 6
        if peer and job in peer["jobs"]:
            r = peer["jobs"][job]
            cells = (f"{min(r['generated_tokens'])}–{max(r['generated_tokens'])}", f"{r['npud_ms_p50']:.0f}",
                     f"{r['peer_ms_p50']:.0f}", spread(r["ratio"]), PEER_TARGETS.get(job, "—"),
                     spread(r["ratio_no_reuse"]))
        rows.append((job, *cells, *lookup_columns(lookup, job)))
    return markdown(("job", "tokens", "npud ms", "llama.cpp ms", "npud ÷ llama.cpp (p10–p90)", "target",
                     "÷ llama.cpp without KV reuse", "with ÷ without prompt lookup (p10–p90)",
                     "texts differ"), rows)


def thread_table(results: dict[str, Any]) -> str:
    if "background" not in results:
        return ""
    rows = []
    for v in results["background"]["variants"]:
        t = v["threads"]
        rows.append((v["label"], f"`{v['command']}`", ", ".join(str(n) for n in t["busy_thread_nice"]) or "—",
                     ", ".join(t.get("busy_thread_policy", [])) or "—", str(t["busy_threads"]),
                     f"{t['main_thread_nice']}, {t.get('main_thread_policy', '?')}"))
    return markdown(("variant", "command", "nice of working threads", "their policies", "working threads",
                     "main thread (event loop)"), rows)


SECTIONS = ("overhead", "control", "peer", "lookup", "background", "cold")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", help=f"comma-separated sections to run (default: all of {', '.join(SECTIONS)})")
    parser.add_argument("--peer-threads", type=int, default=None,
                        help="llama.cpp threads (default: one per physical core, as OpenVINO's CPU plugin uses)")
    parser.add_argument("--peer-npud-flags", default="", metavar="FLAGS",
                        help="extra npud flags for the daemon of the llama.cpp comparison (e.g. a decoding switch)")
    parser.add_argument("--bg-variant", action="append", default=None, metavar="LABEL=COMMAND",
                        help="a daemon variant for the background section, e.g. 'low=nice -n 10 npud' or "
                             "'flag=npud --some-flag 10' (repeatable; replaces the defaults: "
                             + "; ".join(DEFAULT_VARIANTS) + ")")
    args = parser.parse_args(argv)
    args.sections = SECTIONS if not args.only else tuple(x.strip() for x in args.only.split(",") if x.strip())
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    try:
        args.variants = [Variant.parse(v) for v in (args.bg_variant or DEFAULT_VARIANTS)]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scale = 0.2 if args.quick else 1.0
    results: dict[str, Any] = {"machine": machine()}
    if results["machine"]["cpu_busy_before"] > 0.1:
        log(f"warning: the CPU was {results['machine']['cpu_busy_before']:.0%} busy before the run started: "
            "other processes add noise to every figure")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(os.environ.get("NPUD_BENCH_CACHE", Path.home() / ".cache" / "npud"))
        # The IR npud converts the built-in GGUF to (made once, then cached): the in-process baselines load it.
        needs_ir = {"overhead", "cold"} & set(args.sections)
        smollm2_ir = (resolve_model_path(Config(model="smollm2-135m", cache_dir=str(cache), lock_file=f"{tmp}/lock"))
                      if needs_ir else Path())
        if "overhead" in args.sections:
            tiny = build_tiny_gguf(Path(tmp) / "tiny-qwen2.gguf")
            log("overhead (tiny)…")
            results["overhead_tiny"] = overhead(str(tiny), tiny, cache, int(300 * scale))
            log("overhead (smollm2)…")
            results["overhead_smollm2"] = overhead("smollm2-135m", smollm2_ir, cache, max(5, int(30 * scale)))
            log("overhead (emulated NPU)…")
            results["overhead_npu_emulated"] = npu_emulated_overhead(int(300 * scale), TEXT, TOKENS)
        if "control" in args.sections:
            daemon = DaemonProcess(["--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache),
                                    "--queue-depth", "1", "--max-in-flight", "4096",
                                    # the pipelined burst is sent before any reply is read
                                    "--write-buffer-limit", str(64 * 1024 * 1024)])
            try:
                log("control plane…")
                results["control_plane"] = control_plane(daemon, int(3000 * scale))
                log("head of line…")
                results["head_of_line"] = head_of_line(daemon, int(500 * scale))
                log("http…")
                results["http"] = http_vs_socket(daemon, int(1000 * scale))
            finally:
                daemon.stop()
        if "peer" in args.sections:
            results["peer"] = run_peer(cache, args, scale)
        if "lookup" in args.sections:
            results["lookup"] = lookup_comparison(cache, per_job_inputs=2 if args.quick else 4,
                                                  rounds=1 if args.quick else 4, log=log)
        if "background" in args.sections:
            results["background"] = background(args.variants, "smollm2-135m", cache, scale, FOREGROUND_ITERATIONS, log)
        if "cold" in args.sections:
            log("cold start…")
            results["cold_start"] = cold_start("smollm2-135m", smollm2_ir, cache, 3 if not args.quick else 1)
            log("memory…")
            results["memory"] = memory("smollm2-135m", smollm2_ir, cache)
    m = results["machine"]
    print(f"npud benchmarks, {m['date']}, {m['cpu']}, {m['cores']} cores, openvino-genai {m['openvino_genai']}, "
          f"CPU {m['cpu_busy_before']:.0%} busy before the run")
    for part in (table(results), job_table(results), thread_table(results)):
        if part:
            print()
            print(part)
    if "peer" in results and "skipped" in results["peer"]:
        print(f"\nllama.cpp comparison skipped: {results['peer']['skipped']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


#: The foreground workload's size: about 0.3 s of pure Python on an idle core of the reference machine.
FOREGROUND_ITERATIONS = 4_000_000


def run_peer(cache: Path, args: argparse.Namespace, scale: float) -> dict[str, Any]:
    missing = peer_missing()
    if missing:
        log(f"llama.cpp comparison skipped: {missing}")
        return {"skipped": missing}
    daemon = DaemonProcess(["--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache),
                            *shlex.split(args.peer_npud_flags)])
    try:
        result = peer_comparison(daemon.socket, builtin_smollm2_gguf(), args.peer_threads or physical_cores(),
                                 per_job_inputs=2 if args.quick else 4, rounds=1 if args.quick else 4, log=log)
        return {**result, "npud_flags": args.peer_npud_flags}
    finally:
        daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
