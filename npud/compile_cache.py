"""A versioned, pruned compile cache.

NPU blobs compiled by one OpenVINO / NPU driver / compiler version are useless (or worse) to
another, and caches that are never pruned fill disks. So each configuration compiles into a
folder of its own under ``<cache>/compiled/``, named by a hash of everything the blob depends on,
with a ``manifest.json`` saying what that was; other folders are removed, oldest first, once the
total passes the size cap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("npud.cache")

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CacheKeySource:
    """Everything a compiled blob depends on."""

    openvino: str
    openvino_genai: str
    device: str
    npu_driver: str | None
    npu_compiler: str | None
    model_path: str
    model_files: dict[str, tuple[int, int]]  # name -> (size, mtime_ns) of the files that define the model
    properties: dict[str, Any]  # the device properties, CACHE_DIR excluded

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_files(path: Path) -> dict[str, tuple[int, int]]:
    """Size and mtime of the files that define a model (IR xml/bin, or the .gguf)."""
    if path.is_file():
        candidates = [path]
    else:
        candidates = sorted(p for p in path.glob("openvino_*") if p.suffix in (".xml", ".bin"))
    out = {}
    for file in candidates:
        info = file.stat()
        out[file.name] = (info.st_size, info.st_mtime_ns)
    return out


@dataclass(frozen=True)
class CacheEntry:
    key: str
    path: Path
    hit: bool  # blobs from an earlier load were present before this one


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def prepare(root: Path, source: CacheKeySource, max_bytes: int) -> CacheEntry:
    """The folder for this configuration (created, manifest written); prunes the others."""
    key = source.key()
    folder = root / key
    hit = folder.is_dir() and any(p.name != MANIFEST for p in folder.iterdir())
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **asdict(source)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.utime(folder)  # most recently used
    prune(root, keep=key, max_bytes=max_bytes)
    return CacheEntry(key=key, path=folder, hit=hit)


def prune(root: Path, keep: str, max_bytes: int) -> list[str]:
    """Remove other keys' folders, least recently used first, until the total fits ``max_bytes``."""
    try:
        folders = [p for p in root.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    sizes = {p: _size(p) for p in folders}
    total = sum(sizes.values())
    removed = []
    for folder in sorted((p for p in folders if p.name != keep), key=lambda p: p.stat().st_mtime):
        if total <= max_bytes:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]
        removed.append(folder.name)
        log.info("pruned compile cache %s (%d bytes)", folder.name, sizes[folder])
    return removed
