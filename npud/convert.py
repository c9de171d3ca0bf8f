"""``python -m npud.convert GGUF TARGET``: convert a GGUF model into an OpenVINO IR folder.

OpenVINO's GGUF reader trusts the file: a truncated or corrupt .gguf crashes the process
(SIGSEGV, SIGBUS) instead of raising. So the daemon never parses a GGUF itself; it runs this
module as a child (:func:`npud.engine.convert_gguf_to_ir`) and turns a crash into a model-load
error that health reports.

Exit status 0: ``TARGET`` holds the IR. 1: the conversion raised; the last stderr line starting
with ``npud.convert: `` says why. 2: bad arguments. The child also exits as soon as its parent
dies: its stdin is a pipe from the parent, and end of file there means nobody waits any more.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .engine import CONVERT_ERROR_MARK, convert_gguf_in_this_process

# A message from OpenVINO can quote long internal paths; keep the one line we report readable.
MAX_MESSAGE_CHARS = 500


def _exit_when_parent_dies() -> None:
    """Watch stdin: at end of file the parent is gone, so stop converting (and writing) at once."""

    def watch() -> None:
        try:
            while os.read(sys.stdin.fileno(), 4096):
                pass
        except OSError:
            pass
        os._exit(3)

    threading.Thread(target=watch, name="npud-convert-parent-watch", daemon=True).start()


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write(f"{CONVERT_ERROR_MARK}usage: python -m npud.convert GGUF TARGET\n")
        return 2
    _exit_when_parent_dies()
    try:
        convert_gguf_in_this_process(Path(argv[0]), Path(argv[1]))
    except Exception as exc:
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:MAX_MESSAGE_CHARS]
        sys.stderr.write(f"{CONVERT_ERROR_MARK}{message}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
