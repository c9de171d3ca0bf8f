"""The GGUF converter child (``python -m npud.convert``): what it imports, and what it leaves on
disk however it ends."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from npud.engine import (
    CONVERT_WORK_PREFIX,
    STALE_CONVERSION_S,
    ModelLoadError,
    builtin_smollm2_gguf,
    conversion_failure,
    convert_gguf_to_ir,
    resolve_model_path,
    sweep_stale_conversions,
)

from .conftest import REPO, make_config, unique_socket


def _wait_for(condition: Callable[[], object], what: str, bound_s: float = 60.0) -> None:
    """Poll a condition that has no event to wait on (another process's files); bounded."""
    give_up = time.monotonic() + bound_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _work_folders(store: Path) -> list[str]:
    return [p.name for p in store.iterdir() if p.name.startswith(CONVERT_WORK_PREFIX)] if store.is_dir() else []


# ---------------------------------------------------------------- what the child imports


def test_converter_child_does_not_import_code_from_the_daemons_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security. ``python -m`` puts the working directory first on sys.path: whoever can write
    there (any user, in /tmp) could plant ``npud/`` and run code as the daemon's user when it
    converts a GGUF (the built-in model's first start). The child runs in / with -P."""
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


@pytest.mark.realmodel
def test_relative_model_and_cache_paths_still_convert(tiny_gguf: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The child runs in / (above), so relative paths are made absolute before it starts."""
    (tmp_path / "tiny.gguf").symlink_to(tiny_gguf)
    monkeypatch.chdir(tmp_path)
    ir = convert_gguf_to_ir(Path("tiny.gguf"), Path("store") / "tiny")
    assert (tmp_path / "store" / "tiny" / "openvino_model.xml").is_file() and not ir.is_absolute()
    assert _work_folders(tmp_path / "store") == []


# ---------------------------------------------------------------- what it leaves on disk


def _children(pid: int) -> list[int]:
    """Child processes of ``pid``, whichever of its threads started them (the worker does)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass
    return found


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.realmodel
def test_an_interrupted_conversion_leaves_no_temporary_model_behind(tmp_path: Path) -> None:
    """SIGTERM to npud while the built-in GGUF is being converted: the child exits (stdin EOF)
    and removes its ``<cache>/models/.convert-*`` folder (94 MB for SmolLM2), which used to stay
    forever, outside the --cache-max-mb pruning."""
    cache = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-m", "npud", "--device", "CPU", "--model", "smollm2-135m", "--cache-dir", str(cache),
         "--socket", unique_socket(), "--no-http", "--shutdown-timeout", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    models = cache / "models"
    try:
        _wait_for(lambda: _work_folders(models), "the converter's temporary folder")
        _wait_for(lambda: _children(proc.pid), "the converter child")
        child = _children(proc.pid)[0]
        os.kill(child, signal.SIGSTOP)  # freeze it mid-conversion: no race with its completion
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        os.kill(child, signal.SIGCONT)  # it sees its parent gone and exits
        _wait_for(lambda: _gone(child), "the converter to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _work_folders(models) == [], f"temporary conversion folders left in {models}"


@pytest.mark.realmodel
def test_a_converter_stopped_by_sigterm_removes_its_folder_and_says_so(tmp_path: Path) -> None:
    """systemd stopping the unit signals the whole cgroup, the converter included: it removes its
    folder and exits 128+SIGTERM, which the daemon reports as an interruption, not a bad file."""
    target = tmp_path / "models" / "smollm2"
    child = subprocess.Popen([sys.executable, "-m", "npud.convert", str(builtin_smollm2_gguf()), str(target)],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _work_folders(target.parent), "the converter's temporary folder")
        child.send_signal(signal.SIGTERM)
        status = child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdin, child.stderr):
            if pipe is not None:
                pipe.close()
    assert status == 128 + signal.SIGTERM
    assert _work_folders(target.parent) == [] and not target.exists()
    message = conversion_failure(Path("m.gguf"), status, "")
    assert "interrupted by SIGTERM" in message and "corrupt" not in message


@pytest.mark.parametrize("status", [-signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGINT])
def test_a_stopped_converter_is_not_blamed_on_the_file(status: int) -> None:
    message = conversion_failure(Path("/m/model.gguf"), status, "")
    assert message.startswith("converting /m/model.gguf to OpenVINO IR was interrupted by SIG")
    assert "corrupt" not in message


def test_stale_conversion_folders_are_swept_but_never_a_live_ones(tmp_path: Path) -> None:
    """A converter killed outright (SIGKILL, a crash) cannot clean up: the next load sweeps its
    folder. A folder whose flock is held (a live converter, also another daemon's converting the
    same model) and a folder just created (before its converter took the lock) are left alone;
    a link is never followed out of the store."""
    store = tmp_path / "models"
    store.mkdir()
    old = time.time() - STALE_CONVERSION_S - 10

    def folder(name: str, age: float | None = old) -> Path:
        path = store / f"{CONVERT_WORK_PREFIX}{name}"
        (path / "ir").mkdir(parents=True)
        (path / "ir" / "openvino_model.bin").write_bytes(b"x" * 1000)
        if age is not None:
            os.utime(path, (age, age))
        return path

    dead, live, fresh = folder("dead"), folder("live"), folder("fresh", age=None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / f"{CONVERT_WORK_PREFIX}link").symlink_to(outside)
    (store / "smollm2-0123").mkdir()  # a converted model: not a work folder
    holder = os.open(live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # what a running converter holds
        assert sweep_stale_conversions(store) == [dead.name]
    finally:
        os.close(holder)
    assert not dead.exists() and live.exists() and fresh.exists() and outside.is_dir()
    assert (store / "smollm2-0123").is_dir()
    assert sweep_stale_conversions(store) == [live.name]  # its converter is gone now
    assert sweep_stale_conversions(store, now=time.time() + STALE_CONVERSION_S + 1) == [fresh.name]


def test_every_model_load_sweeps_the_store(tmp_path: Path) -> None:
    """The sweep runs whatever the model (an IR folder too): a folder left by an earlier GGUF
    configuration is not kept forever because the model changed since."""
    config = make_config(tmp_path, model=str(tmp_path / "some-ir-folder"))
    dead = config.model_store_dir / f"{CONVERT_WORK_PREFIX}dead"
    dead.mkdir(parents=True)
    os.utime(dead, (0, 0))
    assert resolve_model_path(config) == tmp_path / "some-ir-folder"
    assert not dead.exists()
