"""Per job, npud with prompt-lookup decoding ÷ npud without it (``--no-prompt-lookup``), and how
often the two give a different text.

Two daemons on the same model (SmolLM2-135M on the CPU), started once and idle except when asked;
for each job the same realistic inputs (``bench/workload.py``) go to both, alternating, the order
rotating, timed around one request/reply round trip. The two sides may generate a different
number of tokens when the texts differ (the multi-token verification rounds differently), so the
ratio is per answered job, what a client waits, and the token counts of both sides are recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import DaemonProcess, LineClient, Summary, ms, npud_job, ratio_spread, rotated
from bench.workload import inputs

JOB_ORDER = ("title", "summary", "notification", "memory_candidate")
FLAG = "--no-prompt-lookup"


def compare_job(clients: dict[str, LineClient], job: str, texts: Sequence[str], rounds: int) -> dict[str, Any]:
    """One job: per input, both daemons once untimed (warm-up, and the texts compared), then
    ``rounds`` timed pairs."""
    first = {arm: [npud_job(client, job, text) for text in texts] for arm, client in clients.items()}
    differ = sum(a["text"] != b["text"] for a, b in zip(first["lookup"], first["plain"]))
    times: dict[str, list[float]] = {"lookup": [], "plain": []}
    tokens: dict[str, list[int]] = {"lookup": [], "plain": []}
    for r in range(rounds):
        for i, text in enumerate(texts):
            for arm in rotated("lookup", ("plain",), r * len(texts) + i):
                start = time.perf_counter_ns()
                result = npud_job(clients[arm], job, text)
                times[arm].append(ms(time.perf_counter_ns() - start))
                tokens[arm].append(int(result["tokens"]["generated"]))
    return {
        "job": job,
        "inputs": len(texts),
        "texts_differ": differ,
        "lookup_ms_p50": Summary.of(times["lookup"]).p50,
        "plain_ms_p50": Summary.of(times["plain"]).p50,
        "ratio": ratio_spread(times["lookup"], times["plain"]),
        "tokens_lookup": tokens["lookup"][:len(texts)],
        "tokens_plain": tokens["plain"][:len(texts)],
        "times_ms": times,
    }


def lookup_comparison(cache: Path, per_job_inputs: int, rounds: int, log: Callable[[str], None],
                      extra_flags: Sequence[str] = ()) -> dict[str, Any]:
    """Every job, npud with ÷ without prompt lookup; both daemons stopped at the end."""
    base = ["--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache), "--no-http", *extra_flags]
    daemons = {"lookup": DaemonProcess(base), "plain": DaemonProcess([*base, FLAG])}
    clients = {arm: LineClient(d.socket) for arm, d in daemons.items()}
    try:
        decoding = {arm: msgspec.json.decode(c.roundtrip(c.request_bytes("health")))["result"].get("decoding")
                    for arm, c in clients.items()}
        if decoding != {"lookup": "prompt_lookup", "plain": "greedy"}:
            raise RuntimeError(f"the daemons do not decode as compared: {decoding}")
        results: dict[str, Any] = {"rounds": rounds, "jobs": {}}
        for job in JOB_ORDER:
            log(f"prompt lookup: {job}…")
            results["jobs"][job] = compare_job(clients, job, inputs(job, per_job_inputs), rounds)
        return results
    finally:
        for client in clients.values():
            client.close()
        for daemon in daemons.values():
            daemon.stop()


def columns(result: dict[str, Any] | None, job: str) -> tuple[str, str]:
    """The job table's two cells for ``job``: the ratio with its spread, and the texts that differ."""
    if not result or job not in result.get("jobs", {}):
        return "—", "—"
    r = result["jobs"][job]
    ratio = r["ratio"]
    return (f"{ratio['p50']:.2f} ({ratio['p10']:.2f}–{ratio['p90']:.2f})", f"{r['texts_differ']}/{r['inputs']}")
