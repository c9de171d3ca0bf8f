"""Dispatcher + worker with the fake engine, no sockets: lines in, replies out."""

from __future__ import annotations

import asyncio
import fcntl
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from npud.config import Config
from npud.engine import pipeline_properties
from npud.npulock import NpuLock
from npud.rpc import Dispatcher
from npud.daemon import prepare_busy_counter
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs
from npud.worker import Worker

from .conftest import make_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_with_dispatcher(
    config: Config,
    loader: FakeLoader,
    body: Callable[[Dispatcher, Worker], Awaitable[None]],
    clock: Callable[[], float] | None = None,
    wait_loaded: bool = True,
) -> None:
    async def main() -> None:
        busy = prepare_busy_counter(config)
        lock = NpuLock(config.lock_file, config.lock_timeout_s) if config.is_npu else None
        worker = Worker(config, loader, busy, lock, **({"clock": clock} if clock else {}))
        worker.start()
        if wait_loaded:
            await asyncio.to_thread(worker.wait_loaded, 30)
        dispatcher = Dispatcher(config, worker, busy)
        try:
            await body(dispatcher, worker)
        finally:
            worker.stop()
            if loader.load_gate is not None:
                loader.load_gate.set()
            await asyncio.to_thread(worker.join, 10)

    asyncio.run(main())


async def call(dispatcher: Dispatcher, method: str, params: Any = None, request_id: Any = 1) -> dict[str, Any]:
    request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        request["params"] = params
    reply = await dispatcher.handle_line(msgspec.json.encode(request), None)
    assert reply is not None and reply.endswith(b"\n") and reply.count(b"\n") == 1
    return msgspec.json.decode(reply)


def title(text: str = "Some text about a meeting.", **extra: Any) -> dict[str, Any]:
    return {"job": "title", "input": text, **extra}


async def wait_event(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


def npu_config(tmp_path: Path, behaviour: FakeBehaviour, **overrides: Any) -> Config:
    busy = make_npu_sysfs(tmp_path / "sys", busy_us=10_000)
    behaviour.busy_file = busy
    return make_config(tmp_path, device="NPU", sysfs_root=str(tmp_path / "sys"), lock_timeout_s=0.2, **overrides)


# ---------------------------------------------------------------- happy paths


def test_every_job_and_method(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()

    async def body(d: Dispatcher, w: Worker) -> None:
        health = (await call(d, "health"))["result"]
        assert health["status"] == "ready" and health["model"] == "fake-model" and health["device"] == "CPU"
        assert health["busy_counter"] == {"enabled": False, "path": None}
        models = (await call(d, "models"))["result"]["models"]
        assert [j["name"] for j in models[0]["jobs"]] == ["title", "summary", "notification", "memory_candidate"]
        assert models[0]["limits"] == {"max_input_chars": 6000, "max_prompt_tokens": 1024, "max_new_tokens": 256}

        result = (await call(d, "generate", title()))["result"]
        assert result["text"] == "Fake Title About The Input" and result["job"] == "title"
        assert result["npu_busy_delta_us"] is None and result["finish_reason"] == "stop"
        assert result["tokens"]["prompt"] > 0 and result["tokens"]["generated"] == 5
        timing = result["timing_ms"]
        assert 0 <= timing["queue"] <= timing["total"] and timing["generate"] <= timing["total"]
        assert "candidates" not in result

        summary = (await call(d, "generate", {"job": "summary", "input": "x y z " * 10, "max_new_tokens": 256}))["result"]
        assert summary["text"] == "A fake summary of the input."
        condensed = (await call(d, "condense_notification", {"input": "Build 42 passed."}))["result"]
        assert condensed["job"] == "notification" and condensed["text"] == "A fake condensed notification."
        memory = (await call(d, "extract_memory_candidates", {"input": "I like fakes."}))["result"]
        assert memory["candidates"] == ["The user likes fakes.", "The user tests things."]
        same = (await call(d, "generate", {"job": "memory_candidate", "input": "I like fakes."}))["result"]
        assert same["candidates"] == memory["candidates"]
        assert (await call(d, "health"))["result"]["jobs_served"] == 5

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)
    # Every model call happened on the one worker thread.
    assert behaviour.threads == {"npud-worker"}


def test_max_new_tokens_reaches_the_engine(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply="one two three four five six")

    async def body(d: Dispatcher, w: Worker) -> None:
        result = (await call(d, "generate", {"job": "summary", "input": "a longer input text", "max_new_tokens": 3}))["result"]
        assert result["text"] == "one two three" and result["finish_reason"] == "length"

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


def test_batch_and_notifications(tmp_path: Path) -> None:
    async def body(d: Dispatcher, w: Worker) -> None:
        line = (b'[{"jsonrpc":"2.0","id":1,"method":"health"},{"jsonrpc":"2.0","method":"health"},'
                b'{"jsonrpc":"2.0","id":2,"method":"nope"},'
                b'{"jsonrpc":"2.0","id":3,"method":"generate","params":{"job":"title","input":"a b"}}]')
        reply = await d.handle_line(line, None)
        assert reply is not None
        items = msgspec.json.decode(reply)
        assert [item["id"] for item in items] == [1, 2, 3]  # the notification gets no reply
        assert items[1]["error"]["code"] == -32601 and items[2]["result"]["job"] == "title"
        assert await d.handle_line(b'{"jsonrpc":"2.0","method":"health"}', None) is None
        assert await d.handle_line(b'[{"jsonrpc":"2.0","method":"health"}]', None) is None

    run_with_dispatcher(make_config(tmp_path), FakeLoader(), body)


# ---------------------------------------------------------------- readiness


def test_jobs_wait_in_the_queue_while_the_model_loads(tmp_path: Path) -> None:
    gate = threading.Event()

    async def body(d: Dispatcher, w: Worker) -> None:
        assert (await call(d, "health"))["result"]["status"] == "loading"
        waiting = asyncio.ensure_future(call(d, "generate", title()))
        while w.snapshot().queue_depth < 1:
            await asyncio.sleep(0)
        assert not waiting.done() and (await call(d, "health"))["result"]["queue"]["depth"] == 1
        gate.set()
        assert (await waiting)["result"]["job"] == "title"  # answered once the model is ready
        assert (await call(d, "health"))["result"]["status"] == "ready"

    run_with_dispatcher(make_config(tmp_path), FakeLoader(load_gate=gate), body, wait_loaded=False)


def test_jobs_queued_during_a_failed_load_get_not_ready(tmp_path: Path) -> None:
    gate = threading.Event()
    loader = FakeLoader(load_gate=gate, load_error="no such weights")

    async def body(d: Dispatcher, w: Worker) -> None:
        waiting = asyncio.ensure_future(call(d, "generate", title()))
        while w.snapshot().queue_depth < 1:
            await asyncio.sleep(0)
        gate.set()
        error = (await waiting)["error"]
        assert error == {"code": -32001, "message": "model failed to load",
                         "data": {"status": "error", "error": "no such weights"}}

    run_with_dispatcher(make_config(tmp_path), loader, body, wait_loaded=False)


def test_load_failure_is_reported_and_health_keeps_answering(tmp_path: Path) -> None:
    async def body(d: Dispatcher, w: Worker) -> None:
        health = (await call(d, "health"))["result"]
        assert health["status"] == "error" and health["error"] == "weights are corrupt"
        error = (await call(d, "generate", title()))["error"]
        assert error["code"] == -32001
        assert error["data"] == {"status": "error", "error": "weights are corrupt"}
        assert (await call(d, "models"))["result"]["models"][0]["status"] == "error"

    run_with_dispatcher(make_config(tmp_path), FakeLoader(load_error="weights are corrupt"), body)


# ---------------------------------------------------------------- limits


def test_prompt_over_token_budget_never_reaches_the_device(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()

    async def body(d: Dispatcher, w: Worker) -> None:
        error = (await call(d, "generate", title("word " * 200)))["error"]
        assert error["code"] == -32602
        data = error["data"]
        assert data["limit"] == 100 and data["actual"] > 200 and data["unit"] == "tokens"
        assert behaviour.calls == []
        assert "result" in await call(d, "generate", title("short"))

    run_with_dispatcher(make_config(tmp_path, max_prompt_tokens=100), FakeLoader(behaviour), body)


def test_input_and_max_new_tokens_limits(tmp_path: Path) -> None:
    async def body(d: Dispatcher, w: Worker) -> None:
        error = (await call(d, "generate", title("x" * 6001)))["error"]
        assert error["code"] == -32602
        assert error["data"] == {"limit": 6000, "actual": 6001, "unit": "characters", "field": "input"}
        error = (await call(d, "generate", title(max_new_tokens=300)))["error"]
        assert error["data"] == {"limit": 32, "actual": 300, "unit": "tokens", "field": "max_new_tokens"}
        error = (await call(d, "condense_notification", {"input": "   "}))["error"]
        assert error == {"code": -32602, "message": "input must not be empty"}

    run_with_dispatcher(make_config(tmp_path), FakeLoader(), body)


# ---------------------------------------------------------------- queue


def test_queue_full_rejects_at_once_with_a_measured_retry_hint(tmp_path: Path) -> None:
    clock = FakeClock()
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)

    async def body(d: Dispatcher, w: Worker) -> None:
        # One running (held by the gate) plus two queued fill a queue of depth 2.
        running = asyncio.ensure_future(call(d, "generate", title(), 1))
        await wait_event(behaviour.started)
        queued = [asyncio.ensure_future(call(d, "generate", title(), i)) for i in (2, 3)]
        while w.snapshot().queue_depth < 2:
            await asyncio.sleep(0)
        clock.now += 0.25  # the running job is 250 ms old and nothing finished yet
        error = (await call(d, "generate", title(), 4))["error"]
        assert error["code"] == -32000
        assert error["data"] == {"retry_after_ms": 750, "queue_depth": 2, "capacity": 2}
        health = (await call(d, "health"))["result"]
        assert health["queue"] == {"depth": 2, "capacity": 2, "running": True}
        clock.now += 1.75  # the first job took 2 s in all
        gate.set()
        for fut in [running, *queued]:
            assert "result" in await fut
        # Now the estimate comes from measured service time (2 s, then two ~0 s jobs, smoothed).
        gate.clear()
        behaviour.started.clear()
        running = asyncio.ensure_future(call(d, "generate", title(), 5))
        await wait_event(behaviour.started)
        queued = [asyncio.ensure_future(call(d, "generate", title(), i)) for i in (6, 7)]
        while w.snapshot().queue_depth < 2:
            await asyncio.sleep(0)
        error = (await call(d, "generate", title(), 8))["error"]
        assert error["data"]["retry_after_ms"] == 2940  # ewma(2000, 0, 0) = 980 ms, times 3
        gate.set()
        for fut in [running, *queued]:
            assert "result" in await fut

    run_with_dispatcher(make_config(tmp_path, queue_depth=2), FakeLoader(behaviour), body, clock=clock)


def test_withdrawn_job_never_runs(tmp_path: Path) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)

    async def body(d: Dispatcher, w: Worker) -> None:
        running = asyncio.ensure_future(call(d, "generate", title("first"), 1))
        await wait_event(behaviour.started)
        queued = asyncio.ensure_future(call(d, "generate", title("second"), 2))
        while w.snapshot().queue_depth < 1:
            await asyncio.sleep(0)
        queued.cancel()  # what a disconnecting client's task sees
        await asyncio.gather(queued, return_exceptions=True)
        assert w.snapshot().queue_depth == 0
        gate.set()
        assert "result" in await running
        assert "result" in await call(d, "generate", title("third"), 3)
        assert len(behaviour.calls) == 2 and "second" not in "".join(behaviour.calls)

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


def test_cancelled_running_job_stops_and_worker_moves_on(tmp_path: Path) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)

    async def body(d: Dispatcher, w: Worker) -> None:
        running = asyncio.ensure_future(call(d, "generate", title(), 1))
        await wait_event(behaviour.started)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        behaviour.gate = None  # later jobs run freely; the cancelled one returned via should_stop
        assert "result" in await call(d, "generate", title(), 2)

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


def test_shutdown_fails_queued_jobs_and_finishes_the_running_one(tmp_path: Path) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)

    async def body(d: Dispatcher, w: Worker) -> None:
        running = asyncio.ensure_future(call(d, "generate", title(), 1))
        await wait_event(behaviour.started)
        queued = asyncio.ensure_future(call(d, "generate", title(), 2))
        while w.snapshot().queue_depth < 1:
            await asyncio.sleep(0)
        w.stop()
        error = (await queued)["error"]
        assert error["code"] == -32006 and "not started" in error["message"]
        assert (await call(d, "generate", title(), 3))["error"]["code"] == -32006
        gate.set()
        assert "result" in await running

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


# ---------------------------------------------------------------- failures


def test_pipeline_exception_is_a_generation_error_and_the_worker_survives(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(fail_with=RuntimeError("Infer Request is busy"))

    async def body(d: Dispatcher, w: Worker) -> None:
        error = (await call(d, "generate", title()))["error"]
        assert error == {"code": -32003, "message": "generation failed: RuntimeError: Infer Request is busy"}
        behaviour.fail_with = None
        assert "result" in await call(d, "generate", title())
        health = (await call(d, "health"))["result"]
        assert (health["jobs_served"], health["jobs_failed"]) == (1, 1)

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


def test_empty_model_output_is_an_error_but_no_candidates_is_not(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply="  \n ")

    async def body(d: Dispatcher, w: Worker) -> None:
        error = (await call(d, "generate", title()))["error"]
        assert error == {"code": -32003, "message": "the model produced no usable output"}
        behaviour.reply = "{broken json"
        result = (await call(d, "extract_memory_candidates", {"input": "hello"}))["result"]
        assert result["candidates"] == [] and result["text"] == ""

    run_with_dispatcher(make_config(tmp_path), FakeLoader(behaviour), body)


def test_internal_error_hides_details_and_keeps_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(d: Dispatcher, w: Worker) -> None:
        def broken() -> None:
            raise KeyError("secret detail")

        monkeypatch.setattr(w, "snapshot", broken)
        error = (await call(d, "health"))["error"]
        assert error == {"code": -32603, "message": "internal error: KeyError"}
        monkeypatch.undo()
        assert (await call(d, "health"))["result"]["status"] == "ready"

    run_with_dispatcher(make_config(tmp_path), FakeLoader(), body)


# ---------------------------------------------------------------- NPU mode (fake engine)


def test_npu_properties_only_on_npu(tmp_path: Path) -> None:
    cpu = pipeline_properties(make_config(tmp_path, device="CPU"))
    assert cpu == {"CACHE_DIR": str(tmp_path / "cache" / "compiled")}
    npu = pipeline_properties(make_config(tmp_path, device="NPU"))
    assert npu == {**cpu, "MAX_PROMPT_LEN": 1024, "MIN_RESPONSE_LEN": 64,
                   "PREFILL_HINT": "DYNAMIC", "GENERATE_HINT": "FAST_COMPILE"}


def test_npu_busy_delta_proves_execution(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour)

    async def body(d: Dispatcher, w: Worker) -> None:
        result = (await call(d, "generate", title()))["result"]
        assert result["npu_busy_delta_us"] == 1500 and result["device"] == "NPU"
        health = (await call(d, "health"))["result"]
        assert health["busy_counter"] == {"enabled": True, "path": str(behaviour.busy_file)}

    run_with_dispatcher(config, FakeLoader(behaviour), body)


@pytest.mark.parametrize(
    ("step", "reason", "delta"),
    [(0, "no_growth", 0), (-5000, "went_backwards", -5000)],
)
def test_npu_busy_delta_not_positive_fails_the_job(tmp_path: Path, step: int, reason: str, delta: int) -> None:
    behaviour = FakeBehaviour(busy_step_us=step)
    config = npu_config(tmp_path, behaviour)

    async def body(d: Dispatcher, w: Worker) -> None:
        error = (await call(d, "generate", title()))["error"]
        assert error["code"] == -32002
        assert error["data"] == {"npu_busy_delta_us": delta, "busy_file": str(behaviour.busy_file), "reason": reason}
        assert "text" not in error["data"]  # the unverified text is not returned as a success
        behaviour.busy_step_us = 1500
        assert (await call(d, "generate", title()))["result"]["npu_busy_delta_us"] == 1500

    run_with_dispatcher(config, FakeLoader(behaviour), body)


def test_npu_busy_counter_unreadable_fails_the_job(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour)
    behaviour.busy_file = None  # the fake must not recreate the file

    async def body(d: Dispatcher, w: Worker) -> None:
        busy_path = Path(config.sysfs_root) / "class" / "accel" / "accel0" / "device" / "npu_busy_time_us"
        busy_path.unlink()
        error = (await call(d, "generate", title()))["error"]
        assert error["code"] == -32002 and error["data"]["reason"] == "unreadable"
        assert error["data"]["npu_busy_delta_us"] is None

    run_with_dispatcher(config, FakeLoader(behaviour), body)


def test_a_busy_file_that_stops_holding_text_fails_the_job_as_unreadable(tmp_path: Path) -> None:
    """Bytes that are not text (a wrong file swapped in, a binary) are an unreadable counter:
    -32002 `unreadable`, not a generation failure (-32003, a UnicodeDecodeError)."""
    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour)
    behaviour.busy_file = None  # the fake must not rewrite the file

    async def body(d: Dispatcher, w: Worker) -> None:
        busy_path = Path(config.sysfs_root) / "class" / "accel" / "accel0" / "device" / "npu_busy_time_us"
        busy_path.write_bytes(b"\xff\xfe12\n")
        calls = len(behaviour.calls)
        error = (await call(d, "generate", title()))["error"]
        assert error["code"] == -32002 and error["data"]["reason"] == "unreadable"
        assert len(behaviour.calls) == calls  # unverifiable from the start: the device is not used
        busy_path.write_text("20000\n")
        assert (await call(d, "health"))["result"]["status"] == "ready"

    run_with_dispatcher(config, FakeLoader(behaviour), body)


def test_npu_lock_held_elsewhere_fails_with_device_busy(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()
    config = npu_config(tmp_path, behaviour)

    async def body(d: Dispatcher, w: Worker) -> None:
        fd = os.open(config.lock_file, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            error = (await call(d, "generate", title()))["error"]
            assert error["code"] == -32005 and "held by another process" in error["message"]
            assert behaviour.calls == []
        finally:
            os.close(fd)
        assert "result" in await call(d, "generate", title())

    run_with_dispatcher(config, FakeLoader(behaviour), body)


def test_npu_kv_capacity(tmp_path: Path) -> None:
    behaviour = FakeBehaviour(reply=" ".join(["w"] * 300))
    # KV capacity 100 + 20 = 120 tokens (measured on the NPU pipeline: tests/test_npu.py); the title
    # prompt is about 90 fake tokens.
    config = npu_config(tmp_path, behaviour, max_prompt_tokens=100, min_response_len=20)

    async def body(d: Dispatcher, w: Worker) -> None:
        prompt_tokens = (await call(d, "generate", title("a b c")))["result"]["tokens"]["prompt"]
        room = 120 - prompt_tokens
        assert 0 < room < 32
        error = (await call(d, "generate", title("a b c", max_new_tokens=32)))["error"]
        assert error["code"] == -32602
        assert error["data"] == {"limit": room, "actual": 32, "unit": "tokens", "field": "max_new_tokens"}
        # Without an explicit number the default (24) shrinks to what fits.
        result = (await call(d, "generate", {"job": "summary", "input": "a b c"}))["result"]
        assert result["tokens"]["generated"] <= 120 - result["tokens"]["prompt"]

    run_with_dispatcher(config, FakeLoader(behaviour), body)
