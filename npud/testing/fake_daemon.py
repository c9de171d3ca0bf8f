"""``python -m npud.testing.fake_daemon [npud flags]``: the real npud process with the fake engine.

For tests that need a real child process (signals, socket activation, sd_notify, idle exit)
without loading a model. Knobs, as environment variables:
  NPUD_FAKE_HANG_FILE=PATH   every generation blocks until PATH exists
  NPUD_FAKE_LOAD_FILE=PATH   the model load blocks until PATH exists
  NPUD_FAKE_CRASH=1          the first generation kills the worker thread (a worker bug)
  NPUD_FAKE_LOAD_FAILURES=N  the first N model loads fail with a transient NPU error (device lost)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from npud.cli import main
from npud.engine import ModelLoadError
from npud.testing.fake import FakeBehaviour, FakeLoader, WorkerBug

# What OpenVINO raises when the NPU was reset under it (a transient failure npud retries).
DEVICE_LOST = ("RuntimeError: Exception from src/plugins/intel_npu/src/utils/src/zero/zero_wrappers.cpp:182:\n"
               "L0 zeCommandQueueExecuteCommandLists result: ZE_RESULT_ERROR_DEVICE_LOST, code 0x70000001 - "
               "device hung, reset, was removed, or driver update occurred")


class FileGate:
    """An Event-like gate that opens when a file appears (set from another process)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.path.exists():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def set(self) -> None:
        self.path.touch()


def fake_loader(environ: dict[str, str]) -> FakeLoader:
    hang = environ.get("NPUD_FAKE_HANG_FILE")
    load = environ.get("NPUD_FAKE_LOAD_FILE")
    behaviour = FakeBehaviour(gate=FileGate(hang) if hang else None)  # type: ignore[arg-type]
    if environ.get("NPUD_FAKE_CRASH"):
        behaviour.crash_with = WorkerBug("injected worker crash")
    failures: list[BaseException] = [ModelLoadError(DEVICE_LOST)
                                     for _ in range(int(environ.get("NPUD_FAKE_LOAD_FAILURES", "0")))]
    return FakeLoader(behaviour, load_gate=FileGate(load) if load else None,  # type: ignore[arg-type]
                      load_failures=failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], loader=fake_loader(dict(os.environ))))
