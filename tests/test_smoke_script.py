"""contrib/smoke_llm_npu.sh runs in npud's environment or refuses; never in a Python without npud.
Every documented way to run the acceptance check leaves the working directory off sys.path."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "contrib" / "smoke_llm_npu.sh"
BIN = Path(sys.executable).parent
README = (REPO / "README.md").read_text()


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


def plant_npud(directory: Path) -> Path:
    """An npud/ package that proves it ran by creating a file; returns that file's path."""
    proof = directory.parent / f"{directory.name}-planted-code-ran"
    (directory / "npud").mkdir(parents=True)
    payload = f"open({str(proof)!r}, 'w').write('ran')\n"
    (directory / "npud" / "__init__.py").write_text(payload)
    (directory / "npud" / "smoke.py").write_text(payload)
    return proof


def test_the_system_acceptance_command_never_imports_npud_from_the_working_directory(tmp_path: Path) -> None:
    """README "Serving other users" and install-system-units.sh told the admin to run
    `sudo -u npud /opt/npud/bin/python -m npud.smoke ...`: `python -m` puts the working directory
    first on sys.path, so run from /tmp or a shared folder it ran another user's npud/ as npud.
    The documented command is the `npud-smoke` script (its own directory, not the working one, is
    on sys.path); README and installer name the same one, and it is run here from a directory
    holding a planted npud/."""
    documented = "sudo -u npud /opt/npud/bin/npud-smoke --env-file /etc/npud/npud.env"
    section = README[README.index("### Serving other users"):]
    assert documented in section[: section.index("\n## ", 1)]
    installer = (REPO / "contrib" / "install-system-units.sh").read_text()
    assert 'sudo -u npud $(dirname "$npud")/npud-smoke --env-file /etc/npud/npud.env' in installer
    proof = plant_npud(tmp_path / "shared")
    argv = shlex.split(documented.replace("sudo -u npud /opt/npud/bin/", f"{BIN}/"))
    argv[argv.index("/etc/npud/npud.env")] = "none"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    proc = subprocess.run([*argv, "--help"], cwd=tmp_path / "shared", env=env, capture_output=True, text=True,
                          timeout=120)
    assert not proof.exists(), "the documented command ran an npud/ planted in its working directory"
    assert proc.returncode == 0 and "usage: npud-smoke" in proc.stdout


def test_no_documented_command_runs_the_acceptance_check_with_python_m() -> None:
    """The same flaw anywhere a user copies a command from: README, CONTRACT, the installers'
    messages, the example env files and the units' comments."""
    places = [REPO / "README.md", REPO / "CONTRACT.md", *sorted((REPO / "contrib").iterdir()),
              *sorted((REPO / "systemd").rglob("*.*"))]
    found = [f"{place.relative_to(REPO)}: {line.strip()}" for place in places if place.is_file()
             for line in place.read_text().splitlines() if re.search(r"python3? -m npud\.smoke", line)]
    assert not found, found
