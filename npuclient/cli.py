"""``npuctl``: the five npud operations from the shell.

Exit codes (stable, documented in README):
  0  success
  1  other failure (internal error, protocol violation, timeout)
  2  invalid input (usage, invalid params or request, unknown --server-uid user)
  3  daemon unreachable (also: --wait never reached it), server not trusted, or this user not allowed
  4  busy, retry later (queue full, NPU lock held elsewhere, shutting down, deadline exceeded)
  5  generation failed (pipeline error, model failed to load)
  6  NPU execution not verified (busy counter delta <= 0)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import msgspec

from .client import DEFAULT_TIMEOUT_S, SOCKET_ENV, Client, default_socket
from .errors import (
    CallTimeout,
    DaemonUnavailable,
    DeadlineExceeded,
    DeviceBusy,
    GenerationFailed,
    InvalidParams,
    InvalidRequest,
    InvalidServerUid,
    MethodNotFound,
    NotReady,
    NotVerified,
    NpuClientError,
    ParseError,
    PeerNotAllowed,
    QueueFull,
    RpcError,
    ServerNotTrusted,
    ShuttingDown,
    TooManyRequests,
)
from .protocol import JOB_NAMES, MAX_TIMEOUT_MS, HealthResult, JobResult, ModelsResult
from .trust import SERVER_UID_ENV

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_BUSY = 4
EXIT_GENERATION_FAILED = 5
EXIT_NOT_VERIFIED = 6

WAIT_POLL_S = 0.2
# --timeout beyond a day is a typo (and past what a socket timeout can hold: OverflowError).
MAX_TIMEOUT_S = 86400.0


def seconds(text: str) -> float:
    """--timeout: a finite number of seconds in (0, MAX_TIMEOUT_S]; a usage error (exit 2)
    otherwise. 0 would make the socket non-blocking, -1 and nan crashed in settimeout."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_TIMEOUT_S:.0f} seconds, not {text}")
    return value


def bounded_int(low: int, high: int | None = None) -> Any:
    """An argparse type: an integer in [low, high] (exit 2 with a message otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse


def exit_code_for(exc: NpuClientError) -> int:
    if isinstance(exc, NotVerified):
        return EXIT_NOT_VERIFIED
    if isinstance(exc, (InvalidParams, InvalidRequest, ParseError, MethodNotFound, InvalidServerUid)):
        return EXIT_INVALID_INPUT
    if isinstance(exc, (DaemonUnavailable, PeerNotAllowed)):  # ServerNotTrusted is a DaemonUnavailable
        return EXIT_UNREACHABLE
    if isinstance(exc, NotReady):  # the model failed to load
        return EXIT_GENERATION_FAILED
    if isinstance(exc, (QueueFull, DeviceBusy, ShuttingDown, DeadlineExceeded, TooManyRequests)):
        return EXIT_BUSY
    if isinstance(exc, GenerationFailed):
        return EXIT_GENERATION_FAILED
    return EXIT_FAILURE


def add_global_options(parser: argparse.ArgumentParser, after_command: bool = False) -> None:
    """The options of every command. They are accepted before and after the command name: the
    copy on each subcommand defaults to SUPPRESS, so it only overrides what was actually given."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    parser.add_argument("--socket", default=default(None),
                        help=f"npud socket (default: ${SOCKET_ENV} or {default_socket({})})")
    parser.add_argument("--timeout", type=seconds, default=default(DEFAULT_TIMEOUT_S), metavar="SECONDS",
                        help="how long npuctl waits for each reply, and with --wait for the model "
                        f"(default {DEFAULT_TIMEOUT_S:.0f}); on expiry it disconnects and npud withdraws "
                        "the job. Not the job's deadline on the daemon: see --deadline-ms")
    parser.add_argument("--json", action="store_true", default=default(False), help="print the raw JSON result")
    parser.add_argument("--wait", action="store_true", default=default(False),
                        help="first wait (up to --timeout) until the model is ready")
    parser.add_argument("--server-uid", default=default(None), metavar="USER[,USER...]",
                        help="also trust a server running as these users (names or uids), e.g. npud's "
                        f"system service user (default: ${SERVER_UID_ENV}); your own uid and root are "
                        "always trusted, any other server is refused before anything is sent")


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="the text, or - to read standard input")
    parser.add_argument("--deadline-ms", type=bounded_int(1, MAX_TIMEOUT_MS), default=None, metavar="MS",
                        help=f"the job's deadline on the daemon (the contract's timeout_ms, 1..{MAX_TIMEOUT_MS}), "
                        "counted from receipt: when it passes npud withdraws or stops the job and answers "
                        "'deadline exceeded' (exit 4). Default: the job's own (30000 for title and "
                        "notification, 120000 for summary and memory candidates). Keep --timeout longer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npuctl",
        description="Talk to npud: health, models, and jobs (title, summary, notification, memory candidates). "
        "The options --socket, --timeout, --json, --wait and --server-uid go before or after the command.",
        epilog="Exit codes: 0 ok, 1 other failure, 2 invalid input, 3 daemon unreachable, server not trusted "
        "or user not allowed, 4 busy (retry later, or --deadline-ms passed), 5 generation failed, "
        "6 NPU execution not verified.",
    )
    add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("health", "daemon and model status"), ("models", "the loaded model, limits and jobs")):
        add_global_options(sub.add_parser(name, help=help_text), after_command=True)
    gen = sub.add_parser("generate", help="run a job")
    gen.add_argument("--job", required=True, choices=JOB_NAMES)
    add_job_options(gen)
    # The upper bound depends on the job: the daemon checks it (exit 2 with its limit).
    gen.add_argument("--max-new-tokens", type=bounded_int(1), default=None)
    add_global_options(gen, after_command=True)
    for name, help_text in (("extract-memory-candidates", "facts worth remembering, as a list"),
                            ("condense-notification", "a notification in one sentence")):
        cmd = sub.add_parser(name, help=help_text)
        add_job_options(cmd)
        add_global_options(cmd, after_command=True)
    return parser


def read_input(value: str, stdin: TextIO) -> str:
    return stdin.read() if value == "-" else value


def retry_scheduled(health: HealthResult) -> bool:
    """The load failed, and npud will try again by itself (a transient failure: the NPU lock held
    by another service after a reboot, a device that was busy or lost)."""
    return health.status == "error" and health.retry_in_s is not msgspec.UNSET


def failed_load(health: HealthResult, waited: float | None = None) -> NotReady:
    attempts = "" if health.load_attempts is msgspec.UNSET else f" (attempt {health.load_attempts})"
    error = "" if health.error is msgspec.UNSET else f": {health.error}"
    if waited is None:
        return NotReady(f"model failed to load{attempts}{error}", {"status": "error"})
    return NotReady(f"model failed to load{attempts}{error}; npud retries in {health.retry_in_s:g}s, "
                    f"after --timeout {waited:g}s", {"status": "error", "retry_in_s": health.retry_in_s})


def progress(health: HealthResult | None) -> str:
    if health is None:
        return "waiting for npud"
    if retry_scheduled(health):
        attempts = "" if health.load_attempts is msgspec.UNSET else f" (attempt {health.load_attempts})"
        return f"npud: model failed to load{attempts}, retrying in {health.retry_in_s:g}s"
    return f"npud: loading {health.model} on {health.device}"


def wait_until_ready(client: Client, timeout: float, stderr: TextIO,
                     clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll health until ready; show a progress line on a terminal, stay quiet otherwise.

    A failed load with a retry scheduled (health ``error`` with ``retry_in_s``) is waited out like
    a load: npud tries again by itself. Gives up after ``timeout`` with DaemonUnavailable (exit 3)
    if no daemon ever answered, with NotReady (exit 5) if the load had failed and its retry had not
    come yet, and with CallTimeout (exit 1) if the model was still loading; at once with NotReady
    for a load that failed for good. An untrusted server is refused at once: it will not turn
    into npud by waiting.
    """
    started = clock()
    show = stderr.isatty()
    unreachable: DaemonUnavailable | None = None
    reached = False
    while True:
        try:
            health: HealthResult | None = client.health(timeout=max(1.0, timeout))
            reached = True
        except ServerNotTrusted:
            raise
        except DaemonUnavailable as exc:
            health, unreachable = None, exc
        elapsed = clock() - started
        if health is not None and health.status == "ready":
            if show:
                stderr.write("\r\033[K")
            return
        if health is not None and health.status == "error" and not retry_scheduled(health):
            raise failed_load(health)
        if elapsed >= timeout:
            if show:
                stderr.write("\r\033[K")
            if not reached:
                raise DaemonUnavailable(f"npud did not answer within {timeout:g}s: {unreachable}")
            if health is not None and retry_scheduled(health):
                raise failed_load(health, timeout)
            raise CallTimeout(f"npud not ready after {timeout:.0f}s")
        if show:
            stderr.write(f"\r\033[K{progress(health)}… {elapsed:.0f}s")
            stderr.flush()
        sleep(WAIT_POLL_S)


def human(result: Any) -> str:
    if isinstance(result, JobResult):
        if result.candidates is not msgspec.UNSET:
            return "\n".join(f"- {c}" for c in result.candidates) if result.candidates else "(no candidates)"
        return result.text
    if isinstance(result, HealthResult):
        device = f"{result.device} (emulated on the CPU)" if result.emulated is True else result.device
        line = f"{result.status}: {result.model} on {device}, queue {result.queue.depth}/{result.queue.capacity}, "
        line += f"{result.jobs_served} served, {result.jobs_failed} failed, {result.jobs_cancelled} cancelled"
        if result.error is not msgspec.UNSET:
            line += f"\nerror: {result.error}"
        if retry_scheduled(result):
            line += f"\nretrying the load in {result.retry_in_s:g}s"
        return line
    if isinstance(result, ModelsResult):
        rows = []
        for model in result.models:
            device = f"{model.device} emulated on the CPU" if model.emulated is True else model.device
            rows.append(f"{model.id} ({device}, {model.status}) from {model.source}")
            rows += [f"  {job.name}: default {job.default_max_new_tokens}, max {job.max_new_tokens} new tokens"
                     for job in model.jobs]
        return "\n".join(rows)
    return str(result)


def run_command(args: argparse.Namespace, client: Client, stdin: TextIO) -> Any:
    if args.command == "health":
        return client.health()
    if args.command == "models":
        return client.models()
    text = read_input(args.input, stdin)
    if args.command == "generate":
        return client.generate(args.job, text, args.max_new_tokens, timeout_ms=args.deadline_ms)
    if args.command == "extract-memory-candidates":
        return client.extract_memory_candidates(text, timeout_ms=args.deadline_ms)
    return client.condense_notification(text, timeout_ms=args.deadline_ms)


def describe(exc: NpuClientError) -> str:
    if isinstance(exc, RpcError):
        extra = ""
        if isinstance(exc, QueueFull) and exc.retry_after_ms is not None:
            extra = f" (retry in {exc.retry_after_ms} ms)"
        return f"npuctl: {exc.message}{extra} [code {exc.code}]"
    return f"npuctl: {exc}"


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        with Client(args.socket, timeout=args.timeout, server_uids=args.server_uid) as client:
            if args.wait:
                wait_until_ready(client, args.timeout, stderr)
            result = run_command(args, client, stdin)
    except NpuClientError as exc:
        stderr.write(describe(exc) + "\n")
        return exit_code_for(exc)
    if args.json:
        stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        stdout.write(human(result) + "\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
