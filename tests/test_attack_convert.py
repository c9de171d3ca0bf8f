"""Attack review (issue 14 follow-up): the GGUF conversion child.

These tests fail on purpose until the findings are fixed; see the attack14 report.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from npud.engine import ModelLoadError, convert_gguf_to_ir

from .conftest import REPO, unique_socket


def test_converter_child_does_not_import_code_from_the_daemons_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security. The child runs ``python -m npud.convert`` in the daemon's cwd, and ``-m`` puts
    that cwd first on sys.path: whoever can write there (any user, in /tmp) plants ``npud/`` and
    runs code as the daemon's user when it converts a GGUF (the built-in model's first start)."""
    planted = tmp_path / "cwd" / "npud"
    planted.mkdir(parents=True)
    proof = tmp_path / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(proof)!r}, 'w').write('pwned')\n")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    monkeypatch.chdir(planted.parent)
    with pytest.raises(ModelLoadError):
        convert_gguf_to_ir(gguf, tmp_path / "ir")
    assert not proof.exists(), "the converter child imported npud from the daemon's working directory"


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (the worker does)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def _wait_for(condition: object, what: str, bound_s: float = 60.0) -> None:
    give_up = time.monotonic() + bound_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")


def test_an_interrupted_conversion_leaves_no_temporary_model_behind(tmp_path: Path) -> None:
    """SIGTERM while the built-in GGUF is being converted: the child exits (stdin EOF), but its
    ``<cache>/models/.convert-*`` folder (94 MB for SmolLM2: the IR and a link) is never removed,
    by it or by a later start, and it is outside the --cache-max-mb pruning."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "npud", "--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache),
         "--socket", unique_socket(), "--no-http", "--shutdown-timeout", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = cache / "models"
    try:
        _wait_for(lambda: models.is_dir() and any(p.name.startswith(".convert-") for p in models.iterdir()),
                  "the converter's temporary folder")
        _wait_for(lambda: _children(proc.pid), "the converter child")
        child = _children(proc.pid)[0]
        os.kill(child, signal.SIGSTOP)  # freeze it mid-conversion: no race with its completion
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        os.kill(child, signal.SIGCONT)  # it sees its parent gone and exits
        _wait_for(lambda: not Path(f"/proc/{child}").exists() or
                  Path(f"/proc/{child}/stat").read_text().split()[2] == "Z", "the converter to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [p.name for p in models.iterdir() if p.name.startswith(".convert-")]
    assert left == [], f"temporary conversion folders left in {models}: {left}"
