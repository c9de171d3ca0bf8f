"""The NPU owners' acceptance command: for real on the CPU, and in NPU mode on the stand-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npud.config import load_config
from npud.smoke import run
from npud.testing.npu import npu_loader
from npud.testing.sysfs import make_npu_sysfs

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


def test_smoke_in_npu_mode_on_the_stand_in(tiny_gguf: Path, tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path / "sys")
    dev = tmp_path / "dev" / "accel"
    dev.mkdir(parents=True)
    (dev / "accel0").touch()
    config = load_config(["--device", "NPU", "--model", str(tiny_gguf), "--cache-dir", str(tmp_path / "cache"),
                          "--sysfs-root", str(tmp_path / "sys")], {"HOME": str(tmp_path)})
    report, out = run(config, npu_loader(busy, compile_s=0.3), ["CPU", "NPU"], dev_accel=dev)
    status = {name: state for name, state, _ in report.checks}
    assert not report.failed, report.table()
    assert all(state == "PASS" for state in status.values()), report.table()
    assert out["npu_busy_delta_us"] > 0 and out["compiler_version"] == "7.21"
    assert out["compile_cache"]["hit"] is True


def test_smoke_fails_clearly_without_an_npu(tiny_gguf: Path, tmp_path: Path) -> None:
    config = load_config(["--device", "NPU", "--model", str(tiny_gguf), "--sysfs-root", str(tmp_path / "nothing")],
                         {"HOME": str(tmp_path)})
    report, _ = run(config, npu_loader(None), ["CPU"], dev_accel=tmp_path / "no-dev")
    rows = {name: (state, detail) for name, state, detail in report.checks}
    assert report.failed
    assert rows["device node /dev/accel"][0] == "FAIL" and "modprobe intel_vpu" in rows["device node /dev/accel"][1]
    assert rows["intel_vpu driver (sysfs)"][0] == "FAIL"
    assert rows["OpenVINO lists NPU"] == ("FAIL", "available: CPU")


def test_smoke_npu_silent_fallback_fails(tiny_gguf: Path, tmp_path: Path) -> None:
    busy = make_npu_sysfs(tmp_path / "sys")
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "accel0").touch()
    config = load_config(["--device", "NPU", "--model", str(tiny_gguf), "--cache-dir", str(tmp_path / "cache"),
                          "--sysfs-root", str(tmp_path / "sys")], {"HOME": str(tmp_path)})
    report, out = run(config, npu_loader(busy, advance_busy=False, compile_s=0.3), ["CPU", "NPU"], dev_accel=dev)
    rows = {name: (state, detail) for name, state, detail in report.checks}
    assert rows["NPU busy delta > 0"] == ("FAIL", "0 µs (no_growth)") and report.failed
