"""The daemon in --device NPU mode for real, without an NPU: OpenVINO GenAI's own NPU pipeline
computing on the CPU (--npu-emulation), with the committed optimum-exported models (both of them,
so nothing is tuned to one fixture) and a synthetic busy counter that advances at every read.

One daemon per model serves every check of this module; each check leaves it serving.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from npud import engine, worker
from npud.config import Config
from npud.engine import CPU_ONLY_PIPELINE_OPTIONS, OpenVinoLoader, StartupError, pipeline_kwargs, pipeline_properties
from npud.jobs import JOBS
from npud.testing.sysfs import AdvancingBusyCounter
from npud.worker import Worker

from .conftest import RunningDaemon, make_config, start_daemon
from .emulated import MODELS, RESPONSE_LEN, SHORT_INPUT, Prompts, Recorder, emulated_config

pytestmark = pytest.mark.realmodel

SUMMARY = JOBS["summary"]


@dataclass
class Emulated:
    model: str
    daemon: RunningDaemon
    counter: AdvancingBusyCounter
    recorder: Recorder
    prompts: Prompts
    budget: int
    first_health: dict[str, Any]

    def generate(self, job: str, text: str, **params: Any) -> dict[str, Any]:
        return self.daemon.call("generate", {"job": job, "input": text, **params})

    def assert_serves(self) -> None:
        result = self.generate("title", SHORT_INPUT)["result"]
        assert result["emulated"] is True and result["npu_busy_delta_us"] > 0


@pytest.fixture(scope="module", params=MODELS)
def npu(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulated]:
    model = request.param
    tmp = tmp_path_factory.mktemp(model)
    prompts = Prompts(model)
    budget = prompts.budget()
    counter = AdvancingBusyCounter.in_sysfs(tmp / "sys")
    try:
        # The first start compiles into an empty cache; the daemon the checks share is a second
        # start with the same settings, which must find the blob.
        first = start_daemon(emulated_config(tmp, model, counter.path, budget), Recorder().loader())
        first_health = first.call("health")["result"]
        first.stop()
        recorder = Recorder()
        daemon = start_daemon(emulated_config(tmp, model, counter.path, budget), recorder.loader())
        try:
            yield Emulated(model, daemon, counter, recorder, prompts, budget, first_health)
        finally:
            daemon.stop()
    finally:
        counter.close()


@pytest.fixture
def all_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every generation runs to its max_new_tokens (ignore_eos) whatever the random model emits,
    so a budget edge is reached for sure, not only when the model happens not to stop."""
    original = engine.generation_config

    def to_the_end(og: Any, model_config: Any, settings: engine.DecodeSettings, prompt_lookup: bool = False) -> Any:
        config = original(og, model_config, settings, prompt_lookup)
        config.ignore_eos = True
        return config

    monkeypatch.setattr(engine, "generation_config", to_the_end)


# ---------------------------------------------------------------- load, facts, compile cache


def test_load_passes_the_npu_properties_and_says_emulated(npu: Emulated) -> None:
    health = npu.daemon.call("health")["result"]
    info = health["device_info"]
    built = npu.recorder.constructed[-1]
    assert built["device"] == "NPU" and built["NPUW_DEVICES"] == "CPU"
    assert (built["MAX_PROMPT_LEN"], built["MIN_RESPONSE_LEN"]) == (npu.budget, RESPONSE_LEN)
    assert (built["PREFILL_HINT"], built["GENERATE_HINT"]) == ("DYNAMIC", "FAST_COMPILE")
    assert built["CACHE_DIR"] == info["compile_cache"]["path"]
    assert not CPU_ONLY_PIPELINE_OPTIONS & set(built)

    assert health["status"] == "ready" and health["device"] == "NPU" and health["emulated"] is True
    assert health["busy_counter"] == {"enabled": True, "path": str(npu.counter.path)}
    assert info["emulated"] is True and "emulated" in info["full_device_name"]
    # Properties only NPU hardware has are absent, not errors.
    for absent in ("npu_driver_version", "npu_compiler_version", "device_total_mem_bytes", "device_alloc_mem_bytes"):
        assert info[absent] is None, absent
    assert (info["max_prompt_len"], info["min_response_len"]) == (npu.budget, RESPONSE_LEN)
    assert (info["prefill_hint"], info["generate_hint"]) == ("DYNAMIC", "FAST_COMPILE")

    model = npu.daemon.call("models")["result"]["models"][0]
    assert model["emulated"] is True and model["device"] == "NPU" and model["device_info"]["emulated"] is True
    assert model["limits"]["max_prompt_tokens"] == npu.budget


def test_second_start_hits_the_compile_cache(npu: Emulated) -> None:
    first = npu.first_health["device_info"]["compile_cache"]
    second = npu.daemon.call("health")["result"]["device_info"]["compile_cache"]
    assert first["hit"] is False and second == {**first, "hit": True}
    # The blob is the NPU plugin's own (one per configuration, read-only), in npud's versioned folder.
    blobs = list(Path(second["path"]).glob("*.blob"))
    assert len(blobs) == 1 and blobs[0].stat().st_mode & 0o777 == 0o440
    # Load times are measured by `python -m bench`; here only shown, never asserted.
    print(f"{npu.model}: load {npu.first_health['load_time_ms']} ms, then "
          f"{npu.daemon.call('health')['result']['load_time_ms']} ms with the cache")


def test_invalid_hint_is_refused_by_the_npu_plugin(tmp_path: Path) -> None:
    """The hints reach the real plugin: it refuses a value it does not know. A failed load leaves
    the daemon up, health saying why, jobs answered with -32001."""
    budget = Prompts(MODELS[1]).budget()
    daemon = start_daemon(emulated_config(tmp_path, MODELS[1], None, budget, prefill_hint="SOMETIMES"),
                          OpenVinoLoader())
    try:
        health = daemon.call("health")["result"]
        assert health["status"] == "error" and "NPUW_LLM_PREFILL_HINT" in health["error"]
        assert health["emulated"] is True
        error = daemon.call("generate", {"job": "title", "input": SHORT_INPUT})["error"]
        assert error["code"] == -32001
    finally:
        daemon.stop()


# ---------------------------------------------------------------- a job, and what reached the pipeline


def test_title_job_on_the_emulated_npu(npu: Emulated) -> None:
    result = npu.generate("title", SHORT_INPUT)["result"]
    assert result["device"] == "NPU" and result["emulated"] is True
    assert result["verified"] is False  # the synthetic counter's delta proves nothing about an NPU
    assert result["tokens"]["prompt"] == npu.prompts.count(JOBS["title"], SHORT_INPUT)
    # Read right before and right after the generation: one step of the synthetic counter.
    assert result["npu_busy_delta_us"] == npu.counter.step
    call = npu.recorder.calls[-1]
    assert isinstance(call.inputs, list) and len(call.inputs) == 1 and isinstance(call.inputs[0], str)
    assert call.prompt_tokens == result["tokens"]["prompt"]


def test_decoding_is_npuds_not_the_model_folders(npu: Emulated) -> None:
    """tiny-qwen2-h64 ships Qwen2.5-Instruct's sampling defaults in generation_config.json
    (do_sample, temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.1); none reaches a job."""
    import openvino_genai as og

    folder = npu.recorder.pipelines[-1].get_generation_config()
    if npu.model == "tiny-qwen2-h64":
        assert folder.do_sample and folder.temperature < 1 and folder.repetition_penalty > 1  # the premise
    spec = JOBS["memory_candidate"]  # repetition_penalty 1.0: the folder's 1.1 would show
    npu.generate("memory_candidate", SHORT_INPUT)
    sent = npu.recorder.calls[-1].config
    defaults = og.GenerationConfig()
    assert sent.do_sample is False and sent.repetition_penalty == spec.repetition_penalty
    for name in ("temperature", "top_p", "top_k", "presence_penalty", "frequency_penalty", "min_new_tokens",
                 "ignore_eos", "num_beams", "num_return_sequences", "stop_strings", "rng_seed",
                 "no_repeat_ngram_size", "num_assistant_tokens", "max_ngram_size"):
        assert getattr(sent, name) == getattr(defaults, name), name
    assert sent.num_beams == 1 and sent.num_return_sequences == 1  # the NPU refuses anything else
    # Only when the model is done comes from its folder: its end-of-sequence ids.
    assert (sent.eos_token_id, sent.stop_token_ids) == (folder.eos_token_id, folder.stop_token_ids)
    assert sent.eos_token_id != -1
    first, second = (npu.generate("title", SHORT_INPUT)["result"]["text"] for _ in range(2))
    assert first == second  # greedy: the same text every time


def test_prompt_lookup_never_reaches_the_npu(npu: Emulated) -> None:
    """The daemon runs with prompt lookup asked for (the default), but the NPU pipeline ignores it
    (tests/test_npu_decoding.py): the pipeline is built without it, no generation carries draft
    settings, and health and models say greedy."""
    assert npu.daemon.config.prompt_lookup is True  # asked for: the default
    assert "prompt_lookup" not in npu.recorder.constructed[-1]
    mark = npu.recorder.mark()
    for job in JOBS:
        npu.generate(job, SHORT_INPUT)
    sent = [call.config for call in npu.recorder.calls[mark:]]
    assert len(sent) == len(JOBS)
    import openvino_genai as og

    default = og.GenerationConfig()
    for config in sent:
        assert (config.num_assistant_tokens, config.max_ngram_size) == (default.num_assistant_tokens,
                                                                       default.max_ngram_size)
        assert not config.is_prompt_lookup() and not config.is_assisting_generation()
    # The rest of the job table does reach it: notification's frequency_penalty, memory_candidate's
    # structured output (the NPU pipeline enforces it: tests/test_npu_decoding.py).
    notification, memory = (sent[list(JOBS).index(job)] for job in ("notification", "memory_candidate"))
    assert notification.frequency_penalty == pytest.approx(JOBS["notification"].frequency_penalty) != 0
    assert memory.structured_output_config is not None and notification.structured_output_config is None
    assert npu.daemon.call("health")["result"]["decoding"] == "greedy"
    for info in npu.daemon.call("models")["result"]["models"][0]["jobs"]:
        assert info["decoding"]["strategy"] == "greedy"
        assert info["decoding"]["num_assistant_tokens"] is None and info["decoding"]["max_ngram_size"] is None


# ---------------------------------------------------------------- prompt budget (MAX_PROMPT_LEN)


def test_prompt_at_the_budget_runs_one_more_is_refused_before_the_device(npu: Emulated) -> None:
    at = npu.generate("summary", npu.prompts.input_of(SUMMARY, npu.budget), max_new_tokens=1)["result"]
    assert at["tokens"]["prompt"] == npu.budget
    calls, reads = len(npu.recorder.calls), npu.counter.reads
    error = npu.generate("summary", npu.prompts.input_of(SUMMARY, npu.budget + 1))["error"]
    assert error["code"] == -32602
    assert error["data"] == {"limit": npu.budget, "actual": npu.budget + 1, "unit": "tokens", "field": "input"}
    assert len(npu.recorder.calls) == calls and npu.counter.reads == reads  # the device never saw it
    npu.assert_serves()


def test_the_pipelines_own_prompt_refusal_is_the_same_error(npu: Emulated, monkeypatch: pytest.MonkeyPatch) -> None:
    """With npud's count bypassed, the real pipeline refuses; that is still the client's -32602
    with limit and actual in tokens (the pipeline's numbers), not a generation failure."""
    monkeypatch.setattr(worker, "check_prompt_budget", lambda prompt_tokens, limit: None)
    mark = npu.recorder.mark()
    error = npu.generate("summary", npu.prompts.input_of(SUMMARY, npu.budget + 1))["error"]
    call = npu.recorder.call_after(mark)
    assert call.error is not None and f"up to {npu.budget} tokens. {npu.budget + 1} is passed" in call.error
    assert error == {
        "code": -32602,
        "message": f"prompt is {npu.budget + 1} tokens after the chat template; the limit is {npu.budget}",
        "data": {"limit": npu.budget, "actual": npu.budget + 1, "unit": "tokens", "field": "input"},
    }
    monkeypatch.undo()
    npu.assert_serves()


# ---------------------------------------------------------------- KV capacity (MAX_PROMPT_LEN + MIN_RESPONSE_LEN)


@pytest.mark.usefixtures("all_tokens")
def test_kv_capacity_is_prompt_len_plus_response_len(npu: Emulated) -> None:
    capacity = npu.budget + RESPONSE_LEN
    for prompt_tokens in (npu.budget, npu.budget - 10):
        text = npu.prompts.input_of(SUMMARY, prompt_tokens)
        room = capacity - prompt_tokens
        result = npu.generate("summary", text, max_new_tokens=room)["result"]
        assert result["tokens"] == {"prompt": prompt_tokens, "generated": room}
        assert result["finish_reason"] == "length"
        assert npu.recorder.calls[-1].finish == "LENGTH"  # the pipeline reached max_new_tokens, not a full cache
        error = npu.generate("summary", text, max_new_tokens=room + 1)["error"]
        assert error["code"] == -32602
        assert error["data"] == {"limit": room, "actual": room + 1, "unit": "tokens", "field": "max_new_tokens"}
    # Without an explicit max_new_tokens the job's default (128) shrinks to what fits.
    result = npu.generate("summary", npu.prompts.input_of(SUMMARY, npu.budget))["result"]
    assert result["tokens"]["generated"] == RESPONSE_LEN and result["finish_reason"] == "length"
    assert SUMMARY.default_max_new_tokens > RESPONSE_LEN
    npu.assert_serves()


@pytest.mark.usefixtures("all_tokens")
def test_a_full_kv_cache_is_length_not_cancelled(npu: Emulated, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the KV capacity the NPU pipeline stops silently with finish reason NONE, as for a
    cancel. npud's rule keeps it from happening; with the rule bypassed, npud reports "length",
    never a cancel or a deadline nobody hit."""

    def no_rule(self: Worker, spec: Any, requested: int | None, prompt_tokens: int) -> int:
        return requested or spec.default_max_new_tokens

    monkeypatch.setattr(Worker, "_max_new_tokens", no_rule)
    result = npu.generate("summary", npu.prompts.input_of(SUMMARY, npu.budget), max_new_tokens=RESPONSE_LEN + 5)
    assert npu.recorder.calls[-1].finish == "NONE"
    assert result["result"]["finish_reason"] == "length"
    assert result["result"]["tokens"]["generated"] == RESPONSE_LEN
    monkeypatch.undo()
    npu.assert_serves()


# ---------------------------------------------------------------- stopping, and the busy counter


def test_deadline_stops_a_running_generation(npu: Emulated) -> None:
    timeout_ms = 50
    npu.counter.hold()  # the worker stops at its busy-counter read right before generating
    mark = npu.recorder.mark()
    with npu.daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "id": 1, "method": "generate",
                        "params": {"job": "summary", "input": SHORT_INPUT, "timeout_ms": timeout_ms}})
        assert npu.counter.held.wait(30)
        # The job was received before the worker took it, so its deadline passes within
        # timeout_ms from now: the stimulus itself, not a wait for an event.
        time.sleep(timeout_ms / 1000)
        npu.counter.release()
        reply = conn.read_json()
    assert reply["error"]["code"] == -32007 and reply["error"]["data"] == {"timeout_ms": timeout_ms, "stage": "running"}
    call = npu.recorder.call_after(mark)
    assert call.finish == "NONE" and call.generated == 1  # stopped by npud's streamer at the first token
    npu.assert_serves()


def test_cancel_stops_a_running_generation(npu: Emulated) -> None:
    npu.counter.hold()
    mark = npu.recorder.mark()
    with npu.daemon.connect() as conn:
        conn.send_json({"jsonrpc": "2.0", "id": "job", "method": "generate",
                        "params": {"job": "summary", "input": SHORT_INPUT}})
        assert npu.counter.held.wait(30)
        conn.send_json({"jsonrpc": "2.0", "id": "stop", "method": "cancel", "params": {"id": "job"}})
        replies = {reply["id"]: reply for reply in (conn.read_json(), conn.read_json())}
        npu.counter.release()
    assert replies["stop"]["result"] == {"cancelled": True}
    assert replies["job"]["error"]["code"] == -32008
    call = npu.recorder.call_after(mark)
    assert call.finish == "NONE" and call.generated == 1
    npu.assert_serves()


def test_a_busy_counter_that_does_not_grow_fails_the_job(npu: Emulated) -> None:
    npu.counter.step = 0  # the work ran, but the counter says the NPU did not
    try:
        error = npu.generate("title", SHORT_INPUT)["error"]
    finally:
        npu.counter.step = 1000
    assert error["code"] == -32002
    assert error["data"] == {"npu_busy_delta_us": 0, "busy_file": str(npu.counter.path), "reason": "no_growth"}
    npu.assert_serves()


# ---------------------------------------------------------------- without a model load


def emulation_config(tmp_path: Path, **overrides: Any) -> Config:
    return make_config(tmp_path, model=str(Path(__file__).parent / "models" / MODELS[0]), device="NPU",
                       npu_emulation=True, **overrides)


def test_preflight_asks_the_npu_plugin_not_the_device_list(tmp_path: Path) -> None:
    config = emulation_config(tmp_path)
    OpenVinoLoader(devices=lambda: ["CPU"]).preflight(config)  # no NPU listed: fine when emulated
    with pytest.raises(StartupError, match="--npu-emulation: OpenVINO's NPU plugin is not usable: gone"):
        OpenVinoLoader(npu_plugin=lambda: "OpenVINO's NPU plugin is not usable: gone").preflight(config)
    # Without the option, an NPU OpenVINO does not list is still refused: emulation is never automatic.
    with pytest.raises(StartupError, match="device NPU is not available"):
        OpenVinoLoader(devices=lambda: ["CPU"]).preflight(make_config(tmp_path, model=config.model, device="NPU"))


@pytest.mark.parametrize("emulated", [True, False])
def test_a_gguf_model_on_the_npu_is_refused_at_startup(tmp_path: Path, emulated: bool) -> None:
    """README: "GGUF files (and IR converted from them, like the built-in smollm2-135m) do not
    compile for the NPU with OpenVINO GenAI 2026.4: use them on the CPU"; EngineLoader.preflight:
    "Raise StartupError for a configuration that can never work". npud nevertheless starts, spends
    the conversion, and health ends in `error` with OpenVINO's "Broadcast incorrect target shape.
    Expecting either 1 or 1024. Got 0" (no word of GGUF or --device CPU), while the process stays
    up, so systemd shows the unit as running."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    for model in ("smollm2-135m", str(gguf)):
        config = make_config(tmp_path, model=model, device="NPU", npu_emulation=emulated)
        loader = OpenVinoLoader(devices=lambda: ["CPU", "NPU"], npu_plugin=lambda: None)
        with pytest.raises(StartupError, match="GGUF"):
            loader.preflight(config)


def test_npud_with_a_gguf_on_the_npu_exits_at_startup_saying_why(tmp_path: Path) -> None:
    """The whole start: status 1 with the message, no conversion into the cache."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    proc = subprocess.run([sys.executable, "-m", "npud", "--device", "NPU", "--model", str(gguf), "--no-http",
                           "--cache-dir", str(tmp_path / "cache"), "--lock-file", str(tmp_path / "npu.lock")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot run on the NPU: GGUF models" in proc.stderr and "--device CPU" in proc.stderr
    assert not (tmp_path / "cache" / "models").exists()


def test_real_npu_plugin_answers_without_hardware() -> None:
    assert engine.npu_plugin_problem() is None


def test_npu_properties_reach_the_pipeline(tmp_path: Path) -> None:
    config = make_config(tmp_path, device="NPU", max_prompt_tokens=512, min_response_len=128)
    props = pipeline_properties(config, tmp_path / "blobs")
    assert props == {"CACHE_DIR": str(tmp_path / "blobs"), "MAX_PROMPT_LEN": 512, "MIN_RESPONSE_LEN": 128,
                     "PREFILL_HINT": "DYNAMIC", "GENERATE_HINT": "FAST_COMPILE"}
    emulated = pipeline_properties(emulation_config(tmp_path, max_prompt_tokens=512, min_response_len=128),
                                   tmp_path / "blobs")
    assert emulated == {**props, "NPUW_DEVICES": "CPU"}


def test_cpu_only_decoding_features_never_reach_an_npu_pipeline(tmp_path: Path) -> None:
    """prompt_lookup is accepted by the NPU pipeline and silently ignored (tests/test_npu_decoding.py):
    npud never constructs an NPU pipeline with it."""
    features = {"prompt_lookup": True}
    for config in (make_config(tmp_path, device="NPU"), emulation_config(tmp_path)):
        assert "prompt_lookup" not in pipeline_kwargs(config, tmp_path, features)
    assert pipeline_kwargs(make_config(tmp_path, device="CPU"), tmp_path, features)["prompt_lookup"] is True


def test_status_line_log_and_npuctl_say_emulated(tmp_path: Path) -> None:
    """Everywhere a person reads the device, an emulated NPU says so (the real npud process, with
    the fake engine: nothing here depends on the pipeline)."""
    import msgspec

    from npuclient.cli import human
    from npuclient.protocol import HealthResult, ModelsResult

    from .conftest import RawConnection, unique_socket
    from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env

    notify, name = NotifyListener(), unique_socket()
    env = daemon_env(tmp_path, NOTIFY_SOCKET=notify.name, OV_GENAI_NPU_DEVICE="NPU", OV_GENAI_NPU_EMULATION="1",
                     OV_GENAI_NPU_NO_BUSY_CHECK="1", OV_GENAI_NPU_LOCK_FILE=str(tmp_path / "lock"))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert any(line.startswith("STATUS=ready (NPU emulated on the CPU), 0 queued")
                   for line in notify.wait_for("STATUS=ready"))
        with RawConnection.open(name) as conn:
            health = msgspec.convert(conn.call("health")["result"], HealthResult)
            models = msgspec.convert(conn.call("models")["result"], ModelsResult)
        assert human(health).startswith("ready: fake-model on NPU (emulated on the CPU), queue 0/8")
        assert human(models).startswith("fake-model (NPU emulated on the CPU, ready)")
    finally:
        proc.terminate()
        _, log = proc.communicate(timeout=30)
        notify.close()
    assert proc.returncode == 0
    assert "(device NPU (emulated on the CPU), model fake-model)" in log
    assert "model fake-model ready on NPU (emulated on the CPU)" in log


def test_synthetic_busy_counter_from_the_command_line(tmp_path: Path) -> None:
    """README's `python -m npud.testing.sysfs PATH`: every read gets a larger number; SIGTERM
    removes the FIFO and exits 0."""
    import signal

    path = tmp_path / "npu_busy_time_us"
    proc = subprocess.Popen([sys.executable, "-m", "npud.testing.sysfs", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and f"--busy-file {path}" in proc.stdout.readline()
        first, second = int(path.read_text()), int(path.read_text())
        assert second > first
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not path.exists()


def test_the_synthetic_counter_is_never_served_from_a_directory_everyone_can_write(tmp_path: Path) -> None:
    """README used /tmp/npu_busy_time_us: another user could make that name first (a FIFO of
    theirs), kill the helper with a traceback and choose every value npud then reads."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    proc = subprocess.run([sys.executable, "-m", "npud.testing.sysfs", str(shared / "npu_busy_time_us")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is writable by every user" in proc.stderr and "XDG_RUNTIME_DIR" in proc.stderr
    assert not (shared / "npu_busy_time_us").exists()
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "/tmp/npu_busy_time_us" not in readme
