"""The README's Python examples import only what npuclient exports, and they run as printed
(against a fake daemon): a new user copying them must not trip over an ImportError."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest

import npuclient

from .conftest import REPO

README = (REPO / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# The prose of the "From Python" part, up to the next transport ("Over HTTP").
PYTHON_PROSE = README[README.index("**From Python**"):README.index("**Over HTTP**")]


def imported_from_npuclient(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "npuclient":
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.Import):
            assert all(a.name != "npuclient" or a.asname is None for a in node.names)
    return names


def test_readme_has_sync_and_async_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2
    assert "AsyncClient" in imported_from_npuclient("\n".join(PYTHON_BLOCKS))


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_example_imports_are_exported(index: int) -> None:
    names = imported_from_npuclient(PYTHON_BLOCKS[index])
    assert names, "every example imports from npuclient"
    missing = [n for n in names if n not in npuclient.__all__ or not hasattr(npuclient, n)]
    assert missing == []


def test_names_in_the_prose_are_exported() -> None:
    """`QueueFull.retry_after_ms`, `CallTimeout`, …: every class the text names, with its attribute."""
    mentioned = re.findall(r"`([A-Z][a-z]\w*)(?:\.(\w+))?[`/(]", PYTHON_PROSE)
    assert ("AsyncClient", "") in mentioned and ("ServerNotTrusted", "") in mentioned
    for name, attribute in mentioned:
        assert name in npuclient.__all__, name
        if attribute:
            assert hasattr(getattr(npuclient, name), attribute), f"{name}.{attribute}"


def test_examples_run_against_a_daemon(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    daemon = daemon_factory()
    monkeypatch.setenv("OV_GENAI_NPU_SOCKET", daemon.socket)  # the examples use the default socket
    for block in PYTHON_BLOCKS:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert out.startswith("ready\n")
    assert "A fake summary of the input." in out and "A fake condensed notification." in out
    assert out.rstrip().endswith("Fake Title About The Input")
