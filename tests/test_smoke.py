"""The NPU owners' acceptance command: for real on the CPU, and on the emulated NPU (the NPU
pipeline computing on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npud.config import load_config
from npud.engine import OpenVinoLoader
from npud.smoke import run
from npud.testing.sysfs import AdvancingBusyCounter

from .emulated import LONGER_PROMPTS, MODELS, RESPONSE_LEN, Prompts, model_dir, npu_cache  # noqa: F401 (a fixture)

pytestmark = pytest.mark.realmodel


def test_smoke_on_cpu_runs_every_step_and_skips_npu_ones(tiny_gguf: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "npud.smoke", "--device", "CPU", "--model", str(tiny_gguf),
                           "--cache-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["device"] == "CPU" and out["npu_busy_delta_us"] is None
    assert set(out["timing_ms"]) == {"load", "generate", "total"} and out["timing_ms"]["load"] > 0
    status = {c["check"]: c["status"] for c in out["checks"]}
    assert status["OpenVINO lists CPU"] == "PASS" and status["title job"] == "PASS"
    assert status["prompt limit enforced before the device"] == "PASS"
    for npu_only in ("device node /dev/accel", "permissions", "busy counter readable", "NPU busy delta > 0",
                     "compile cache hit on second load"):
        assert status[npu_only] == "SKIP"
    assert "PASS  title job" in proc.stderr  # the human-readable table


def emulated_smoke_args(model: str, busy: Path, cache: Path) -> list[str]:
    budget = Prompts(model).budget() + LONGER_PROMPTS  # the smoke's sample text is longer than the short input
    return ["--device", "NPU", "--npu-emulation", "--model", str(model_dir(model)), "--busy-file", str(busy),
            "--cache-dir", str(cache), "--max-prompt-len", str(budget), "--min-response-len", str(RESPONSE_LEN)]


def test_smoke_passes_on_the_emulated_npu_and_says_so(tmp_path: Path, npu_cache: Path) -> None:
    """The acceptance command through the real NPU pipeline (computing on the CPU), with a
    synthetic busy counter that advances at every read."""
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
        proc = subprocess.run([sys.executable, "-m", "npud.smoke",
                               *emulated_smoke_args(MODELS[0], busy.path, npu_cache)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["emulated"] is True and out["device"] == "NPU"
    assert out["npu_busy_delta_us"] == busy.step and out["compile_cache"]["hit"] is True
    assert out["driver_version"] is None and out["compiler_version"] is None
    status = {c["check"]: c["status"] for c in out["checks"]}
    assert status == {
        "device node /dev/accel": "SKIP", "permissions": "SKIP", "intel_vpu driver (sysfs)": "PASS",
        "NPU plugin (emulated on the CPU)": "PASS", "busy counter readable": "PASS", "model load": "PASS",
        "driver / compiler version": "SKIP", "compile cache hit on second load": "PASS", "title job": "PASS",
        "NPU busy delta > 0": "PASS", "prompt limit enforced before the device": "PASS",
    }
    assert "NPU emulated on the CPU (--npu-emulation): " in proc.stderr  # before the table


def test_smoke_fails_clearly_without_an_npu(tiny_gguf: Path, tmp_path: Path) -> None:
    config = load_config(["--device", "NPU", "--model", str(tiny_gguf), "--sysfs-root", str(tmp_path / "nothing")],
                         {"HOME": str(tmp_path)})
    report, _ = run(config, OpenVinoLoader(), ["CPU"], dev_accel=tmp_path / "no-dev")
    rows = {name: (state, detail) for name, state, detail in report.checks}
    assert report.failed
    assert rows["device node /dev/accel"][0] == "FAIL" and "modprobe intel_vpu" in rows["device node /dev/accel"][1]
    assert rows["intel_vpu driver (sysfs)"][0] == "FAIL"
    assert rows["OpenVINO lists NPU"] == ("FAIL", "available: CPU")
    assert "model load" not in rows  # nothing was loaded


def test_smoke_fails_when_the_busy_counter_does_not_grow(tmp_path: Path, npu_cache: Path) -> None:
    model = MODELS[1]
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys", step=0) as busy:
        config = load_config(emulated_smoke_args(model, busy.path, npu_cache), {"HOME": str(tmp_path)})
        report, out = run(config, OpenVinoLoader(), ["CPU"], dev_accel=tmp_path / "no-dev")
    rows = {name: (state, detail) for name, state, detail in report.checks}
    assert rows["NPU busy delta > 0"] == ("FAIL", "0 µs (no_growth)") and report.failed
    assert rows["title job"][0] == "PASS" and out["emulated"] is True
