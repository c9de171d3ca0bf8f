"""The real OpenVINO GenAI pipeline end to end: the tiny random model built by this test session,
SmolLM2-135M from its PyPI package, and the `npud` command as a real child process."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from npuclient import Client, InvalidParams
from npud.engine import (
    ModelLoadError,
    OpenVinoLoader,
    StartupError,
    check_model_spec,
    convert_gguf_to_ir,
    resolve_model_path,
)

from .conftest import RawConnection, make_config, npud_command, start_daemon, unique_socket

pytestmark = pytest.mark.realmodel


@pytest.fixture(scope="module")
def tiny_daemon(tiny_ir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("tiny-daemon")
    config = make_config(tmp, model=str(tiny_ir), device="CPU", max_prompt_tokens=1024)
    running = start_daemon(config, OpenVinoLoader())
    yield running
    running.stop()


def test_tiny_model_serves_every_operation(tiny_daemon: Any) -> None:
    with Client(tiny_daemon.socket) as client:
        health = client.health()
        assert health.status == "ready" and health.model == "tiny-qwen2" and health.device == "CPU"
        assert health.load_time_ms is not None and health.load_time_ms > 0
        for job in ("title", "summary", "notification", "memory_candidate"):
            result = client.generate(job, "Beautiful is better than ugly. Explicit is better than implicit.",
                                     max_new_tokens=8)
            assert result.job == job and result.device == "CPU" and result.npu_busy_delta_us is None
            assert 0 < result.tokens.generated <= 8 and result.tokens.prompt > 20
            assert result.finish_reason in {"stop", "length"}
            assert result.timing_ms.generate > 0
        memory = client.extract_memory_candidates("Simple is better than complex.")
        assert isinstance(memory.candidates, list)
        condensed = client.condense_notification("Flat is better than nested.")
        assert condensed.job == "notification" and "\n" not in condensed.text


def test_tiny_model_is_deterministic(tiny_daemon: Any) -> None:
    with Client(tiny_daemon.socket) as client:
        first = client.generate("summary", "Errors should never pass silently.", max_new_tokens=16)
        second = client.generate("summary", "Errors should never pass silently.", max_new_tokens=16)
    assert first.text == second.text and first.tokens == second.tokens


def test_prompt_budget_is_counted_with_the_real_tokenizer(tiny_daemon: Any) -> None:
    # ~5000 characters of prose is well over 1024 tokens with this 512-token vocabulary.
    text = ("Now is better than never. Although never is often better than right now. " * 70)[:5000]
    with Client(tiny_daemon.socket) as client:
        with pytest.raises(InvalidParams) as info:
            client.generate("summary", text)
        assert info.value.limit == 1024 and info.value.actual is not None and info.value.actual > 1024
        assert info.value.data_field("unit") == "tokens"
        assert client.health().status == "ready"  # and the daemon carries on


def test_max_new_tokens_is_honoured_exactly(tiny_daemon: Any) -> None:
    with Client(tiny_daemon.socket) as client:
        result = client.generate("summary", "Readability counts.", max_new_tokens=5)
    assert result.tokens.generated <= 5
    if result.finish_reason == "length":
        assert result.tokens.generated == 5


def test_real_pipeline_rejects_concurrent_callers_through_one_worker(tiny_daemon: Any) -> None:
    """Many clients at once: every job succeeds because only the worker thread touches the pipeline."""
    import concurrent.futures

    def one(i: int) -> str:
        with Client(tiny_daemon.socket) as client:
            return client.generate("title", f"In the face of ambiguity {i}", max_new_tokens=4).job

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(6)))
    assert results == ["title"] * 6


# ---------------------------------------------------------------- model paths


def test_model_spec_checks(tmp_path: Path, tiny_gguf: Path) -> None:
    check_model_spec(str(tiny_gguf))
    with pytest.raises(StartupError, match="no such file or folder"):
        check_model_spec(str(tmp_path / "missing"))
    with pytest.raises(StartupError, match="no openvino_model.xml"):
        check_model_spec(str(tmp_path))
    not_model = tmp_path / "notes.txt"
    not_model.write_text("hello")
    with pytest.raises(StartupError, match="expected an OpenVINO IR folder or a .gguf file"):
        check_model_spec(str(not_model))


def test_corrupt_model_reports_error_in_health(tmp_path: Path) -> None:
    folder = tmp_path / "broken-ir"
    folder.mkdir()
    (folder / "openvino_model.xml").write_text("<net>not really</net>")
    config = make_config(tmp_path, model=str(folder), device="CPU")
    running = start_daemon(config, OpenVinoLoader())
    try:
        with Client(running.socket) as client:
            health = client.health()
            assert health.status == "error"
            assert health.error and health.error.startswith("RuntimeError")
            error = running.call("generate", {"job": "title", "input": "hello"})["error"]
            assert error["code"] == -32001 and error["data"]["status"] == "error"
    finally:
        running.stop()


# ---------------------------------------------------------------- GGUF files


def scrambled(data: bytes) -> bytes:
    """The tiny model with its metadata overwritten by random bytes: OpenVINO's GGUF reader
    dereferences garbage and dies with SIGSEGV (a truncated file gives SIGBUS)."""
    rng = random.Random(1)
    damaged = bytearray(data)
    for i in range(64, 2000):
        damaged[i] = rng.randrange(256)
    return bytes(damaged)


def test_corrupt_gguf_is_a_load_error_not_a_crash(tiny_gguf: Path, tmp_path: Path) -> None:
    """A real npud with a corrupt .gguf: the conversion crashes in its child process, health says
    error with a message naming the file and the signal, jobs get -32001, the daemon keeps serving.
    (The GGUF reader used to run inside the daemon, which died of the SIGSEGV.)"""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(scrambled(tiny_gguf.read_bytes()))
    name = unique_socket()
    proc = subprocess.Popen(
        npud_command("--model", str(bad), "--device", "CPU", "--socket", name, "--no-http",
                     "--cache-dir", str(tmp_path / "cache")),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "model load failed" in line:
                break
        else:
            pytest.fail(f"npud exited with status {proc.wait()} instead of reporting the load error")
        with Client(name) as client:
            health = client.health()
            assert health.status == "error" and health.error is not None
            assert health.error.startswith(f"converting {bad} to OpenVINO IR crashed")
            assert re.search(r"GGUF reader died with SIG[A-Z]+\.", health.error)
            assert "download it again" in health.error and "OpenVINO IR folder to --model" in health.error
            with RawConnection.open(name) as conn:
                error = conn.call("generate", {"job": "title", "input": "hello"})["error"]
            assert error["code"] == -32001 and error["data"] == {"status": "error", "error": health.error}
            assert client.health().status == "error"  # still answering
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda data: data[:4096], r"crashed: OpenVINO's GGUF reader died with SIG[A-Z]+\."),
    (lambda data: b"hello world\n" * 100, r"failed: RuntimeError: .*gguf_open\."),
])
def test_bad_gguf_conversion_names_the_file_and_what_to_do(tiny_gguf: Path, tmp_path: Path,
                                                           damage: Callable[[bytes], bytes], expected: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(damage(tiny_gguf.read_bytes()))
    with pytest.raises(ModelLoadError) as info:
        convert_gguf_to_ir(bad, tmp_path / "ir")
    assert str(info.value).startswith(f"converting {bad} to OpenVINO IR ")
    assert re.search(expected, str(info.value)) and "download it again" in str(info.value)
    assert not (tmp_path / "ir").exists()


def test_gguf_is_converted_once_per_file_identity(tiny_gguf: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.gguf"
    shutil.copyfile(tiny_gguf, model)
    config = make_config(tmp_path, model=str(model))
    first = resolve_model_path(config)
    assert first.parent == config.model_store_dir and (first / "openvino_model.xml").is_file()

    def no_child(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("converted again")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    assert resolve_model_path(config) == first  # cached: no second conversion
    os.utime(model, ns=(0, 0))  # the file changed (as far as its identity tells)
    with pytest.raises(AssertionError, match="converted again"):
        resolve_model_path(config)


# ---------------------------------------------------------------- the npud command


def run_npud(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(npud_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_npu_requested_without_npu_names_the_cpu_flag(tmp_path: Path) -> None:
    # An exported IR model (a GGUF is refused for the NPU before the device is even looked for).
    model = Path(__file__).parent / "models" / "tiny-qwen2-h64"
    proc = run_npud("--model", str(model), "--device", "NPU", "--socket", unique_socket(),
                    "--cache-dir", str(tmp_path), "--no-http")
    assert proc.returncode == 1
    assert "device NPU is not available" in proc.stderr and "--device CPU" in proc.stderr


def test_missing_model_refuses_to_start(tmp_path: Path) -> None:
    proc = run_npud("--model", str(tmp_path / "nope"), "--device", "CPU", "--socket", unique_socket(), "--no-http")
    assert proc.returncode == 1 and "no such file or folder" in proc.stderr


def test_npu_without_busy_counter_refuses_unless_disabled(tiny_gguf: Path, tmp_path: Path) -> None:
    from npud.config import load_config
    from npud.daemon import prepare_busy_counter

    from npud.testing.sysfs import make_npu_sysfs

    make_npu_sysfs(tmp_path / "old-kernel-sys", busy_counter=False)  # the device, not the counter
    env = {"HOME": str(tmp_path), "OV_GENAI_NPU_SYSFS_ROOT": str(tmp_path / "old-kernel-sys")}
    with pytest.raises(StartupError, match="--no-busy-check"):
        prepare_busy_counter(load_config([], env))
    assert prepare_busy_counter(load_config(["--no-busy-check"], env)) is None
    # No device at all: the driver is not loaded, which --no-busy-check would not fix.
    with pytest.raises(StartupError, match="modprobe intel_vpu"):
        prepare_busy_counter(load_config([], {**env, "OV_GENAI_NPU_SYSFS_ROOT": str(tmp_path / "empty-sys")}))


def test_npud_process_lifecycle(tiny_gguf: Path, tmp_path: Path) -> None:
    """Start `npud` for real, wait for ready, serve, refuse a second instance, stop on SIGTERM.

    `--device cpu` in lower case, as a new user types it: normalised at the edge, so the model
    loads on "CPU" (OpenVINO refuses "cpu") and jobs run."""
    name = unique_socket()
    proc = subprocess.Popen(
        npud_command("--model", str(tiny_gguf), "--device", "cpu", "--socket", name, "--port", "0",
                     "--cache-dir", str(tmp_path / "cache"), "--log-level", "DEBUG"),
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:  # the daemon says when it is ready; no sleeping
            found = re.search(r"http 127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else port
            if "ready on CPU" in line:
                break
            if "model load failed" in line:
                pytest.fail(line)
        else:
            pytest.fail("npud exited before it was ready")
        assert port is not None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthz")
        assert json.loads(conn.getresponse().read())["status"] == "ready"
        conn.close()
        text = "Special cases aren't special enough."
        with Client(name) as client:
            health = client.health()
            assert health.status == "ready" and health.device == "CPU"
            assert client.generate("title", text).job == "title"
        second = run_npud("--model", str(tiny_gguf), "--device", "CPU", "--socket", name, "--port", "0")
        assert second.returncode == 1 and "already listening" in second.stderr
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(30) == 0
        assert "shutting down" in rest
        assert re.search(rf"request method=generate job=title input_chars={len(text)} .* outcome=ok", rest)
        assert text not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with pytest.raises(ConnectionError):
        RawConnection.open(name)


# ---------------------------------------------------------------- SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """SmolLM2-135M from its PyPI package, through a daemon with npud's defaults (prompt lookup on)."""
    config = make_config(tmp_path_factory.mktemp("smollm2"), model="smollm2-135m", device="CPU",
                         cache_dir=str(shared_cache))
    running = start_daemon(config, OpenVinoLoader())
    yield running
    running.stop()


def test_smollm2_title_through_the_daemon(smollm2: Any) -> None:
    """The real small model from PyPI: a title is non-empty English on one line."""
    with Client(smollm2.socket) as client:
        assert client.health().status == "ready", client.health().error
        result = client.generate(
            "title",
            "I spent the whole weekend migrating our Postgres database from version 12 to 16 "
            "and fixing the extensions that broke along the way.",
        )
    text = result.text
    assert result.model == "smollm2-135m"
    assert text and "\n" not in text and len(text) <= 80
    assert text == text.strip() and text[0] not in "\"'"
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 2 and sum(len(w) for w in words) >= 0.6 * len(text.replace(" ", ""))
    assert sys.modules.get("llm") is None  # the llm tool is never imported


#: Fixed inputs per job (not from the evaluation set) and, for the easy ones, what the answer must
#: keep. Measured on this branch: SmolLM2 keeps all of these with npud's decoding, with and without
#: prompt lookup (the two gave the same texts); with the earlier decoding (repetition_penalty
#: 1.1) it loses "Porto", "3187", every date of both summaries, and "peanuts" survives only because
#: memory_candidate never had the penalty. Exact texts are not pinned: greedy decoding on the CPU is
#: not bit-stable across machines (thread counts change the order of floating-point reductions).
PINNED: dict[str, list[tuple[str, list[str]]]] = {
    "title": [
        ("Our team offsite is booked: three days in Porto from 12 to 14 June, with workshops on the new "
         "billing system.", ["Porto"]),
        ("Can you recommend a good beginner road bike under 800 euros for commuting to work?", ["bike"]),
    ],
    "notification": [
        ("Calendar: Dentist appointment with Dr. Novak tomorrow at 14:30, Main Street 12.", ["Novak", "14:30"]),
        ("GitLab: pipeline #3187 for branch release-2.4 failed at stage 'deploy' after 6 minutes.",
         ["3187", "release-2.4"]),
    ],
    "summary": [
        ("Hi all, the quarterly planning meeting moves from Monday to Wednesday at 10:00 in room B2 because "
         "the CEO is travelling. Please send your slides to Marta by Tuesday evening. Lunch will be provided.",
         ["Wednesday", "10:00", "B2"]),
        ("The library will close for renovation from 1 July to 15 August. Books can be returned at the town "
         "hall during that time, and loans are extended automatically until 31 August.",
         ["1 July", "15 August", "31 August"]),
    ],
    "memory_candidate": [
        ("I'm allergic to peanuts, and I just moved to Utrecht with my partner.", ["peanuts", "Utrecht"]),
        ("Remind me that I prefer window seats on flights, and my daughter Lea starts school in September.", []),
    ],
}


def test_smollm2_answers_keep_their_form_numbers_and_easy_facts(smollm2: Any) -> None:
    """A regression in decoding or post-processing shows here: every answer well-formed, titles
    and notifications without a number the input lacks, and the easy inputs' facts kept."""
    from npud import guards

    assert smollm2.call("health")["result"]["decoding"] == "prompt_lookup"
    with Client(smollm2.socket) as client:
        for job, cases in PINNED.items():
            for text, keep in cases:
                result = client.generate(job, text)  # type: ignore[arg-type]
                answer = result.text
                if job == "title":
                    problems = guards.title_problems(answer)
                elif job == "notification":
                    problems = guards.notification_problems(answer)
                elif job == "summary":
                    problems = guards.summary_problems(answer, text)
                else:
                    assert isinstance(result.candidates, list) and result.candidates, text
                    problems = guards.candidate_problems(result.candidates)
                    assert not any(guards.find_secrets(c) for c in result.candidates)
                assert problems == [], (job, text, answer)
                if job in ("title", "notification"):
                    assert guards.invented_numbers(answer, text) == [], (job, text, answer)
                for term in keep:
                    assert term.lower() in answer.lower(), (job, term, answer)


def _stop_after(engine: Any, asked: int) -> tuple[Any, Any]:
    """(a free run, a run whose should_stop turns true at the ``asked``-th token) of a summary
    with room for 200 tokens."""
    from npud.engine import DecodeSettings
    from npud.jobs import JOBS

    prompt, _ = engine.render_prompt(JOBS["summary"].messages("Sparse is better than dense."))
    settings = DecodeSettings.for_job(JOBS["summary"], 200)
    free = engine.generate(prompt, settings, lambda: False)
    calls: list[int] = []

    def stop_at_the_asked_token() -> bool:
        calls.append(1)
        return len(calls) >= asked

    return free, engine.generate(prompt, settings, stop_at_the_asked_token)


def test_real_pipeline_stops_when_asked(tiny_gguf: Path) -> None:
    """The streamer path that deadlines and cancel rely on, on GenAI's default CPU pipeline
    (continuous batching). It runs the streamer on a thread of its own (ThreadedStreamerWrapper)
    and keeps generating until that thread has taken the stop: 2 more tokens on an idle machine,
    up to 7 measured with 4 busy loops on 2 cores, 19 in a loaded full-suite run. So no count is
    asserted beside the asked one, only what holds under any load: the generation ends cancelled,
    long before its free run would (the tiny model runs 178 tokens free), with a prefix of it."""
    import openvino_genai as og

    from npud.engine import OpenVinoEngine

    free, stopped = _stop_after(OpenVinoEngine(og.LLMPipeline(str(tiny_gguf), "CPU"), "tiny"), asked=4)
    assert free.generated_tokens > 100, "the free run must be long for 'stopped early' to mean anything"
    assert stopped.finish_reason == "cancelled"
    assert 4 <= stopped.generated_tokens < free.generated_tokens // 2
    assert free.text.startswith(stopped.text)


def test_the_stateful_pipeline_stops_at_the_next_token(tiny_gguf: Path) -> None:
    """The NPU runs GenAI's stateful pipeline; on the CPU it is ATTENTION_BACKEND=SDPA. It calls the
    streamer between two tokens on the generating thread, so the stop lands at the token it was
    asked at, whatever the CPU load (measured: 0 more, also with 4 busy loops on 2 cores). One token
    of slack: GenAI versions that start the next inference before calling the streamer
    (start_async) make one more."""
    import openvino_genai as og

    from npud.engine import OpenVinoEngine

    pipeline = og.LLMPipeline(str(tiny_gguf), "CPU", ATTENTION_BACKEND="SDPA")
    free, stopped = _stop_after(OpenVinoEngine(pipeline, "tiny"), asked=4)
    assert free.generated_tokens > 100
    assert stopped.finish_reason == "cancelled" and 4 <= stopped.generated_tokens <= 5
    assert free.text.startswith(stopped.text)


def test_prompt_lookup_stops_when_asked(tiny_gguf: Path) -> None:
    """With prompt lookup the streamer gets each verification round's accepted tokens at once (a
    list). A stop asked for in the middle of a burst ends the generation: not before that burst,
    cancelled, long before the free run would end, with a prefix of its text. (Deadlines, cancel and
    shutdown all stop through this streamer.) Like the default CPU pipeline, the prompt-lookup
    pipeline runs the streamer on a thread of its own, so how many rounds follow the stop depends
    on the load (one on an idle machine): no tighter bound is asserted."""
    from npud.engine import DecodeSettings, OpenVinoEngine, generation_config
    from npud.jobs import JOBS

    import openvino_genai as og

    pipe = og.LLMPipeline(str(tiny_gguf), "CPU", prompt_lookup=True)
    engine = OpenVinoEngine(pipe, "tiny", prompt_lookup=True)
    prompt, _ = engine.render_prompt(JOBS["summary"].messages("Sparse is better than dense."))
    settings = DecodeSettings.for_job(JOBS["summary"], 200)
    bursts: list[int] = []

    class Recording(og.StreamerBase):  # type: ignore[misc]
        def write(self, token: Any) -> Any:
            bursts.append(len(token) if isinstance(token, list) else 1)
            return og.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    pipe.generate([prompt], generation_config(og, pipe.get_generation_config(), settings, True), Recording())
    first = next(i for i, size in enumerate(bursts) if size > 1)  # the random model loops: drafts get accepted
    before, burst = sum(bursts[:first]), bursts[first]
    calls = []

    def stop_at_the_burst() -> bool:
        calls.append(1)
        return len(calls) > first

    stopped = engine.generate(prompt, settings, stop_at_the_burst)
    free = engine.generate(prompt, settings, lambda: False)
    assert free.generated_tokens == sum(bursts) > before + burst
    assert stopped.finish_reason == "cancelled"
    assert before + burst <= stopped.generated_tokens < free.generated_tokens // 2
    assert free.text.startswith(stopped.text)


def test_a_prompt_lookup_pipeline_needs_draft_settings_for_every_generation(tiny_gguf: Path) -> None:
    """Measured (GenAI 2026.4): a pipeline built with prompt_lookup=True refuses a generation
    without num_assistant_tokens and max_ngram_size; there is no plain decoding on it. So every job
    of the table carries draft settings, and npud's config builder refuses to leave them out."""
    from npud.engine import DecodeSettings, generation_config

    import openvino_genai as og

    pipe = og.LLMPipeline(str(tiny_gguf), "CPU", prompt_lookup=True)
    bare = generation_config(og, pipe.get_generation_config(), DecodeSettings(4))
    with pytest.raises(RuntimeError, match="`max_ngram_size` && `num_assistant_tokens` should be specified"):
        pipe.generate(["Beautiful is better than ugly."], bare)
    with pytest.raises(ValueError, match="needs num_assistant_tokens and max_ngram_size"):
        generation_config(og, pipe.get_generation_config(), DecodeSettings(4), prompt_lookup=True)
    drafted = generation_config(og, pipe.get_generation_config(), DecodeSettings(4, num_assistant_tokens=3,
                                                                                   max_ngram_size=2), True)
    assert pipe.generate(["Beautiful is better than ugly."], drafted).perf_metrics.get_num_generated_tokens() <= 4
