"""The two distributions, built and installed as a user would: no editable installs, fresh venvs.

- ``npuclient`` (``npuclient/pyproject.toml``) installs alone with ``pip install ./npuclient`` (the
  README's line), pulls in msgspec only, and its ``npuctl`` talks to a running daemon.
- ``npud`` (``pyproject.toml``) is a wheel that depends on ``npuclient`` instead of carrying a copy;
  ``npud --help`` and ``python -m npud --version`` work from it.
Both carry the one version number of ``npuclient/_version.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from npuclient._version import __version__

from .conftest import REPO

pytestmark = pytest.mark.packaging

# The README's client-only install line; this test runs exactly it.
CLIENT_INSTALL = "pip install ./npuclient"
SOURCE_PARTS = ("pyproject.toml", "README.md", "npud", "npuclient")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info", ".mypy_cache")


def run(*cmd: str | Path, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def fresh_venv(path: Path) -> Path:
    run(sys.executable, "-m", "venv", path)
    return path / "bin"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's sources: building in place would leave build/ and egg-info behind."""
    root = tmp_path_factory.mktemp("source")
    for part in SOURCE_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, root / part, ignore=IGNORED)
        else:
            shutil.copy2(src, root / part)
    return root


@pytest.fixture(scope="module")
def wheels(source: Path) -> dict[str, Path]:
    dist = source / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, "./npuclient", ".", cwd=source)
    found = {path.name.split("-", 1)[0]: path for path in dist.glob("*.whl")}
    assert sorted(found) == ["npuclient", "npud"]
    return found


def wheel_files(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def test_one_version_for_both(wheels: dict[str, Path]) -> None:
    assert wheels["npuclient"].name.startswith(f"npuclient-{__version__}-")
    assert wheels["npud"].name.startswith(f"npud-{__version__}-")
    pin = [r for r in wheel_requirements(wheels["npud"]) if r.startswith("npuclient")]
    assert pin == [f"npuclient=={__version__}"]


def test_daemon_wheel_does_not_carry_a_copy_of_the_client(wheels: dict[str, Path]) -> None:
    daemon_files = wheel_files(wheels["npud"])
    assert not [name for name in daemon_files if name.startswith("npuclient/")]
    assert "npud/py.typed" in daemon_files
    client_files = wheel_files(wheels["npuclient"])
    assert "npuclient/py.typed" in client_files
    assert not [name for name in client_files if name.startswith("npud/")]
    assert wheel_requirements(wheels["npuclient"]) == ["msgspec>=0.19"]


def test_client_alone_has_no_openvino_and_talks_to_a_daemon(
    source: Path, tmp_path: Path, daemon_factory: Any
) -> None:
    readme = (REPO / "README.md").read_text()
    assert CLIENT_INSTALL in readme, "the README's client install line changed: update this test"
    bin_dir = fresh_venv(tmp_path / "client")
    pip, *args = CLIENT_INSTALL.split()
    assert pip == "pip"
    run(bin_dir / "pip", "--disable-pip-version-check", "-q", *args, "--no-compile", cwd=source)
    installed = run(bin_dir / "pip", "list", "--format=freeze").stdout
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    assert "npuclient" in names and "msgspec" in names
    assert not {name for name in names if name.startswith("openvino") or name == "npud"}
    # Not an editable install: the package lives in the venv, not in the checkout.
    where = run(bin_dir / "python", "-c", "import npuclient; print(npuclient.__file__)", cwd=tmp_path).stdout
    assert str(tmp_path / "client") in where
    daemon = daemon_factory()
    health = subprocess.run([str(bin_dir / "npuctl"), "--socket", daemon.socket, "health"],
                            capture_output=True, text=True, timeout=60)
    assert health.returncode == 0, health.stderr
    assert health.stdout.startswith("ready: fake-model on CPU")


def test_daemon_wheel_installs_and_starts(wheels: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = fresh_venv(tmp_path / "daemon")
    run(bin_dir / "pip", "--disable-pip-version-check", "-q", "install", "--no-compile",
        "--find-links", wheels["npud"].parent, f"npud=={__version__}")
    where = run(bin_dir / "python", "-c", "import npud, npuclient; print(npud.__file__, npuclient.__file__)",
                cwd=tmp_path).stdout
    assert where.count(str(tmp_path / "daemon")) == 2
    help_text = run(bin_dir / "npud", "--help").stdout
    assert "--device" in help_text and "OV_GENAI_NPU_DEVICE" in help_text
    version = run(bin_dir / "python", "-m", "npud", "--version", cwd=tmp_path).stdout
    assert re.fullmatch(rf"npud {re.escape(__version__)}\n", version)
    run(bin_dir / "python", "-c", "import openvino_genai", cwd=tmp_path)
