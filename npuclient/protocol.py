"""The npud wire contract: every JSON-RPC message, parameter and result as a msgspec Struct.

This module is the single definition of what crosses the socket (CONTRACT.md describes it in
prose). The daemon imports these types; clients decode with them. Encoders and decoders are
built once at import time, as msgspec recommends, because building them is the expensive part.

Schema evolution: new fields always get a default (``UNSET`` for optional output, so older
clients that do not know a field never see it), and fields are never renamed or removed.
"""

from __future__ import annotations

from typing import Any, Final, Literal, Union

import msgspec
from msgspec import UNSET, Struct, UnsetType

JSONRPC_VERSION: Final = "2.0"

#: Largest accepted input, in Unicode code points (Python ``len``).
MAX_INPUT_CHARS: Final = 6000
#: Largest number of tokens any job may generate.
MAX_NEW_TOKENS: Final = 256
#: Default prompt budget in tokens, counted after the chat template (``MAX_PROMPT_LEN``).
DEFAULT_MAX_PROMPT_TOKENS: Final = 1024
#: Largest accepted per-job deadline (``timeout_ms``).
MAX_TIMEOUT_MS: Final = 600_000

JobName = Literal["title", "summary", "notification", "memory_candidate"]
JOB_NAMES: Final[tuple[str, ...]] = ("title", "summary", "notification", "memory_candidate")
FinishReason = Literal["stop", "length", "cancelled"]
HealthStatus = Literal["loading", "ready", "error"]

RequestId = Union[int, str, None]


# --------------------------------------------------------------------------- envelopes


class Request(Struct, omit_defaults=True, forbid_unknown_fields=True):
    """A JSON-RPC 2.0 request or notification (no ``id``)."""

    jsonrpc: Literal["2.0"]
    method: str
    params: Union[dict[str, Any], list[Any], UnsetType] = UNSET
    id: Union[int, str, None, UnsetType] = UNSET

    @property
    def is_notification(self) -> bool:
        return self.id is UNSET


class ErrorObject(Struct, omit_defaults=True):
    code: int
    message: str
    data: Union[Any, UnsetType] = UNSET


class ErrorResponse(Struct, kw_only=True):
    # kw_only lets "jsonrpc" come first on the wire while keeping its default.
    jsonrpc: str = JSONRPC_VERSION
    id: RequestId = None
    error: ErrorObject


class SuccessResponse(Struct, kw_only=True):
    jsonrpc: str = JSONRPC_VERSION
    id: RequestId
    result: Any


class Response(Struct, omit_defaults=True):
    """What a client decodes: ``result`` xor ``error``; ``result`` stays raw until its method is known."""

    jsonrpc: str
    id: RequestId = None
    result: Union[msgspec.Raw, UnsetType] = UNSET
    error: Union[ErrorObject, UnsetType] = UNSET


# --------------------------------------------------------------------------- params


class GenerateParams(Struct, forbid_unknown_fields=True, omit_defaults=True):
    job: JobName
    input: str
    max_new_tokens: Union[int, UnsetType] = UNSET
    #: Deadline in milliseconds from receipt; the job's default when absent.
    timeout_ms: Union[int, UnsetType] = UNSET


class InputParams(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Params of ``extract_memory_candidates`` and ``condense_notification``."""

    input: str
    timeout_ms: Union[int, UnsetType] = UNSET


class CancelParams(Struct, forbid_unknown_fields=True):
    """Params of ``cancel``: the id of an earlier request on the same connection."""

    id: Union[int, str]


class CancelResult(Struct):
    #: True if a queued or running job was found and stopped; false if it had already finished.
    cancelled: bool


class NoParams(Struct, forbid_unknown_fields=True):
    """Params of ``health`` and ``models``: none (an empty object or no ``params`` at all)."""


# --------------------------------------------------------------------------- results


class TokenCounts(Struct):
    prompt: int
    generated: int


class JobTiming(Struct):
    """Milliseconds: waiting in the queue, inside the pipeline, and from receipt to reply."""

    queue: float
    generate: float
    total: float


class JobResult(Struct, omit_defaults=True):
    """The result of every job. ``candidates`` is present for ``memory_candidate`` only."""

    job: JobName
    text: str
    model: str
    device: str
    finish_reason: FinishReason
    tokens: TokenCounts
    timing_ms: JobTiming
    #: Growth of the NPU's busy counter across the generation; ``None`` off the NPU.
    npu_busy_delta_us: Union[int, None]
    candidates: Union[list[str], UnsetType] = UNSET
    #: ``true`` when the daemon runs with ``--npu-emulation`` (the NPU pipeline computing on the
    #: CPU): the result did not come from NPU hardware. Absent otherwise.
    emulated: Union[bool, UnsetType] = UNSET
    #: ``false`` on the NPU when npud runs with ``--no-busy-check`` or ``--npu-emulation``: nothing
    #: proves that the job ran on NPU hardware (emulated, the delta comes from a synthetic counter).
    #: Absent otherwise (on real NPU hardware a result always carries its proof, the delta).
    verified: Union[bool, UnsetType] = UNSET


class QueueInfo(Struct):
    depth: int
    capacity: int
    running: bool


class BusyCounterInfo(Struct):
    """``enabled`` is false off the NPU or when disabled by ``--no-busy-check``."""

    enabled: bool
    path: Union[str, None]


class Limits(Struct):
    max_input_chars: int
    max_prompt_tokens: int
    max_new_tokens: int


class CompileCacheInfo(Struct):
    key: str
    path: str
    #: Compiled blobs from an earlier load were there before this load.
    hit: bool


class DeviceInfo(Struct, kw_only=True):
    """Facts about the device and runtime: read once at load, except the ``live`` ones."""

    device: str
    #: ``true`` with ``--npu-emulation``: no NPU hardware; absent otherwise.
    emulated: Union[bool, UnsetType] = UNSET
    full_device_name: Union[str, None] = None
    openvino_version: str
    genai_version: str
    npu_driver_version: Union[str, None] = None
    #: "major.minor", decoded from NPU_COMPILER_VERSION (major << 16 | minor).
    npu_compiler_version: Union[str, None] = None
    device_total_mem_bytes: Union[int, None] = None
    device_alloc_mem_bytes: Union[int, None] = None
    busy_file: Union[str, None] = None
    #: live: growth of the busy counter since the daemon started.
    busy_time_since_start_us: Union[int, None] = None
    #: live: 0 while the NPU is runtime-suspended.
    current_frequency_mhz: Union[int, None] = None
    max_frequency_mhz: Union[int, None] = None
    max_prompt_len: int
    min_response_len: Union[int, None] = None
    prefill_hint: Union[str, None] = None
    generate_hint: Union[str, None] = None
    compile_cache: Union[CompileCacheInfo, None] = None


class WorkerPriority(Struct):
    """The CPU priority of the inference: the worker thread and every thread OpenVINO made for it
    (the event loop keeps the daemon's own)."""

    #: Nice value, 0 (normal) to 19 (lowest).
    nice: int
    #: Linux scheduling policy: "other" (normal), "batch" or "idle".
    policy: str


class HistogramStats(Struct):
    count: int
    sum: float


class Stats(Struct):
    """Counters since start (the same numbers as ``GET /metrics``)."""

    #: "method:outcome" -> count; outcome is "ok" or the error's class name.
    requests: dict[str, int]
    #: Connections refused before any request, by reason.
    rejections: dict[str, int]
    tokens_in: dict[str, int]
    tokens_out: dict[str, int]
    npu_busy_us: dict[str, int]
    #: "stage:job" -> count and sum of milliseconds; stage is queue, generate or total.
    latency_ms: dict[str, HistogramStats]
    #: Memory candidates dropped because they held a secret, by kind of secret (``password``,
    #: ``one_time_code``, ``access_code``, ``payment_card``, ``iban``, ``api_key``,
    #: ``private_key``, ``token``); a statement holding two kinds counts under both.
    secrets_dropped: dict[str, int] = msgspec.field(default_factory=dict)
    #: "job:reason" -> answers whose model output post-processing replaced: ``invented_number`` and
    #: ``repetition`` (title, notification: the extractive answer), ``longer_than_input`` (summary).
    fallbacks: dict[str, int] = msgspec.field(default_factory=dict)


Strategy = Literal["greedy", "prompt_lookup"]


class HealthResult(Struct, omit_defaults=True, kw_only=True):
    status: HealthStatus
    model: str
    device: str
    #: ``true`` with ``--npu-emulation`` (the NPU pipeline computing on the CPU); absent otherwise.
    emulated: Union[bool, UnsetType] = UNSET
    #: How the jobs decode: ``prompt_lookup`` (CPU, the default) or ``greedy`` (the NPU, or
    #: ``--no-prompt-lookup``). Per-job settings: ``models``.
    decoding: Union[Strategy, UnsetType] = UNSET
    version: str
    uptime_s: float
    queue: QueueInfo
    busy_counter: BusyCounterInfo
    #: Jobs answered with a result.
    jobs_served: int
    #: Jobs answered with an error (deadline, shutdown, not verified, generation failed, ...).
    jobs_failed: int
    #: ``None`` until the model has loaded.
    load_time_ms: Union[float, None]
    error: Union[str, UnsetType] = UNSET
    stats: Union[Stats, UnsetType] = UNSET
    #: ``None`` until the model has loaded.
    device_info: Union[DeviceInfo, None, UnsetType] = UNSET
    #: Load attempts so far; present once a load has failed (retries included).
    load_attempts: Union[int, UnsetType] = UNSET
    #: Seconds until the next load attempt, while one is scheduled after a transient failure.
    retry_in_s: Union[float, UnsetType] = UNSET
    #: The CPU priority the inference runs at; present once the worker thread has started.
    worker: Union[WorkerPriority, UnsetType] = UNSET
    #: Jobs withdrawn by ``cancel`` or because their client left, queued or running (absent when 0).
    jobs_cancelled: int = 0


class DecodingInfo(Struct):
    """One job's decoding: greedy, optionally with prompt-lookup drafts (CPU pipelines only)."""

    strategy: Strategy
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    #: Prompt lookup only (``null`` with ``greedy``): draft tokens per step, and the longest n-gram
    #: of the generated text looked up in the prompt.
    num_assistant_tokens: Union[int, None] = None
    max_ngram_size: Union[int, None] = None
    #: ``json_schema`` when the answer is constrained to a JSON schema (``memory_candidate``: an
    #: array of strings); ``null`` otherwise.
    structured_output: Union[Literal["json_schema"], None] = None


class JobInfo(Struct):
    name: JobName
    default_max_new_tokens: int
    max_new_tokens: int
    default_timeout_ms: int = 0
    decoding: Union[DecodingInfo, UnsetType] = UNSET


class ModelInfo(Struct):
    id: str
    source: str
    device: str
    status: HealthStatus
    limits: Limits
    jobs: list[JobInfo]
    device_info: Union[DeviceInfo, None] = None
    #: ``true`` with ``--npu-emulation``; absent otherwise.
    emulated: Union[bool, UnsetType] = UNSET


class ModelsResult(Struct):
    models: list[ModelInfo]


# --------------------------------------------------------------------------- error data


class LimitData(Struct):
    """``data`` of -32602 when a size limit is exceeded."""

    limit: int
    actual: int
    unit: Literal["characters", "tokens", "bytes", "requests", "milliseconds", "connections"]
    field: str


class QueueFullData(Struct):
    retry_after_ms: int
    queue_depth: int
    capacity: int


class NotReadyData(Struct, omit_defaults=True):
    status: HealthStatus
    error: Union[str, UnsetType] = UNSET
    #: Seconds until npud tries to load the model again (absent: it will not retry by itself).
    retry_in_s: Union[float, UnsetType] = UNSET


class DeadlineData(Struct):
    timeout_ms: int
    #: Where the deadline passed: waiting in the queue, or while generating.
    stage: Literal["queued", "running"]


class NotVerifiedData(Struct):
    #: ``None`` when the counter could not be read after the generation.
    npu_busy_delta_us: Union[int, None]
    busy_file: str
    reason: Literal["no_growth", "went_backwards", "unreadable"]


class HttpErrorBody(Struct):
    """The body of every non-200 reply of the HTTP shim: the same error object as JSON-RPC."""

    error: ErrorObject


# --------------------------------------------------------------------------- codecs

ENCODER: Final = msgspec.json.Encoder()


def encode_line(message: Any) -> bytes:
    """Encode one message as a compact JSON line (the framing of both directions)."""
    return ENCODER.encode(message) + b"\n"


RESPONSE_DECODER: Final = msgspec.json.Decoder(Union[Response, list[Response]])
