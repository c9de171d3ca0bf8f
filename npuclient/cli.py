"""``npuctl``: the five npud operations from the shell.

Exit codes (stable, documented in README):
  0  success
  1  other failure (internal error, protocol violation, timeout)
  2  invalid input (usage, invalid params or request)
  3  daemon unreachable or this user not allowed
  4  busy, retry later (queue full, NPU lock held elsewhere, shutting down, deadline exceeded)
  5  generation failed (pipeline error, model failed to load)
  6  NPU execution not verified (busy counter delta <= 0)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec

from .client import CallTimeout, Client, DaemonUnavailable, default_socket
from .errors import (
    DeadlineExceeded,
    DeviceBusy,
    GenerationFailed,
    InvalidParams,
    InvalidRequest,
    MethodNotFound,
    NotReady,
    NotVerified,
    NpuClientError,
    ParseError,
    PeerNotAllowed,
    QueueFull,
    RpcError,
    ShuttingDown,
    TooManyRequests,
)
from .protocol import JOB_NAMES, HealthResult, JobResult, ModelsResult

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID_INPUT = 2
EXIT_UNREACHABLE = 3
EXIT_BUSY = 4
EXIT_GENERATION_FAILED = 5
EXIT_NOT_VERIFIED = 6

WAIT_POLL_S = 0.2


def exit_code_for(exc: NpuClientError) -> int:
    if isinstance(exc, NotVerified):
        return EXIT_NOT_VERIFIED
    if isinstance(exc, (InvalidParams, InvalidRequest, ParseError, MethodNotFound)):
        return EXIT_INVALID_INPUT
    if isinstance(exc, (DaemonUnavailable, PeerNotAllowed)):
        return EXIT_UNREACHABLE
    if isinstance(exc, NotReady):  # the model failed to load
        return EXIT_GENERATION_FAILED
    if isinstance(exc, (QueueFull, DeviceBusy, ShuttingDown, DeadlineExceeded, TooManyRequests)):
        return EXIT_BUSY
    if isinstance(exc, GenerationFailed):
        return EXIT_GENERATION_FAILED
    return EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npuctl",
        description="Talk to npud: health, models, and jobs (title, summary, notification, memory candidates).",
        epilog="Exit codes: 0 ok, 1 other failure, 2 invalid input, 3 daemon unreachable or not allowed, "
        "4 busy (retry later), 5 generation failed, 6 NPU execution not verified.",
    )
    parser.add_argument("--socket", default=None, help=f"npud socket (default: $OV_GENAI_NPU_SOCKET or {default_socket({})})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a reply (default 120)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON result")
    parser.add_argument("--wait", action="store_true",
                        help="first wait (up to --timeout) until the model is ready")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", help="daemon and model status")
    sub.add_parser("models", help="the loaded model, limits and jobs")
    gen = sub.add_parser("generate", help="run a job")
    gen.add_argument("--job", required=True, choices=JOB_NAMES)
    gen.add_argument("--input", required=True, help="the text, or - to read standard input")
    gen.add_argument("--max-new-tokens", type=int, default=None)
    for name, help_text in (("extract-memory-candidates", "facts worth remembering, as a list"),
                            ("condense-notification", "a notification in one sentence")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--input", required=True, help="the text, or - to read standard input")
    return parser


def read_input(value: str, stdin: TextIO) -> str:
    return stdin.read() if value == "-" else value


def wait_until_ready(client: Client, timeout: float, stderr: TextIO) -> None:
    """Poll health until ready; show a progress line on a terminal, stay quiet otherwise."""
    started = time.monotonic()
    show = stderr.isatty()
    while True:
        try:
            health: HealthResult | None = client.health(timeout=max(1.0, timeout))
        except DaemonUnavailable:
            health = None
        elapsed = time.monotonic() - started
        if health is not None and health.status == "ready":
            if show:
                stderr.write("\r\033[K")
            return
        if health is not None and health.status == "error":
            raise NotReady(f"model failed to load: {health.error}", {"status": "error"})
        if elapsed >= timeout:
            raise CallTimeout(f"npud not ready after {timeout:.0f}s")
        if show:
            state = "waiting for npud" if health is None else f"npud: loading {health.model} on {health.device}"
            stderr.write(f"\r\033[K{state}… {elapsed:.0f}s")
            stderr.flush()
        time.sleep(WAIT_POLL_S)


def human(result: Any) -> str:
    if isinstance(result, JobResult):
        if result.candidates is not msgspec.UNSET:
            return "\n".join(f"- {c}" for c in result.candidates) if result.candidates else "(no candidates)"
        return result.text
    if isinstance(result, HealthResult):
        line = f"{result.status}: {result.model} on {result.device}, queue {result.queue.depth}/{result.queue.capacity}, "
        line += f"{result.jobs_served} served, {result.jobs_failed} failed"
        return line + (f"\nerror: {result.error}" if result.error is not msgspec.UNSET else "")
    if isinstance(result, ModelsResult):
        rows = []
        for model in result.models:
            rows.append(f"{model.id} ({model.device}, {model.status}) from {model.source}")
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
        return client.generate(args.job, text, args.max_new_tokens)
    if args.command == "extract-memory-candidates":
        return client.extract_memory_candidates(text)
    return client.condense_notification(text)


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
        with Client(args.socket, timeout=args.timeout) as client:
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
