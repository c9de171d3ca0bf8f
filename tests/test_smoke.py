"""The NPU owners' acceptance command: for real on the CPU and on the emulated NPU (the NPU pipeline
computing on the CPU), and with synthetic sysfs and /dev trees for the machines it must explain (no
driver, no access, a kernel without the busy counter, --no-busy-check)."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from npuclient.protocol import MAX_INPUT_CHARS

from npud.accel import Groups
from npud.config import Config, ConfigError, load_config
from npud.engine import Engine, Generation, OpenVinoLoader
from npud.jobs import JOBS
from npud.smoke import OVER_BUDGET_UNIT, Host, Report, config_error_detail, run
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import AdvancingBusyCounter, make_npu_sysfs

from .emulated import LONGER_PROMPTS, MODELS, RESPONSE_LEN, Prompts, model_dir, npu_cache  # noqa: F401 (a fixture)

#: What OpenVINO would report for a real NPU, for the checks that only read properties.
NPU_PROPERTIES = {
    "FULL_DEVICE_NAME": "Intel(R) AI Boost",
    "NPU_DRIVER_VERSION": "1.28.0.20251218",
    "NPU_COMPILER_VERSION": (7 << 16) | 21,
}

ME = Groups(user="me", uid=1000, process=frozenset({"me", "render"}), configured=frozenset({"me", "render"}))
OUTSIDER = Groups(user="me", uid=1000, process=frozenset({"me"}), configured=frozenset({"me"}))


def host(groups: Groups = ME, usable: bool = True, kernel: str = "6.11.0-19-generic") -> Host:
    return Host(groups, kernel, access=lambda path, mode: usable,
                device_properties=lambda device, names: {n: NPU_PROPERTIES[n] for n in names if n in NPU_PROPERTIES})


def npu_machine(tmp_path: Path, model: Path | str, *, counter: bool = True, node: bool = True,
                extra: tuple[str, ...] = ()) -> tuple[Config, Path]:
    busy = make_npu_sysfs(tmp_path / "sys", busy_counter=counter)
    dev = tmp_path / "dev" / "accel"
    dev.mkdir(parents=True)
    if node:
        (dev / "accel0").touch()
    config = load_config(["--device", "NPU", "--model", str(model), "--cache-dir", str(tmp_path / "cache"),
                          "--sysfs-root", str(tmp_path / "sys"), "--dev-accel", str(dev),
                           "--lock-file", str(tmp_path / "npu.lock"), *extra],
                         {"HOME": str(tmp_path)})
    return config, busy


def rows(report: Report) -> dict[str, tuple[str, str]]:
    return {name: (state, detail) for name, state, detail in report.checks}


# ---------------------------------------------------------------- no model needed (fake engine)


def test_kernel_without_the_counter_fails_that_row_and_says_what_to_do(tmp_path: Path) -> None:
    behaviour = FakeBehaviour()
    config, _ = npu_machine(tmp_path, "fake-model", counter=False)
    report, out = run(config, FakeLoader(behaviour), ["CPU", "NPU"], host(kernel="6.8.0-45-generic"))
    table = rows(report)
    state, detail = table["busy counter readable"]
    assert state == "FAIL" and "has no npu_busy_time_us" in detail and "this kernel is 6.8.0-45-generic" in detail
    assert "linux-generic-hwe-24.04" in detail and "--no-busy-check" in detail
    assert table["intel_vpu driver (sysfs)"][0] == "PASS"  # the device is there: no modprobe advice
    assert table["NPU busy delta > 0"] == ("SKIP", "not verified: no busy counter (see 'busy counter readable')")
    assert report.failed and out["verified"] is False
    assert out["report"]["kernel"] == "6.8.0-45-generic"
    assert out["report"]["busy_counter"] == {"path": None, "present": False, "readable": False}


def test_no_busy_check_is_honoured_and_marked_unverified(tmp_path: Path) -> None:
    config, _ = npu_machine(tmp_path, "fake-model", counter=False, extra=("--no-busy-check",))
    report, out = run(config, FakeLoader(FakeBehaviour()), ["CPU", "NPU"], host(kernel="6.8.0-45-generic"))
    table = rows(report)
    assert table["busy counter readable"] == (
        "SKIP", "disabled by --no-busy-check: results are NOT verified to run on the NPU")
    assert table["NPU busy delta > 0"] == ("SKIP", "not verified: --no-busy-check")
    # The fake engine reports no driver and no compile cache; nothing else fails.
    failed = [name for name, state, _ in report.checks if state == "FAIL"]
    assert failed == ["driver / compiler version", "compile cache hit on second load"], report.table()
    assert out["verified"] is False and out["busy_check"] is False and out["npu_busy_delta_us"] is None


@pytest.mark.parametrize("emulated", [False, True], ids=["npu", "emulated"])
def test_a_gguf_on_the_npu_fails_the_load_row_saying_why(tmp_path: Path, emulated: bool) -> None:
    """The acceptance check says what the service says at startup, before a conversion and load."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    config, _ = npu_machine(tmp_path, gguf, extra=("--npu-emulation",) if emulated else ())
    behaviour = FakeBehaviour()
    report, _ = run(config, FakeLoader(behaviour), ["CPU", "NPU"], host())
    state, detail = rows(report)["model load"]
    assert state == "FAIL" and "GGUF models, and the OpenVINO IR npud converts from them, do not compile" in detail
    assert "NPU plugin (emulated on the CPU)" not in rows(report) and not behaviour.calls


def test_the_acceptance_check_never_calls_an_emulated_job_verified(tmp_path: Path) -> None:
    """README: the acceptance JSON has "`verified` (true only when the counter proved the job ran
    on the NPU ...)". Emulated, nothing ran on an NPU: a synthetic counter (the README's own
    recipe) grows at every read whatever ran. The JSON still says "verified": true, next to
    "emulated": true, and `npu_busy_delta_us` > 0, the very pair CONTRACT.md §7 calls the proof."""
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
        config = load_config(["--device", "NPU", "--npu-emulation", "--model", "fake-model",
                              "--busy-file", str(busy.path), "--cache-dir", str(tmp_path / "cache"),
                              "--lock-file", str(tmp_path / "npu.lock")], {"HOME": str(tmp_path)})
        _, out = run(config, FakeLoader(FakeBehaviour()), ["CPU"], host())
    assert out["emulated"] is True and out["npu_busy_delta_us"] == busy.step
    assert out["verified"] is not True


def test_a_larger_max_prompt_len_is_not_reported_as_a_bug(tmp_path: Path) -> None:
    """README table: "prompt limit enforced before the device | a prompt over MAX_PROMPT_LEN is
    refused by npud itself | never expected: report a bug". The row renders a fixed 15600-character
    text (npud refuses any input over 6000 characters before counting tokens) and FAILs, exit 1,
    whenever --max-prompt-len is above that text's token count: about 3,400 tokens with Qwen2.5's
    tokenizer (estimate), 10,733 with tests/models/tiny-qwen2-h64 (reproduced on the emulated NPU with
    --max-prompt-len 11000). A larger budget is a valid setting, not an npud bug."""
    config = load_config(["--device", "CPU", "--model", "fake-model", "--max-prompt-len", "100000",
                          "--cache-dir", str(tmp_path / "cache")], {"HOME": str(tmp_path)})
    report, _ = run(config, FakeLoader(FakeBehaviour()), ["CPU"], host())
    state, detail = {name: (s, d) for name, s, d in report.checks}["prompt limit enforced before the device"]
    assert state != "FAIL", detail


def test_the_prompt_limit_row_is_built_from_the_budget_at_both_sides_of_the_input_limit(tmp_path: Path) -> None:
    """The row's input is the longest npud accepts (6000 characters): one token under what it
    makes, the row checks the refusal; at it, no input can exceed the budget, and the row says so
    (SKIP), naming the input limit that guards instead."""
    engine = FakeLoader(FakeBehaviour()).load(make_cpu_config(tmp_path, 1024))
    text = (OVER_BUDGET_UNIT * 1000)[:MAX_INPUT_CHARS]
    _, longest = engine.render_prompt(JOBS["title"].messages(text))
    for budget, expected in ((longest - 1, "PASS"), (longest, "SKIP")):
        report, _ = run(make_cpu_config(tmp_path, budget), FakeLoader(FakeBehaviour()), ["CPU"], host())
        state, detail = rows(report)["prompt limit enforced before the device"]
        assert state == expected, detail
        if expected == "PASS":
            assert detail == f"{longest} tokens ({MAX_INPUT_CHARS} characters) vs MAX_PROMPT_LEN {budget}"
        else:
            assert f"more than the longest input npud accepts ({MAX_INPUT_CHARS} characters) makes" in detail


def make_cpu_config(tmp_path: Path, budget: int) -> Config:
    return load_config(["--device", "CPU", "--model", "fake-model", "--max-prompt-len", str(budget),
                        "--cache-dir", str(tmp_path / "cache")], {"HOME": str(tmp_path)})


def test_the_acceptance_check_takes_the_npu_lock_like_the_service(tmp_path: Path) -> None:
    """CONTRACT §8: "On the NPU, every generation and the model compile hold an exclusive flock on
    the lock file ... Other services sharing the NPU should take the same lock". The acceptance
    check compiles the model twice and generates on the NPU without it: its row "NPU lock file"
    only opens the file. Run while the service (or a chat model) works on the NPU (README
    "Reporting a problem" asks for it while npud runs), both use the device at once, and each one's
    busy-counter delta includes the other's work, so either can be "verified" by the other's job."""
    lock = tmp_path / "npu.lock"
    holder = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)  # the service, in the middle of a job
    try:
        behaviour = FakeBehaviour()
        with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
            config = load_config(["--device", "NPU", "--npu-emulation", "--model", "fake-model",
                                  "--busy-file", str(busy.path), "--cache-dir", str(tmp_path / "cache"),
                                  "--lock-file", str(lock), "--lock-timeout", "0.2"], {"HOME": str(tmp_path)})
            report, _ = run(config, FakeLoader(behaviour), ["CPU"], host())
        assert not behaviour.calls, "the acceptance check generated while another process held the NPU lock"
    finally:
        os.close(holder)
    table = rows(report)
    assert table["model load"][0] == "FAIL" and "held by another process" in table["model load"][1]
    assert "another program is using the NPU" in table["model load"][1]


def locked_elsewhere(path: Path) -> bool:
    """Whether some open file description holds the flock on ``path`` (probed from a new one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_acceptance_check_holds_the_npu_lock_while_it_compiles_and_generates(tmp_path: Path) -> None:
    lock = tmp_path / "npu.lock"
    seen: list[tuple[str, bool]] = []

    class Probing(FakeLoader):
        def load(self, config: Config) -> Engine:
            seen.append(("load", locked_elsewhere(lock)))
            engine = super().load(config)
            generate = engine.generate

            def probed(*args: Any) -> Generation:
                seen.append(("generate", locked_elsewhere(lock)))
                return generate(*args)

            engine.generate = probed  # type: ignore[method-assign]
            return engine

    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
        config = load_config(["--device", "NPU", "--npu-emulation", "--model", "fake-model",
                              "--busy-file", str(busy.path), "--cache-dir", str(tmp_path / "cache"),
                              "--lock-file", str(lock)], {"HOME": str(tmp_path)})
        report, _ = run(config, Probing(FakeBehaviour()), ["CPU"], host())
    assert seen == [("load", True), ("load", True), ("generate", True)], report.table()
    assert not locked_elsewhere(lock)  # and let go afterwards


def test_a_bad_value_in_the_env_file_still_gives_the_table_and_the_json(tmp_path: Path) -> None:
    """README: the acceptance check "prints a table on stderr and one JSON object on stdout, also
    when a step fails or raises" (issue 15: "A failure anywhere still prints the table and the
    JSON"). A value npud cannot parse in ~/.config/npud/npud.env (here a space in a number) ends it
    with one stderr line, exit 2, no table, no JSON, and the line does not name the file."""
    env_file = tmp_path / "npud.env"
    env_file.write_text("OV_GENAI_NPU_MAX_PROMPT_LEN=1 024\n")
    proc = subprocess.run([sys.executable, "-m", "npud.smoke", "--env-file", str(env_file), "--device", "CPU",
                           "--model", str(tmp_path / "no-model"), "--cache-dir", str(tmp_path / "cache")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.stdout.strip(), f"no JSON on stdout (exit {proc.returncode}): {proc.stderr!r}"
    out = json.loads(proc.stdout)
    assert out["ok"] is False and proc.returncode == 1
    assert out["checks"] == [{"check": "configuration", "status": "FAIL", "detail": (
        "OV_GENAI_NPU_MAX_PROMPT_LEN: invalid literal for int() with base 10: '1 024' "
        f"(in {env_file}; the service would refuse to start with it too)")}]
    assert out["report"]["npud_version"] and out["report"]["env_file"]["path"] == str(env_file)
    assert "FAIL  configuration  OV_GENAI_NPU_MAX_PROMPT_LEN" in proc.stderr and str(env_file) in proc.stderr


def test_a_config_error_names_where_the_value_came_from(tmp_path: Path) -> None:
    env_file = tmp_path / "npud.env"
    cases = [
        (["--max-prompt-len", "x"], {}, "on the command line"),
        ([], {"OV_GENAI_NPU_QUEUE_DEPTH": "0"}, "in the environment"),
        ([], {"OV_GENAI_NPU_QUEUE_DEPTH": "0", "from_file": "1"}, f"in {env_file}"),
    ]
    for argv, environ, where in cases:
        from_file = {k: v for k, v in environ.items() if k.startswith("OV_")} if "from_file" in environ else {}
        with pytest.raises(ConfigError) as info:
            load_config(argv, {"HOME": str(tmp_path), **{k: v for k, v in environ.items() if k.startswith("OV_")}})
        assert config_error_detail(info.value, env_file, from_file).endswith(
            f"({where}; the service would refuse to start with it too)")


def test_device_without_access_is_explained(tmp_path: Path) -> None:
    config, _ = npu_machine(tmp_path, "fake-model")
    report, out = run(config, FakeLoader(), ["CPU"], host(OUTSIDER, usable=False))
    table = rows(report)
    node = f"{tmp_path}/dev/accel/accel0"
    assert table["device node /dev/accel"][0] == "PASS" and table["device node /dev/accel"][1].startswith(node)
    state, detail = table["permissions"]
    # Made by this test's user: group root when the suite runs as root, never advice to join it.
    why = ("it belongs to the root group, so no group membership helps" if table["device node /dev/accel"][1]
           .endswith("root:root") else "your user is not in the")
    assert state == "FAIL" and f"cannot open it read/write: {why}" in detail and "-aG root" not in detail
    assert "sudo systemctl restart user@1000.service" in detail
    state, detail = table["OpenVINO lists NPU"]
    assert state == "FAIL" and detail.startswith("device NPU is not available (OpenVINO sees: CPU): the NPU is "
                                                 "present but not accessible")
    assert "--device CPU" not in detail
    assert out["report"]["dev_accel"][0]["usable"] is False and out["report"]["groups"]["user"] == "me"
    assert out["driver_version"] == NPU_PROPERTIES["NPU_DRIVER_VERSION"]  # read even though nothing loaded


def test_driver_missing_is_explained(tmp_path: Path) -> None:
    config = load_config(["--device", "NPU", "--model", "fake-model", "--sysfs-root", str(tmp_path / "nothing"),
                          "--dev-accel", str(tmp_path / "no-dev")], {"HOME": str(tmp_path)})
    report, _ = run(config, FakeLoader(), ["CPU"], host())
    table = rows(report)
    assert table["device node /dev/accel"][0] == "FAIL" and "modprobe intel_vpu" in table["device node /dev/accel"][1]
    assert table["intel_vpu driver (sysfs)"][0] == "FAIL"
    assert "'sudo modprobe intel_vpu'" in table["intel_vpu driver (sysfs)"][1]
    assert table["OpenVINO lists NPU"][1].startswith("device NPU is not available (OpenVINO sees: CPU): there is "
                                                     "no /dev/accel/accel* node.")


def test_a_failing_step_still_gives_the_whole_report(tmp_path: Path) -> None:
    class BrokenLoader(FakeLoader):
        def load(self, config: Config) -> Any:
            raise KeyError("a bug in a loader")

    config, _ = npu_machine(tmp_path, "fake-model")
    report, out = run(config, BrokenLoader(), ["CPU", "NPU"], host())
    assert rows(report)["unexpected error"] == ("FAIL", "KeyError: 'a bug in a loader'")
    assert out["report"]["npud_version"] and "total" in out["timing_ms"]
    failing = FakeLoader(FakeBehaviour(fail_with=RuntimeError("Infer Request is busy")))
    report, _ = run(config, failing, ["CPU", "NPU"], host())
    assert rows(report)["title job"] == ("FAIL", "generation raised RuntimeError: Infer Request is busy")


def test_smoke_command_prints_table_and_json_when_the_model_is_missing(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "npud.smoke", "--env-file", "none", "--device", "CPU",
                           "--model", str(tmp_path / "nope"), "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    status = {c["check"]: c["status"] for c in out["checks"]}
    assert status["model load"] == "FAIL" and out["ok"] is False
    assert "FAIL  model load" in proc.stderr
    report = out["report"]
    assert report["openvino_version"].startswith("2026.4") and report["genai_version"].startswith("2026.4")
    assert report["kernel"] == os.uname().release and report["env_file"] == {"path": None, "found": False}


# ---------------------------------------------------------------- real models

@pytest.mark.realmodel
def test_smoke_on_cpu_reads_the_service_env_file(tiny_gguf: Path, tmp_path: Path) -> None:
    """No flags: the settings come from ~/.config/npud/npud.env, as for the user units."""
    env_file = tmp_path / "config" / "npud" / "npud.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"# as the user units read it\nOV_GENAI_NPU_DEVICE=CPU\nOV_GENAI_NPU_MODEL={tiny_gguf}\n"
                        f"OV_GENAI_NPU_CACHE='{tmp_path / 'cache'}'\n")
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "OV_GENAI_NPU_DEVICE": "NPU"}  # the shell's value loses: the service would not see it
    proc = subprocess.run([sys.executable, "-m", "npud.smoke"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["device"] == "CPU" and out["npu_busy_delta_us"] is None
    assert out["report"]["env_file"] == {"path": str(env_file), "found": True, "skipped_invalid_names": [],
                                         "variables": ["OV_GENAI_NPU_CACHE", "OV_GENAI_NPU_DEVICE", "OV_GENAI_NPU_MODEL"]}
    assert set(out["timing_ms"]) == {"load", "generate", "total"} and out["timing_ms"]["load"] > 0
    status = {c["check"]: c["status"] for c in out["checks"]}
    assert status["OpenVINO lists CPU"] == "PASS" and status["title job"] == "PASS"
    assert status["prompt limit enforced before the device"] == "PASS"
    for npu_only in ("device node /dev/accel", "permissions", "busy counter readable", "NPU busy delta > 0",
                     "compile cache hit on second load"):
        assert status[npu_only] == "SKIP"
    assert "PASS  title job" in proc.stderr  # the human-readable table
    assert (tmp_path / "cache" / "compiled").is_dir()  # the cache the env file names was used


def emulated_smoke_args(model: str, busy: Path, cache: Path) -> list[str]:
    budget = Prompts(model).budget() + LONGER_PROMPTS  # the smoke's sample text is longer than the short input
    return ["--device", "NPU", "--npu-emulation", "--model", str(model_dir(model)), "--busy-file", str(busy),
            "--lock-file", str(cache.parent / f"{cache.name}.lock"),
            "--cache-dir", str(cache), "--max-prompt-len", str(budget), "--min-response-len", str(RESPONSE_LEN)]


@pytest.mark.realmodel
def test_smoke_passes_on_the_emulated_npu_and_says_so(tmp_path: Path, npu_cache: Path) -> None:
    """The acceptance command through the real NPU pipeline (computing on the CPU), with a
    synthetic busy counter that advances at every read."""
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
        proc = subprocess.run([sys.executable, "-m", "npud.smoke", "--env-file", "none",
                               *emulated_smoke_args(MODELS[0], busy.path, npu_cache)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True and out["emulated"] is True and out["device"] == "NPU"
    assert out["npu_busy_delta_us"] == busy.step and out["compile_cache"]["hit"] is True
    assert out["verified"] is False  # a synthetic counter proves nothing about an NPU
    assert out["driver_version"] is None and out["compiler_version"] is None
    status = {c["check"]: c["status"] for c in out["checks"]}
    assert status == {
        "device node /dev/accel": "SKIP", "permissions": "SKIP", "intel_vpu driver (sysfs)": "SKIP",
        "NPU plugin (emulated on the CPU)": "PASS", "busy counter readable": "PASS", "NPU lock file": "PASS",
        "model load": "PASS",
        "driver / compiler version": "SKIP", "compile cache hit on second load": "PASS", "title job": "PASS",
        "NPU busy delta > 0": "PASS", "prompt limit enforced before the device": "PASS",
    }
    assert "NPU emulated on the CPU (--npu-emulation): " in proc.stderr  # before the table


@pytest.mark.realmodel
def test_smoke_fails_when_the_busy_counter_does_not_grow(tmp_path: Path, npu_cache: Path) -> None:
    model = MODELS[1]
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys", step=0) as busy:
        config = load_config(emulated_smoke_args(model, busy.path, npu_cache), {"HOME": str(tmp_path)})
        report, out = run(config, OpenVinoLoader(), ["CPU"], host())
    rows = {name: (state, detail) for name, state, detail in report.checks}
    assert rows["NPU busy delta > 0"] == ("FAIL", "0 µs (no_growth)") and report.failed
    assert rows["title job"][0] == "PASS" and out["emulated"] is True


def test_a_missing_lock_file_fails_its_row_as_the_service_would_fail_to_start(tmp_path: Path) -> None:
    """Without a runtime directory (sudo, cron) there is no safe default for the NPU lock: the
    service would exit at startup, so the acceptance check says so instead of passing."""
    config = load_config(["--device", "NPU", "--model", "fake-model", "--sysfs-root", str(tmp_path / "sys"),
                          "--dev-accel", str(tmp_path / "dev"), "--no-busy-check"], {"HOME": str(tmp_path)})
    assert not config.lock_file  # no default without a runtime directory
    make_npu_sysfs(tmp_path / "sys")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "accel0").touch()
    report, _ = run(config, FakeLoader(FakeBehaviour()), ["CPU", "NPU"], host())
    state, detail = rows(report)["NPU lock file"]
    assert state == "FAIL" and "Pass --lock-file (OV_GENAI_NPU_LOCK_FILE)" in detail and report.failed


def test_without_a_lock_file_the_load_row_does_not_blame_an_empty_path(tmp_path: Path) -> None:
    """Verify review 2 (finding E): since the acceptance check takes the NPU lock (attack 2,
    finding 7), running it without a runtime directory (`sudo contrib/smoke_llm_npu.sh`, cron)
    fails the "NPU lock file" row, as it should, and then goes on to "model load", which fails with
    "cannot open the NPU lock file : No such file or directory": a lock on the empty path. The
    load row must not report a second, wrong cause (it names the missing --lock-file, or is not
    run)."""
    config = load_config(["--device", "NPU", "--npu-emulation", "--model", "fake-model", "--no-busy-check",
                          "--cache-dir", str(tmp_path / "cache")], {"HOME": str(tmp_path)})
    assert not config.lock_file
    report, _ = run(config, FakeLoader(FakeBehaviour()), ["CPU"], host())
    table = rows(report)
    assert table["NPU lock file"][0] == "FAIL"
    state, detail = table["model load"]
    assert "lock file :" not in detail, detail
    assert state == "SKIP" or "--lock-file" in detail, (state, detail)


def test_a_token_file_the_service_would_refuse_fails_the_check(tmp_path: Path) -> None:
    """Verify review 4b: README "Serving other users" runs the acceptance check "as the service will
    run it" after setting OV_GENAI_NPU_TOKEN_FILE (and "the settings the service will use" for the
    user units). npud refuses to start with a token file that is too short, readable by others or
    missing (status 1 at every start), but the check passed every row with it: it never read the
    file. A usable token file passes its own row."""
    token = tmp_path / "token"
    token.write_text("short\n")
    token.chmod(0o600)
    config, _ = npu_machine(tmp_path, "fake-model", extra=("--token-file", str(token)))
    report, _ = run(config, FakeLoader(FakeBehaviour()), ["CPU", "NPU"], host())
    state, detail = rows(report)["HTTP token file"]
    assert state == "FAIL" and "at least 16 characters" in detail, detail
    token.write_text("a-token-of-24-characters\n")
    report, _ = run(config, FakeLoader(FakeBehaviour()), ["CPU", "NPU"], host())
    assert rows(report)["HTTP token file"][0] == "PASS", report.table()
    no_http, _ = npu_machine(tmp_path / "no-http", "fake-model", extra=("--token-file", str(tmp_path / "missing"), "--no-http"))
    report, _ = run(no_http, FakeLoader(FakeBehaviour()), ["CPU", "NPU"], host())
    assert "HTTP token file" not in rows(report)  # npud does not read it without HTTP
