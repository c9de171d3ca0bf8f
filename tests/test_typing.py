"""``mypy --strict`` (configured in pyproject.toml) is clean on the daemon and the client."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_mypy_strict_is_clean(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path), "npud", "npuclient"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found")
