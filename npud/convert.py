"""``python -m npud.convert GGUF TARGET``: convert a GGUF model into an OpenVINO IR folder.

OpenVINO's GGUF reader trusts the file: a truncated or corrupt .gguf crashes the process
(SIGSEGV, SIGBUS) instead of raising. So the daemon never parses a GGUF itself; it runs this
module as a child (:func:`npud.engine.convert_gguf_to_ir`) and turns a crash into a model-load
error that health reports.

Exit status 0: ``TARGET`` holds the IR. 1: the conversion raised; the last stderr line starting
with ``npud.convert: `` says why. 2: bad arguments. The child also exits as soon as its parent
dies: its stdin is a pipe from the parent, and end of file there means nobody waits any more.

Its work folder (``<store>/.convert-*``, about the model's size) is removed however it ends: done,
failed, parent gone, or SIGTERM/SIGINT/SIGHUP (systemd stopping the unit signals the whole
cgroup). Only SIGKILL or a crash leave it, and the next load sweeps it
(:func:`npud.engine.sweep_stale_conversions`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .engine import CONVERT_ERROR_MARK, convert_gguf_in_this_process, conversion_workdir, ir_is_complete, \
    remove_workdir

# A message from OpenVINO can quote long internal paths; keep the one line we report readable.
MAX_MESSAGE_CHARS = 500
EXIT_PARENT_GONE = 3
# Signals that end the conversion; handled on a thread of ours (sigwait), because a Python
# handler would only run once OpenVINO's long C++ call returns to the interpreter.
EXIT_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def _exit_when_parent_dies(work: Path) -> None:
    """Watch stdin: at end of file the parent is gone, so clean up and stop converting at once."""

    def watch() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except OSError:
            pass
        remove_workdir(work)
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=watch, name="npud-convert-parent-watch", daemon=True).start()


def _exit_on_signal(work: Path) -> None:
    """Clean up and exit on EXIT_SIGNALS (blocked in every thread by :func:`main`, so they wait
    for this thread's sigwait)."""

    def wait() -> None:
        received = signal.sigwait(EXIT_SIGNALS)
        remove_workdir(work)
        os._exit(128 + int(received))

    threading.Thread(target=wait, name="npud-convert-signals", daemon=True).start()


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(f"{CONVERT_ERROR_MARK}usage: python -m npud.convert GGUF TARGET\n")
        return 2
    gguf, target = Path(argv[0]), Path(argv[1])
    if ir_is_complete(target):
        return 0
    # Before any thread exists (OpenVINO's included): they all inherit the blocked mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, EXIT_SIGNALS)
    try:
        work, _lock_fd = conversion_workdir(target.parent)  # flock'd until this process ends
    except OSError as exc:
        sys.stderr.write(f"{CONVERT_ERROR_MARK}cannot create a work folder in {target.parent}: {exc.strerror}\n")
        return 1
    _exit_when_parent_dies(work)
    _exit_on_signal(work)
    try:
        convert_gguf_in_this_process(gguf, target, work)
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:MAX_MESSAGE_CHARS]
        sys.stderr.write(f"{CONVERT_ERROR_MARK}{message}\n")
        return 1
    finally:
        remove_workdir(work)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
