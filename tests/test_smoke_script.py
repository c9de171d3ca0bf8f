"""contrib/smoke_llm_npu.sh runs in npud's environment or refuses; never in a Python without npud."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "contrib" / "smoke_llm_npu.sh"


def run_script(venv: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NPUD_VENV": str(venv)}
    return subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, env=env, timeout=60,
                          cwd=cwd)


def test_refuses_an_environment_without_python(tmp_path: Path) -> None:
    proc = run_script(tmp_path)  # an empty directory: no bin/python at all
    assert proc.returncode == 2 and proc.stdout == ""
    assert f"no Python environment with npud in {tmp_path}" in proc.stderr
    assert "contrib/bootstrap.sh" in proc.stderr and "NPUD_VENV" in proc.stderr


def test_refuses_a_python_without_npud(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\n# a Python in which `import npud` fails\nexit 1\n")
    python.chmod(0o755)
    proc = run_script(tmp_path)
    assert proc.returncode == 2 and "contrib/bootstrap.sh" in proc.stderr


def test_runs_the_smoke_check_in_npuds_environment() -> None:
    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite does not run from a virtual environment")
    proc = run_script(Path(sys.prefix))  # the environment running this suite has npud
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_does_not_import_npud_from_the_working_directory(tmp_path: Path) -> None:
    """Security: run from a directory another user can write (/tmp), `python -m npud.smoke` would
    import their planted npud/ first."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the suite does not run from a virtual environment")
    planted = tmp_path / "npud"
    planted.mkdir()
    proof = tmp_path / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(proof)!r}, 'w').write('pwned')\n")
    proc = run_script(Path(sys.prefix), cwd=tmp_path)
    assert not proof.exists(), "the smoke script imported npud from its working directory"
    assert proc.returncode == 0 and "usage:" in proc.stdout
