"""The shipped units and installers: user units carry nothing a user unit ignores or that turns on
a private user namespace; the system units carry the hardening, verify clean, and agree with the
system env file; the installers write verifiable units; bootstrap explains a missing python3-venv;
the watchdog is fed while the model loads (a first NPU compile takes minutes)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from npud.envfile import read_env_file

from .conftest import REPO, RawConnection, unique_socket
from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env

README = (REPO / "README.md").read_text()
USER_UNITS = sorted((REPO / "systemd").glob("*.s*"))
SYSTEM_DIR = REPO / "systemd" / "system"
SYSTEM_UNITS = sorted(SYSTEM_DIR.glob("*.s*[te]"))  # .service, .socket
HAVE_ANALYZE = shutil.which("systemd-analyze") is not None

# Directives a unit of the per-user service manager cannot honour, from systemd.exec(5) and
# systemd.resource-control(5). Those needing a mount or other namespace are documented as "only
# available for system services, or for services running in per-user instances of the service
# manager in which case PrivateUsers= is implicitly enabled" (older systemd: "... when
# PrivateUsers= is enabled", i.e. otherwise without effect); either way wrong for npud, whose peer
# check needs the real uids. Some are "only available for system services and not supported for
# services running in per-user instances". The device filter (DeviceAllow=, DevicePolicy=) is the
# system manager's BPF program; a user manager ignores it (systemd issue #23198). And a user
# manager cannot change its service's identity.
NAMESPACE_IMPLYING = {
    "ProtectSystem", "ProtectHome", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths",
    "NoExecPaths", "TemporaryFileSystem", "PrivateTmp", "PrivateDevices", "PrivateNetwork",
    "NetworkNamespacePath", "PrivateIPC", "IPCNamespacePath", "ProtectHostname", "ProtectClock",
    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "PrivateMounts", "MountFlags",
    "RootDirectory", "BindPaths", "BindReadOnlyPaths", "ExtensionDirectories", "PrivateUsers", "PAMName",
}
SYSTEM_ONLY = {
    "RootImage", "RootImageOptions", "RootHash", "RootHashSignature", "RootVerity", "ProtectProc", "ProcSubset",
    "MountImages", "ExtensionImages", "SecureBits", "ProtectControlGroups", "RemoveIPC", "LogNamespace",
}
IGNORED_IN_USER_UNITS = {"DeviceAllow", "DevicePolicy", "User", "Group", "SupplementaryGroups", "DynamicUser",
                         "AmbientCapabilities", "CapabilityBoundingSet", "IPAddressDeny", "IPAddressAllow"}
NOT_FOR_USER_UNITS = NAMESPACE_IMPLYING | SYSTEM_ONLY | IGNORED_IN_USER_UNITS


def directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        match = re.match(r"([A-Za-z]+)=(.*)$", line)
        if match:
            found.setdefault(match.group(1), []).append(match.group(2))
    return found


def verify(units: list[Path], user: bool, cwd: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(["systemd-analyze", "verify", *(["--user"] if user else []), *map(str, units)],
                          capture_output=True, text=True, cwd=cwd, env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})


@pytest.mark.parametrize("unit", USER_UNITS, ids=lambda p: p.name)
def test_user_units_carry_no_line_a_user_unit_ignores(unit: Path) -> None:
    assert not set(directives(unit)) & NOT_FOR_USER_UNITS


def test_user_services_keep_what_a_user_manager_enforces() -> None:
    for name in ("npud.service", "openvino-genai-npu-worker.service"):
        found = directives(REPO / "systemd" / name)
        for key, value in (("Type", "notify"), ("NoNewPrivileges", "yes"), ("CacheDirectory", "npud"),
                           ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"), ("WatchdogSec", "120")):
            assert found[key] == [value], (name, key)
        assert "PrivateNetwork" not in found and "MemoryDenyWriteExecute" not in found


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
def test_system_units_verify_without_warnings(tmp_path: Path) -> None:
    assert {u.name for u in SYSTEM_UNITS} == {"npud.service", "npud.socket", "npud-http.socket"}
    proc = verify(SYSTEM_UNITS, user=False, cwd=SYSTEM_DIR, tmp_path=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr


def test_system_service_is_hardened_and_serves_other_users() -> None:
    found = directives(SYSTEM_DIR / "npud.service")
    for key, value in (("User", "npud"), ("SupplementaryGroups", "render"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("DevicePolicy", "closed"),
                       ("DeviceAllow", "char-accel rw"), ("StateDirectory", "npud"), ("CacheDirectory", "npud"),
                       ("NoNewPrivileges", "yes"), ("EnvironmentFile", "-/etc/npud/npud.env")):
        assert found[key] == [value], key
    # These would break serving other users or the NPU: see the comment in the unit.
    for absent in ("PrivateUsers", "PrivateNetwork", "PrivateDevices", "MemoryDenyWriteExecute", "DynamicUser"):
        assert absent not in found
    socket_unit = directives(SYSTEM_DIR / "npud.socket")
    assert socket_unit["ListenStream"] == ["@npud"] and socket_unit["FileDescriptorName"] == ["rpc"]


def test_system_unit_defaults_and_the_system_env_file_agree() -> None:
    """npud.smoke reads /etc/npud/npud.env: it must say what the unit does."""
    unit = dict(value.split("=", 1) for value in directives(SYSTEM_DIR / "npud.service")["Environment"])
    example, _ = read_env_file(REPO / "contrib" / "npud-system.env.example")
    assert unit == example
    assert unit["OV_GENAI_NPU_MODEL"].startswith("/var/lib/npud/")  # StateDirectory=npud
    assert unit["OV_GENAI_NPU_CACHE"] == "/var/cache/npud"  # CacheDirectory=npud


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_snippet_creates_the_account_in_render(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSTEM_DIR / "npud.sysusers.conf")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text()
    assert re.search(r"^npud:x:\d+:\d+:[^:]*:/var/lib/npud:", passwd, re.M)
    group = (tmp_path / "etc" / "group").read_text()
    assert re.search(r"^render:x:\d+:npud$", group, re.M) and re.search(r"^npud-users:x:\d+:$", group, re.M)


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers or systemd-tmpfiles is not installed")
def test_the_system_unit_uses_the_shared_lock_its_tmpfiles_snippet_makes(tmp_path: Path) -> None:
    """The system unit's lock was /var/lib/npud/npu.lock, created 0600 under UMask=0077: no other
    program could open it to take the same flock. It is now /run/npu.lock, made by root at boot
    (group render, 0660: whoever may use the NPU may lock it); inside the unit /run is read-only
    (ProtectSystem=strict), so npud opens it read-only (tests/test_npulock.py, on a real read-only
    mount)."""
    unit_env = dict(value.split("=", 1) for value in directives(SYSTEM_DIR / "npud.service")["Environment"])
    assert unit_env["OV_GENAI_NPU_LOCK_FILE"] == "/run/npu.lock"
    assert directives(SYSTEM_DIR / "npud.service")["ProtectSystem"] == ["strict"]
    (tmp_path / "etc").mkdir()
    for tool, snippet in (("systemd-sysusers", "npud.sysusers.conf"), ("systemd-tmpfiles", "npud.tmpfiles.conf")):
        proc = subprocess.run([tool, f"--root={tmp_path}", *(["--create"] if tool == "systemd-tmpfiles" else []),
                               str(SYSTEM_DIR / snippet)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    lock = os.lstat(tmp_path / "run" / "npu.lock")
    render_gid = int(re.findall(r"^render:x:(\d+):", (tmp_path / "etc" / "group").read_text(), re.M)[0])
    assert stat.S_ISREG(lock.st_mode) and stat.S_IMODE(lock.st_mode) == 0o660
    assert (lock.st_uid, lock.st_gid) == (0, render_gid)


@pytest.mark.skipif(not HAVE_ANALYZE, reason="systemd-analyze is not installed")
def test_system_installer_writes_verifiable_units(tmp_path: Path) -> None:
    npud = Path(sys.executable).parent / "npud"
    root = tmp_path / "root"
    proc = subprocess.run([str(REPO / "contrib" / "install-system-units.sh"), "--npud", str(npud), "--root", str(root)],
                          capture_output=True, text=True)
    if str(npud).startswith(("/home/", "/root/")):
        assert proc.returncode == 1 and "which the system unit hides" in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr
    units = root / "etc" / "systemd" / "system"
    assert f"ExecStart={npud}\n" in (units / "npud.service").read_text()
    assert (root / "etc" / "sysusers.d" / "npud.conf").read_text() == (SYSTEM_DIR / "npud.sysusers.conf").read_text()
    assert (root / "etc" / "npud" / "npud.env").exists()
    assert (root / "etc" / "tmpfiles.d" / "npu.conf").read_text() == (SYSTEM_DIR / "npud.tmpfiles.conf").read_text()
    assert "sudo systemctl enable --now npud.socket\n" in proc.stdout and "npud-http.socket" not in proc.stdout
    checked = verify(sorted(units.iterdir()), user=False, cwd=units, tmp_path=tmp_path)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr


FAKE_VENV_PYTHON = """#!/bin/sh
# Stands in for python3 -m venv, and for the venv's python -m pip install: it records what pip
# was asked to build and, like a setuptools build in place, leaves build/ and *.egg-info there.
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    shift 2
    for arg in "$@"; do
        case "$arg" in
            /*) echo "$arg" >> "$PIP_LOG"; mkdir -p "$arg/build" "$arg/npud.egg-info"; test -f "$arg/pyproject.toml" || exit 3 ;;
        esac
    done
    exit 0
fi
exit 2
"""


def test_system_installer_builds_from_a_copy_and_leaves_the_checkout_alone(tmp_path: Path) -> None:
    """`sudo contrib/install-system-units.sh` ran pip in the owner's checkout as root: root-owned
    build/ and *.egg-info stayed there and broke the owner's next contrib/bootstrap.sh."""
    checkout = tmp_path / "checkout"
    for part in ("contrib", "systemd", "npud", "npuclient"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    before = sorted(str(p.relative_to(checkout)) for p in checkout.rglob("*"))
    fake = tmp_path / "python3"
    fake.write_text(FAKE_VENV_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "pip.log"
    proc = subprocess.run([str(checkout / "contrib" / "install-system-units.sh"), "--root", str(tmp_path / "root")],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake), "PIP_LOG": str(log)})
    assert proc.returncode == 0, proc.stderr
    built = log.read_text().split()
    assert len(built) == 2 and built[0].endswith("/npuclient") and Path(built[0]).parent == Path(built[1])
    assert not Path(built[1]).is_relative_to(checkout) and not Path(built[1]).exists()  # a copy, removed
    assert sorted(str(p.relative_to(checkout)) for p in checkout.rglob("*")) == before


# /etc/npud/npud.env as the installer wrote it before the shared lock and the HTTP default changed
# (contrib/npud-system.env.example at 5414dae): the installer keeps an existing file.
EARLIER_SYSTEM_ENV = """\
OV_GENAI_NPU_MODEL=/var/lib/npud/models/Qwen2.5-1.5B-Instruct-int4-ov
OV_GENAI_NPU_CACHE=/var/cache/npud
OV_GENAI_NPU_LOCK_FILE=/var/lib/npud/npu.lock
ZE_INTEL_NPU_CACHE_DIR=/var/cache/npud/ze_intel_npu_cache
#OV_GENAI_NPU_TOKEN_FILE=/etc/npud/token
#OV_GENAI_NPU_NO_HTTP=1
"""


def run_system_installer(root: Path) -> subprocess.CompletedProcess[str]:
    """contrib/install-system-units.sh --root ROOT with this environment's npud; it must succeed."""
    npud = Path(sys.executable).parent / "npud"
    if str(npud).startswith(("/home/", "/root/")):
        pytest.skip("the installer refuses an npud under /home or /root")
    proc = subprocess.run([str(REPO / "contrib" / "install-system-units.sh"), "--npud", str(npud), "--root", str(root)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def run_user_installer(home: Path) -> subprocess.CompletedProcess[str]:
    """contrib/install-user-units.sh for a user whose $HOME is ``home``; it must succeed."""
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run([str(REPO / "contrib" / "install-user-units.sh"), str(bin_dir / "npud")],
                          env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def enable_user_sockets(home: Path) -> None:
    """The links `systemctl --user enable npud.socket npud-http.socket` leaves."""
    wants = home / ".config" / "systemd" / "user" / "sockets.target.wants"
    wants.mkdir(parents=True)
    for unit in ("npud.socket", "npud-http.socket"):
        (wants / unit).symlink_to(home / ".config" / "systemd" / "user" / unit)


def install_over_an_earlier_system_install(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """An install made as the README said before: `sudo systemctl enable --now npud.socket
    npud-http.socket` (the symlinks systemctl enable leaves) and the env file of that time."""
    root = tmp_path / "root"
    wants = root / "etc" / "systemd" / "system" / "sockets.target.wants"
    wants.mkdir(parents=True)
    for unit in ("npud.socket", "npud-http.socket"):
        (wants / unit).symlink_to(f"/etc/systemd/system/{unit}")
    (root / "etc" / "npud").mkdir()
    (root / "etc" / "npud" / "npud.env").write_text(EARLIER_SYSTEM_ENV)
    proc = run_system_installer(root)
    assert (root / "etc" / "npud" / "npud.env").read_text() == EARLIER_SYSTEM_ENV  # kept, as designed
    return proc


def test_system_installer_over_an_enabled_http_socket_says_npud_will_not_start(tmp_path: Path) -> None:
    """Verify review 2 (finding B): the new system unit sets OV_GENAI_NPU_NO_HTTP=1 and npud now
    refuses to start when systemd passes it an HTTP socket. Every earlier system install enabled
    npud-http.socket (README: `sudo systemctl enable --now npud.socket npud-http.socket`, and the
    unit's Also=), and the installer keeps its env file, which does not say NO_HTTP=0. Re-running
    the installer therefore leaves a service that fails at every start, for the Unix socket's
    users too, and the installer says nothing: it must name the enabled socket and the way out."""
    proc = install_over_an_earlier_system_install(tmp_path)
    said = proc.stdout + proc.stderr
    assert "disable --now npud-http.socket" in said, said


def test_system_installer_over_an_earlier_env_file_says_the_lock_is_not_the_shared_one(tmp_path: Path) -> None:
    """Verify review 2 (finding B, second half): the installer announces "NPU lock: /run/npu.lock
    ... other programs that use the NPU take the same flock", but the kept env file says
    OV_GENAI_NPU_LOCK_FILE=/var/lib/npud/npu.lock, which wins over the unit's Environment=: the
    service keeps a private lock that no other program shares. The installer must not claim the
    shared lock without saying that the env file overrides it."""
    proc = install_over_an_earlier_system_install(tmp_path)
    said = proc.stdout + proc.stderr
    assert "/var/lib/npud/npu.lock" in said, said


def test_system_installer_refuses_an_npud_under_home(tmp_path: Path) -> None:
    proc = subprocess.run([str(REPO / "contrib" / "install-system-units.sh"), "--npud", "/home/me/npud/.venv/bin/npud",
                           "--root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1 and "(ProtectHome=yes)" in proc.stderr
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------- the HTTP socket: separate, and off for the system


def unit_values(path: Path, key: str) -> list[str]:
    return [v for value in directives(path).get(key, []) for v in value.split()]


@pytest.mark.parametrize("service", [SYSTEM_DIR / "npud.service", REPO / "systemd" / "npud.service"],
                         ids=["system", "user"])
def test_the_service_does_not_pull_in_the_http_socket(service: Path) -> None:
    """Not enabling npud-http.socket must keep it off. `Wants=` starts a unit whenever the service
    starts, and `Sockets=` adds `Wants=` and `After=` (systemd's load-fragment.c,
    config_parse_service_sockets): with either, systemd listened on 18820 whatever was enabled.
    The socket unit still reaches the service by its `Service=` (it triggers it and its descriptor
    is passed on when it is enabled)."""
    pulled_in = [key for key in ("Wants", "Requires", "BindsTo", "Upholds", "Sockets")
                 if "npud-http.socket" in unit_values(service, key)]
    assert not pulled_in, f"{service} starts npud-http.socket through {pulled_in}"
    assert unit_values(service, "Requires") == ["npud.socket"]
    http_socket = service.parent / "npud-http.socket"
    assert unit_values(http_socket, "Service") == ["npud.service"]


def test_the_system_defaults_do_not_open_the_http_shim_to_every_local_user() -> None:
    """README "Serving other users": who may connect is the npud account, root and what
    /etc/npud/npud.env allows. The HTTP shim has no peer identity, yet the README's command block
    and the installer enabled npud-http.socket, the unit pulled it in and enabled it (`Also=`), and
    neither the unit nor /etc/npud/npud.env set a token or NO_HTTP: every local user ran jobs
    through 127.0.0.1:18820. Now the system set has no HTTP unless the admin adds a token."""
    service = SYSTEM_DIR / "npud.service"
    assert unit_values(service, "Also") == ["npud.socket"]
    unit_env = dict(value.split("=", 1) for value in directives(service)["Environment"])
    example, _ = read_env_file(REPO / "contrib" / "npud-system.env.example")
    assert unit_env["OV_GENAI_NPU_NO_HTTP"] == example["OV_GENAI_NPU_NO_HTTP"] == "1"
    section = README[README.index("### Serving other users"):]
    section = section[: section.index("\n## ", 1)]
    block = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    assert "sudo systemctl enable --now npud.socket\n" in block and "npud-http" not in block
    enables_http = re.search(r"systemctl enable --now [^\n`]*npud-http\.socket", section)
    assert enables_http is not None and "OV_GENAI_NPU_TOKEN_FILE" in section[: enables_http.start()]


def test_install_user_units_uses_the_environment_the_acceptance_check_ran_in(tmp_path: Path) -> None:
    """contrib/smoke_llm_npu.sh (README step 4) runs in "the environment contrib/bootstrap.sh made
    (.venv, or $NPUD_VENV)"; contrib/install-user-units.sh (step 5) took `command -v npud` first and
    ignored $NPUD_VENV: another npud on PATH became ExecStart, and with $NPUD_VENV and no .venv in
    the checkout (a CI clone) it exited 1 "npud not found"."""
    checkout = tmp_path / "clone"  # a checkout without .venv, like CI's fresh clone
    for part in ("contrib", "systemd"):
        shutil.copytree(REPO / part, checkout / part)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "npud").write_text("#!/bin/sh\necho an older npud\n")
    (other / "npud").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    env = {"HOME": str(home), "NPUD_VENV": str(bin_dir.parent), "PATH": f"{other}:/usr/bin:/bin"}
    proc = subprocess.run([str(checkout / "contrib" / "install-user-units.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    unit = (home / ".config" / "systemd" / "user" / "npud.service").read_text()
    assert f"ExecStart={bin_dir / 'npud'}\n" in unit, re.findall(r"ExecStart=.*", unit)


def test_install_user_units_over_an_enabled_http_socket_with_no_http_says_npud_will_not_start(tmp_path: Path) -> None:
    """Verify review 2 (finding B, user units): the README used to say `systemctl --user enable
    --now npud.socket npud-http.socket` and "--no-http to turn the shim off"; a user who did both
    had an RPC-only npud (and hanging HTTP clients). npud now refuses to start while systemd
    passes it an HTTP socket and NO_HTTP=1, so after re-running the installer (which keeps
    npud.env and the enable links) no npud starts at all, for the socket's clients too. The
    installer sees both and must say how to get out (disable the socket, or NO_HTTP=0)."""
    home = tmp_path / "home"
    enable_user_sockets(home)
    (home / ".config" / "npud").mkdir()
    (home / ".config" / "npud" / "npud.env").write_text("OV_GENAI_NPU_NO_HTTP=1\n")
    proc = run_user_installer(home)
    said = proc.stdout + proc.stderr
    assert "disable --now npud-http.socket" in said, said


# ---------------------------------------------------------------- the watchdog during a long load


def test_watchdog_is_fed_and_health_answers_while_the_model_loads(tmp_path: Path) -> None:
    """The daemon's side of a long first compile: while the load blocks (fake loader), WATCHDOG=1
    keeps coming and health says loading; a job sent meanwhile is answered once the model is
    ready. (The real pipeline releasing the GIL: tests/test_npu_load.py, on the emulated NPU.)"""
    listener = NotifyListener()
    name = unique_socket()
    loaded = tmp_path / "loaded"
    env = daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="200000", NPUD_FAKE_LOAD_FILE=str(loaded))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=env, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("EXTEND_TIMEOUT_USEC=")
        for _ in range(3):  # several pings while the load is still blocked
            listener.wait_for("WATCHDOG=1")
        with RawConnection.open(name) as conn:
            assert conn.call("health")["result"]["status"] == "loading"
            conn.send_json({"jsonrpc": "2.0", "id": 7, "method": "generate", "params": {"job": "title", "input": "x"}})
            while conn.call("health", request_id="h")["result"]["queue"]["depth"] < 1:
                pass
            loaded.touch()
            reply = conn.read_json()
            assert reply["id"] == 7 and reply["result"]["job"] == "title"
    finally:
        loaded.touch()
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0


def test_a_job_whose_deadline_passes_during_the_load_says_loading(tmp_path: Path) -> None:
    listener = NotifyListener()
    name = unique_socket()
    loaded = tmp_path / "loaded"
    env = daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, NPUD_FAKE_LOAD_FILE=str(loaded))
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http"], env=env, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("READY=1")
        with RawConnection.open(name) as conn:
            reply = conn.call("generate", {"job": "title", "input": "x", "timeout_ms": 200})
        assert reply["error"] == {
            "code": -32007,
            "message": "deadline of 200 ms passed while the model was still loading (an NPU compile can take minutes)",
            "data": {"timeout_ms": 200, "stage": "queued"}}
    finally:
        loaded.touch()
        listener.close()
        proc.terminate()
        assert proc.wait(30) == 0


# ---------------------------------------------------------------- bootstrap without python3-venv

FAKE_PYTHON = """#!/bin/sh
# Like Debian's python3 without python3-venv: `-m venv` leaves a python but no pip, and fails.
if [ "$1" = "-c" ]; then exit 0; fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin" && ln -sf /bin/false "$3/bin/python" && touch "$3/pyvenv.cfg"
    echo "The virtual environment was not created successfully because ensurepip is not"
    echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv"
    echo "package using the following command."
    echo ""
    echo "    apt install python3.12-venv"
    exit 1
fi
exit 2
"""


def test_bootstrap_says_to_install_python3_venv(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    venv = tmp_path / "venv"
    env = {**os.environ, "PYTHON": str(fake), "NPUD_VENV": str(venv)}
    for _ in range(2):  # the half-made venv of the first run must not fool the second
        proc = subprocess.run([str(REPO / "contrib" / "bootstrap.sh")], capture_output=True, text=True, env=env)
        assert proc.returncode == 1
        assert "sudo apt install python3-venv" in proc.stderr and "Traceback" not in proc.stderr
        assert not venv.exists()


def test_units_lower_the_service_not_its_event_loop() -> None:
    """Background priority: the user units sit in background.slice (cgroup weight 30 against the
    user's apps, systemd.special(7)), the system unit has a low CPUWeight=; none sets Nice= or a
    scheduling policy, which would lower the event loop with the inference (npud lowers only the
    inference threads itself, OV_GENAI_NPU_WORKER_NICE)."""
    for name in ("npud.service", "openvino-genai-npu-worker.service"):
        found = directives(REPO / "systemd" / name)
        assert found["Slice"] == ["background.slice"], name
    system = directives(SYSTEM_DIR / "npud.service")
    assert system["CPUWeight"] == ["30"]
    for unit in (*USER_UNITS, *SYSTEM_UNITS):
        assert not {"Nice", "CPUSchedulingPolicy", "CPUSchedulingPriority"} & set(directives(unit)), unit.name


def test_the_user_unit_env_example_does_not_offer_an_allow_list() -> None:
    """Attack review finding D1. contrib/npud.env.example is installed as ~/.config/npud/npud.env for the *user* units and
    offers '#OV_GENAI_NPU_ALLOW_UID=1001  (Let another local user in over the socket)'. README
    'Serving other users' says allow-lists cannot work in the user units and npud refuses to start
    with one there (status 1; with Restart=on-failure, a restart loop). Uncommenting the example
    line breaks the daemon."""
    example = (REPO / "contrib" / "npud.env.example").read_text()
    offered = [line for line in example.splitlines() if re.match(r"#?\s*OV_GENAI_NPU_ALLOW_(UID|GID)=", line)]
    assert offered == [], f"the user-unit env example offers an allow-list the user units refuse: {offered}"


# ---------------------------------------------------------------- verify review 4b: an allow-list kept from an earlier install


def _refused_by_npud(env_file: Path, unit_env: dict[str, str]) -> str:
    """What npud says about the settings the service would run with (the unit's, then the file's)."""
    from npud.config import ConfigError, load_config

    values, _ = read_env_file(env_file)
    try:
        load_config(["--device", "CPU"], {**unit_env, **values})
    except ConfigError as exc:
        return str(exc)
    return ""


def test_system_installer_over_an_allow_list_with_http_and_no_token_says_npud_will_not_start(tmp_path: Path) -> None:
    """Verify review 4b: npud now refuses an allow-list next to an HTTP shim without a token (exit 2
    at every start, so the Unix socket's users lose the service too). Before that change the README
    let an admin set OV_GENAI_NPU_ALLOW_GID and OV_GENAI_NPU_NO_HTTP=0 without a token (verify
    review 2 saw exactly that); the installer keeps that env file and warns about the other
    contradictions of an earlier install, but said nothing about this one."""
    root = tmp_path / "root"
    (root / "etc" / "npud").mkdir(parents=True)
    env_file = root / "etc" / "npud" / "npud.env"
    env_file.write_text("OV_GENAI_NPU_LOCK_FILE=/run/npu.lock\nOV_GENAI_NPU_NO_HTTP=0\nOV_GENAI_NPU_ALLOW_GID=999\n")
    assert "--token-file" in _refused_by_npud(env_file, {"OV_GENAI_NPU_NO_HTTP": "1"})  # what the service meets
    proc = run_system_installer(root)
    assert "OV_GENAI_NPU_TOKEN_FILE" in proc.stderr and "refuse" in proc.stderr, proc.stdout + proc.stderr


def test_install_user_units_over_an_allow_list_with_http_and_no_token_says_npud_will_not_start(tmp_path: Path) -> None:
    """Verify review 4b, user units: README "Serving other users" said --allow-uid/--allow-gid work
    in the user units, with the shim on by default; such a kept ~/.config/npud/npud.env now makes
    npud exit 2 at every start, and the user installer said nothing."""
    home = tmp_path / "home"
    (home / ".config" / "npud").mkdir(parents=True)
    env_file = home / ".config" / "npud" / "npud.env"
    env_file.write_text("OV_GENAI_NPU_ALLOW_UID=1001\n")
    assert "--token-file" in _refused_by_npud(env_file, {})
    proc = run_user_installer(home)
    assert "OV_GENAI_NPU_TOKEN_FILE" in proc.stderr and "refuse" in proc.stderr, proc.stdout + proc.stderr


def test_installers_read_the_env_file_as_systemd_does(tmp_path: Path) -> None:
    """Verify review 4b: systemd (and npud's own parser, npud/envfile.py) drop whitespace around the
    name and the value; the installers' check did not, so `OV_GENAI_NPU_NO_HTTP = 1` next to an
    enabled npud-http.socket (npud refuses every start) went unmentioned."""
    home = tmp_path / "home"
    enable_user_sockets(home)
    (home / ".config" / "npud").mkdir()
    env_file = home / ".config" / "npud" / "npud.env"
    env_file.write_text("OV_GENAI_NPU_NO_HTTP = 1 \n")
    assert read_env_file(env_file)[0] == {"OV_GENAI_NPU_NO_HTTP": "1"}
    proc = run_user_installer(home)
    assert "disable --now npud-http.socket" in proc.stderr, proc.stdout + proc.stderr


def test_system_installer_takes_an_empty_no_http_for_what_npud_does(tmp_path: Path) -> None:
    """Verify review 4b: `OV_GENAI_NPU_NO_HTTP=` (empty) in /etc/npud/npud.env overrides the unit's
    NO_HTTP=1, and npud reads an empty switch as off: HTTP is ON. Next to an enabled
    npud-http.socket the installer said "HTTP is off ... (OV_GENAI_NPU_NO_HTTP=1): npud refuses to
    start", while npud in fact serves HTTP to every local user (no token)."""
    from npud.config import load_config

    assert load_config(["--device", "CPU"], {"OV_GENAI_NPU_NO_HTTP": ""}).http
    root = tmp_path / "root"
    wants = root / "etc" / "systemd" / "system" / "sockets.target.wants"
    wants.mkdir(parents=True)
    (wants / "npud-http.socket").symlink_to("/etc/systemd/system/npud-http.socket")
    (root / "etc" / "npud").mkdir()
    (root / "etc" / "npud" / "npud.env").write_text("OV_GENAI_NPU_NO_HTTP=\n")
    proc = run_system_installer(root)
    assert "npud refuses to start while systemd passes it that socket" not in proc.stderr, proc.stderr
