"""The committed NPU test models are exactly what tests/models/build_npu_models.py produces.

The folders are build output: they are never edited by hand. Every file must match the checksum
manifest, and nothing unlisted may sit beside them (a stray file could change what OpenVINO
GenAI loads, e.g. a tokenizer_config.json it would read instead of the IR's chat template).
Regenerating them is a one-off described in tests/models/README.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

MODELS = Path(__file__).resolve().parent / "models"
MANIFEST = MODELS / "SHA256SUMS"
# Files of tests/models/ itself; every folder there must be a model listed in the manifest.
OWN_FILES = {"README.md", "SHA256SUMS", "build_npu_models.py", "requirements-export.txt"}


def manifest() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        digest, name = line.split("  ", 1)
        entries[name] = digest
    return entries


def build_script() -> ModuleType:
    # Importing it needs no torch: heavy imports happen inside its functions.
    spec = importlib.util.spec_from_file_location("build_npu_models", MODELS / "build_npu_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's string annotations through sys.modules.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("name", sorted(manifest()))
def test_file_matches_manifest(name: str) -> None:
    path = MODELS / name
    assert path.is_file(), f"{name} is listed in SHA256SUMS but missing"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest()[name], (
        f"{name} differs from SHA256SUMS: regenerate with tests/models/build_npu_models.py, never edit by hand"
    )


def test_no_unlisted_files() -> None:
    listed = set(manifest())
    folders = {name.split("/", 1)[0] for name in listed}
    present = {
        str(path.relative_to(MODELS))
        for folder in folders
        for path in (MODELS / folder).rglob("*")
        if not path.is_dir()
    }
    assert present - listed == set(), "files not in SHA256SUMS"
    others = {
        path.name
        for path in MODELS.iterdir()
        if path.name not in OWN_FILES and path.name not in folders and path.name != "__pycache__"
    }
    assert others == set(), "unexpected entries in tests/models/"


def test_manifest_covers_every_model_the_script_builds() -> None:
    script = build_script()
    expected = {f"{spec.name}/{name}" for spec in script.SPECS for name in script.KEEP}
    assert set(manifest()) == expected
    # Two models that differ in every dimension, so nothing is tuned to one fixture.
    first, second = script.SPECS
    for field in ("hidden", "heads", "model_vocab", "bpe_vocab", "seed"):
        assert getattr(first, field) != getattr(second, field), field
    for spec in script.SPECS:
        assert spec.heads > spec.kv_heads, "grouped-query attention, like the production model"
