"""The README's numbered path for NPU owners, parsed out of the README so that the two cannot
drift: every command in it is either run here (against synthetic sysfs and /dev trees and the
fake engine; `.venv/bin/` is this test run's environment) or listed with the reason it cannot run
on a machine without an NPU, root and a systemd user manager. A new command in the section fails
this test until it is classified."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from npud.config import default_paths
from npud.envfile import read_env_file
from npud.testing.sysfs import AdvancingBusyCounter

from .conftest import REPO, RawConnection, unique_socket
from .emulated import LONGER_PROMPTS, MODELS, RESPONSE_LEN, Prompts, model_dir
from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env

README = (REPO / "README.md").read_text()
SECTION = README[README.index("## On an Intel NPU"):]
SECTION = SECTION[: SECTION.index("\n## ", 1)]
BIN = Path(sys.executable).parent

# Commands this machine cannot run: they need root, a reboot, a systemd user manager, or they
# change the machine (tests/test_units.py and the system's own tools cover what can be covered).
NEEDS_THE_OWNERS_MACHINE = {
    "sudo apt install python3-venv git": "installs packages (bootstrap's message for a missing venv is tested in test_units)",
    "sudo apt install --install-recommends linux-generic-hwe-24.04": "installs a kernel",
    "ls -l /dev/accel/": "reads the real /dev (synthetic trees: test_accel, test_smoke)",
    "echo 'SUBSYSTEM==\"accel\", KERNEL==\"accel*\", GROUP=\"render\", MODE=\"0660\"' | sudo tee "
    "/etc/udev/rules.d/10-intel-vpu.rules": "installs a udev rule (the same rule is in npud's message: test_accel)",
    "sudo udevadm control --reload-rules && sudo udevadm trigger --subsystem-match=accel": "needs root and udev",
    "sudo usermod -aG render $USER": "changes the user database",
    "sudo reboot": "reboots",
    "systemctl --user daemon-reload": "needs a systemd user manager (units: systemd-analyze verify in test_units)",
    "systemctl --user enable --now npud.socket npud-http.socket": "needs a systemd user manager",
    "sudo loginctl enable-linger $USER": "needs root and logind",
    "systemd-run --user --pipe --wait id -nG": "needs a systemd user manager",
    "contrib/demo.sh": "installs into .venv (CI runs contrib/bootstrap.sh itself; demo.py's job is the suite's)",
}
# Run below; on a machine with an NPU these succeed, here they show the no-NPU answers.
RUN_HERE = {
    "uname -r",
    '.venv/bin/python -c "import openvino as ov; print(ov.Core().available_devices)"',
    '.venv/bin/pip install "huggingface_hub>=0.34"',
    ".venv/bin/hf download OpenVINO/Qwen2.5-1.5B-Instruct-int4-ov --local-dir ~/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov",
    "contrib/smoke_llm_npu.sh",
    "contrib/install-user-units.sh",
    '.venv/bin/npuctl --wait generate --job title --input "We moved the standup to 9:30."',
    ".venv/bin/python -c \"from npuclient import Client; print(Client().generate('title', 'We moved the standup to 9:30.').text)\"",
}


def path_commands() -> list[str]:
    """Every command of the section's ```sh blocks, trailing comments removed."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", SECTION, re.S):
        for line in block.splitlines():
            command = re.split(r"\s{2,}#", line)[0].strip()
            if command:
                commands.append(command)
    return commands


def here(command: str) -> list[str]:
    """The README command as argv for this test run: .venv/bin/ is this environment, ~ is HOME."""
    argv = shlex.split(command.replace(".venv/bin/", f"{BIN}/"))
    return [str(REPO / arg) if arg.startswith("contrib/") else arg for arg in argv]


def owner_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OV_GENAI_NPU_", "XDG_", "NOTIFY_"))}
    # A login session's runtime directory, where the NPU lock file lives by default.
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update({"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(runtime), "NPUD_VENV": str(BIN.parent),
                **extra})
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def test_every_command_of_the_path_is_run_here_or_accounted_for() -> None:
    commands = path_commands()
    assert len(commands) == len(set(commands))
    assert set(commands) == RUN_HERE | set(NEEDS_THE_OWNERS_MACHINE)
    # The order the issue asks for: prerequisites, command 1, model, acceptance, units, enable, check.
    order = [commands.index(c) for c in ("sudo apt install python3-venv git", "contrib/demo.sh",
                                         '.venv/bin/pip install "huggingface_hub>=0.34"', "contrib/smoke_llm_npu.sh",
                                         "contrib/install-user-units.sh",
                                         "systemctl --user enable --now npud.socket npud-http.socket",
                                         "systemd-run --user --pipe --wait id -nG")]
    assert order == sorted(order)


def test_uname_and_the_openvino_device_list() -> None:
    assert subprocess.run(here("uname -r"), capture_output=True, text=True, check=True).stdout.strip()
    proc = subprocess.run(here('.venv/bin/python -c "import openvino as ov; print(ov.Core().available_devices)"'),
                          capture_output=True, text=True, timeout=120, check=True)
    devices = ast.literal_eval(proc.stdout.strip())  # the list the command prints
    assert isinstance(devices, list) and "CPU" in devices  # an NPU machine lists 'NPU' too


def test_the_download_line_installs_hf_and_targets_the_default_model_folder(tmp_path: Path) -> None:
    pip = here('.venv/bin/pip install "huggingface_hub>=0.34"')
    # The requirement is met by this environment (offline: nothing is fetched).
    subprocess.run([*pip[:2], "--dry-run", "--no-index", *pip[2:]], capture_output=True, text=True, check=True)
    download = ".venv/bin/hf download OpenVINO/Qwen2.5-1.5B-Instruct-int4-ov --local-dir ~/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov"
    argv = here(download)
    home = tmp_path / "home"
    local_dir = argv[argv.index("--local-dir") + 1].replace("~", str(home), 1)
    assert local_dir == default_paths({"HOME": str(home)})["model"]  # where --model looks by default
    # The real CLI accepts the line; offline it stops before any network access.
    proc = subprocess.run([*argv[: argv.index("--local-dir") + 1], local_dir], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(home)})
    assert proc.returncode != 0 and "offline mode is enabled" in proc.stdout + proc.stderr
    assert not Path(local_dir).exists()


def test_acceptance_on_a_machine_without_the_npu_driver(tmp_path: Path) -> None:
    """Step 4 as written, with the service's env file pointing npud at synthetic, empty sysfs and
    /dev trees: the driver-missing answer, the whole table and the JSON."""
    env_file = tmp_path / "home" / ".config" / "npud" / "npud.env"
    env_file.parent.mkdir(parents=True)
    env_file.write_text(f"OV_GENAI_NPU_SYSFS_ROOT={tmp_path / 'sys'}\nOV_GENAI_NPU_DEV_ACCEL={tmp_path / 'dev'}\n"
                        f"OV_GENAI_NPU_CACHE={tmp_path / 'cache'}\n")
    proc = subprocess.run(here("contrib/smoke_llm_npu.sh"), capture_output=True, text=True, timeout=120,
                          env=owner_env(tmp_path))
    assert proc.returncode == 1
    out = json.loads(proc.stdout)
    checks = {c["check"]: (c["status"], c["detail"]) for c in out["checks"]}
    assert checks["device node /dev/accel"] == (
        "FAIL", f"no {tmp_path / 'dev'}/accel*: the intel_vpu kernel driver is not loaded (sudo modprobe intel_vpu; "
                "see the 'intel_vpu driver' row)")
    assert checks["OpenVINO lists NPU"][1].startswith(
        "device NPU is not available (OpenVINO sees: CPU): there is no /dev/accel/accel* node. no intel_vpu device "
        f"under {tmp_path / 'sys'}/class/accel (no accel device at all).")
    assert out["report"]["env_file"]["path"] == str(env_file) and out["report"]["env_file"]["found"] is True
    assert "FAIL  OpenVINO lists NPU" in proc.stderr


def test_unit_installation(tmp_path: Path) -> None:
    env = owner_env(tmp_path)
    proc = subprocess.run(here("contrib/install-user-units.sh"), capture_output=True, text=True, env=env, check=True)
    units = tmp_path / "home" / ".config" / "systemd" / "user"
    assert sorted(p.name for p in units.iterdir()) == ["npud-http.socket", "npud.service", "npud.socket",
                                                      "openvino-genai-npu-worker.service"]
    assert f"ExecStart={BIN / 'npud'}\n" in (units / "npud.service").read_text()
    assert "systemctl --user enable --now npud.socket npud-http.socket" in proc.stdout
    assert "sudo loginctl enable-linger $USER" in proc.stdout and "systemd-run --user --pipe --wait id -nG" in proc.stdout
    assert (tmp_path / "home" / ".config" / "npud" / "npud.env").exists()


def test_the_checks_from_the_shell_and_from_python(tmp_path: Path) -> None:
    """Step 7 as written, against an npud process with the fake engine that is still loading when
    npuctl --wait starts (as after a reboot, the first request waits for the load)."""
    listener = NotifyListener()
    name = unique_socket()
    loaded = tmp_path / "loaded"
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"],
                            env=daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, NPUD_FAKE_LOAD_FILE=str(loaded)),
                            stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("READY=1")
        env = owner_env(tmp_path, OV_GENAI_NPU_SOCKET=name)
        npuctl = subprocess.Popen(here('.venv/bin/npuctl --wait generate --job title --input "We moved the standup to 9:30."'),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["status"] == "loading"
        loaded.touch()
        out, err = npuctl.communicate(timeout=60)
        assert npuctl.returncode == 0, err
        assert out.strip() == "Fake Title About The Input"
        python = subprocess.run(
            here(".venv/bin/python -c \"from npuclient import Client; print(Client().generate('title', 'We moved the standup to 9:30.').text)\""),
            env=env, capture_output=True, text=True, timeout=60)
        assert python.returncode == 0, python.stderr
        assert python.stdout.strip() == "Fake Title About The Input"
    finally:
        loaded.touch()
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0


@pytest.mark.realmodel
def test_the_whole_path_on_the_emulated_npu(tmp_path: Path) -> None:
    """Steps 4, 6 and 7 as written, on the emulated NPU (the NPU plugin's own pipeline computing on
    the CPU) with the committed optimum-exported model and a busy counter that advances at every
    read: the acceptance check passes from the service's env file and warms the compile cache;
    npud started with that env file (as the unit's EnvironmentFile= would) finds the blob; npuctl
    and the Python client get a title that says it is emulated."""
    model = MODELS[0]
    with AdvancingBusyCounter.in_sysfs(tmp_path / "sys") as busy:
        env_file = tmp_path / "home" / ".config" / "npud" / "npud.env"
        env_file.parent.mkdir(parents=True)
        env_file.write_text(
            "# as an NPU owner's ~/.config/npud/npud.env, emulated\n"
            f"OV_GENAI_NPU_DEVICE=NPU\nOV_GENAI_NPU_EMULATION=1\nOV_GENAI_NPU_MODEL={model_dir(model)}\n"
            f"OV_GENAI_NPU_BUSY_FILE={busy.path}\nOV_GENAI_NPU_CACHE={tmp_path / 'cache'}\n"
            f"OV_GENAI_NPU_MAX_PROMPT_LEN={Prompts(model).budget() + LONGER_PROMPTS}\n"
            f"OV_GENAI_NPU_MIN_RESPONSE_LEN={RESPONSE_LEN}\n")
        # Step 4: the acceptance check, reading the service's env file.
        acceptance = subprocess.run(here("contrib/smoke_llm_npu.sh"), capture_output=True, text=True, timeout=300,
                                    env=owner_env(tmp_path))
        assert acceptance.returncode == 0, acceptance.stderr
        report = json.loads(acceptance.stdout)
        # Emulated: a synthetic counter grew, which proves nothing about an NPU.
        assert report["ok"] is True and report["emulated"] is True and report["verified"] is False
        assert report["npu_busy_delta_us"] == busy.step
        # Step 6: the service, with the env file's variables as systemd would pass them.
        service_env = {**owner_env(tmp_path), **read_env_file(env_file)[0]}
        name = unique_socket()
        service = subprocess.Popen([str(BIN / "npud"), "--socket", name, "--no-http"], env=service_env,
                                   stderr=subprocess.DEVNULL)
        try:
            # Step 7: the checks from the shell and from Python.
            env = owner_env(tmp_path, OV_GENAI_NPU_SOCKET=name)
            shell = subprocess.run(here('.venv/bin/npuctl --wait generate --job title --input "We moved the standup to 9:30."'),
                                   env=env, capture_output=True, text=True, timeout=120)
            assert shell.returncode == 0, shell.stderr
            assert shell.stdout.strip()
            python = subprocess.run(
                here(".venv/bin/python -c \"from npuclient import Client; print(Client().generate('title', 'We moved the standup to 9:30.').text)\""),
                env=env, capture_output=True, text=True, timeout=120)
            assert python.returncode == 0, python.stderr
            assert python.stdout.strip()
            with RawConnection.open(name) as conn:
                health = conn.call("health")["result"]
                result = conn.call("generate", {"job": "title", "input": "We moved the standup to 9:30."})["result"]
            assert health["emulated"] is True and health["status"] == "ready"
            assert health["device_info"]["compile_cache"]["hit"] is True  # warmed by step 4
            assert result["emulated"] is True and result["npu_busy_delta_us"] == busy.step
            assert result["verified"] is False
        finally:
            service.terminate()
            assert service.wait(30) == 0
