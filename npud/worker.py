"""The worker: exactly one thread that owns the model and drains a bounded job queue.

OpenVINO GenAI raises when one pipeline is entered from two threads, and the NPU runs one job at
a time anyway, so every model call happens on this thread: loading, prompt rendering, token
counting and generation. The asyncio side only ever calls :meth:`Worker.submit`,
:meth:`Worker.withdraw` and :meth:`Worker.snapshot`, which take a short lock and never wait
for the model. A full queue rejects at once with an estimate of when to retry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal

from msgspec import UNSET

from npuclient.errors import (
    DeadlineExceeded,
    DeviceBusy,
    GenerationFailed,
    InternalError,
    InvalidParams,
    NotReady,
    NotVerified,
    QueueFull,
    RequestCancelled,
    RpcError,
    ShuttingDown,
)
from npuclient.protocol import (
    DeadlineData,
    DeviceInfo,
    HealthStatus,
    JobResult,
    JobTiming,
    LimitData,
    NotReadyData,
    NotVerifiedData,
    QueueFullData,
    TokenCounts,
    WorkerPriority,
)

from .busy import BusyCounter, BusyCounterError, verify_delta
from .config import Config
from .engine import DecodeSettings, Engine, EngineLoader, Generation, ModelLoadError, PromptTooLong
from .jobs import JobSpec
from .npulock import LockFileRefused, LockTimeout, LockWaitCancelled, NpuLock
from .priority import lower_this_thread

log = logging.getLogger("npud.worker")

# Weight of the newest job in the moving average of service time used for Retry-After hints.
SERVICE_TIME_SMOOTHING = 0.3
# Before any job has finished there is no measurement; the running job's age stands in for it,
# but never less than this, so a hint is never "retry now" while the worker is busy.
MIN_SERVICE_ESTIMATE_MS = 100.0

# Load retries: the delay doubles from --load-retry-delay up to this cap. With the defaults (5 s,
# 10 retries) the last attempt starts about 25 minutes after the first failure, long enough to
# outlast another service holding the NPU at login or an NPU that comes back after a reset,
# short enough that a broken setup ends in a plain `error`, not in endless log lines.
LOAD_RETRY_MAX_DELAY_S = 300.0
# Load failures worth another attempt: the device was busy, lost or asleep, which goes away by
# itself. Matched against the loader's message (OpenVINO reports Level Zero results by name, e.g.
# "L0 zeFenceHostSynchronize result: ZE_RESULT_ERROR_DEVICE_LOST, code 0x70000001 - device hung,
# reset, was removed, or driver update occurred"). Anything else (a missing or corrupt model, an
# unwritable cache, a model the NPU compiler rejects) fails the same way every time: no retry.
TRANSIENT_LOAD_FAILURES = (
    "ZE_RESULT_ERROR_DEVICE_LOST",
    "ZE_RESULT_ERROR_DEVICE_IN_LOW_POWER_STATE",
    "ZE_RESULT_NOT_READY",
    "ZE_RESULT_ERROR_OUT_OF_DEVICE_MEMORY",
    "device or resource busy",
    "EBUSY",
)


# An absolute path in a message (up to white space or a quote): a model folder named "EBUSY" or
# "device lost" must not make a permanent failure look transient.
_ABSOLUTE_PATH = re.compile(r"""/[^\s'"]*""")


def is_transient_load_failure(exc: BaseException, paths: Sequence[str] = ()) -> bool:
    """Whether a failed load may succeed if tried again later (see TRANSIENT_LOAD_FAILURES).

    The markers are looked for in what OpenVINO or the system said, never in a path: ``paths``
    (the model, the cache; they may hold spaces) are taken out of the message first, then
    anything else that looks like an absolute path.
    """
    if isinstance(exc, LockTimeout):
        return True  # another process holds the NPU; it lets go eventually
    if isinstance(exc, ModelLoadError):
        text = str(exc)
        for path in sorted({p for p in paths if p}, key=len, reverse=True):
            text = text.replace(path, " ")
        text = _ABSOLUTE_PATH.sub(" ", text).lower()
        return any(marker.lower() in text for marker in TRANSIENT_LOAD_FAILURES)
    return False


def load_paths(config: Config) -> tuple[str, ...]:
    """The paths a load failure may quote: the model as given and resolved, the cache root
    (converted models live below it)."""
    paths = [config.model, config.cache_dir]
    for path in (config.model, config.cache_dir):
        try:
            paths.append(str(Path(path).resolve()))
        except (OSError, RuntimeError):
            pass
    return tuple(paths)


def load_retry_delay(first_s: float, retry: int) -> float:
    """Seconds before retry number ``retry`` (1-based): first_s, doubled each time, capped."""
    return float(min(first_s * 2.0 ** (retry - 1), LOAD_RETRY_MAX_DELAY_S))


@dataclass
class Job:
    """One queued generation. ``future`` lives on the event loop; the worker resolves it there.

    Times are on the worker's clock (:meth:`Worker.now`).
    """

    spec: JobSpec
    input: str
    max_new_tokens: int | None
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[JobResult]
    received_at: float
    timeout_ms: int
    cancel: threading.Event = field(default_factory=threading.Event)
    #: The job has had its one answer (or its client left): see :meth:`Worker._finish`.
    answered: bool = False
    #: Set by the worker before the job is answered: memory candidates dropped for holding a
    #: secret, by kind (counted in /metrics by the event loop once the answer is in).
    secrets_dropped: dict[str, int] = field(default_factory=dict)
    #: Set by the worker: why the model's answer was replaced (jobs.JobOutput.fallback), if it was.
    fallback: str | None = None

    @property
    def deadline(self) -> float:
        return self.received_at + self.timeout_ms / 1000


@dataclass(frozen=True)
class WorkerSnapshot:
    status: HealthStatus
    error: str | None
    queue_depth: int
    running: bool
    jobs_served: int
    jobs_failed: int
    load_time_ms: float | None
    model_id: str | None
    device_info: DeviceInfo | None
    #: Load attempts so far (1 while the first one runs); more than 1 only after a failure.
    load_attempts: int = 0
    #: Seconds until the next load attempt, while one is scheduled after a transient failure.
    retry_in_s: float | None = None
    jobs_cancelled: int = 0
    #: The CPU priority the inference runs at, once the worker thread has set it.
    priority: WorkerPriority | None = None


def prompt_over_budget(prompt_tokens: int, limit: int) -> InvalidParams:
    return InvalidParams(
        f"prompt is {prompt_tokens} tokens after the chat template; the limit is {limit}",
        LimitData(limit=limit, actual=prompt_tokens, unit="tokens", field="input"),
    )


def check_prompt_budget(prompt_tokens: int, limit: int) -> None:
    """Refuse a prompt over the budget before the device sees it (the NPU would raise, the CPU
    would run it silently past the model's context)."""
    if prompt_tokens > limit:
        raise prompt_over_budget(prompt_tokens, limit)


def _resolve(job: Job, outcome: JobResult | BaseException | None) -> None:
    """Complete the job's future on its loop (from either thread). ``None``: its client is gone,
    nobody waits for an answer; the future is cancelled."""

    def complete() -> None:
        if job.future.done():
            return
        if outcome is None:
            job.future.cancel()
        elif isinstance(outcome, BaseException):
            job.future.set_exception(outcome)
            # Retrieved: a job whose client left (its dispatcher call ended) is answered to nobody,
            # and asyncio would log "Future exception was never retrieved" at ERROR for it.
            job.future.exception()
        else:
            job.future.set_result(outcome)

    try:
        job.loop.call_soon_threadsafe(complete)
    except RuntimeError:
        pass  # the loop is closed: the daemon is exiting and nobody waits for this job


class Worker:
    def __init__(
        self,
        config: Config,
        loader: EngineLoader,
        busy_counter: BusyCounter | None,
        npu_lock: NpuLock | None,
        clock: Callable[[], float] = time.monotonic,
        backoff_wait: Callable[[float], bool] | None = None,
    ) -> None:
        self._config = config
        self._loader = loader
        self._busy = busy_counter
        self._npu_lock = npu_lock
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._stopping = threading.Event()
        self._load_finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="npud-worker", daemon=True)
        self._engine: Engine | None = None
        self._status: HealthStatus = "loading"
        self._error: str | None = None
        self._load_time_ms: float | None = None
        self._load_attempts = 0
        self._retry_at: float | None = None  # worker clock time of the next load attempt
        self._running_since: float | None = None
        self._service_ms: float | None = None
        self._served = 0  # answered with a result
        self._failed = 0  # answered with an error
        self._cancelled = 0  # withdrawn by `cancel` or by their client leaving
        self._current: Job | None = None  # the job being processed (answered if the worker dies)
        self._priority: WorkerPriority | None = None
        self._priority_applied = threading.Event()
        #: Called (from the worker thread) if the worker dies of a bug; the daemon then exits non-zero.
        self.on_crash: Callable[[], None] | None = None
        #: Called (from the worker thread) when the load status changes, so systemd's STATUS= line
        #: follows at once rather than at the next periodic refresh.
        self.on_status_change: Callable[[], None] | None = None
        #: Waits out a load-retry delay; True means "stop instead" (shutdown). Tests replace it.
        self._backoff_wait = backoff_wait or self._stopping.wait

    # ------------------------------------------------------------ event-loop side

    def start(self) -> None:
        self._thread.start()
        # A few system calls away: health reports the priority from its first answer on.
        self._priority_applied.wait()

    @property
    def capacity(self) -> int:
        return self._config.queue_depth

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise at once: never blocks the caller."""
        with self._cond:
            if self._stopping.is_set():
                raise ShuttingDown()
            if self._status == "error":
                raise self._not_ready()
            # While the model loads, jobs queue like any other (their deadlines run): a client
            # that started npud through socket activation simply waits for its first answer.
            if len(self._queue) >= self.capacity:
                raise QueueFull(
                    f"queue full ({self.capacity} waiting); retry later",
                    QueueFullData(
                        retry_after_ms=self._retry_after_ms(len(self._queue)),
                        queue_depth=len(self._queue),
                        capacity=self.capacity,
                    ),
                )
            self._queue.append(job)
            self._cond.notify()

    def now(self) -> float:
        return self._clock()

    def _retry_in_s(self) -> float | None:
        """Seconds until the scheduled load attempt (caller holds the lock)."""
        if self._retry_at is None:
            return None
        return round(max(0.0, self._retry_at - self._clock()), 1)

    def _not_ready(self) -> NotReady:
        """The answer to a job while the model is not loaded after a failure (caller holds the lock):
        with the time of the next attempt when one is scheduled, so a client can come back then."""
        retry_in = self._retry_in_s()
        data = NotReadyData(status="error", error=self._error or UNSET,
                            retry_in_s=UNSET if retry_in is None else retry_in)
        if retry_in is None:
            return NotReady("model failed to load", data)
        return NotReady(f"model failed to load; the next attempt is in {retry_in:g} s", data)

    def withdraw(self, job: Job, answer: RpcError | None = None) -> bool:
        """Withdraw a job: by ``cancel`` (``answer`` RequestCancelled), at a deadline it overran
        (``answer`` its error) or because its client went away (``answer`` None: nobody to tell).
        A queued job leaves the queue; a running one stops at its next token (or stops waiting
        for the NPU lock) and its late result is dropped.

        Returns True if this gave the job its answer (False: it had one already).
        """
        job.cancel.set()
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                pass
        return self._finish(job, answer)

    def expire_queued(self, job: Job, error: RpcError) -> bool:
        """At its deadline: take ``job`` out of the queue if it is still there (waiting behind
        another job, or for the model to load) and answer it with ``error``. True if it was. A job
        already taken by the worker is stopped by the worker itself (streamer, lock wait)."""
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return False
        job.cancel.set()
        return self._finish(job, error)

    def _finish(self, job: Job, outcome: JobResult | RpcError | None) -> bool:
        """Give ``job`` its one answer and count it, once: the first outcome wins (a job cancelled
        or stopped at shutdown while it ran is not answered, or counted, again when its generation
        returns). ``None``: its client is gone. False if the job had its answer already."""
        with self._cond:
            if job.answered:
                return False
            job.answered = True
            if outcome is None or isinstance(outcome, RequestCancelled):
                self._cancelled += 1
            elif isinstance(outcome, RpcError):
                self._failed += 1
            else:
                self._served += 1
        _resolve(job, outcome)
        return True

    def stop(self) -> None:
        """Refuse new jobs, fail queued ones with ShuttingDown, let the running one finish.

        One lock section: once ``_stopping`` is set no queued job can be taken by the worker
        (``_next_job`` checks it under the same lock), so none starts during shutdown.
        """
        with self._cond:
            self._stopping.set()
            drained = self._take_queue()
            self._cond.notify_all()
        self._finish_all(drained, ShuttingDown("daemon is shutting down; the job was not started"))

    def stop_running(self, error: RpcError) -> Literal["none", "answered", "already_answered"]:
        """Stop the running job now and answer it with ``error`` (``--shutdown-timeout`` passed).

        Its ``should_stop`` turns true, so a live generation ends at its next token; its client is
        answered at once either way (a hung pipeline may never return). "already_answered": the
        job had its answer (cancelled, its deadline, its client gone) and was still stopping.
        """
        with self._cond:
            job = self._current
        if job is None:
            return "none"
        job.cancel.set()
        return "answered" if self._finish(job, error) else "already_answered"

    def _take_queue(self) -> list[Job]:
        drained = list(self._queue)
        self._queue.clear()
        return drained

    def _finish_all(self, jobs: list[Job], error: RpcError) -> None:
        for job in jobs:
            self._finish(job, error)

    def _fail_queued(self, error: RpcError) -> None:
        with self._cond:
            drained = self._take_queue()
        self._finish_all(drained, error)

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread; True if it ended."""
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_responsive(self) -> bool:
        """For the systemd watchdog: the thread lives and no generation has run past ``stuck_after``.

        A model load is not counted: an NPU compile can legitimately take minutes.
        """
        if not self._thread.is_alive():
            return self._status == "error" and not self._stopping.is_set() and self._load_finished.is_set()
        with self._cond:
            running_since = self._running_since
        return running_since is None or self._clock() - running_since < self._config.stuck_after_s

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._queue and self._running_since is None

    def snapshot(self) -> WorkerSnapshot:
        with self._cond:
            return WorkerSnapshot(
                status=self._status,
                error=self._error,
                queue_depth=len(self._queue),
                running=self._running_since is not None,
                jobs_served=self._served,
                jobs_failed=self._failed,
                jobs_cancelled=self._cancelled,
                load_time_ms=self._load_time_ms,
                model_id=self._engine.model_id if self._engine else None,
                device_info=self._engine.device_info if self._engine else None,
                load_attempts=self._load_attempts,
                retry_in_s=self._retry_in_s(),
                priority=self._priority,
            )

    def _retry_after_ms(self, ahead: int) -> int:
        """Time until a slot frees up: jobs ahead plus the running one, times the service time."""
        estimate = self._service_ms
        if estimate is None:
            age = (self._clock() - self._running_since) * 1000 if self._running_since else 0.0
            estimate = max(age, MIN_SERVICE_ESTIMATE_MS)
        return math.ceil(estimate * (ahead + 1))

    # ------------------------------------------------------------ worker thread

    def wait_loaded(self, timeout: float | None = None) -> bool:
        """Wait until the model load has finished, successfully or not."""
        return self._load_finished.wait(timeout)

    def _run(self) -> None:
        try:
            self._lower_priority()
            loaded = self._load_with_retries()
            self._load_finished.set()
            if not loaded:
                return
            while True:
                job = self._next_job()
                if job is None:
                    return
                self._process(job)
                job = None  # not kept while waiting for the next one: it holds the input text
        except BaseException:
            # A bug in the worker itself: never leave a daemon that accepts jobs nobody runs.
            log.critical("worker thread crashed", exc_info=True)
            with self._cond:
                self._stopping.set()
                current, self._current = self._current, None
                self._running_since = None
            self._load_finished.set()
            error = InternalError("the worker crashed; npud is restarting")
            self._fail_queued(error)
            if current is not None:
                self._finish(current, error)
            if self.on_crash is not None:
                self.on_crash()

    def _lower_priority(self) -> None:
        """Before anything loads: OpenVINO's threads (made during the load) and the GGUF converter
        child inherit this thread's priority; retried loads run on it, so it is set only once."""
        try:
            priority = lower_this_thread(self._config.worker_nice, self._config.worker_sched)
            with self._cond:
                self._priority = priority
        finally:
            self._priority_applied.set()

    def _load_with_retries(self) -> bool:
        """Load the model; after a transient failure try again with backoff, up to --load-retries.

        Between attempts health says ``error`` with ``retry_in_s`` and jobs are refused at once
        with -32001 naming the next attempt (a backoff can outlast any job deadline); jobs queued
        during an attempt that fails get the same answer. The wait ends early at shutdown.
        """
        retries = 0
        while True:
            with self._cond:
                self._load_attempts += 1
                self._status, self._retry_at = "loading", None
            self._status_changed()
            failure = self._load()
            self._status_changed()
            if failure is None:
                return True
            message, exc = failure
            if isinstance(exc, LockWaitCancelled) and self._stopping.is_set():
                # Shutdown ended the wait for the NPU lock (stop() has answered the queued jobs):
                # an orderly stop, not a failed load.
                log.info("model load abandoned while waiting for the NPU lock: shutting down")
                return False
            delay = None
            if is_transient_load_failure(exc, load_paths(self._config)) and retries < self._config.load_retries:
                retries += 1
                delay = load_retry_delay(self._config.load_retry_delay_s, retries)
            with self._cond:
                # One lock section: a job submitted now sees the error and the next attempt together.
                self._status, self._error = "error", message
                self._retry_at = None if delay is None else self._clock() + delay
                queued, error = self._take_queue(), self._not_ready()
            self._finish_all(queued, error)
            self._status_changed()
            # Logged once health says so: whoever reads the log can then ask health.
            if isinstance(exc, (ModelLoadError, LockTimeout, LockWaitCancelled, LockFileRefused)):
                log.error("model load failed: %s", message)
            else:
                log.error("model load failed unexpectedly", exc_info=exc)
            if delay is None:
                if retries:
                    log.error("model load failed %d times; giving up (restart npud to try again)",
                              self._load_attempts)
                return False
            log.warning("model load failed with a transient error; attempt %d of %d in %gs",
                        retries + 1, self._config.load_retries + 1, delay)
            if self._backoff_wait(delay) or self._stopping.is_set():
                return False

    def _status_changed(self) -> None:
        if self.on_status_change is not None:
            self.on_status_change()

    def _load(self) -> tuple[str, BaseException] | None:
        """One load attempt: None on success, else (the message health shows, the exception)."""
        started = self._clock()
        try:
            if self._npu_lock is not None:
                # Compiling for the NPU uses the device too, so it is serialised like a job.
                with self._npu_lock.hold(cancel=self._stopping.is_set):
                    engine = self._loader.load(self._config)
            else:
                engine = self._loader.load(self._config)
        except (ModelLoadError, LockTimeout, LockWaitCancelled, LockFileRefused) as exc:
            return str(exc), exc
        except Exception as exc:  # a loader bug must not leave health saying "loading" forever
            return f"{type(exc).__name__}: {exc}", exc
        with self._cond:
            self._engine = engine
            self._load_time_ms = (self._clock() - started) * 1000
            self._status, self._error = "ready", None
        log.info("model %s ready on %s in %.0f ms", engine.model_id, self._config.device_label, self._load_time_ms)
        return None

    def _next_job(self) -> Job | None:
        with self._cond:
            while True:
                if self._stopping.is_set():
                    return None  # checked under the lock stop() holds: no job starts once stopping
                if self._queue:
                    break
                self._cond.wait()
            job = self._queue.popleft()
            self._running_since = self._clock()
            self._current = job
            return job

    def _process(self, job: Job) -> None:
        outcome = self._outcome(job, self._clock())
        with self._cond:
            self._running_since = None
            self._current = None
        if outcome is not None:
            self._finish(job, outcome)  # ignored if the job was answered meanwhile

    def _outcome(self, job: Job, started: float) -> JobResult | RpcError | None:
        """Run ``job``; its result or error, or None for a job withdrawn while queued (answered
        when it was)."""
        if job.cancel.is_set():
            return None  # the NPU is not touched
        if started >= job.deadline:  # expired while queued
            return DeadlineExceeded(f"deadline of {job.timeout_ms} ms passed while queued",
                                    DeadlineData(job.timeout_ms, "queued"))
        try:
            return self._execute(job, started)
        except RpcError as exc:
            return _detached(exc)
        except Exception as exc:
            # The type is logged, not the message: a message could quote the input.
            log.error("generation raised %s", type(exc).__name__)
            return GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            elapsed_ms = (self._clock() - started) * 1000
            with self._cond:
                if self._service_ms is None:
                    self._service_ms = elapsed_ms
                else:
                    self._service_ms += SERVICE_TIME_SMOOTHING * (elapsed_ms - self._service_ms)

    def _execute(self, job: Job, started: float) -> JobResult:
        engine = self._engine
        if engine is None:  # unreachable: jobs are only accepted once ready
            raise NotReady()
        spec = job.spec
        prompt, prompt_tokens = engine.render_prompt(spec.messages(job.input))
        check_prompt_budget(prompt_tokens, self._config.max_prompt_tokens)
        max_new_tokens = self._max_new_tokens(spec, job.max_new_tokens, prompt_tokens)
        try:
            generation, busy_delta = self._generate_on_device(engine, prompt, spec, max_new_tokens, job)
        except PromptTooLong as exc:
            # The pipeline counted more than npud did: still the client's over-long input, in the
            # pipeline's own numbers, not a generation failure.
            raise prompt_over_budget(exc.actual, exc.limit) from None
        output = spec.postprocess(generation.text, job.input)
        if output.is_empty and generation.finish_reason != "cancelled":
            raise GenerationFailed("the model produced no usable output")
        if output.secrets_dropped:
            # How many and which kinds, never the statements.
            log.info("%s: dropped %d candidate(s) holding a secret (%s)", spec.name, output.secrets_dropped,
                     ", ".join(sorted(output.secret_kinds)))
            job.secrets_dropped = output.secret_kinds
        job.fallback = output.fallback
        done = self._clock()
        return JobResult(
            job=spec.name,
            text=output.text,
            model=engine.model_id,
            device=self._config.device,
            finish_reason=generation.finish_reason,
            tokens=TokenCounts(prompt=prompt_tokens, generated=generation.generated_tokens),
            timing_ms=JobTiming(
                queue=_ms(started - job.received_at),
                generate=_ms(done - started),
                total=_ms(done - job.received_at),
            ),
            npu_busy_delta_us=busy_delta,
            candidates=output.candidates if output.candidates is not None else UNSET,
            emulated=True if self._config.npu_emulation else UNSET,
            # On the NPU without the busy counter (--no-busy-check) nothing proves where it ran;
            # emulated, a synthetic counter grows whatever ran: its delta proves nothing either.
            verified=(False if self._config.is_npu and (self._busy is None or self._config.npu_emulation)
                      else UNSET),
        )

    def _max_new_tokens(self, spec: JobSpec, requested: int | None, prompt_tokens: int) -> int:
        """The generation budget, checked against the NPU's KV capacity.

        On the NPU the KV cache holds exactly MAX_PROMPT_LEN + MIN_RESPONSE_LEN tokens, prompt
        and generated together (measured on the NPU pipeline for many sizes: at the edge every
        token is generated; one more and it stops silently, finish reason NONE). An explicit
        request that cannot fit is refused; the job's default shrinks to what fits, since the
        client did not ask for a number.
        """
        wanted = requested if requested is not None else spec.default_max_new_tokens
        if not self._config.is_npu:
            return wanted
        room = self._config.max_prompt_tokens + self._config.min_response_len - prompt_tokens
        if wanted <= room:
            return wanted
        if requested is None and room >= 1:
            return room
        raise InvalidParams(
            f"prompt ({prompt_tokens} tokens) plus max_new_tokens ({wanted}) exceeds the NPU's "
            f"KV capacity; at most {max(room, 0)} new tokens fit",
            LimitData(limit=max(room, 0), actual=wanted, unit="tokens", field="max_new_tokens"),
        )

    def _generate_on_device(
        self, engine: Engine, prompt: str, spec: JobSpec, max_new_tokens: int, job: Job
    ) -> tuple[Generation, int | None]:
        settings = DecodeSettings.for_job(spec, max_new_tokens)
        clock, deadline = self._clock, job.deadline

        # Polled by the streamer at every token: the client left, or the deadline passed.
        def should_stop() -> bool:
            return job.cancel.is_set() or clock() >= deadline

        if self._npu_lock is None:
            generation = engine.generate(prompt, settings, should_stop)
            self._check_deadline(job, generation)
            return generation, None

        # The wait for the lock ends at the job's deadline (timeout_s), its cancel, or shutdown:
        # the job has not started, so at shutdown it is answered like a queued one.
        def stop_waiting() -> bool:
            return job.cancel.is_set() or self._stopping.is_set()

        remaining = deadline - clock()
        try:
            # The counter's lock too: no other read of it in this process (health's refresh)
            # falls between this job's two readings.
            with self._npu_lock.hold(cancel=stop_waiting, timeout_s=min(self._npu_lock.timeout_s, remaining)), \
                    (self._busy.lock if self._busy is not None else contextlib.nullcontext()):
                before = self._read_busy()
                if self._busy is not None and before is None:
                    # Nothing this job does could be verified: do not use the device for it (and
                    # do not wait on the counter a second time).
                    self._verify_busy(None, None)
                generation = engine.generate(prompt, settings, should_stop)
                after = self._read_busy()
        except LockWaitCancelled:
            if self._stopping.is_set():
                raise ShuttingDown("daemon is shutting down; the job was not started") from None
            raise RequestCancelled() from None  # its client withdrew it and was already answered
        except LockFileRefused as exc:
            log.error("%s", exc)  # a path and a uid, never request content
            raise GenerationFailed(str(exc)) from None
        except LockTimeout as exc:
            if remaining < self._npu_lock.timeout_s:
                raise DeadlineExceeded(
                    f"deadline of {job.timeout_ms} ms passed waiting for the NPU lock",
                    DeadlineData(job.timeout_ms, "queued")) from None
            raise DeviceBusy(str(exc)) from None
        # A job stopped by its deadline failed whatever the counter says.
        self._check_deadline(job, generation)
        return generation, self._verify_busy(before, after)

    @staticmethod
    def _check_deadline(job: Job, generation: Generation) -> None:
        if generation.finish_reason == "cancelled" and not job.cancel.is_set():
            raise DeadlineExceeded(
                f"deadline of {job.timeout_ms} ms passed after {generation.generated_tokens} tokens",
                DeadlineData(job.timeout_ms, "running"))

    def _read_busy(self) -> int | None:
        if self._busy is None:
            return None
        try:
            return self._busy.read()
        except BusyCounterError:
            return None

    def _verify_busy(self, before: int | None, after: int | None) -> int | None:
        """The busy delta, or NotVerified when it does not prove NPU work."""
        if self._busy is None:
            return None
        delta, reason = verify_delta(before, after)
        if reason is None:
            return delta
        messages = {
            "unreadable": "NPU busy counter could not be read",
            "went_backwards": "NPU busy counter went backwards (driver reloaded?)",
            "no_growth": "NPU busy counter did not grow: the job did not run on the NPU",
        }
        raise NotVerified(messages[reason], NotVerifiedData(delta, str(self._busy.path), reason))  # type: ignore[arg-type]


def _detached(error: RpcError) -> RpcError:
    """``error`` without its traceback and chained exceptions: their frames hold the job, and so
    its input text, alive for as long as the error (a reference cycle until the next GC)."""
    error.__context__ = error.__cause__ = None
    return error.with_traceback(None)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
