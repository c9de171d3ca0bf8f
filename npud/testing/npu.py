"""A faithful NPU stand-in for machines without an NPU.

:class:`FakeNpuPipeline` has ``LLMPipeline``'s interface and behaves like OpenVINO GenAI's NPU
(stateful) pipeline where npud depends on it, while the actual tokens come from a real CPU
pipeline of the same model:

- it requires the NPU properties (``MAX_PROMPT_LEN``, ``MIN_RESPONSE_LEN``, ``PREFILL_HINT``,
  ``GENERATE_HINT``) and a ``CACHE_DIR``, and writes a blob there on the first compile;
- a prompt longer than ``MAX_PROMPT_LEN`` raises the real message: ``Stateful LLM pipeline on NPU
  may only process prompts or hold chat history up to N tokens. M is passed.``;
- only greedy or multinomial decoding (beam search raises);
- while generating it advances a synthetic ``npu_busy_time_us`` by the microseconds spent, like
  the driver; ``advance_busy=False`` gives a silent CPU fallback, which npud must catch.

:func:`npu_loader` plugs it into the real :class:`~npud.engine.OpenVinoLoader`, with ``NPU`` in
the device list and plausible read-only NPU properties, so the daemon's NPU code path runs as is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from npud.engine import OpenVinoLoader

REQUIRED = ("MAX_PROMPT_LEN", "MIN_RESPONSE_LEN", "PREFILL_HINT", "GENERATE_HINT", "CACHE_DIR")
FAKE_PROPERTIES = {
    "FULL_DEVICE_NAME": "Intel(R) AI Boost (stand-in)",
    "NPU_DRIVER_VERSION": "1.17.0.20250508-stand-in",
    "NPU_COMPILER_VERSION": (7 << 16) | 21,
    "NPU_DEVICE_TOTAL_MEM_SIZE": 16 * 1024**3,
    "NPU_DEVICE_ALLOC_MEM_SIZE": 0,
}
BLOB = "stand-in.blob"


class FakeNpuPipeline:
    def __init__(self, model_path: str, device: str, *, busy_file: Path | None, advance_busy: bool = True,
                 compiles: list[str] | None = None, compile_s: float = 0.0, **properties: Any) -> None:
        import openvino_genai as og

        if device != "NPU":
            raise RuntimeError(f"stand-in NPU pipeline asked for device {device}")
        missing = [name for name in REQUIRED if name not in properties]
        if missing:
            raise RuntimeError(f"NPU stand-in: missing properties {missing}")
        self.properties = properties
        self.max_prompt_len = int(properties["MAX_PROMPT_LEN"])
        self.kv_capacity = self.max_prompt_len + int(properties["MIN_RESPONSE_LEN"]) - 1
        blob = Path(properties["CACHE_DIR"]) / BLOB
        cached = blob.exists()
        if compiles is not None:
            compiles.append("cached" if cached else "compiled")
        if not cached and compile_s:
            time.sleep(compile_s)  # a real NPU compile takes seconds to minutes; a cached load does not
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"\0" * 4096)  # what a compile leaves in CACHE_DIR
        self._inner = og.LLMPipeline(model_path, "CPU")
        self._busy = busy_file
        self._advance = advance_busy

    def get_tokenizer(self) -> Any:
        return self._inner.get_tokenizer()

    def get_generation_config(self) -> Any:
        return self._inner.get_generation_config()

    def generate(self, inputs: Any, config: Any = None, streamer: Any = None) -> Any:
        if config is not None and (config.num_beams > 1 or config.num_return_sequences > 1):
            raise RuntimeError("Stateful LLM pipeline on NPU supports only greedy and multinomial decoding")
        prompt = inputs[0] if isinstance(inputs, list) else inputs
        count = int(self.get_tokenizer().encode(prompt).input_ids.get_shape()[-1])
        if count > self.max_prompt_len:
            raise RuntimeError(
                "Stateful LLM pipeline on NPU may only process prompts or hold chat history up to "
                f"{self.max_prompt_len} tokens. {count} is passed."
            )
        started = time.perf_counter()
        result = self._inner.generate(inputs, config, streamer)
        if self._busy is not None and self._advance:
            elapsed_us = max(1, int((time.perf_counter() - started) * 1e6))
            value = int(self._busy.read_text())
            self._busy.write_text(f"{value + elapsed_us}\n")
        return result


def npu_loader(busy_file: Path | None, advance_busy: bool = True, compiles: list[str] | None = None,
               compile_s: float = 0.0) -> OpenVinoLoader:
    """The real OpenVinoLoader, wired to the stand-in (an NPU "present", its properties readable)."""

    def factory(model_path: str, device: str, **properties: Any) -> FakeNpuPipeline:
        return FakeNpuPipeline(model_path, device, busy_file=busy_file, advance_busy=advance_busy,
                               compiles=compiles, compile_s=compile_s, **properties)

    def properties(device: str, names: Any) -> dict[str, Any]:
        return {name: FAKE_PROPERTIES[name] for name in names if name in FAKE_PROPERTIES}

    return OpenVinoLoader(pipeline_factory=factory, devices=lambda: ["CPU", "NPU"], device_properties=properties)
