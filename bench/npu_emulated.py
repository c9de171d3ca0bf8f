"""The NPU code path in the benchmark, without an NPU: npud with ``--device NPU --npu-emulation``
against the very same NPU pipeline in-process (OpenVINO GenAI's NPU plugin computing on the CPU,
``NPUW_DEVICES=CPU``, with the same properties), the same prompt and the same decoding settings,
alternating.

It measures what npud adds on the NPU path (socket, queue, NPU lock, token count, stop-check
streamer, post-processing), not NPU speed: the computation is the CPU's. The busy counter is off
(``--no-busy-check``): a real one is two sysfs reads per job. Also reported: the daemon's load
time with an empty compile cache and then with the blob cached.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import DaemonProcess, LineClient, alternate, overhead_summary
from npud.config import load_config
from npud.engine import DecodeSettings, generation_config, pipeline_kwargs
from npud.jobs import JOBS

MODEL = Path(__file__).resolve().parent.parent / "tests" / "models" / "tiny-qwen2-h64"
JOB = "summary"


class EmulatedBaseline:
    """The NPU pipeline in-process, built with npud's own properties and decoding config."""

    def __init__(self, args: list[str], cache: Path, text: str, tokens: int) -> None:
        import openvino_genai as og

        config = load_config(args, {"HOME": str(cache)})
        self.pipe = og.LLMPipeline(str(MODEL), "NPU", **pipeline_kwargs(config, cache / "direct"))
        spec = JOBS[JOB]
        self.prompt = self.pipe.get_tokenizer().apply_chat_template(spec.messages(text), add_generation_prompt=True)
        self.config = generation_config(og, self.pipe.get_generation_config(), DecodeSettings.for_job(spec, tokens))

    def generate(self) -> int:
        result = self.pipe.generate([self.prompt], self.config)
        return int(result.perf_metrics.get_num_generated_tokens())


def _load_ms(client: LineClient) -> float:
    health = msgspec.json.decode(client.roundtrip(client.request_bytes("health")))["result"]
    assert health["emulated"] is True and health["status"] == "ready", health
    return float(health["load_time_ms"])


def npu_emulated_overhead(n: int, text: str, tokens: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        args = ["--device", "NPU", "--npu-emulation", "--model", str(MODEL), "--no-busy-check",
                "--cache-dir", str(cache), "--lock-file", str(cache / "npu.lock"), "--no-http"]
        loads = []
        for _ in range(2):  # an empty compile cache, then the blob of the first start
            daemon = DaemonProcess(args)
            client = LineClient(daemon.socket)
            loads.append(_load_ms(client))
            if len(loads) == 1:
                client.close()
                daemon.stop()
        baseline = EmulatedBaseline(args, cache, text, tokens)
        params = {"job": JOB, "input": text, "max_new_tokens": tokens}

        def via_npud() -> int:
            reply = msgspec.json.decode(client.roundtrip(client.request_bytes("generate", params)))
            return int(reply["result"]["tokens"]["generated"])

        try:
            assert via_npud() == baseline.generate(), "different token counts: not the same work"
            npud_ns, direct_ns = alternate(via_npud, baseline.generate, n)
        finally:
            client.close()
            daemon.stop()
    return {**overhead_summary(npud_ns, direct_ns, n),
            "tokens": tokens, "load_cold_ms": loads[0], "load_cached_ms": loads[1]}


def table_row(result: dict[str, Any]) -> tuple[str, str, str]:
    return ("overhead, emulated NPU, tiny model (npud − direct, p50 / p99)",
            f"{result['overhead_us_p50']:.0f} µs / {result['overhead_us_p99']:.0f} µs "
            f"({result['npud_ms']:.1f} vs {result['direct_ms']:.1f} ms)", "—")
