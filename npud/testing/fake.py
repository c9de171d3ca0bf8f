"""A fake engine for testing the daemon without OpenVINO: deterministic, controllable, honest.

It "tokenises" on whitespace, so prompt budgets can be hit with a known number of words, and it
can be told to fail, to block until released (to fill the queue or test cancellation), or to
advance a synthetic NPU busy counter the way the real driver does while a job runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npuclient.protocol import DeviceInfo, FinishReason
from npud.config import Config
from npud.engine import DecodeSettings, Engine, Generation, ModelLoadError
from npud.jobs import Message

DEFAULT_REPLIES = {
    "title": "Fake Title About The Input",
    "summary": "A fake summary of the input.",
    "notification": "A fake condensed notification. A second sentence.",
    "memory_candidate": "- The user likes fakes.\n- The user tests things.",
}


@dataclass
class FakeBehaviour:
    """Knobs a test turns; Events let tests wait for the worker instead of sleeping."""

    reply: str | None = None  # None: pick from DEFAULT_REPLIES by the system prompt
    fail_with: BaseException | None = None
    gate: threading.Event | None = None  # if set, generate() blocks until it is set (or stopped)
    busy_file: Path | None = None  # a synthetic npu_busy_time_us to advance
    busy_step_us: int = 1500  # how far a generation advances it (0: a silent CPU fallback)
    ignore_stop: bool = False  # a hung pipeline: the gate wait ignores should_stop
    crash_with: BaseException | None = None  # raised past the worker's error handling (a worker bug)
    started: threading.Event = field(default_factory=threading.Event)
    calls: list[str] = field(default_factory=list)  # prompts seen (kept in memory, never logged)
    threads: set[str] = field(default_factory=set)  # names of threads that called into the engine


class WorkerBug(BaseException):
    """Not an Exception: escapes the worker's per-job error handling, like a bug in the worker would."""


class FakeEngine:
    def __init__(self, behaviour: FakeBehaviour, model_id: str = "fake-model", info: DeviceInfo | None = None) -> None:
        self.behaviour = behaviour
        self.model_id = model_id
        self.device_info = info or DeviceInfo(device="CPU", openvino_version="fake", genai_version="fake",
                                              max_prompt_len=1024)

    def render_prompt(self, messages: Sequence[Message]) -> tuple[str, int]:
        self.behaviour.threads.add(threading.current_thread().name)
        prompt = "\n".join(f"<{m['role']}> {m['content']}" for m in messages) + "\n<assistant>"
        return prompt, len(prompt.split())

    def generate(self, prompt: str, settings: DecodeSettings, should_stop: Callable[[], bool]) -> Generation:
        b = self.behaviour
        b.threads.add(threading.current_thread().name)
        b.calls.append(prompt)
        b.started.set()
        if b.crash_with is not None:
            raise b.crash_with
        if b.gate is not None:
            while not b.gate.wait(0.01):
                if should_stop() and not b.ignore_stop:
                    return Generation("", "cancelled", len(prompt.split()), 0)
        if b.fail_with is not None:
            raise b.fail_with
        if b.busy_file is not None:
            value = int(b.busy_file.read_text())
            b.busy_file.write_text(f"{value + b.busy_step_us}\n")
        text = b.reply if b.reply is not None else _default_reply(prompt)
        words = text.split(" ")
        finish: FinishReason = "stop"
        if len(words) > settings.max_new_tokens:
            words, finish = words[: settings.max_new_tokens], "length"
        return Generation(" ".join(words), finish, len(prompt.split()), len(words))


def _default_reply(prompt: str) -> str:
    system = prompt.split("\n", 1)[0].lower()
    for needle, job in (("title", "title"), ("summar", "summary"), ("notification", "notification"),
                        ("remember", "memory_candidate")):
        if needle in system:
            return DEFAULT_REPLIES[job]
    return "fake reply"


@dataclass
class FakeLoader:
    """An EngineLoader for tests: optional load failure and a gate to hold the 'loading' state."""

    behaviour: FakeBehaviour = field(default_factory=FakeBehaviour)
    load_error: str | None = None
    #: Raised by the first loads, one per attempt, before ``load_error`` (a failure that clears).
    load_failures: list[BaseException] = field(default_factory=list)
    load_gate: threading.Event | None = None
    preflight_error: Exception | None = None
    model_id: str = "fake-model"
    loaded_with: list[Config] = field(default_factory=list)

    def preflight(self, config: Config) -> None:
        if self.preflight_error is not None:
            raise self.preflight_error

    def load(self, config: Config) -> Engine:
        self.loaded_with.append(config)
        self.behaviour.threads.add(threading.current_thread().name)
        if self.load_gate is not None:
            self.load_gate.wait()
        if self.load_failures:
            raise self.load_failures.pop(0)
        if self.load_error is not None:
            raise ModelLoadError(self.load_error)
        info = DeviceInfo(
            device=config.device, openvino_version="fake", genai_version="fake",
            max_prompt_len=config.max_prompt_tokens,
            min_response_len=config.min_response_len if config.is_npu else None,
            prefill_hint=config.prefill_hint if config.is_npu else None,
            generate_hint=config.generate_hint if config.is_npu else None,
        )
        return FakeEngine(self.behaviour, self.model_id, info)
