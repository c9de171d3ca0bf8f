"""``npud-smoke`` (``python -m npud.smoke``): the acceptance check for NPU owners (no daemon needed).

It checks, and warms the compile cache for, the configuration the service will run: it reads the
service's environment file first (``--env-file``, default ``~/.config/npud/npud.env``, the one the
user units read; ``/etc/npud/npud.env`` for the system units), then the same flags and
``OV_GENAI_NPU_*`` variables as npud. It finds the NPU (or says exactly what is missing: the
device node, access to it, the intel_vpu driver, the user-space driver, the busy counter), loads
the configured model twice with the NPU properties (the second load should hit the compile
cache), runs one ``title`` job with the busy counter read around it, and checks that an
over-long prompt is refused before the device.

Output: a pass/fail table on stderr and one JSON object on stdout, also when a step fails or
raises; the JSON carries what a problem report needs (versions, kernel, driver and compiler,
the device nodes and their modes, the busy counter, the env file used). The exit status is 1 if
any check failed. With ``--device CPU`` the NPU-only checks are marked skipped; with
``--no-busy-check`` the busy-counter checks are skipped and the JSON says ``"verified": false``.
With ``--npu-emulation`` the NPU pipeline runs on the CPU: the hardware rows (device node, driver)
are skipped, everything else runs, and the output says ``emulated`` plainly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npuclient.errors import InvalidParams
from npuclient.protocol import MAX_INPUT_CHARS

from . import __version__
from .accel import AccelNode, Groups, access_problem, current_groups, inspect_nodes, npu_unavailable_message
from .busy import BusyCounter, BusyCounterError, NpuDiscovery, discover_npu, missing_counter_message, verify_delta
from .config import ConfigError, Config, load_config
from .daemon import check_npu_lock
from .engine import (
    NPU_FACTS,
    DecodeSettings,
    Engine,
    EngineLoader,
    ModelLoadError,
    OpenVinoLoader,
    StartupError,
    available_devices,
    decode_compiler_version,
    npu_model_problem,
    read_device_properties,
)
from .envfile import EnvFileError, read_env_file
from .http import read_token_file
from .jobs import JOBS
from .npulock import LockFileRefused, LockTimeout, NpuLock
from .worker import check_prompt_budget

SAMPLE = ("Our team spent the sprint replacing the flaky integration tests of the billing service with "
          "contract tests, which cut the CI time from 40 to 12 minutes.")
#: The over-budget input: digits between spaces, about a token per character with the models'
#: tokenizers (digits are split one by one), so the longest input npud accepts (MAX_INPUT_CHARS)
#: reaches as many tokens as any text can. Built from the configured budget, never a fixed size.
OVER_BUDGET_UNIT = "0 1 2 3 4 5 6 7 8 9 "
#: The user units read this file (``EnvironmentFile=-%E/npud/npud.env``); system units read
#: ``SYSTEM_ENV_FILE``.
ENV_FILE_NAME = Path("npud") / "npud.env"
SYSTEM_ENV_FILE = Path("/etc/npud/npud.env")

PropertyReader = Callable[[str, Sequence[str]], dict[str, Any]]


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


@dataclass
class Host:
    """What the check needs from the machine, read at the edge (tests pass synthetic ones)."""

    groups: Groups
    kernel_release: str
    access: Callable[[str, int], bool] = os.access
    device_properties: PropertyReader | None = None

    @classmethod
    def current(cls) -> Host:
        return cls(current_groups(), platform.release(), os.access, read_device_properties)


def default_env_file(environ: Mapping[str, str]) -> Path:
    """The environment file of the user units: ``$XDG_CONFIG_HOME/npud/npud.env``."""
    home = Path(environ.get("HOME", str(Path.home())))
    return Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / ENV_FILE_NAME


def load_env_file(path: Path | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The variables of the env file, and what the report says about it (names, never values)."""
    if path is None:
        return {}, {"path": None, "found": False}
    info: dict[str, Any] = {"path": str(path), "found": path.is_file()}
    if not info["found"]:
        return {}, info
    try:
        values, skipped = read_env_file(path)
    except EnvFileError as exc:
        return {}, {**info, "error": str(exc)}
    return values, {**info, "variables": sorted(values), "skipped_invalid_names": skipped}


# ---------------------------------------------------------------- the NPU-only checks

EMULATED = "emulated: no NPU hardware"


def check_device_node(report: Report, nodes: Sequence[AccelNode], dev_accel: str, groups: Groups) -> None:
    if not report.add("device node /dev/accel", bool(nodes), "; ".join(n.describe() for n in nodes) or
                      f"no {dev_accel}/accel*: the intel_vpu kernel driver is not loaded "
                      "(sudo modprobe intel_vpu; see the 'intel_vpu driver' row)"):
        report.add("permissions", False, "no device node")
        return
    problem = access_problem(nodes, groups)
    report.add("permissions", problem is None, problem or "read/write ok")


def check_busy_counter(report: Report, config: Config, sysfs: NpuDiscovery, kernel: str) -> BusyCounter | None:
    """The counter to read around the job, or None (disabled, missing, unreadable)."""
    if not config.busy_check:
        report.add("busy counter readable", None,
                   "disabled by --no-busy-check: results are NOT verified to run on the NPU")
        return None
    path = Path(config.busy_file) if config.busy_file else sysfs.counter
    if path is None:
        detail = missing_counter_message(sysfs.device, kernel) if sysfs.device else "no intel_vpu device"
        report.add("busy counter readable", False, detail)
        return None
    counter = BusyCounter(path)
    try:
        report.add("busy counter readable", counter.read() >= 0, str(path))
    except BusyCounterError as exc:
        report.add("busy counter readable", False, str(exc))
        return None
    return counter


def check_lock_file(config: Config) -> tuple[bool, str]:
    """The service's own startup check of the NPU lock file (it exits 1 without a usable one)."""
    try:
        check_npu_lock(config)
    except StartupError as exc:
        return False, str(exc)
    return True, str(config.lock_file)


def check_token_file(config: Config) -> tuple[bool, str]:
    """The service's own startup read of the HTTP token file (it exits 1 on one it refuses)."""
    try:
        read_token_file(str(config.token_file))
    except StartupError as exc:
        return False, str(exc)
    return True, f"{config.token_file} (token not shown)"


# ---------------------------------------------------------------- the run


def load_timed(loader: EngineLoader, config: Config) -> tuple[Engine, float]:
    start = time.perf_counter()
    with npu_lock(config):  # a compile uses the device too
        engine = loader.load(config)
    return engine, (time.perf_counter() - start) * 1000


@contextmanager
def npu_lock(config: Config) -> Iterator[None]:
    """On the NPU, the service's own lock (CONTRACT §8), with its --lock-timeout, around every use
    of the device: run while the service or a chat model works, the check would otherwise share
    the NPU with them, and each one's busy delta would include the other's work."""
    if not config.is_npu:
        yield
        return
    with NpuLock(config.lock_file, config.lock_timeout_s).hold():
        yield


def lock_problem(exc: LockTimeout | LockFileRefused) -> str:
    if isinstance(exc, LockTimeout):
        return (f"{exc}: another program is using the NPU (the npud service, a chat model). Run the "
                "check when it is idle, stop it, or raise --lock-timeout")
    return str(exc)


def run(config: Config, loader: EngineLoader, devices: Sequence[str], host: Host) -> tuple[Report, dict[str, Any]]:
    """Every check; a failing step fails its row and ends the run, the report is always whole."""
    report = Report()
    out: dict[str, Any] = {"device": config.device, "model": config.model, "busy_check": config.busy_check}
    started = time.perf_counter()
    try:
        _run_checks(report, out, config, loader, devices, host)
    except Exception as exc:  # whatever breaks, the owner still gets the table and the JSON
        report.add("unexpected error", False, f"{type(exc).__name__}: {exc}")
    out["timing_ms"] = {**out.get("timing_ms", {}), "total": round((time.perf_counter() - started) * 1000, 1)}
    return report, out


def _run_checks(report: Report, out: dict[str, Any], config: Config, loader: EngineLoader,
                devices: Sequence[str], host: Host) -> None:
    npu, emulated = config.is_npu, config.npu_emulation
    if emulated:
        out["emulated"] = True
    nodes = inspect_nodes(Path(config.dev_accel), host.access)
    sysfs = discover_npu(config.sysfs_root)
    out["report"] = environment_report(config, nodes, sysfs, host)
    if npu and not emulated:
        check_device_node(report, nodes, config.dev_accel, host.groups)
        report.add("intel_vpu driver (sysfs)", sysfs.device is not None,
                   str(sysfs.device) if sysfs.device else (sysfs.problem(host.kernel_release) or ""))
    else:
        for name in ("device node /dev/accel", "permissions", "intel_vpu driver (sysfs)"):
            report.add(name, None, EMULATED if emulated else "not the NPU")
    model_problem = npu_model_problem(config)  # a GGUF on the NPU: the service refuses to start
    if emulated:
        if model_problem is not None:
            report.add("model load", False, model_problem)
            return
        if not report.add("NPU plugin (emulated on the CPU)", *_emulation_preflight(loader, config)):
            return
    else:
        listed = config.device in devices
        detail = (npu_unavailable_message(nodes, host.groups, sysfs, devices) if npu and not listed
                  else f"available: {', '.join(devices) or 'none'}")
        if not report.add(f"OpenVINO lists {config.device}", listed, detail):
            _record_device_facts(out, config, host)
            return
    counter = check_busy_counter(report, config, sysfs, host.kernel_release) if npu else None
    if not npu:
        report.add("busy counter readable", None, "not the NPU")
    lock_usable = report.add("NPU lock file", *check_lock_file(config)) if npu else None
    if not npu:
        report.add("NPU lock file", None, "not the NPU")
    if config.http and config.token_file:  # read at every start: a bad one stops the service
        report.add("HTTP token file", *check_token_file(config))
    # True only once the busy counter proved the title job ran on NPU hardware (None off the NPU;
    # never when emulated).
    out["verified"] = False if npu else None
    out["report"]["busy_counter"]["readable"] = counter is not None
    if model_problem is not None:
        report.add("model load", False, model_problem)
        _record_device_facts(out, config, host)
        return
    if lock_usable is False:
        # Loading takes that lock: trying would only report the same cause again, worse worded.
        report.add("model load", None, "not run: it needs the NPU lock file (the row above)")
        _record_device_facts(out, config, host)
        return
    try:
        _, first_ms = load_timed(loader, config)  # compiles (or finds a blob from an earlier run)
        engine, second_ms = load_timed(loader, config)  # must find this run's blob
    except (ModelLoadError, StartupError) as exc:
        report.add("model load", False, str(exc))
        _record_device_facts(out, config, host)
        return
    except (LockTimeout, LockFileRefused) as exc:
        report.add("model load", False, lock_problem(exc))
        _record_device_facts(out, config, host)
        return
    info = engine.device_info
    report.add("model load", True, f"{first_ms:.0f} ms, then {second_ms:.0f} ms")
    out.update(driver_version=info.npu_driver_version, compiler_version=info.npu_compiler_version)
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
    out["compile_cache"] = {"key": cache.key, "hit": cache.hit} if cache else None
    out["timing_ms"] = {"load": round(first_ms, 1)}
    _run_title_job(report, out, config, engine, counter)


def _run_title_job(report: Report, out: dict[str, Any], config: Config, engine: Engine,
                   counter: BusyCounter | None) -> None:
    npu = config.is_npu
    spec = JOBS["title"]
    prompt, prompt_tokens = engine.render_prompt(spec.messages(SAMPLE))
    if prompt_tokens > config.max_prompt_tokens:  # the device would refuse it: say why, do not crash
        report.add("title job", False, f"the sample prompt is {prompt_tokens} tokens, over --max-prompt-len "
                                       f"{config.max_prompt_tokens}")
        return
    try:
        with npu_lock(config):  # like the worker: the counter is read inside the lock too
            before = _read(counter)
            gen_start = time.perf_counter()
            generation = engine.generate(prompt, DecodeSettings.for_job(spec, spec.default_max_new_tokens),
                                         lambda: False)
            generate_ms = (time.perf_counter() - gen_start) * 1000
            after = _read(counter)
    except (LockTimeout, LockFileRefused) as exc:
        report.add("title job", False, lock_problem(exc))
        return
    except Exception as exc:
        report.add("title job", False, f"generation raised {type(exc).__name__}: {exc}")
        return
    text = spec.postprocess(generation.text, SAMPLE).text
    report.add("title job", bool(text), f"{generation.generated_tokens} tokens in {generate_ms:.0f} ms: {text!r}")
    if not npu:
        delta = None
        report.add("NPU busy delta > 0", None, "not the NPU")
    elif counter is None:
        delta = None
        why = "--no-busy-check" if not config.busy_check else "no busy counter (see 'busy counter readable')"
        report.add("NPU busy delta > 0", None, f"not verified: {why}")
    else:
        delta, reason = verify_delta(before, after)
        # Emulated, the counter is a synthetic one: the row checks npud's own verification path,
        # and nothing is verified to have run on an NPU.
        synthetic = (", from a synthetic counter: proves nothing about an NPU"
                     if config.npu_emulation and reason is None else "")
        report.add("NPU busy delta > 0", reason is None, f"{delta} µs" + (f" ({reason})" if reason else "") + synthetic)
        out["verified"] = reason is None and not config.npu_emulation
    _check_prompt_limit(report, config, engine)
    out.update({
        "text": text,
        "npu_busy_delta_us": delta,
        "tokens": {"prompt": prompt_tokens, "generated": generation.generated_tokens},
    })
    out["timing_ms"]["generate"] = round(generate_ms, 1)


def _check_prompt_limit(report: Report, config: Config, engine: Engine) -> None:
    """A prompt over MAX_PROMPT_LEN is refused by npud before the device. Tested with the longest
    input npud accepts; when even that stays within the budget (a large MAX_PROMPT_LEN), no input
    can exceed it: npud's input limit (6000 characters, -32602) refuses longer ones first."""
    name, limit = "prompt limit enforced before the device", config.max_prompt_tokens
    text = (OVER_BUDGET_UNIT * (MAX_INPUT_CHARS // len(OVER_BUDGET_UNIT) + 1))[:MAX_INPUT_CHARS]
    _, over = engine.render_prompt(JOBS["title"].messages(text))
    if over <= limit:
        report.add(name, None, f"MAX_PROMPT_LEN {limit} is more than the longest input npud accepts "
                               f"({MAX_INPUT_CHARS} characters) makes ({over} tokens): its input limit "
                               "refuses longer inputs first")
        return
    try:
        check_prompt_budget(over, limit)
        refused = False
    except InvalidParams:
        refused = True
    report.add(name, refused, f"{over} tokens ({len(text)} characters) vs MAX_PROMPT_LEN {limit}")


def _read(counter: BusyCounter | None) -> int | None:
    if counter is None:
        return None
    try:
        return counter.read()
    except BusyCounterError:
        return None


def _record_device_facts(out: dict[str, Any], config: Config, host: Host) -> None:
    """Driver and compiler versions straight from OpenVINO when no model loaded (best effort)."""
    if not config.is_npu or host.device_properties is None:
        return
    try:
        props = host.device_properties(config.device, NPU_FACTS)
    except Exception:
        return
    out.setdefault("driver_version", props.get("NPU_DRIVER_VERSION"))
    out.setdefault("compiler_version", decode_compiler_version(props.get("NPU_COMPILER_VERSION")))


def environment_report(config: Config, nodes: Sequence[AccelNode], sysfs: NpuDiscovery, host: Host) -> dict[str, Any]:
    """What a problem report needs besides the table: versions, kernel, nodes, groups, counter."""
    counter = Path(config.busy_file) if config.busy_file else sysfs.counter
    return {
        **host_report(host),
        "dev_accel": [asdict(node) for node in nodes],
        "groups": {"user": host.groups.user, "process": sorted(host.groups.process),
                   "configured": sorted(host.groups.configured)},
        "sysfs": {"accel_devices": [list(entry) for entry in sysfs.accel_devices],
                  "intel_vpu_device": str(sysfs.device) if sysfs.device else None},
        "busy_counter": {"path": str(counter) if counter else None,
                         "present": bool(counter and counter.exists()), "readable": None},
    }


def config_error_detail(exc: ConfigError, env_path: Path | None, from_file: Mapping[str, str]) -> str:
    """The bad value's origin: the environment file (by path), the shell's environment, a flag."""
    source = exc.source
    if source is None or source.startswith("-"):
        where = "on the command line" if source else "in the settings"
    elif source in from_file:
        where = f"in {env_path}"
    else:
        where = "in the environment"
    return f"{exc} ({where}; the service would refuse to start with it too)"


def host_report(host: Host) -> dict[str, Any]:
    """The versions and the kernel, which a report needs even when nothing else could run."""
    return {
        "npud_version": __version__,
        "openvino_version": _version_of("openvino"),
        "genai_version": _version_of("openvino_genai"),
        "python": platform.python_version(),
        "kernel": host.kernel_release,
    }


def _version_of(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


# ---------------------------------------------------------------- the command


def parse_smoke_args(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Path | None, list[str]]:
    """``--env-file PATH`` (``none`` to read no file) and everything else for npud's own parser."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--env-file", default=None)
    known, rest = parser.parse_known_args(list(argv))
    if known.env_file is None:
        return default_env_file(environ), rest
    return (None if known.env_file == "none" else Path(known.env_file)), rest


USAGE = """\
usage: npud-smoke [--env-file PATH|none] [npud options]   (also contrib/smoke_llm_npu.sh)

The NPU acceptance check. Reads the service's environment file first (default
~/.config/npud/npud.env, the one the user units read; /etc/npud/npud.env for the system
units), then npud's flags and OV_GENAI_NPU_* variables (see npud --help), which win.
"""


def _emulation_preflight(loader: EngineLoader, config: Config) -> tuple[bool, str]:
    """The daemon's own startup check in emulation: the NPU plugin must answer."""
    try:
        loader.preflight(config)
    except StartupError as exc:
        return False, str(exc)
    return True, f"{EMULATED}: the NPU plugin's pipeline computes on the CPU (NPUW_DEVICES=CPU)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        sys.stdout.write(USAGE)
        return 0
    env_path, rest = parse_smoke_args(args, os.environ)
    values, env_info = load_env_file(env_path)
    # The service's process gets every variable of the file (ZE_INTEL_NPU_CACHE_DIR for the NPU
    # driver too), and not this shell's: the file wins over the shell, flags win over both.
    os.environ.update(values)
    try:
        config = load_config(rest, os.environ)
    except ConfigError as exc:
        # A value the service could not start with either: a failed row like any other, with
        # the table and the JSON (argparse's usage errors, an unknown option, still exit 2).
        report = Report()
        report.add("configuration", False, config_error_detail(exc, env_path, values))
        if "error" in env_info:
            report.add("environment file", False, env_info["error"])
        emit(report, {"ok": False, "report": {**host_report(Host.current()), "env_file": env_info}})
        return 1
    try:
        devices = available_devices()
    except Exception as exc:
        devices = []
        sys.stderr.write(f"npud.smoke: OpenVINO could not list devices: {exc}\n")
    report, out = run(config, OpenVinoLoader(), devices, Host.current())
    out.setdefault("report", {})["env_file"] = env_info
    if "error" in env_info:
        report.add("environment file", False, env_info["error"])
    emit(report, out)
    return 1 if report.failed else 0


def emit(report: Report, out: dict[str, Any]) -> None:
    out["checks"] = [{"check": name, "status": status, "detail": detail} for name, status, detail in report.checks]
    out["ok"] = not report.failed
    if out.get("emulated"):
        sys.stderr.write("NPU emulated on the CPU (--npu-emulation): the NPU code path for real, "
                         "but no NPU hardware, driver, compiler or timings\n")
    sys.stderr.write(report.table() + "\n")
    sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sys.exit(main())
