"""Do npud's jobs stay in the background? Both sides of it, per daemon variant.

- **Control plane**: ``health`` p99 while generations run back to back ÷ idle p99, measured in
  alternating blocks on the same daemon.
- **Foreground**: a fixed CPU-bound pure-Python workload in a process of its own (what the user
  is doing: a build step, a script, a UI thread), timed while npud generates continuously ÷ while
  npud is idle, alternating.
- **Thread priorities**: the nice value and policy (``/proc/<pid>/task/*/stat`` fields 19 and
  41) of the daemon's threads that burned CPU during a generation (the inference threads), and
  of its main thread (the event loop), read while the generation runs.

All variants' daemons run side by side (idle but for the one measured), and the measurements go
round them in rounds with a rotating order: on a machine shared with other work, whose load
comes and goes, that load falls on every variant alike. Each row also gives npud's job rate
while the foreground ran and without it, which shows whether a lowered npud still ran at all.

A variant is a command line in which the word ``npud`` stands for the daemon: words before it
wrap it (``nice -n 10 npud``), words after it are npud flags (``npud --worker-nice 19``). The
default variants are npud with its inference priority off (``--worker-nice 0 --worker-sched
other``: every thread at the daemon's own priority) and npud with its defaults. ``nice -n 10
npud`` would lower the event loop too, which is what the built-in setting avoids.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.harness import DaemonProcess, LineClient, Summary, ms, ratio_spread, timed
from bench.workload import INPUTS

QUEUE_FULL = -32000
DEFAULT_VARIANTS = ("priority off=npud --worker-nice 0 --worker-sched other", "default=npud")


@dataclass(frozen=True)
class Variant:
    label: str
    prefix: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """``LABEL=COMMAND`` where COMMAND contains the word ``npud`` (see the module docstring)."""
        label, sep, command = spec.partition("=")
        words = shlex.split(command)
        if not sep or not label.strip() or "npud" not in words:
            raise ValueError(f"variant {spec!r}: expected LABEL=COMMAND with the word 'npud' in COMMAND, "
                             "e.g. 'low=nice -n 10 npud' or 'flag=npud --some-flag 10'")
        at = words.index("npud")
        return cls(label.strip(), tuple(words[:at]), tuple(words[at + 1:]))

    @property
    def command(self) -> str:
        return shlex.join([*self.prefix, "npud", *self.flags])


# ---------------------------------------------------------------- threads

@dataclass(frozen=True)
class ThreadStat:
    nice: int
    cpu_ticks: int
    policy: int = 0  # SCHED_OTHER 0, SCHED_BATCH 3, SCHED_IDLE 5


def thread_stats(pid: int) -> dict[int, ThreadStat]:
    """Per-thread nice value and CPU time (user + system ticks) from /proc/<pid>/task/*/stat."""
    stats = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        stats[int(task.name)] = parse_stat(text)
    return stats


def parse_stat(text: str) -> ThreadStat:
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    # Fields from 3 on follow; utime, stime, nice and policy are fields 14, 15, 19 and 41 (proc(5)).
    fields = text.rsplit(")", 1)[1].split()
    return ThreadStat(nice=int(fields[19 - 3]), cpu_ticks=int(fields[14 - 3]) + int(fields[15 - 3]),
                      policy=int(fields[41 - 3]))


POLICY_NAMES = {0: "other", 3: "batch", 5: "idle"}


def busy_thread_nice(pid: int, before: dict[int, ThreadStat], after: dict[int, ThreadStat],
                     min_ticks: int = 5) -> dict[str, Any]:
    """Nice values of the threads that worked between two samples, and of the main thread."""
    busy = {tid: s for tid, s in after.items()
            if s.cpu_ticks - before.get(tid, ThreadStat(s.nice, 0)).cpu_ticks >= min_ticks}
    main = after.get(pid)
    return {"busy_threads": len(busy), "busy_thread_nice": sorted({s.nice for s in busy.values()}),
            "busy_thread_policy": sorted({POLICY_NAMES.get(s.policy, str(s.policy)) for s in busy.values()}),
            "main_thread_nice": main.nice if main else None,
            "main_thread_policy": POLICY_NAMES.get(main.policy, str(main.policy)) if main else None}


# ---------------------------------------------------------------- keeping npud busy

class Busy:
    """Keep npud generating back to back: two clients, so one job runs while the next one waits.

    Jobs are kept short (``tokens``) so that stopping, which waits for the running and the queued
    job to finish, is quick; back to back, they keep the worker generating all the same."""

    def __init__(self, socket: str, job: str = "summary", clients: int = 2, tokens: int = 64) -> None:
        self.socket, self.job, self.clients, self.tokens = socket, job, clients, tokens
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.done = 0
        #: Seconds spent generating (between start and stop): with ``done``, npud's job rate, which
        #: says whether it really ran (a lowered npud on a machine busy with other work may not).
        self.busy_s = 0.0
        self._since = 0.0

    def _loop(self, offset: int) -> None:
        client = LineClient(self.socket)
        texts = INPUTS[self.job]
        i = offset
        try:
            while not self.stop_event.is_set():
                reply = msgspec.json.decode(client.roundtrip(client.request_bytes(
                    "generate", {"job": self.job, "input": texts[i % len(texts)], "max_new_tokens": self.tokens})))
                if reply.get("error", {}).get("code") == QUEUE_FULL:
                    # Someone else (the queue-full benchmark) took the free slot: the worker is busy anyway.
                    time.sleep(0.01)
                    continue
                if "result" not in reply:
                    self.errors.append(str(reply.get("error")))
                    return
                self.done += 1
                i += self.clients
        finally:
            client.close()

    def start(self, health: LineClient) -> None:
        self.stop_event.clear()
        self._since = time.monotonic()
        self.threads = [threading.Thread(target=self._loop, args=(k,), daemon=True) for k in range(self.clients)]
        for thread in self.threads:
            thread.start()
        request = health.request_bytes("health")
        # Busy means the worker is generating, not merely that requests were sent.
        while not msgspec.json.decode(health.roundtrip(request))["result"]["queue"]["running"]:
            if self.errors:
                raise RuntimeError(f"npud failed to generate: {self.errors[0]}")
            time.sleep(0.005)

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join()
        self.busy_s += time.monotonic() - self._since
        if self.errors:
            raise RuntimeError(f"npud failed to generate: {self.errors[0]}")

    @contextmanager
    def running(self, health: LineClient) -> Iterator[None]:
        self.start(health)
        try:
            yield
        finally:
            self.stop()


def in_states(states: Sequence[bool], busy: Busy, health: LineClient, measure: Callable[[bool], None]) -> None:
    """Call ``measure(state)`` for each state, npud generating when the state is True.

    Consecutive busy states share one busy period (starting and stopping costs a job or two)."""
    running = False
    try:
        for state in states:
            if state and not running:
                busy.start(health)
            elif running and not state:
                busy.stop()
            running = state
            measure(state)
    finally:
        if running:
            busy.stop()


@dataclass
class HealthSamples:
    """health round trips (ns) while npud was idle and while it generated, over all rounds."""

    idle_ns: list[int] = field(default_factory=list)
    busy_ns: list[int] = field(default_factory=list)
    jobs: int = 0
    busy_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        a, b = Summary.of([ms(t) for t in self.idle_ns]), Summary.of([ms(t) for t in self.busy_ns])
        return {"idle_ms_p50": a.p50, "idle_ms_p99": a.p99, "busy_ms_p50": b.p50, "busy_ms_p99": b.p99,
                "ratio_p99": b.p99 / a.p99, "ratio_p50": b.p50 / a.p50, "n": a.n + b.n,
                "npud_jobs_per_s": self.jobs / self.busy_s if self.busy_s else 0.0}


def health_busy_vs_idle(socket: str, n: int, blocks: int = 4, into: HealthSamples | None = None) -> HealthSamples:
    """health round trips while npud generates and idle, in alternating blocks (idle, busy, busy, idle…)."""
    samples = into or HealthSamples()
    client = LineClient(socket)
    request = client.request_bytes("health")
    for _ in range(50):
        client.roundtrip(request)
    per_block = max(1, n // blocks)

    def measure(state: bool) -> None:
        target = samples.busy_ns if state else samples.idle_ns
        target.extend(timed(lambda: client.roundtrip(request)) for _ in range(per_block))

    busy = Busy(socket)
    try:
        in_states(block_states(blocks), busy, client, measure)
    finally:
        client.close()
    samples.jobs += busy.done
    samples.busy_s += busy.busy_s
    return samples


def block_states(count: int) -> list[bool]:
    """idle, busy, busy, idle, idle, busy, …: alternation that changes state only every second step."""
    return [((k + 1) // 2) % 2 == 1 for k in range(2 * count)]


# ---------------------------------------------------------------- the foreground workload

FOREGROUND = """
import sys, time
n = int(sys.argv[1])
print("ready", flush=True)
for _ in sys.stdin:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += i * i % 7
    print(time.perf_counter() - start, flush=True)
"""


class Foreground:
    """A CPU-bound single-threaded Python process, kept alive between runs (no start-up in the timing)."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.proc = subprocess.Popen([sys.executable, "-c", FOREGROUND, str(iterations)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def run(self) -> float:
        """One run of the fixed workload; its wall time in ms, as the process itself measured it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline()) * 1000

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@dataclass
class ForegroundSamples:
    """Wall times (ms) of the foreground workload, in pairs: npud idle, npud generating."""

    idle_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    jobs: int = 0
    busy_s: float = 0.0
    iterations: int = 0

    def summary(self) -> dict[str, Any]:
        return {"idle_ms_p50": Summary.of(self.idle_ms).p50, "busy_ms_p50": Summary.of(self.busy_ms).p50,
                "slowdown": ratio_spread(self.busy_ms, self.idle_ms), "pairs": len(self.busy_ms),
                "iterations": self.iterations, "npud_jobs_during": self.jobs,
                "npud_jobs_per_s": self.jobs / self.busy_s if self.busy_s else 0.0}


def foreground_slowdown(socket: str, pairs: int, foreground: Foreground,
                        into: ForegroundSamples | None = None) -> ForegroundSamples:
    """Wall time of the fixed workload while npud generates and while it is idle, in pairs."""
    samples = into or ForegroundSamples(iterations=foreground.iterations)
    health = LineClient(socket)
    busy = Busy(socket)
    try:
        in_states(block_states(pairs), busy, health,
                  lambda state: (samples.busy_ms if state else samples.idle_ms).append(foreground.run()))
    finally:
        health.close()
    samples.jobs += busy.done
    samples.busy_s += busy.busy_s
    return samples


def thread_priorities(daemon: DaemonProcess) -> dict[str, Any]:
    """Nice values of the threads that work during one generation (read while it runs)."""
    client = LineClient(daemon.socket)
    busy = Busy(daemon.socket, clients=1)
    try:
        before = thread_stats(daemon.proc.pid)
        with busy.running(client):
            # At least a second and two whole jobs: a lowered npud on a machine that other
            # processes keep busy may do little in one second, and its inference threads
            # would not count as working.
            start = time.monotonic()
            while time.monotonic() < start + 1.0 or (busy.done < 2 and time.monotonic() < start + 60):
                client.roundtrip(client.request_bytes("health"))  # keep the event loop honest too
            during = thread_stats(daemon.proc.pid)
    finally:
        client.close()
    return busy_thread_nice(daemon.proc.pid, before, during)


@dataclass
class VariantRun:
    variant: Variant
    daemon: DaemonProcess
    threads: dict[str, Any]
    health: HealthSamples = field(default_factory=HealthSamples)
    foreground: ForegroundSamples = field(default_factory=ForegroundSamples)

    def result(self) -> dict[str, Any]:
        return {"label": self.variant.label, "command": self.variant.command, "threads": self.threads,
                "health": self.health.summary(), "foreground": self.foreground.summary()}


def start_variant(variant: Variant, model: str, cache: Path, log: Callable[[str], None]) -> VariantRun:
    log(f"background: starting {variant.label} ({variant.command})…")
    daemon = DaemonProcess(["--device", "CPU", "--model", model, "--cache-dir", str(cache), *variant.flags],
                           prefix=variant.prefix)
    try:
        warm = LineClient(daemon.socket)
        warm.roundtrip(warm.request_bytes("generate", {"job": "title", "input": "warm up"}))
        warm.close()
        return VariantRun(variant, daemon, thread_priorities(daemon))
    except BaseException:
        daemon.stop()
        raise


def background(variants: Sequence[Variant], model: str, cache: Path, scale: float, iterations: int,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Every variant's daemon runs (idle) side by side; the measurements go round the variants in
    rounds, the order rotating each round, so that load from other processes, which comes and
    goes, falls on all of them alike instead of on whichever ran at the time."""
    rounds = max(2, int(5 * scale))
    health_per_round = max(40, int(500 * scale)) // rounds
    runs: list[VariantRun] = []
    foreground = Foreground(iterations)
    try:
        for variant in variants:
            runs.append(start_variant(variant, model, cache, log))
        foreground.run()  # warm-up
        for r in range(rounds):
            log(f"background: round {r + 1} of {rounds}…")
            for run in runs[r % len(runs):] + runs[:r % len(runs)]:
                health_busy_vs_idle(run.daemon.socket, health_per_round, blocks=4, into=run.health)
                run.foreground.iterations = iterations
                foreground_slowdown(run.daemon.socket, 2, foreground, into=run.foreground)
    finally:
        foreground.stop()
        for run in runs:
            run.daemon.stop()
    return {"variants": [run.result() for run in runs], "rounds": rounds}
