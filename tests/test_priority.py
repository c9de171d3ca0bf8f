"""The inference runs at a lower CPU priority than the event loop (issue 11, section 3).

The worker thread lowers its own nice value and policy before it loads the model; OpenVINO's
threads, made during the load, inherit them. Checked on the real pipelines (CPU plugin and the
emulated NPU) in a fresh process, and on the worker with the fake engine: what health reports,
that the event loop's thread keeps its priority, that a retried load still works.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from npud.config import ConfigError, load_config
from npud.engine import Engine, ModelLoadError
from npud.priority import lower_this_thread, thread_priority
from npud.rpc import Dispatcher
from npud.testing.fake import FakeLoader
from npud.worker import Worker

from .conftest import make_config
from .emulated import Prompts, emulated_config, npu_cache  # noqa: F401  (fixture)
from .test_dispatcher import call, run_with_dispatcher

ROOT = Path(__file__).resolve().parent.parent
ENV = {"HOME": "/home/u"}


def in_new_thread(action: Callable[[], Any]) -> Any:
    """Run ``action`` on a fresh thread (its priority changes die with it) and return its result."""
    box: list[Any] = []
    thread = threading.Thread(target=lambda: box.append(action()))
    thread.start()
    thread.join(30)
    return box[0]


def lowered(steps: int) -> int:
    """The nice value ``steps`` below this (the test's main) thread's."""
    return min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + steps)


def this_thread() -> tuple[int, str]:
    p = thread_priority(threading.get_native_id())
    return p.nice, p.policy


# ---------------------------------------------------------------- lowering a thread

def test_lowering_changes_the_calling_thread_only() -> None:
    main_before = this_thread()
    applied, seen = in_new_thread(lambda: (lower_this_thread(9, "batch"), this_thread()))
    assert (applied.nice, applied.policy) == seen == (min(19, main_before[0] + 9), "batch")
    assert this_thread() == main_before


def test_threads_made_by_a_lowered_thread_inherit_its_priority() -> None:
    def lowered_then_spawn() -> tuple[int, str]:
        lower_this_thread(11, "idle")
        return in_new_thread(this_thread)

    assert in_new_thread(lowered_then_spawn) == (min(19, this_thread()[0] + 11), "idle")


def set_this_thread(nice: int, policy: int = os.SCHED_OTHER) -> None:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    os.sched_setscheduler(0, policy, os.sched_param(0))


def test_steps_are_relative_to_the_thread_and_capped_at_19() -> None:
    # npud started under `nice -n 5`: the inference still goes below its event loop, not level.
    def started_at(nice: int, steps: int) -> tuple[int, str]:
        set_this_thread(nice)
        applied = lower_this_thread(steps, "other")
        assert (applied.nice, applied.policy) == this_thread()
        return this_thread()

    assert in_new_thread(lambda: started_at(5, 10)) == (15, "other")
    assert in_new_thread(lambda: started_at(15, 10)) == (19, "other")
    assert in_new_thread(lambda: started_at(19, 3)) == (19, "other")


def test_other_leaves_the_policy_as_it_is() -> None:
    def batch_then_other() -> tuple[int, str]:
        set_this_thread(2, os.SCHED_BATCH)
        lower_this_thread(1, "other")
        return this_thread()

    assert in_new_thread(batch_then_other) == (3, "batch")


def _real_time_allowed() -> bool:
    def attempt() -> bool:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError:
            return False
        return True

    return bool(in_new_thread(attempt))


@pytest.mark.skipif(not _real_time_allowed(), reason="needs permission for a real-time policy (root)")
@pytest.mark.parametrize(("policy", "name"), [(os.SCHED_FIFO, "fifo"), (os.SCHED_RR, "rr")])
def test_a_real_time_start_is_left_for_other(policy: int, name: str) -> None:
    """npud started under `chrt -f 1`: nice means nothing to a real-time thread, which runs ahead
    of every normal program; the worker leaves it for `other`, and health names the policies."""
    def real_time_then_lower() -> tuple[tuple[int, str], tuple[int, str]]:
        os.sched_setscheduler(0, policy, os.sched_param(1))
        before = this_thread()
        lower_this_thread(10, "other")
        return before, this_thread()

    before, after = in_new_thread(real_time_then_lower)
    assert before[1] == name
    assert after == (lowered(10), "other")


def test_nice_zero_and_other_change_nothing() -> None:
    main_before = this_thread()
    assert in_new_thread(lambda: (lower_this_thread(0, "other"), this_thread()))[1] == main_before


def test_a_refused_change_is_logged_not_raised(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    def refuse(*args: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    main_before = this_thread()
    with caplog.at_level(logging.WARNING, logger="npud.priority"):
        applied = in_new_thread(lambda: lower_this_thread(10, "idle"))
    assert (applied.nice, applied.policy) == main_before  # reports what really applies
    assert f"cannot lower the worker's priority to nice {min(19, main_before[0] + 10)}" in caplog.text
    assert "cannot set the worker's scheduling policy to idle" in caplog.text


# ---------------------------------------------------------------- configuration

def test_config_defaults_flags_and_environment() -> None:
    config = load_config([], ENV)
    assert (config.worker_nice, config.worker_sched) == (10, "other")
    config = load_config(["--worker-nice", "19", "--worker-sched", "IDLE"], ENV)
    assert (config.worker_nice, config.worker_sched) == (19, "idle")
    config = load_config([], {**ENV, "OV_GENAI_NPU_WORKER_NICE": "0", "OV_GENAI_NPU_WORKER_SCHED": "batch"})
    assert (config.worker_nice, config.worker_sched) == (0, "batch")


@pytest.mark.parametrize(("argv", "message"), [
    (["--worker-nice", "20"], "--worker-nice: must be between 0 (no change) and 19 steps"),
    (["--worker-nice", "-5"], "--worker-nice: must be between 0 (no change) and 19 steps"),
    (["--worker-nice", "ten"], "--worker-nice: invalid literal"),
    (["--worker-sched", "fifo"], "--worker-sched: unknown policy 'fifo'; choose other, batch, idle"),
])
def test_config_range_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(argv, ENV)
    assert str(exc.value).startswith(message)


def test_environment_range_error_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="^OV_GENAI_NPU_WORKER_NICE: must be between 0"):
        load_config([], {**ENV, "OV_GENAI_NPU_WORKER_NICE": "40"})


# ---------------------------------------------------------------- the worker (fake engine)

class PriorityRecordingLoader(FakeLoader):
    """Writes down the priority of the thread each load runs on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.load_priorities: list[tuple[int, str]] = []

    def load(self, config: Any) -> Engine:
        self.load_priorities.append(this_thread())
        return super().load(config)


def test_worker_loads_at_the_lowered_priority_and_health_reports_it(tmp_path: Path) -> None:
    loader = PriorityRecordingLoader()
    loop_thread: list[tuple[int, str]] = []

    async def body(dispatcher: Dispatcher, worker: Worker) -> None:
        health = await call(dispatcher, "health")
        loop_thread.append(this_thread())
        assert health["result"]["worker"] == {"nice": lowered(12), "policy": "batch"}

    main_before = this_thread()
    run_with_dispatcher(make_config(tmp_path, worker_nice=12, worker_sched="batch"), loader, body)
    assert loader.load_priorities == [(lowered(12), "batch")]
    assert loop_thread == [main_before]  # the event loop's thread is never touched


def test_a_retried_load_runs_at_the_same_priority(tmp_path: Path) -> None:
    # The retry runs on the same (already lowered) thread: no attempt to set it again can fail.
    loader = PriorityRecordingLoader(load_failures=[ModelLoadError("ZE_RESULT_ERROR_DEVICE_LOST")])
    original = Worker.__init__

    def no_wait(self: Worker, *args: Any, **kwargs: Any) -> None:
        original(self, *args, backoff_wait=lambda delay: False, **kwargs)

    async def body(dispatcher: Dispatcher, worker: Worker) -> None:
        health = (await call(dispatcher, "health"))["result"]
        assert (health["status"], health["load_attempts"], health["worker"]) == ("ready", 2, {"nice": lowered(8), "policy": "other"})

    Worker.__init__ = no_wait  # type: ignore[method-assign]
    try:
        run_with_dispatcher(make_config(tmp_path, worker_nice=8), loader, body)
    finally:
        Worker.__init__ = original  # type: ignore[method-assign]
    assert loader.load_priorities == [(lowered(8), "other")] * 2


# ---------------------------------------------------------------- real pipelines, fresh process

def probe(config: Any) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "tests.priority_probe", msgspec.json.encode(config).decode()],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = msgspec.json.decode(done.stdout)
    assert (result["status"], result["error"]) == ("ready", None)
    assert result["finish"] in {"length", "stop"}
    return result


def assert_inference_lowered(result: dict[str, Any], steps: int, policy: str) -> None:
    before, after = result["before"], result["after"]
    main = str(result["main"])
    nice = min(19, before[main][0] + steps)
    # The event loop's thread, and every thread that existed before the worker, keep theirs.
    assert after[main] == before[main]
    for tid, priority in before.items():
        assert after.get(tid, priority) == priority, tid
    made = {tid: priority for tid, priority in after.items() if tid not in before}
    assert str(result["worker"]) in made
    # OpenVINO's inference threads appear during the load: several of them, all lowered.
    assert len(made) >= 3, made
    assert all(priority == [nice, policy] for priority in made.values()), made
    assert result["reported"] == {"nice": nice, "policy": policy}


def test_openvino_cpu_threads_inherit_the_worker_priority(tmp_path: Path, tiny_gguf: Path) -> None:
    # From the GGUF: the converter child is started by the lowered worker thread as well.
    config = make_config(tmp_path, model=str(tiny_gguf), worker_nice=7, worker_sched="batch")
    assert_inference_lowered(probe(config), 7, "batch")


def test_emulated_npu_threads_inherit_the_worker_priority(tmp_path: Path, npu_cache: Path) -> None:  # noqa: F811
    model = "tiny-qwen2-h64"
    config = emulated_config(tmp_path, model, None, Prompts(model).budget(), cache_dir=str(npu_cache),
                             worker_nice=13, worker_sched="batch")
    assert_inference_lowered(probe(config), 13, "batch")


# ---------------------------------------------------------------- CPU inference threads

def test_worker_threads_reach_the_cpu_pipeline_only_when_set(tmp_path: Path) -> None:
    from npud.engine import pipeline_properties

    assert "INFERENCE_NUM_THREADS" not in pipeline_properties(make_config(tmp_path))
    config = load_config(["--device", "cpu", "--worker-threads", "1"], ENV)
    assert pipeline_properties(config)["INFERENCE_NUM_THREADS"] == 1
    assert load_config([], {**ENV, "OV_GENAI_NPU_WORKER_THREADS": "3", "OV_GENAI_NPU_DEVICE": "CPU"}).worker_threads == 3


@pytest.mark.parametrize(("argv", "message"), [
    (["--worker-threads", "1"], "--worker-threads sets the CPU plugin's inference threads and needs --device CPU "
                                "(got --device NPU)"),
    (["--worker-threads", "2", "--npu-emulation"], "--worker-threads sets the CPU plugin's inference threads and "
                                                   "needs --device CPU (got --device NPU with --npu-emulation)"),
    (["--device", "CPU", "--worker-threads", "-1"], "--worker-threads: must be 0 or more"),
])
def test_worker_threads_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(argv, ENV)
    assert str(exc.value) == message
