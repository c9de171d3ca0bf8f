"""``python -m npud.smoke``: the acceptance check for NPU owners (no daemon needed).

Takes the same flags and OV_GENAI_NPU_* variables as npud. It finds the NPU (or says why not),
prints driver and compiler versions, loads the configured model twice with the NPU properties
(the second load should hit the compile cache), runs one ``title`` job with the busy counter read
around it, and checks that an over-long prompt is refused before the device. Output: a pass/fail
table on stderr and one JSON object on stdout; the exit status is 1 if any check failed. With
``--device CPU`` the same steps run and the NPU-only checks are marked skipped. With
``--npu-emulation`` the NPU pipeline runs on the CPU: the hardware rows (device node, driver) are
skipped, everything else runs, and the output says ``emulated`` plainly.
"""

from __future__ import annotations

import grp
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npuclient.errors import InvalidParams

from .busy import BusyCounter, BusyCounterError, discover_busy_file, verify_delta
from .config import ConfigError, Config, load_config
from .engine import DecodeSettings, Engine, EngineLoader, ModelLoadError, OpenVinoLoader, StartupError, available_devices
from .jobs import JOBS
from .worker import check_prompt_budget

SAMPLE = ("Our team spent the sprint replacing the flaky integration tests of the billing service with "
          "contract tests, which cut the CI time from 40 to 12 minutes.")
OVER_BUDGET = "Long text for the prompt budget check. " * 400


@dataclass
class Report:
    checks: list[tuple[str, str, str]] = field(default_factory=list)  # (check, PASS|FAIL|SKIP, detail)

    def add(self, name: str, ok: bool | None, detail: str = "") -> bool:
        self.checks.append((name, "SKIP" if ok is None else "PASS" if ok else "FAIL", detail))
        return bool(ok)

    @property
    def failed(self) -> bool:
        return any(status == "FAIL" for _, status, _ in self.checks)

    def table(self) -> str:
        width = max(len(name) for name, _, _ in self.checks)
        return "\n".join(f"{status:4}  {name.ljust(width)}  {detail}" for name, status, detail in self.checks)


EMULATED = "emulated: no NPU hardware"


def check_device_node(report: Report, dev_accel: Path, npu: bool, emulated: bool = False) -> None:
    if not npu or emulated:
        report.add("device node /dev/accel", None, EMULATED if emulated else "not the NPU")
        report.add("permissions", None, EMULATED if emulated else "not the NPU")
        return
    nodes = sorted(dev_accel.glob("accel*")) if dev_accel.is_dir() else []
    if not report.add("device node /dev/accel", bool(nodes), ", ".join(map(str, nodes)) or
                      f"no {dev_accel}/accel*: is the intel_vpu driver loaded (modprobe intel_vpu)?"):
        report.add("permissions", False, "no device node")
        return
    usable = [n for n in nodes if os.access(n, os.R_OK | os.W_OK)]
    groups = {grp.getgrgid(g).gr_name for g in os.getgroups() if _group_exists(g)}
    detail = "read/write ok" if usable else (
        "no read/write access: add your user to the 'render' group" + ("" if "render" in groups else
                                                                       " (you are not in it)"))
    report.add("permissions", bool(usable), detail)


def _group_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
        return True
    except KeyError:
        return False


def load_timed(loader: EngineLoader, config: Config) -> tuple[Engine, float]:
    start = time.perf_counter()
    engine = loader.load(config)
    return engine, (time.perf_counter() - start) * 1000


def run(config: Config, loader: EngineLoader, devices: Sequence[str], dev_accel: Path = Path("/dev/accel")) -> tuple[Report, dict[str, Any]]:
    report = Report()
    npu = config.is_npu
    started = time.perf_counter()
    out: dict[str, Any] = {"device": config.device, "model": config.model}
    emulated = config.npu_emulation
    if emulated:
        out["emulated"] = True
    check_device_node(report, dev_accel, npu, emulated)
    busy_path = (Path(config.busy_file) if config.busy_file else discover_busy_file(config.sysfs_root)) if npu else None
    report.add("intel_vpu driver (sysfs)", bool(busy_path) if npu else None,
               str(busy_path.parent) if busy_path else ("no intel_vpu device under "
                                                        f"{config.sysfs_root}/class/accel" if npu else "not the NPU"))
    if emulated:
        if not report.add("NPU plugin (emulated on the CPU)", *_emulation_preflight(loader, config)):
            return report, out
    elif not report.add(f"OpenVINO lists {config.device}", config.device.upper() in devices,
                        f"available: {', '.join(devices) or 'none'}"):
        return report, out
    counter = BusyCounter(busy_path) if busy_path else None
    readable = None
    if npu:
        try:
            readable = counter is not None and counter.read() >= 0
        except BusyCounterError:
            readable = False
    report.add("busy counter readable", readable if npu else None,
               str(busy_path) if busy_path else ("needs Linux 6.11+ intel_vpu" if npu else "not the NPU"))
    try:
        _, first_ms = load_timed(loader, config)  # compiles (or finds a blob from an earlier run)
        engine, second_ms = load_timed(loader, config)  # must find this run's blob
    except (ModelLoadError, StartupError) as exc:
        report.add("model load", False, str(exc))
        return report, out
    info = engine.device_info
    report.add("model load", True, f"{first_ms:.0f} ms, then {second_ms:.0f} ms")
    report.add("driver / compiler version", None if not npu or emulated else bool(info.npu_driver_version),
               EMULATED if emulated else
               f"driver {info.npu_driver_version}, compiler {info.npu_compiler_version}" if npu else "not the NPU")
    cache = info.compile_cache
    hit = cache is not None and cache.hit
    # Emulated load times are the CPU's, not the NPU compiler's: the hit is the check there.
    faster = second_ms < first_ms or emulated
    report.add("compile cache hit on second load", (hit and faster) if npu else None,
               f"key {cache.key if cache else '-'}, {'hit' if hit else 'miss'}, load {first_ms:.0f} → {second_ms:.0f} ms"
               + ("" if npu else " (the CPU does not use the cache to speed up loads)"))
    spec = JOBS["title"]
    prompt, prompt_tokens = engine.render_prompt(spec.messages(SAMPLE))
    if prompt_tokens > config.max_prompt_tokens:  # the device would refuse it: say why, do not crash
        report.add("title job", False, f"the sample prompt is {prompt_tokens} tokens, over --max-prompt-len "
                                       f"{config.max_prompt_tokens}")
        return report, out
    before = counter.read() if counter and readable else None
    gen_start = time.perf_counter()
    generation = engine.generate(prompt, DecodeSettings.for_job(spec, spec.default_max_new_tokens), lambda: False)
    generate_ms = (time.perf_counter() - gen_start) * 1000
    after = counter.read() if counter and readable else None
    text = spec.postprocess(generation.text).text
    report.add("title job", bool(text), f"{generation.generated_tokens} tokens in {generate_ms:.0f} ms: {text!r}")
    delta, reason = verify_delta(before, after)
    report.add("NPU busy delta > 0", (reason is None) if npu else None,
               f"{delta} µs" + (f" ({reason})" if reason else "") if npu else "not the NPU")
    _, over = engine.render_prompt(spec.messages(OVER_BUDGET))
    try:
        check_prompt_budget(over, config.max_prompt_tokens)
        refused = False
    except InvalidParams:
        refused = True
    report.add("prompt limit enforced before the device", refused,
               f"{over} tokens vs MAX_PROMPT_LEN {config.max_prompt_tokens}")
    out.update({
        "text": text,
        "timing_ms": {"load": round(first_ms, 1), "generate": round(generate_ms, 1),
                      "total": round((time.perf_counter() - started) * 1000, 1)},
        "npu_busy_delta_us": delta if npu else None,
        "tokens": {"prompt": prompt_tokens, "generated": generation.generated_tokens},
        "driver_version": info.npu_driver_version,
        "compiler_version": info.npu_compiler_version,
        "compile_cache": {"key": cache.key, "hit": cache.hit} if cache else None,
    })
    return report, out


def _emulation_preflight(loader: EngineLoader, config: Config) -> tuple[bool, str]:
    """The daemon's own startup check in emulation: the NPU plugin must answer."""
    try:
        loader.preflight(config)
    except StartupError as exc:
        return False, str(exc)
    return True, f"{EMULATED}: the NPU plugin's pipeline computes on the CPU (NPUW_DEVICES=CPU)"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"npud.smoke: {exc}\n")
        return 2
    try:
        devices = available_devices()
    except RuntimeError as exc:
        devices = []
        sys.stderr.write(f"npud.smoke: OpenVINO could not list devices: {exc}\n")
    report, out = run(config, OpenVinoLoader(), devices)
    out["checks"] = [{"check": name, "status": status, "detail": detail} for name, status, detail in report.checks]
    out["ok"] = not report.failed
    if config.npu_emulation:
        sys.stderr.write("NPU emulated on the CPU (--npu-emulation): the NPU code path for real, "
                         "but no NPU hardware, driver, compiler or timings\n")
    sys.stderr.write(report.table() + "\n")
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
