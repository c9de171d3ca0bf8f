"""Config is built at the edge: flags beat environment beats defaults; bad values are clear errors."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from npud.config import OPTIONS, ConfigError, load_config

from .conftest import REPO, npud_command


def test_defaults_follow_xdg() -> None:
    env = {"HOME": "/home/u", "XDG_RUNTIME_DIR": "/run/user/1000"}
    config = load_config([], env)
    assert config.socket == "@npud"
    assert config.device == "NPU"
    assert config.model == "/home/u/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov"
    assert config.cache_dir == "/home/u/.cache/npud"
    assert config.lock_file == "/run/user/1000/npu.lock"
    assert (config.max_prompt_tokens, config.min_response_len) == (1024, 64)
    assert (config.prefill_hint, config.generate_hint) == ("DYNAMIC", "FAST_COMPILE")
    assert config.busy_check is True
    assert config.queue_depth == 8


def test_environment_then_flags() -> None:
    env = {
        "HOME": "/h",
        "OV_GENAI_NPU_MODEL": "/models/env",
        "OV_GENAI_NPU_DEVICE": "CPU",
        "OV_GENAI_NPU_CACHE": "/c",
        "OV_GENAI_NPU_QUEUE_DEPTH": "3",
        "OV_GENAI_NPU_ALLOW_UID": "1001, 1002",
        "OV_GENAI_NPU_NO_BUSY_CHECK": "1",
        "OV_GENAI_NPU_NO_HTTP": "1",
        "OV_GENAI_NPU_MAX_PROMPT_LEN": "512",
    }
    config = load_config([], env)
    assert (config.model, config.device, config.cache_dir, config.queue_depth) == ("/models/env", "CPU", "/c", 3)
    assert config.allow_uids == (1001, 1002)
    assert config.busy_check is False
    assert config.max_prompt_tokens == 512
    config = load_config(["--model", "/models/flag", "--queue-depth", "5", "--allow-uid", "7", "--allow-uid", "8"], env)
    assert (config.model, config.queue_depth, config.allow_uids) == ("/models/flag", 5, (7, 8))
    assert config.compile_cache_dir.as_posix() == "/c/compiled"


def test_systemd_cache_directory_is_preferred() -> None:
    assert load_config([], {"HOME": "/h", "CACHE_DIRECTORY": "/var/cache/npud"}).cache_dir == "/var/cache/npud"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--queue-depth", "0"], {}, "--queue-depth: must be at least 1"),
        ([], {"OV_GENAI_NPU_QUEUE_DEPTH": "many"}, "OV_GENAI_NPU_QUEUE_DEPTH: invalid literal"),
        ([], {"OV_GENAI_NPU_NO_BUSY_CHECK": "maybe"}, "OV_GENAI_NPU_NO_BUSY_CHECK: not a boolean"),
        (["--lock-timeout", "-1"], {}, "--lock-timeout: must be greater than 0"),
        (["--log-level", "loud"], {}, "unknown level 'LOUD'"),
    ],
)
def test_bad_values(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, {"HOME": "/h", **env})


def test_help_documents_every_option_with_env_and_default() -> None:
    out = subprocess.run(npud_command("--help"), capture_output=True, text=True, check=True).stdout
    for name in ("OV_GENAI_NPU_SOCKET", "OV_GENAI_NPU_MODEL", "OV_GENAI_NPU_DEVICE", "OV_GENAI_NPU_CACHE",
                 "OV_GENAI_NPU_QUEUE_DEPTH", "OV_GENAI_NPU_LOCK_FILE", "OV_GENAI_NPU_BUSY_FILE"):
        assert name in out
    assert "default: @npud" in out and "default: NPU" in out


@pytest.mark.parametrize(("given", "device"), [("cpu", "CPU"), (" Npu ", "NPU"), ("CPU", "CPU"), ("gpu.0", "GPU.0")])
def test_device_is_normalised_at_the_edge(given: str, device: str) -> None:
    assert load_config(["--device", given], {"HOME": "/h"}).device == device
    assert load_config([], {"HOME": "/h", "OV_GENAI_NPU_DEVICE": given}).device == device


def test_empty_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="--device: must not be empty"):
        load_config(["--device", " "], {"HOME": "/h"})


# Defaults computed from the environment ($HOME, $XDG_*): help shows the resolved path, the README
# the rule; both are right.
PATH_DEFAULTS = {"--model", "--cache-dir", "--lock-file"}


def test_help_and_readme_state_the_same_defaults() -> None:
    """Every flag's default in `npud --help` is the one in the README's configuration table."""
    help_text = " ".join(subprocess.run(npud_command("--help"), capture_output=True, text=True, check=True,
                                        env={**os.environ, "COLUMNS": "1000"}).stdout.split())
    shown = dict(re.findall(r"(--[a-z-]+)(?: [A-Z_]+)? (?:(?! --)[^\[])*\[env [A-Z_]+; default: ([^\]]*)\]", help_text))
    readme_rows: dict[str, str] = {}
    for line in (REPO / "README.md").read_text().splitlines():
        row = re.match(r"\| (`--[^|]*) \| [^|]* \| (.*) \|$", line)
        if row:
            for flag in re.findall(r"`(--[a-z-]+)`", row.group(1)):
                readme_rows[flag] = row.group(2).replace("`", "")
    assert set(shown) == {opt.flag for opt in OPTIONS}
    for flag, default in shown.items():
        if flag not in PATH_DEFAULTS:
            assert default in readme_rows[flag], (flag, default, readme_rows[flag])


def test_bad_value_exits_2_with_message() -> None:
    proc = subprocess.run(npud_command("--queue-depth", "zero"), capture_output=True, text=True)
    assert proc.returncode == 2
    assert "npud: --queue-depth:" in proc.stderr


def test_npu_emulation_is_explicit_and_only_for_the_npu() -> None:
    assert load_config([], {"HOME": "/h"}).npu_emulation is False  # never on by default
    assert load_config(["--npu-emulation"], {"HOME": "/h"}).npu_emulation is True
    config = load_config([], {"HOME": "/h", "OV_GENAI_NPU_EMULATION": "1"})
    assert config.npu_emulation is True and config.device == "NPU"
    assert config.device_label == "NPU (emulated on the CPU)"
    assert load_config([], {"HOME": "/h"}).device_label == "NPU"
    for argv, env in ((["--npu-emulation", "--device", "CPU"], {}),
                      ([], {"OV_GENAI_NPU_EMULATION": "yes", "OV_GENAI_NPU_DEVICE": "cpu"})):
        with pytest.raises(ConfigError, match="--npu-emulation runs the NPU pipeline on the CPU and needs --device NPU"):
            load_config(argv, {"HOME": "/h", **env})


def test_npu_emulation_is_in_help() -> None:
    out = " ".join(subprocess.run(npud_command("--help"), capture_output=True, text=True, check=True).stdout.split())
    assert "--npu-emulation" in out and "OV_GENAI_NPU_EMULATION" in out and "NPUW_DEVICES=CPU" in out


@pytest.mark.parametrize("allow", [["--allow-uid", "1001"], ["--allow-gid", "50"]])
def test_an_allow_list_with_an_open_http_shim_is_refused(allow: list[str]) -> None:
    """The shim has no peer identity: with an allow-list and HTTP on without a token, every local
    user the list leaves out could still run jobs over HTTP (verify review 2: the system unit with
    NO_HTTP=0 and no token bypassed ALLOW_GID)."""
    with pytest.raises(ConfigError, match="--token-file .* --no-http") as refused:
        load_config(allow, {"HOME": "/h"})
    assert "every local user" in str(refused.value)
    assert load_config([*allow, "--no-http"], {"HOME": "/h"}).http is False
    assert load_config([*allow, "--token-file", "/h/token"], {"HOME": "/h"}).token_file == "/h/token"


@pytest.mark.parametrize("value", ["npud-users", "$(getent group npud-users | cut -d: -f3)", "-5"])
def test_an_allow_list_entry_that_is_not_an_id_says_so(value: str) -> None:
    """Verify review 4b: the system installer prints `OV_GENAI_NPU_ALLOW_GID=$(getent group
    npud-users | cut -d: -f3)` for /etc/npud/npud.env, where systemd runs no command, and a group
    name is the natural thing to write. npud answered "invalid literal for int() with base 10:
    '$(getent'" (Python's words, not what to do), and took -5 as a gid."""
    with pytest.raises(ConfigError) as caught:
        load_config(["--device", "CPU", "--no-http"], {"OV_GENAI_NPU_ALLOW_GID": value})
    message = str(caught.value)
    assert "OV_GENAI_NPU_ALLOW_GID" in message and "int()" not in message, message
    assert "getent group" in message and "number" in message, message


def test_an_empty_on_off_variable_means_off_and_a_stray_word_is_refused() -> None:
    """README "Configuration": an empty value is an absent flag (an env file's `NO_HTTP=` turns the
    shim on again), a value that is no boolean is a clear error naming the variable."""
    assert load_config([], {"HOME": "/h", "OV_GENAI_NPU_NO_HTTP": ""}).http is True
    assert load_config([], {"HOME": "/h", "OV_GENAI_NPU_NO_HTTP": " on "}).http is False
    with pytest.raises(ConfigError, match="OV_GENAI_NPU_NO_HTTP: not a boolean"):
        load_config([], {"HOME": "/h", "OV_GENAI_NPU_NO_HTTP": "maybe"})
