"""The daemon's one configuration object, built at the edge from flags and environment.

Precedence: command-line flag, then ``OV_GENAI_NPU_*`` environment variable, then default.
Nothing below this module reads the environment: :class:`Config` is passed down.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec

from npuclient._version import __version__
from npuclient.framing import DEFAULT_MAX_LINE_BYTES
from npuclient.protocol import DEFAULT_MAX_PROMPT_TOKENS

ENV_PREFIX = "OV_GENAI_NPU_"
DEFAULT_SOCKET = "@npud"
BUILTIN_SMOLLM2 = "smollm2-135m"
#: Linux scheduling policies for the inference threads, by the names sched(7) gives them.
SchedPolicy = Literal["other", "batch", "idle"]
SCHED_POLICIES: tuple[SchedPolicy, ...] = get_args(SchedPolicy)


class ConfigError(Exception):
    """A flag or environment value that cannot be used; the message says which and why.

    ``source`` is the flag or environment variable the bad value came from, when it is one.
    """

    def __init__(self, message: str, source: str | None = None) -> None:
        super().__init__(message)
        self.source = source


class Config(msgspec.Struct, frozen=True, kw_only=True):
    socket: str = DEFAULT_SOCKET
    model: str
    device: str = "NPU"
    #: Run --device NPU with the NPU plugin computing on the CPU (NPUW_DEVICES=CPU): the real NPU
    #: pipeline code without the hardware, for development and CI. Never on unless asked for.
    npu_emulation: bool = False
    #: Prompt-lookup decoding on pipelines that honour it (the CPU's; never the NPU's).
    prompt_lookup: bool = True
    cache_dir: str
    lock_file: str
    cache_max_mb: int = 2048
    lock_timeout_s: float = 60.0
    queue_depth: int = 8
    busy_file: str | None = None
    sysfs_root: str = "/sys"
    dev_accel: str = "/dev/accel"
    busy_check: bool = True
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS
    min_response_len: int = 64
    prefill_hint: str = "DYNAMIC"
    generate_hint: str = "FAST_COMPILE"
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    shutdown_timeout_s: float = 30.0
    http: bool = True
    host: str = "127.0.0.1"
    port: int = 18820
    token_file: str | None = None
    max_connections: int = 256
    max_connections_per_uid: int = 64
    max_in_flight: int = 16
    idle_timeout_s: float = 300.0
    line_timeout_s: float = 10.0
    write_buffer_bytes: int = 1024 * 1024
    exit_idle_after_s: float | None = None
    stuck_after_s: float = 300.0
    load_retries: int = 10
    load_retry_delay_s: float = 5.0
    #: CPU priority of the inference (the worker thread and the threads OpenVINO makes for it):
    #: nice steps below the daemon's own, and the policy. See npud/priority.py.
    worker_nice: int = 10
    worker_sched: SchedPolicy = "other"
    #: OpenVINO CPU inference threads (INFERENCE_NUM_THREADS); 0: OpenVINO's default (one per
    #: physical core). --device CPU only.
    worker_threads: int = 0
    log_level: str = "INFO"

    @property
    def is_npu(self) -> bool:
        return self.device == "NPU"  # normalised to upper case by load_config

    @property
    def device_label(self) -> str:
        """The device as people should read it: an emulated NPU never passes for hardware."""
        return f"{self.device} (emulated on the CPU)" if self.npu_emulation else self.device

    @property
    def compile_cache_dir(self) -> Path:
        """OpenVINO's ``CACHE_DIR`` (compiled blobs)."""
        return Path(self.cache_dir) / "compiled"

    @property
    def model_store_dir(self) -> Path:
        """Where built-in models are converted to OpenVINO IR once."""
        return Path(self.cache_dir) / "models"


def default_paths(environ: Mapping[str, str]) -> dict[str, str]:
    """Per-user defaults that follow the XDG base directory spec (and systemd's variables)."""
    home = Path(environ.get("HOME", str(Path.home())))
    data = Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    # systemd sets CACHE_DIRECTORY for a unit with CacheDirectory=; prefer it.
    cache = environ.get("CACHE_DIRECTORY") or str(
        Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "npud"
    )
    return {
        "model": str(data / "npud" / "models" / "Qwen2.5-1.5B-Instruct-int4-ov"),
        "cache_dir": cache,
        "lock_file": default_lock_file(environ),
    }


def default_lock_file(environ: Mapping[str, str]) -> str:
    """The NPU lock file when none is given: in a directory only this user (or root) can write,
    never /tmp, where another user could plant a link or hold the lock (CONTRACT.md §8).

    ``$XDG_RUNTIME_DIR`` (a login session, a user unit), else ``$RUNTIME_DIRECTORY`` (a system
    unit with RuntimeDirectory=; the first one if several). "" when neither is set (sudo, cron, a
    system unit without it): on the NPU npud then refuses to start and asks for --lock-file.
    """
    runtime = environ.get("XDG_RUNTIME_DIR") or environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return str(Path(runtime) / "npu.lock") if runtime else ""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_id_list(text: str) -> tuple[int, ...]:
    ids = []
    for part in text.replace(",", " ").split():
        # By number only: an env file runs no command (systemd does not expand $(...)), and a name
        # resolved here could name someone else after the account is renumbered.
        if not part.isascii() or not part.isdigit():
            raise ValueError(f"{part!r} is not a uid or gid number; give numbers, e.g. the output of "
                             f"'getent group npud-users | cut -d: -f3' (an environment file runs no command)")
        ids.append(int(part))
    return tuple(ids)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def _device(text: str) -> str:
    value = text.strip().upper()
    if not value:
        raise ValueError("must not be empty")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 or more")
    return value


def _nice(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:
        raise ValueError("must be between 0 (no change) and 19 steps")
    return value


def _sched_policy(text: str) -> SchedPolicy:
    value = text.strip().lower()
    for policy in SCHED_POLICIES:
        if value == policy:
            return policy
    raise ValueError(f"unknown policy {text!r}; choose {', '.join(SCHED_POLICIES)}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable suffix, how to parse it, and its help."""

    field: str
    flag: str
    env: str
    parse: Callable[[str], Any]
    help: str
    repeatable: bool = False
    switch_value: bool | None = None  # for on/off flags: the value the flag sets
    #: What ``--help`` shows as the default when the value alone would mislead (None, or a path
    #: that depends on the environment): the same words as the README's configuration table.
    default_text: str | None = None


OPTIONS: tuple[Option, ...] = (
    Option("socket", "--socket", "SOCKET", str,
           "Unix socket: '@name' is abstract, anything else a filesystem path (mode 0600)"),
    Option("model", "--model", "MODEL", str,
           f"OpenVINO IR folder, .gguf file, or the built-in name '{BUILTIN_SMOLLM2}'"),
    # Normalised here, once: OpenVINO's device names are upper case ("cpu" would pass a
    # case-insensitive startup check and then fail every load).
    Option("device", "--device", "DEVICE", _device, "OpenVINO device: NPU or CPU (any case); never falls back"),
    Option("npu_emulation", "--npu-emulation", "EMULATION", _parse_bool,
           "device NPU only: run the NPU plugin's own LLM pipeline on the CPU (NPUW_DEVICES=CPU), "
           "for development and CI without an NPU; health, models and results say 'emulated'",
           switch_value=True),
    Option("prompt_lookup", "--no-prompt-lookup", "NO_PROMPT_LOOKUP", lambda s: not _parse_bool(s),
           "do not use prompt-lookup decoding (CPU only: drafts copied from the input, verified in one "
           "pass; faster on summaries, notifications and memory candidates; the NPU pipeline never uses it)",
           switch_value=False),
    Option("cache_dir", "--cache-dir", "CACHE", str,
           "cache root: compiled blobs in <root>/compiled (OpenVINO CACHE_DIR), converted models in <root>/models"),
    Option("cache_max_mb", "--cache-max-mb", "CACHE_MAX_MB", _positive_int,
           "compile cache size cap; other configurations' blobs are pruned, oldest first"),
    Option("lock_file", "--lock-file", "LOCK_FILE", str,
           "flock file that serialises NPU use across processes (a regular file owned by you or root)",
           default_text="$XDG_RUNTIME_DIR/npu.lock, else $RUNTIME_DIRECTORY/npu.lock; required on the NPU "
           "without either"),
    Option("lock_timeout_s", "--lock-timeout", "LOCK_TIMEOUT", _positive_float,
           "seconds to wait for the NPU lock before failing a job"),
    Option("queue_depth", "--queue-depth", "QUEUE_DEPTH", _positive_int,
           "jobs that may wait behind the running one; more are rejected at once"),
    Option("busy_file", "--busy-file", "BUSY_FILE", str,
           "npu_busy_time_us file to read",
           default_text="discovered under <sysfs-root>/class/accel"),
    Option("sysfs_root", "--sysfs-root", "SYSFS_ROOT", str, "root of sysfs for NPU discovery"),
    Option("dev_accel", "--dev-accel", "DEV_ACCEL", str,
           "directory of the NPU device nodes (accel*), inspected to explain a missing NPU"),
    Option("busy_check", "--no-busy-check", "NO_BUSY_CHECK", lambda s: not _parse_bool(s),
           "NPU only: do not require the busy counter (health reports it disabled)", switch_value=False),
    Option("allow_uids", "--allow-uid", "ALLOW_UID", _parse_id_list,
           "also allow this uid (repeatable; env: comma-separated). Own uid and root are always allowed",
           repeatable=True, default_text="none"),
    Option("allow_gids", "--allow-gid", "ALLOW_GID", _parse_id_list,
           "also allow peers in this group (repeatable; env: comma-separated)", repeatable=True,
           default_text="none"),
    Option("max_prompt_tokens", "--max-prompt-len", "MAX_PROMPT_LEN", _positive_int,
           "prompt budget in tokens after the chat template; NPU MAX_PROMPT_LEN"),
    Option("min_response_len", "--min-response-len", "MIN_RESPONSE_LEN", _positive_int,
           "NPU MIN_RESPONSE_LEN"),
    Option("prefill_hint", "--prefill-hint", "PREFILL_HINT", str, "NPU PREFILL_HINT"),
    Option("generate_hint", "--generate-hint", "GENERATE_HINT", str, "NPU GENERATE_HINT"),
    Option("max_line_bytes", "--max-line-bytes", "MAX_LINE_BYTES", _positive_int,
           "largest accepted JSON-RPC line; longer lines close the connection"),
    Option("shutdown_timeout_s", "--shutdown-timeout", "SHUTDOWN_TIMEOUT", _positive_float,
           "seconds a running job may take to finish after SIGTERM; then it is stopped and answered -32006"),
    Option("http", "--no-http", "NO_HTTP", lambda s: not _parse_bool(s),
           "do not start the loopback HTTP shim", switch_value=False),
    Option("host", "--host", "HOST", str, "HTTP shim address; only loopback addresses are accepted"),
    Option("port", "--port", "PORT", _port, "HTTP shim port (0: any free port)"),
    Option("token_file", "--token-file", "TOKEN_FILE", str,
           "require 'Authorization: Bearer <token>' on HTTP, token read from this 0600 file",
           default_text="none (no token required on HTTP)"),
    Option("max_connections", "--max-connections", "MAX_CONNECTIONS", _positive_int,
           "open connections in total (socket and HTTP each); more are refused"),
    Option("max_connections_per_uid", "--max-connections-per-uid", "MAX_CONNECTIONS_PER_UID", _positive_int,
           "open socket connections per peer uid"),
    Option("max_in_flight", "--max-in-flight", "MAX_IN_FLIGHT", _positive_int,
           "unanswered requests per connection (pipelining bound); more get -32009"),
    Option("idle_timeout_s", "--idle-timeout", "IDLE_TIMEOUT", _positive_float,
           "close a connection with nothing pending and no traffic for this many seconds"),
    Option("line_timeout_s", "--line-timeout", "LINE_TIMEOUT", _positive_float,
           "close a connection whose partial line (HTTP: request head, then body) is not completed "
           "within this many seconds; also how long HTTP waits for a client to read its reply"),
    Option("write_buffer_bytes", "--write-buffer-limit", "WRITE_BUFFER_LIMIT", _positive_int,
           "disconnect a client that leaves more than this many reply bytes unread"),
    Option("exit_idle_after_s", "--exit-idle-after", "EXIT_IDLE_AFTER", _positive_float,
           "socket activation only: exit after this many idle seconds (frees NPU memory; systemd restarts on demand)",
           default_text="off"),
    Option("stuck_after_s", "--stuck-after", "STUCK_AFTER", _positive_float,
           "a generation running longer than this counts as hung: the systemd watchdog is no longer fed"),
    Option("load_retries", "--load-retries", "LOAD_RETRIES", _non_negative_int,
           "retry a model load that failed for a transient reason (NPU lock held, device busy or "
           "lost) this many times; 0: never"),
    Option("load_retry_delay_s", "--load-retry-delay", "LOAD_RETRY_DELAY", _positive_float,
           "seconds before the first load retry; doubled each time, at most 300"),
    Option("worker_nice", "--worker-nice", "WORKER_NICE", _nice,
           "run the inference threads this many nice steps (0 to 19) below the daemon, at most at "
           "19, the lowest; the event loop keeps the daemon's own, so health and the user's programs "
           "stay fast while a job runs"),
    Option("worker_sched", "--worker-sched", "WORKER_SCHED", _sched_policy,
           "Linux scheduling policy of the inference threads: other (normal), batch, or idle "
           "(runs only on CPU time nothing else wants)"),
    Option("worker_threads", "--worker-threads", "WORKER_THREADS", _non_negative_int,
           "--device CPU only: OpenVINO inference threads (INFERENCE_NUM_THREADS); 0: OpenVINO's "
           "default, one per physical core. Fewer leave cores to the user's programs"),
    Option("log_level", "--log-level", "LOG_LEVEL", lambda s: s.upper(),
           "DEBUG, INFO, WARNING or ERROR"),
)


def _defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in msgspec.structs.fields(Config)
                if f.default is not msgspec.NODEFAULT}
    defaults.update(default_paths(environ))
    return defaults


def _shown_default(opt: Option, default: Any) -> str:
    if opt.default_text is not None:
        return opt.default_text
    if opt.switch_value is not None:
        return "off"
    if default in (None, ()):
        return "none"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))  # "60", as the README writes it, not "60.0"
    return str(default)


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    defaults = _defaults(environ)
    parser = argparse.ArgumentParser(
        prog="npud",
        description="Local daemon for small, bounded LLM jobs on an Intel NPU (OpenVINO GenAI).",
        epilog="Every option can also be set with the environment variable shown; a flag wins.",
    )
    parser.add_argument("--version", action="version", version=f"npud {__version__}")
    for opt in OPTIONS:
        env_name = ENV_PREFIX + opt.env
        text = f"{opt.help} [env {env_name}; default: {_shown_default(opt, defaults.get(opt.field))}]"
        if opt.switch_value is not None:
            parser.add_argument(opt.flag, dest=opt.field, action="store_const",
                                const=opt.switch_value, default=None, help=text)
        elif opt.repeatable:
            parser.add_argument(opt.flag, dest=opt.field, action="append", type=int,
                                default=None, metavar="ID", help=text)
        else:
            parser.add_argument(opt.flag, dest=opt.field, default=None,
                                metavar=opt.env, help=text)
    return parser


def load_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Config:
    """Parse flags and environment into a :class:`Config`; raise :class:`ConfigError` on bad values."""
    args = build_parser(environ).parse_args(argv)
    values = _defaults(environ)
    for opt in OPTIONS:
        env_name = ENV_PREFIX + opt.env
        flag_value = getattr(args, opt.field)
        try:
            if flag_value is not None:
                if opt.switch_value is not None or opt.repeatable:
                    values[opt.field] = tuple(flag_value) if opt.repeatable else flag_value
                else:
                    values[opt.field] = opt.parse(flag_value)
            elif environ.get(env_name) is not None:
                values[opt.field] = opt.parse(environ[env_name])
        except ValueError as exc:
            source = opt.flag if flag_value is not None else env_name
            raise ConfigError(f"{source}: {exc}", source) from None
    if values["log_level"] not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"--log-level: unknown level {values['log_level']!r}")
    if values["npu_emulation"] and values["device"] != "NPU":
        # Never a silent change of device: emulation is an NPU mode, asked for by name.
        raise ConfigError(f"--npu-emulation runs the NPU pipeline on the CPU and needs --device NPU "
                          f"(got --device {values['device']}); without it, drop --npu-emulation")
    if values["worker_threads"] and values["device"] != "CPU":
        # The NPU computes on the NPU; its CPU-side threads are not this setting.
        raise ConfigError(f"--worker-threads sets the CPU plugin's inference threads and needs --device CPU "
                          f"(got --device {values['device']}{' with --npu-emulation' if values['npu_emulation'] else ''})")
    if (values["allow_uids"] or values["allow_gids"]) and values["http"] and not values["token_file"]:
        # TCP has no peer credentials: an open shim would serve every local user the allow-list
        # leaves out (and, in the system unit, bypass the npud-users group).
        raise ConfigError("--allow-uid/--allow-gid admit only the users you name to the socket, but the HTTP "
                          "shim cannot tell users apart and would serve every local user: add --token-file "
                          "(OV_GENAI_NPU_TOKEN_FILE) or turn HTTP off with --no-http (OV_GENAI_NPU_NO_HTTP=1)")
    return Config(**values)
