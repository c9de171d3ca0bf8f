"""Helpers for tests on the emulated NPU: OpenVINO GenAI's real NPU pipeline computing on the CPU
(``--npu-emulation``, NPUW_DEVICES=CPU) with the committed optimum-exported models.

Nothing here stands in for the pipeline: :class:`RecordingPipeline` is the real ``LLMPipeline``
with its calls written down (what npud sent, what came back), so tests can check what reached
the device. Prompt sizes come from each model's own tokenizer, never from numbers tuned to one
fixture.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from npud.config import Config
from npud.engine import OpenVinoLoader
from npud.jobs import JOBS, JobSpec

from .conftest import make_config

MODELS_DIR = Path(__file__).resolve().parent / "models"
MODELS = ("tiny-qwen2-h64", "tiny-qwen2-h96")
SHORT_INPUT = "We moved the standup to 9:30."
#: MIN_RESPONSE_LEN in these tests: small, so the KV edge is a few dozen tokens away.
RESPONSE_LEN = 32
#: MAX_PROMPT_LEN is the longest job prompt for SHORT_INPUT plus this (small: RSS and load time
#: grow with it).
PROMPT_HEADROOM = 16
#: Extra budget where longer texts are used (the decoding table, the smoke check's sample): one
#: value, so those tests share compiled blobs through ``npu_cache``.
LONGER_PROMPTS = 96


def model_dir(name: str) -> Path:
    return MODELS_DIR / name


@dataclass
class Call:
    """One ``generate`` call that reached the real pipeline."""

    inputs: Any
    config: Any
    finish: str | None = None  # GenerationFinishReason name
    generated: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None
    returned: bool = False


@dataclass
class Recorder:
    """Makes real NPU pipelines and records their construction and generate calls."""

    constructed: list[dict[str, Any]] = field(default_factory=list)
    pipelines: list[RecordingPipeline] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    done: threading.Condition = field(default_factory=threading.Condition)

    def factory(self, model_path: str, device: str, **kwargs: Any) -> RecordingPipeline:
        self.constructed.append({"model_path": model_path, "device": device, **kwargs})
        pipeline = RecordingPipeline(self, model_path, device, **kwargs)
        self.pipelines.append(pipeline)
        return pipeline

    def loader(self) -> OpenVinoLoader:
        return OpenVinoLoader(pipeline_factory=self.factory)

    def mark(self) -> int:
        return len(self.calls)

    def call_after(self, mark: int, timeout: float = 60) -> Call:
        """Wait for the first generate call after ``mark`` to return (or raise)."""
        with self.done:
            if not self.done.wait_for(lambda: len(self.calls) > mark and self.calls[mark].returned, timeout):
                raise TimeoutError("no generate call returned")
            return self.calls[mark]


class RecordingPipeline:
    def __init__(self, recorder: Recorder, model_path: str, device: str, **kwargs: Any) -> None:
        import openvino_genai as og

        self._recorder = recorder
        self._pipe = og.LLMPipeline(model_path, device, **kwargs)

    def get_tokenizer(self) -> Any:
        return self._pipe.get_tokenizer()

    def get_generation_config(self) -> Any:
        return self._pipe.get_generation_config()

    def generate(self, inputs: Any, config: Any = None, streamer: Any = None) -> Any:
        call = Call(inputs, config)
        done = self._recorder.done
        with done:
            self._recorder.calls.append(call)
        try:
            result = self._pipe.generate(inputs, config, streamer)
        except Exception as exc:
            call.error = str(exc)
            raise
        else:
            call.finish = result.finish_reasons[0].name
            call.generated = int(result.perf_metrics.get_num_generated_tokens())
            call.prompt_tokens = int(result.perf_metrics.get_num_input_tokens())
        finally:
            with done:
                call.returned = True
                done.notify_all()
        return result


class Prompts:
    """Prompt sizes of npud's jobs as this model's tokenizer counts them (the engine's own way)."""

    def __init__(self, model: str) -> None:
        import openvino_genai as og

        self.tokenizer = og.Tokenizer(str(model_dir(model)))

    def count(self, spec: JobSpec, text: str) -> int:
        prompt = self.tokenizer.apply_chat_template(spec.messages(text), add_generation_prompt=True)
        return int(self.tokenizer.encode(prompt).input_ids.get_shape()[-1])

    def budget(self) -> int:
        """A MAX_PROMPT_LEN that fits every job with SHORT_INPUT, and little more."""
        return max(self.count(spec, SHORT_INPUT) for spec in JOBS.values()) + PROMPT_HEADROOM

    def input_of(self, spec: JobSpec, target: int) -> str:
        """An input whose prompt for ``spec`` is exactly ``target`` tokens (digits are one token
        each with Qwen2's pre-tokenizer, so the search is short)."""
        base = self.count(spec, SHORT_INPUT)
        if target < base:
            raise ValueError(f"{target} tokens is less than the prompt of the short input ({base})")
        for digits in range(max(0, target - base - 4), 2 * (target - base) + 8):
            text = f"{SHORT_INPUT} {'7' * digits}" if digits else SHORT_INPUT
            got = self.count(spec, text)
            if got == target:
                return text
            if got > target + 4:
                break
        raise ValueError(f"no input gives a prompt of exactly {target} tokens")


@pytest.fixture(scope="session")
def npu_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A compile cache shared by the emulated-NPU tests that do not test the cache itself: what
    one of them compiled is a hit for the next (import this fixture into the test module)."""
    return tmp_path_factory.mktemp("npu-cache")


def emulated_config(tmp_path: Path, model: str, busy_file: Path | None, budget: int,
                    **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "model": str(model_dir(model)),
        "device": "NPU",
        "npu_emulation": True,
        "max_prompt_tokens": budget,
        "min_response_len": RESPONSE_LEN,
        "busy_file": str(busy_file) if busy_file else None,
        "busy_check": busy_file is not None,
        "lock_timeout_s": 10.0,
    }
    values.update(overrides)
    return make_config(tmp_path, **values)
