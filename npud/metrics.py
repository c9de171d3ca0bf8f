"""Counters and histograms, exposed as Prometheus text (``GET /metrics``) and in ``health.stats``.

Written to the exposition format spec (version 0.0.4) rather than with prometheus_client: that
library keeps a process-wide default registry (module-level mutable state) and would be a runtime
dependency for about a hundred lines of formatting. Labels only ever carry fixed vocabulary
(method names from the dispatch table, job names, error names): never request content.

All updates happen on the event loop thread (the dispatcher and the connection handlers), so no
lock is needed.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from npuclient.errors import ERRORS_BY_CODE
from npuclient.protocol import HistogramStats, JobResult, Stats

# Job latencies in milliseconds: from a cached health answer to a 256-token summary on a busy NPU.
LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000)


class Histogram:
    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        running, out = 0, []
        for bound, count in zip([*map(_fmt, self.bounds), "+Inf"], self.counts):
            running += count
            out.append((bound, running))
        return out


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def error_name(code: int) -> str:
    cls = ERRORS_BY_CODE.get(code)
    return cls.__name__ if cls is not None else f"code_{-code}"


class Metrics:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)  # (method, outcome)
        self.rejections: defaultdict[str, int] = defaultdict(int)  # connection-level, by reason
        self.tokens_in: defaultdict[str, int] = defaultdict(int)
        self.tokens_out: defaultdict[str, int] = defaultdict(int)
        self.npu_busy_us: defaultdict[str, int] = defaultdict(int)
        #: Memory candidates dropped for holding a secret, by kind (guards.SecretKind).
        self.secrets_dropped: defaultdict[str, int] = defaultdict(int)
        #: (job, reason): the model's answer replaced by post-processing (jobs.JobOutput.fallback).
        self.fallbacks: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency: dict[str, defaultdict[str, Histogram]] = {
            stage: defaultdict(lambda: Histogram(LATENCY_BUCKETS_MS)) for stage in ("queue", "generate", "total")
        }

    def record_request(self, method: str, error_code: int | None, result: object) -> None:
        outcome = "ok" if error_code is None else error_name(error_code)
        self.requests[(method, outcome)] += 1
        if isinstance(result, JobResult):
            job = result.job
            self.tokens_in[job] += result.tokens.prompt
            self.tokens_out[job] += result.tokens.generated
            if result.npu_busy_delta_us:
                self.npu_busy_us[job] += result.npu_busy_delta_us
            self.latency["queue"][job].observe(result.timing_ms.queue)
            self.latency["generate"][job].observe(result.timing_ms.generate)
            self.latency["total"][job].observe(result.timing_ms.total)

    def record_outcome(self, method: str, outcome: str) -> None:
        """A request that ended without a reply (its client gone): counted under ``outcome``."""
        self.requests[(method, outcome)] += 1

    def record_guards(self, job: str, secrets_by_kind: dict[str, int], fallback: str | None) -> None:
        """What post-processing did to a delivered answer: candidates dropped for holding a secret
        (by kind), and the model's answer replaced (by job and reason)."""
        for kind, n in secrets_by_kind.items():
            self.secrets_dropped[kind] += n
        if fallback is not None:
            self.fallbacks[(job, fallback)] += 1

    def record_rejection(self, reason: str) -> None:
        self.rejections[reason] += 1

    def uptime_s(self) -> float:
        return self._clock() - self.started

    def stats(self) -> Stats:
        return Stats(
            requests={f"{m}:{o}": n for (m, o), n in sorted(self.requests.items())},
            rejections=dict(sorted(self.rejections.items())),
            tokens_in=dict(self.tokens_in),
            tokens_out=dict(self.tokens_out),
            npu_busy_us=dict(self.npu_busy_us),
            latency_ms={
                f"{stage}:{job}": HistogramStats(count=h.count, sum=round(h.total, 3))
                for stage, per_job in self.latency.items() for job, h in sorted(per_job.items())
            },
            secrets_dropped=dict(sorted(self.secrets_dropped.items())),
            fallbacks={f"{job}:{reason}": n for (job, reason), n in sorted(self.fallbacks.items())},
        )

    def exposition(self, queue_depth: int, queue_capacity: int, running: bool, load_time_ms: float | None,
                   status: str, jobs: dict[str, int] | None = None, emulated: bool = False) -> str:
        """Prometheus text format 0.0.4. ``jobs``: the worker's job counts by outcome (served,
        failed, cancelled), the numbers health and the systemd STATUS line show. ``emulated``:
        --npu-emulation, so that NPU busy time from a synthetic counter is never read as real."""
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("npud_emulated", "gauge", "1 with --npu-emulation: the NPU pipeline computes on the CPU and "
                                         "the NPU busy time comes from a synthetic counter, not NPU hardware.")
        out.append(f"npud_emulated {int(emulated)}")

        family("npud_requests_total", "counter", "Requests by method and outcome (ok or error name).")
        for (method, outcome), n in sorted(self.requests.items()):
            out.append(f'npud_requests_total{{method="{method}",outcome="{outcome}"}} {n}')
        family("npud_rejections_total", "counter", "Connections refused before any request, by reason.")
        for reason, n in sorted(self.rejections.items()):
            out.append(f'npud_rejections_total{{reason="{reason}"}} {n}')
        family("npud_jobs_total", "counter", "Jobs by outcome: served (a result), failed (an error), "
                                               "cancelled (cancel, or the client left).")
        for outcome, n in (jobs or {}).items():
            out.append(f'npud_jobs_total{{outcome="{outcome}"}} {n}')
        family("npud_queue_depth", "gauge", "Jobs waiting behind the running one.")
        out.append(f"npud_queue_depth {queue_depth}")
        family("npud_queue_capacity", "gauge", "Jobs that may wait before new ones are rejected.")
        out.append(f"npud_queue_capacity {queue_capacity}")
        family("npud_job_running", "gauge", "1 while a generation runs.")
        out.append(f"npud_job_running {int(running)}")
        family("npud_model_ready", "gauge", "1 when the model is loaded and jobs are accepted.")
        out.append(f"npud_model_ready {int(status == 'ready')}")
        family("npud_model_load_seconds", "gauge", "Time the model load (and compile) took.")
        if load_time_ms is not None:
            out.append(f"npud_model_load_seconds {load_time_ms / 1000:.3f}")
        family("npud_uptime_seconds", "gauge", "Seconds since the daemon started.")
        out.append(f"npud_uptime_seconds {self.uptime_s():.3f}")
        for name, values, help_text in (
            ("npud_prompt_tokens_total", self.tokens_in, "Prompt tokens (after the chat template) of successful jobs."),
            ("npud_generated_tokens_total", self.tokens_out, "Generated tokens of successful jobs."),
            ("npud_npu_busy_microseconds_total", self.npu_busy_us, "NPU busy-counter growth attributed to jobs."),
        ):
            family(name, "counter", help_text)
            for job, n in sorted(values.items()):
                out.append(f'{name}{{job="{job}"}} {n}')
        family("npud_memory_secrets_dropped_total", "counter",
               "Memory candidates dropped because they held a secret, by kind of secret (never the text).")
        for kind, n in sorted(self.secrets_dropped.items()):
            out.append(f'npud_memory_secrets_dropped_total{{kind="{kind}"}} {n}')
        family("npud_job_fallbacks_total", "counter",
               "Answers whose model output was replaced by post-processing, by job and reason "
               "(invented_number, repetition, longer_than_input).")
        for (job, reason), n in sorted(self.fallbacks.items()):
            out.append(f'npud_job_fallbacks_total{{job="{job}",reason="{reason}"}} {n}')
        for stage, help_text in (("queue", "waiting in the queue"), ("generate", "on the worker"),
                                 ("total", "from receipt to reply")):
            name = f"npud_job_{stage}_milliseconds"
            family(name, "histogram", f"Job latency {help_text}, by job.")
            for job, hist in sorted(self.latency[stage].items()):
                for bound, count in hist.cumulative():
                    out.append(f'{name}_bucket{{job="{job}",le="{bound}"}} {count}')
                out.append(f'{name}_sum{{job="{job}"}} {hist.total:.3f}')
                out.append(f'{name}_count{{job="{job}"}} {hist.count}')
        return "\n".join(out) + "\n"
