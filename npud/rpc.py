"""JSON-RPC 2.0 parsing and dispatch, with no sockets: a line in, a line (or nothing) out.

The Unix server (and any other transport) only moves bytes and calls :meth:`Dispatcher.handle_line`.
Parsing is pure (:func:`parse_line`) and tested as tables; method handlers talk to the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from npuclient.errors import (
    DeadlineExceeded,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RequestCancelled,
    RpcError,
)
from npuclient.protocol import (
    MAX_INPUT_CHARS,
    MAX_TIMEOUT_MS,
    BusyCounterInfo,
    CancelParams,
    CancelResult,
    DeadlineData,
    DeviceInfo,
    ErrorResponse,
    GenerateParams,
    HealthResult,
    InputParams,
    JobInfo,
    JobResult,
    LimitData,
    Limits,
    ModelInfo,
    ModelsResult,
    NoParams,
    QueueInfo,
    Request,
    RequestId,
    SuccessResponse,
    encode_line,
)

from . import __version__
from .busy import BusyCounter, LiveSysfs
from .config import Config
from .engine import model_id_for, uses_prompt_lookup
from .jobs import JOBS, JobSpec
from .metrics import Metrics
from .peercred import PeerCred
from .worker import Job, Worker

log = logging.getLogger("npud.rpc")

QUIET_METHODS = frozenset({"health", "models", "cancel"})
# The outcome (log line, stats, metrics) of a request whose connection ended before its reply:
# the client hung up (or was disconnected), so nobody was answered.
CLIENT_GONE = "ClientGone"

# A *running* generation that has not stopped this long after its deadline is hung inside the
# pipeline (the streamer stops a live one at the next token): its client gets DeadlineExceeded
# anyway. A job still queued at its deadline needs no grace: it is withdrawn and answered at once.
HANG_GRACE_S = 5.0

# A batch fans out into that many requests from one line; bound it like the line itself.
MAX_BATCH = 32

_JSON_DECODER = msgspec.json.Decoder()

Reply = ErrorResponse | SuccessResponse


# ---------------------------------------------------------------- pure parsing


@dataclass
class ParsedLine:
    """A decoded line: single or batch, each item a Request or the error reply for it."""

    items: list[Request | ErrorResponse]
    is_batch: bool


def _id_of(value: Any) -> RequestId:
    """The id to echo in an error for an invalid request: only if it is a valid id."""
    if isinstance(value, dict):
        candidate = value.get("id")
        if isinstance(candidate, (str, int)) and not isinstance(candidate, bool):
            return candidate
    return None


def _to_request(value: Any) -> Request | ErrorResponse:
    try:
        return msgspec.convert(value, Request)
    except msgspec.ValidationError as exc:
        return InvalidRequest(f"invalid request: {exc}").reply(_id_of(value))


def parse_line(line: bytes) -> ParsedLine | ErrorResponse:
    """Decode one line into requests, or the single error reply for the whole line."""
    try:
        value = _JSON_DECODER.decode(line)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        # msgspec's messages name a byte offset, never the content. Invalid UTF-8 inside a string
        # raises UnicodeDecodeError, not DecodeError (found by the fuzz tests).
        if isinstance(exc, RecursionError):
            message = "parse error: JSON nested too deeply"
        elif isinstance(exc, UnicodeDecodeError):
            message = f"parse error: invalid UTF-8 at byte {exc.start}"
        else:
            message = f"parse error: {exc}"
        return ParseError(message).reply()
    if not isinstance(value, list):
        return ParsedLine([_to_request(value)], is_batch=False)
    if not value:
        return InvalidRequest("invalid request: empty batch").reply()
    if len(value) > MAX_BATCH:
        return InvalidRequest(
            f"batch of {len(value)} requests exceeds the limit of {MAX_BATCH}",
            LimitData(limit=MAX_BATCH, actual=len(value), unit="requests", field="batch"),
        ).reply()
    return ParsedLine([_to_request(item) for item in value], is_batch=True)


def convert_params(request: Request, params_type: type[Any]) -> Any:
    params = request.params
    if params is UNSET:
        params = {}
    if isinstance(params, list):
        raise InvalidParams("params must be an object (by-name); positional params are not supported")
    try:
        return msgspec.convert(params, params_type)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid params: {exc}") from None


def check_input(text: str) -> None:
    if not text.strip():
        raise InvalidParams("input must not be empty")
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidParams(
            f"input is {len(text)} characters; the limit is {MAX_INPUT_CHARS}",
            LimitData(limit=MAX_INPUT_CHARS, actual=len(text), unit="characters", field="input"),
        )


def check_timeout_ms(value: int | None) -> None:
    if value is not None and not 1 <= value <= MAX_TIMEOUT_MS:
        raise InvalidParams(
            f"timeout_ms must be between 1 and {MAX_TIMEOUT_MS}",
            LimitData(limit=MAX_TIMEOUT_MS, actual=value, unit="milliseconds", field="timeout_ms"),
        )


def check_max_new_tokens(spec: JobSpec, value: int | None) -> None:
    if value is None:
        return
    if value < 1 or value > spec.max_new_tokens:
        raise InvalidParams(
            f"max_new_tokens for job {spec.name!r} must be between 1 and {spec.max_new_tokens}",
            LimitData(limit=spec.max_new_tokens, actual=value, unit="tokens", field="max_new_tokens"),
        )


def _reply_id(request: Request) -> RequestId:
    """The id a reply echoes: ``None`` for a notification (which gets no reply anyway)."""
    return None if request.id is UNSET else request.id


def _opt(value: int | UnsetType) -> int | None:
    return None if value is UNSET else value


# ---------------------------------------------------------------- dispatch


PendingJobs = dict[Any, Job]


@dataclass
class CallContext:
    """Per-request facts for the log line (sizes and outcome, never content), and the connection's
    pending jobs by request id (for ``cancel``; None on transports without it)."""

    peer: PeerCred | None
    transport: str = "unix"
    pending: PendingJobs | None = None
    request_id: Any = None
    method: str = "-"
    job: str = "-"
    input_chars: int = 0
    started: float = field(default_factory=time.monotonic)


Handler = Callable[[Request, CallContext], Awaitable[Any]]
SyncHandler = Callable[[Request, CallContext], Any]


@dataclass(frozen=True)
class Immediate:
    """A line answered without waiting: the reply bytes, or None for a notification."""

    data: bytes | None


class Dispatcher:
    """Maps methods to handlers; one instance serves every transport."""

    def __init__(self, config: Config, worker: Worker, busy: BusyCounter | None, metrics: Metrics | None = None) -> None:
        self._config = config
        self.worker = worker
        self.metrics = metrics or Metrics()
        self._busy_file = str(busy.path) if busy is not None else None
        #: health's live sysfs readings: taken off the event loop, at most once a second.
        self._sysfs = LiveSysfs(busy) if busy is not None else None
        self._started_at = time.monotonic()
        #: Known from the configuration before the model loads (the loader applies the same rule).
        self._prompt_lookup = uses_prompt_lookup(config)
        # Control-plane methods are plain functions, answered without a task or a loop iteration:
        # health must stay instant whatever the worker does. Job methods wait for the worker.
        self._sync_methods: dict[str, SyncHandler] = {
            "health": self._health,
            "models": self._models,
            "cancel": self._cancel,
        }
        self._job_methods: dict[str, Handler] = {
            "generate": self._generate,
            "extract_memory_candidates": self._extract_memory_candidates,
            "condense_notification": self._condense_notification,
        }

    @property
    def methods(self) -> tuple[str, ...]:
        order = ("health", "models", "generate", "extract_memory_candidates", "condense_notification", "cancel")
        return tuple(m for m in order if m in self._sync_methods or m in self._job_methods)

    def handle_line_now(self, line: bytes, peer: PeerCred | None,
                        pending: PendingJobs | None = None) -> Immediate | ParsedLine:
        """Answer at once what needs no waiting (parse errors, control-plane calls); otherwise
        return the parsed line for :meth:`handle_parsed`."""
        return self.handle_parsed_now(parse_line(line), peer, pending)

    def waiting_requests(self, parsed: ParsedLine | ErrorResponse) -> int:
        """How many requests of a line stay unanswered until a task finishes: 0 for a line answered
        at once (an error, a single control-plane call), 1 for a job, every item of a batch (one
        reply line answers them all). What ``--max-in-flight`` counts."""
        if isinstance(parsed, ErrorResponse):
            return 0
        if parsed.is_batch:
            return len(parsed.items)
        item = parsed.items[0]
        return int(isinstance(item, Request) and item.method in self._job_methods)

    def handle_parsed_now(self, parsed: ParsedLine | ErrorResponse, peer: PeerCred | None,
                          pending: PendingJobs | None = None) -> Immediate | ParsedLine:
        """:meth:`handle_line_now` for a line already parsed (:func:`parse_line`)."""
        if isinstance(parsed, ErrorResponse):
            self._log(CallContext(peer), parsed)
            return Immediate(encode_line(parsed))
        item = parsed.items[0]
        if parsed.is_batch or (isinstance(item, Request) and item.method in self._job_methods):
            return parsed
        if isinstance(item, ErrorResponse):
            self._log(CallContext(peer), item)
            return Immediate(encode_line(item))
        reply = self.call_now(item, peer, pending=pending)
        return Immediate(None if item.is_notification else encode_line(reply))

    async def handle_line(self, line: bytes, peer: PeerCred | None,
                          pending: PendingJobs | None = None) -> bytes | None:
        """The reply line for a request line, or None (notifications only)."""
        now = self.handle_line_now(line, peer, pending)
        if isinstance(now, Immediate):
            return now.data
        return await self.handle_parsed(now, peer, pending)

    async def handle_parsed(self, parsed: ParsedLine, peer: PeerCred | None,
                            pending: PendingJobs | None = None) -> bytes | None:
        if not parsed.is_batch:
            reply = await self._handle_item(parsed.items[0], peer, pending)
            return encode_line(reply) if reply is not None else None
        replies = await asyncio.gather(*(self._handle_item(item, peer, pending) for item in parsed.items))
        present = [r for r in replies if r is not None]
        return encode_line(present) if present else None

    def refuse_line(self, line: bytes, error: RpcError, peer: PeerCred | None) -> bytes | None:
        """Answer every request of a line with ``error`` without running it (a limit was hit)."""
        return self.refuse_parsed(parse_line(line), error, peer)

    def refuse_parsed(self, parsed: ParsedLine | ErrorResponse, error: RpcError,
                      peer: PeerCred | None) -> bytes | None:
        """:meth:`refuse_line` for a line already parsed."""
        if isinstance(parsed, ErrorResponse):
            replies: list[Reply] = [parsed]
        else:
            replies = [item if isinstance(item, ErrorResponse) else error.reply(_reply_id(item))
                       for item in parsed.items
                       if isinstance(item, ErrorResponse) or not item.is_notification]
        for reply in replies:
            self._log(CallContext(peer), reply)
        if not replies:
            return None
        if isinstance(parsed, ParsedLine) and parsed.is_batch:
            return encode_line(replies)
        return encode_line(replies[0])

    async def _handle_item(self, item: Request | ErrorResponse, peer: PeerCred | None,
                           pending: PendingJobs | None) -> Reply | None:
        if isinstance(item, ErrorResponse):
            self._log(CallContext(peer), item)
            return item
        reply = await self.call(item, peer, pending=pending)
        return None if item.is_notification else reply

    async def call(self, request: Request, peer: PeerCred | None, transport: str = "unix",
                   pending: PendingJobs | None = None) -> Reply:
        """Run one request and log it; the entry point for every transport."""
        if request.method not in self._job_methods:
            return self.call_now(request, peer, transport, pending)
        ctx = self._context(request, peer, transport, pending)
        request_id = ctx.request_id
        try:
            ctx.method = request.method
            reply: Reply = SuccessResponse(id=request_id, result=await self._job_methods[request.method](request, ctx))
        except asyncio.CancelledError:
            self._log(ctx, None)  # the connection ended first: one log line and count all the same
            raise
        except Exception as exc:
            reply = self._error_reply(exc, request_id, ctx)
            # The error is also kept by the job's future, and its traceback's frames hold the job
            # (and its input text): a cycle that would outlive the request until the next GC.
            traceback.clear_frames(exc.__traceback__)
        self._log(ctx, reply)
        return reply

    def call_now(self, request: Request, peer: PeerCred | None, transport: str = "unix",
                 pending: PendingJobs | None = None) -> Reply:
        """Run a control-plane request (or an unknown method) synchronously and log it."""
        ctx = self._context(request, peer, transport, pending)
        request_id = ctx.request_id
        try:
            handler = self._sync_methods.get(request.method)
            if handler is None:
                raise MethodNotFound("method not found", {"methods": list(self.methods)})
            ctx.method = request.method
            reply: Reply = SuccessResponse(id=request_id, result=handler(request, ctx))
        except Exception as exc:
            reply = self._error_reply(exc, request_id, ctx)
        self._log(ctx, reply)
        return reply

    @staticmethod
    def _context(request: Request, peer: PeerCred | None, transport: str, pending: PendingJobs | None) -> CallContext:
        return CallContext(peer, transport=transport, pending=pending,
                           request_id=_reply_id(request))

    @staticmethod
    def _error_reply(exc: Exception, request_id: RequestId, ctx: CallContext) -> ErrorResponse:
        if isinstance(exc, RpcError):
            return exc.reply(request_id)
        log.exception("internal error in %s (%s)", ctx.method, type(exc).__name__)
        return InternalError(f"internal error: {type(exc).__name__}").reply(request_id)

    # ------------------------------------------------------------ methods

    def _health(self, request: Request, ctx: CallContext) -> HealthResult:
        convert_params(request, NoParams)
        snap = self.worker.snapshot()
        return HealthResult(
            status=snap.status,
            model=snap.model_id or model_id_for(self._config.model),
            device=self._config.device,
            emulated=self._emulated,
            decoding="prompt_lookup" if self._prompt_lookup else "greedy",
            version=__version__,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            queue=QueueInfo(depth=snap.queue_depth, capacity=self.worker.capacity, running=snap.running),
            busy_counter=BusyCounterInfo(enabled=self._busy_file is not None, path=self._busy_file),
            jobs_served=snap.jobs_served,
            jobs_failed=snap.jobs_failed,
            jobs_cancelled=snap.jobs_cancelled,
            load_time_ms=None if snap.load_time_ms is None else round(snap.load_time_ms, 1),
            error=snap.error if snap.error is not None else UNSET,
            stats=self.metrics.stats(),
            device_info=self._device_info(snap.device_info),
            load_attempts=snap.load_attempts if snap.load_attempts > 1 or snap.status == "error" else UNSET,
            retry_in_s=UNSET if snap.retry_in_s is None else snap.retry_in_s,
            worker=UNSET if snap.priority is None else snap.priority,
        )

    def _models(self, request: Request, ctx: CallContext) -> ModelsResult:
        convert_params(request, NoParams)
        snap = self.worker.snapshot()
        info = ModelInfo(
            id=snap.model_id or model_id_for(self._config.model),
            source=self._config.model,
            device=self._config.device,
            status=snap.status,
            limits=Limits(
                max_input_chars=MAX_INPUT_CHARS,
                max_prompt_tokens=self._config.max_prompt_tokens,
                max_new_tokens=max(spec.max_new_tokens for spec in JOBS.values()),
            ),
            device_info=self._device_info(snap.device_info),
            emulated=self._emulated,
            jobs=[
                JobInfo(name=spec.name, default_max_new_tokens=spec.default_max_new_tokens,
                        max_new_tokens=spec.max_new_tokens, default_timeout_ms=spec.default_timeout_ms,
                        decoding=spec.decoding(self._prompt_lookup))
                for spec in JOBS.values()
            ],
        )
        return ModelsResult(models=[info])

    @property
    def _emulated(self) -> bool | UnsetType:
        """``true`` in health and models with --npu-emulation (known before the model loads);
        absent otherwise, so older clients never see the field."""
        return True if self._config.npu_emulation else UNSET

    def _device_info(self, info: DeviceInfo | None) -> DeviceInfo | None:
        """Static facts from the load, plus the live sysfs ones: the latest reading, taken on a
        thread at most once a second (never here: a read must not stall the event loop)."""
        if info is None or self._sysfs is None:
            return info
        now, start = self._sysfs.latest(), self._sysfs.first
        since_start = (now.busy_us - start.busy_us
                       if now.busy_us is not None and start.busy_us is not None else None)
        return msgspec.structs.replace(
            info,
            busy_file=self._busy_file,
            busy_time_since_start_us=since_start,
            current_frequency_mhz=now.current_frequency_mhz,
            max_frequency_mhz=now.max_frequency_mhz,
        )

    async def _generate(self, request: Request, ctx: CallContext) -> JobResult:
        params = convert_params(request, GenerateParams)
        max_new = None if params.max_new_tokens is UNSET else params.max_new_tokens
        return await self.run_job(JOBS[params.job], params.input, max_new, _opt(params.timeout_ms), ctx)

    async def _extract_memory_candidates(self, request: Request, ctx: CallContext) -> JobResult:
        params = convert_params(request, InputParams)
        return await self.run_job(JOBS["memory_candidate"], params.input, None, _opt(params.timeout_ms), ctx)

    async def _condense_notification(self, request: Request, ctx: CallContext) -> JobResult:
        params = convert_params(request, InputParams)
        return await self.run_job(JOBS["notification"], params.input, None, _opt(params.timeout_ms), ctx)

    def _cancel(self, request: Request, ctx: CallContext) -> CancelResult:
        """Cancel an earlier request of the same connection (ids are only unique per connection)."""
        params = convert_params(request, CancelParams)
        job = ctx.pending.get(params.id) if ctx.pending is not None else None
        if job is None:
            return CancelResult(cancelled=False)
        answer = RequestCancelled(f"cancelled by request {ctx.request_id!r}")
        return CancelResult(cancelled=self.worker.withdraw(job, answer))

    async def run_job(self, spec: JobSpec, text: str, max_new_tokens: int | None, timeout_ms: int | None,
                      ctx: CallContext) -> JobResult:
        ctx.job, ctx.input_chars = spec.name, len(text)
        check_input(text)
        check_max_new_tokens(spec, max_new_tokens)
        check_timeout_ms(timeout_ms)
        timeout_ms = timeout_ms or spec.default_timeout_ms
        loop = asyncio.get_running_loop()
        job = Job(spec=spec, input=text, max_new_tokens=max_new_tokens, loop=loop, future=loop.create_future(),
                  received_at=self.worker.now(), timeout_ms=timeout_ms)
        self.worker.submit(job)
        key = ctx.request_id
        registered = ctx.pending is not None and key is not None and key not in ctx.pending
        if registered and ctx.pending is not None:
            ctx.pending[key] = job
        try:
            result = await self._await_job(job)
            self.metrics.record_guards(spec.name, job.secrets_dropped, job.fallback)
            return result
        except asyncio.CancelledError:
            # The client went away: free the slot, stop the generation, count it as cancelled.
            self.worker.withdraw(job)
            raise
        finally:
            if registered and ctx.pending is not None:
                ctx.pending.pop(key, None)

    async def _await_job(self, job: Job) -> JobResult:
        """The job's result, or DeadlineExceeded that says where the deadline found it."""
        until_deadline = max(0.0, job.deadline - self.worker.now())
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), until_deadline)
        except asyncio.TimeoutError:
            pass
        loading = self.worker.snapshot().status == "loading"
        # Still queued (behind another job, or while the model loads): withdrawn, answered now.
        where = "while the model was still loading (an NPU compile can take minutes)" if loading else "while queued"
        queued = DeadlineExceeded(f"deadline of {job.timeout_ms} ms passed {where}",
                                  DeadlineData(job.timeout_ms, "queued"))
        if self.worker.expire_queued(job, queued):
            raise queued
        # Taken by the worker: it stops the job (streamer, NPU lock wait) and answers it itself.
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), HANG_GRACE_S)
        except asyncio.TimeoutError:
            pass
        hung = DeadlineExceeded(f"deadline of {job.timeout_ms} ms passed; the generation did not stop",
                                DeadlineData(job.timeout_ms, "running"))
        if not self.worker.withdraw(job, hung):
            return await job.future  # answered at this very moment: that answer stands
        log.error("job %s did not stop %.0fs after its deadline: the pipeline looks hung",
                  job.spec.name, HANG_GRACE_S)
        raise hung

    # ------------------------------------------------------------ logging

    def _log(self, ctx: CallContext, reply: Reply | None) -> None:
        """One line per request: what, how big, how long, who, outcome. Never the content.
        ``reply`` None: the connection ended before the reply (outcome CLIENT_GONE)."""
        peer = f"pid={ctx.peer.pid} uid={ctx.peer.uid}" if ctx.peer else "peer=-"
        peer += f" via={ctx.transport}"
        elapsed = (time.monotonic() - ctx.started) * 1000
        if reply is None:
            self.metrics.record_outcome(ctx.method, CLIENT_GONE)
            outcome, extra = CLIENT_GONE, ""
        elif isinstance(reply, ErrorResponse):
            self.metrics.record_request(ctx.method, reply.error.code, None)
            outcome = f"error={reply.error.code}"
            extra = ""
        else:
            self.metrics.record_request(ctx.method, None, reply.result)
            outcome = "ok"
            result = reply.result
            extra = (
                f" prompt_tokens={result.tokens.prompt} generated_tokens={result.tokens.generated}"
                f" queue_ms={result.timing_ms.queue:.1f} generate_ms={result.timing_ms.generate:.1f}"
                f" finish={result.finish_reason}"
                if isinstance(result, JobResult)
                else ""
            )
        # Control-plane calls are polled by monitors; at INFO they would flood the journal.
        level = logging.DEBUG if ctx.method in QUIET_METHODS and outcome == "ok" else logging.INFO
        log.log(
            level,
            "request method=%s job=%s input_chars=%d%s total_ms=%.1f %s outcome=%s",
            ctx.method, ctx.job, ctx.input_chars, extra, elapsed, peer, outcome,
        )
