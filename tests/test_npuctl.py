"""npuctl as a real child process: output, --json, stdin input, --wait, and every exit code."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from npuclient import Client
from npuclient.cli import EXIT_INVALID_INPUT, human, wait_until_ready
from npuclient.errors import NotReady
from npuclient.protocol import HealthResult
from npud.testing.fake import FakeBehaviour, FakeLoader
from npud.testing.sysfs import make_npu_sysfs

from .conftest import unique_socket
from .test_systemd import FAKE_DAEMON, NotifyListener, daemon_env


def npuctl(socket_name: str, *args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "npuclient.cli", "--socket", socket_name, *args],
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def without_timing(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "timing_ms"}


def test_success_outputs(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    health = npuctl(daemon.socket, "health")
    assert health.returncode == 0 and health.stdout.startswith("ready: fake-model on CPU")
    models = npuctl(daemon.socket, "models")
    assert models.returncode == 0 and "title: default 24, max 32 new tokens" in models.stdout
    title = npuctl(daemon.socket, "generate", "--job", "title", "--input", "hello")
    assert (title.returncode, title.stdout) == (0, "Fake Title About The Input\n")
    memory = npuctl(daemon.socket, "extract-memory-candidates", "--input", "-", stdin="I like fakes")
    assert memory.stdout == "- The user likes fakes.\n- The user tests things.\n"
    condensed = npuctl(daemon.socket, "condense-notification", "--input", "x")
    assert condensed.stdout == "A fake condensed notification.\n"


def test_json_matches_the_library(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    proc = npuctl(daemon.socket, "--json", "generate", "--job", "summary", "--input", "-", "--max-new-tokens", "80",
                  stdin="some text to summarise")
    assert proc.returncode == 0
    with Client(daemon.socket) as client:
        direct = msgspec.to_builtins(client.generate("summary", "some text to summarise", max_new_tokens=80))
    assert without_timing(msgspec.json.decode(proc.stdout)) == without_timing(direct)


def test_exit_codes(daemon_factory: Any, tmp_path: Path) -> None:
    assert npuctl(unique_socket(), "health").returncode == 3
    unreachable = npuctl(unique_socket(), "health")
    assert "systemctl --user start npud.socket" in unreachable.stderr

    behaviour = FakeBehaviour()
    daemon = daemon_factory(FakeLoader(behaviour))
    too_long = npuctl(daemon.socket, "generate", "--job", "title", "--input", "x" * 6001)
    assert too_long.returncode == 2 and "[code -32602]" in too_long.stderr
    assert npuctl(daemon.socket, "generate", "--job", "poem", "--input", "x").returncode == 2  # argparse
    behaviour.fail_with = RuntimeError("pipeline exploded")
    failed = npuctl(daemon.socket, "generate", "--job", "title", "--input", "x")
    assert failed.returncode == 5 and "pipeline exploded" in failed.stderr

    busy = make_npu_sysfs(tmp_path / "sys")
    npu = daemon_factory(FakeLoader(FakeBehaviour(busy_file=busy, busy_step_us=0)), device="NPU",
                         sysfs_root=str(tmp_path / "sys"), socket=unique_socket())
    unverified = npuctl(npu.socket, "generate", "--job", "title", "--input", "x")
    assert unverified.returncode == 6 and "[code -32002]" in unverified.stderr


def test_queue_full_exit_code(daemon_factory: Any) -> None:
    gate = threading.Event()
    behaviour = FakeBehaviour(gate=gate)
    daemon = daemon_factory(FakeLoader(behaviour), queue_depth=1)
    holders = [subprocess.Popen([sys.executable, "-m", "npuclient.cli", "--socket", daemon.socket, "generate",
                                 "--job", "title", "--input", "x"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        assert behaviour.started.wait(30)
        holders.append(subprocess.Popen([sys.executable, "-m", "npuclient.cli", "--socket", daemon.socket, "generate",
                                         "--job", "title", "--input", "y"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
        with Client(daemon.socket) as client:
            while client.health().queue.depth < 1:
                pass
        full = npuctl(daemon.socket, "generate", "--job", "title", "--input", "z")
        assert full.returncode == 4 and "retry in" in full.stderr
    finally:
        gate.set()
        assert [p.wait(30) for p in holders] == [0, 0]


def test_wait_for_ready(daemon_factory: Any) -> None:
    gate = threading.Event()
    daemon = daemon_factory(FakeLoader(load_gate=gate), wait_ready=False)
    waiting = subprocess.Popen([sys.executable, "-m", "npuclient.cli", "--socket", daemon.socket, "--wait",
                                "generate", "--job", "title", "--input", "x"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with Client(daemon.socket) as client:
            assert client.health().status == "loading"
        gate.set()
        out, err = waiting.communicate(timeout=30)
    finally:
        gate.set()
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0 and out == "Fake Title About The Input\n"
    assert err == ""  # not a terminal: no progress line


def test_wait_gives_up_after_timeout(daemon_factory: Any) -> None:
    gate = threading.Event()
    daemon = daemon_factory(FakeLoader(load_gate=gate), wait_ready=False)
    try:
        proc = npuctl(daemon.socket, "--wait", "--timeout", "0.5", "health")
        assert proc.returncode == 1 and "not ready after" in proc.stderr
    finally:
        gate.set()


def test_entry_point_is_installed() -> None:
    script = os.path.join(os.path.dirname(sys.executable), "npuctl")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "Exit codes" in proc.stdout


def test_wait_shows_progress_on_a_terminal(daemon_factory: Any) -> None:
    import pty

    gate = threading.Event()
    daemon = daemon_factory(FakeLoader(load_gate=gate), wait_ready=False)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "npuclient.cli", "--socket", daemon.socket, "--wait", "health"],
                            stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    try:
        seen = b""
        while b"loading fake-model on CPU" not in seen:  # the progress line, drawn on the terminal
            seen += os.read(leader, 1024)
        gate.set()
        out, _ = proc.communicate(timeout=30)
    finally:
        gate.set()
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out.startswith("ready: fake-model on CPU")


def npuctl_raw(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """npuctl with exactly these arguments (``npuctl()`` puts ``--socket`` first)."""
    return subprocess.run([sys.executable, "-m", "npuclient.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_global_options_after_the_command(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    health = npuctl_raw("health", "--socket", daemon.socket, "--timeout", "30")
    assert health.returncode == 0 and health.stdout.startswith("ready: fake-model on CPU"), health.stderr
    title = npuctl_raw("generate", "--job", "title", "--input", "x", "--json", "--wait", "--socket", daemon.socket)
    assert title.returncode == 0 and msgspec.json.decode(title.stdout)["text"] == "Fake Title About The Input"
    models = npuctl_raw("--json", "models", "--socket", daemon.socket)  # mixed: before and after
    assert models.returncode == 0 and msgspec.json.decode(models.stdout)["models"][0]["id"] == "fake-model"
    memory = npuctl_raw("extract-memory-candidates", "--input", "-", "--socket", daemon.socket, stdin="x")
    assert memory.returncode == 0 and memory.stdout.startswith("- The user likes fakes.")
    # After the command, an option overrides the one before it; absent, the one before stays.
    overridden = npuctl_raw("--socket", unique_socket(), "condense-notification", "--input", "x",
                            "--socket", daemon.socket)
    assert overridden.returncode == 0 and overridden.stdout == "A fake condensed notification.\n"
    kept = npuctl_raw("--socket", daemon.socket, "--json", "health")
    assert kept.returncode == 0 and msgspec.json.decode(kept.stdout)["status"] == "ready"


def test_wait_without_a_daemon_is_unreachable() -> None:
    proc = npuctl(unique_socket(), "--wait", "--timeout", "0.5", "health")
    assert proc.returncode == 3, proc.stderr
    assert "did not answer within 0.5s" in proc.stderr and "systemctl --user start npud.socket" in proc.stderr


def test_deadline_ms_reaches_the_daemon(daemon_factory: Any) -> None:
    gate = threading.Event()
    daemon = daemon_factory(FakeLoader(FakeBehaviour(gate=gate)))  # jobs only end at their deadline
    try:
        for command in (["generate", "--job", "summary"], ["extract-memory-candidates"], ["condense-notification"]):
            proc = npuctl(daemon.socket, *command, "--input", "x", "--deadline-ms", "150")
            assert proc.returncode == 4 and "[code -32007]" in proc.stderr, proc.stderr
        invalid = npuctl(daemon.socket, "generate", "--job", "title", "--input", "x", "--deadline-ms", "0")
        assert invalid.returncode == 2 and "--deadline-ms: must be between 1 and 600000" in invalid.stderr
    finally:
        gate.set()


def test_help_explains_timeout_and_deadline() -> None:
    top = npuctl_raw("--help").stdout
    assert "--timeout" in top and "--deadline-ms" in top and "--server-uid" in top and "after the command" in top
    job = npuctl_raw("generate", "--help").stdout
    assert "timeout_ms" in job and "--socket" in job


@pytest.mark.parametrize("args", [
    ["--timeout", "-1", "health"], ["--timeout", "nan", "health"], ["--timeout", "0", "health"],
    ["--timeout", "inf", "health"], ["--timeout", "1e300", "health"], ["health", "--timeout", "soon"],
    ["generate", "--job", "title", "--input", "x", "--deadline-ms", "0"],
    ["generate", "--job", "title", "--input", "x", "--deadline-ms", "600001"],
    ["generate", "--job", "title", "--input", "x", "--max-new-tokens", "0"],
], ids=lambda args: " ".join(args))
def test_unusable_numbers_are_usage_errors_not_tracebacks(args: list[str]) -> None:
    """README: exit 2 for invalid input. `npuctl --timeout -1 health` (or nan, inf, 1e300) died
    with a ValueError or OverflowError traceback from socket.settimeout (exit 1); 0 made the
    socket non-blocking. Refused by argparse before anything is sent, even with no daemon."""
    proc = npuctl(unique_socket(), *args)  # nobody listens there: the refusal comes first
    assert proc.returncode == EXIT_INVALID_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr and "error: argument --" in proc.stderr


def test_npuctl_wait_waits_for_a_scheduled_load_retry(tmp_path: Path) -> None:
    """README: "`--wait` waits for `health` to say `ready` first"; "A failed load is retried when
    the failure is transient ... Meanwhile `health` says `error` with `retry_in_s`". After a
    reboot the first load can fail transiently (the NPU lock held by another service at login);
    `npuctl --wait` (README step 7) then gives up at once with exit 5 "model failed to load",
    although npud retries seconds later and would answer."""
    listener = NotifyListener()
    name = unique_socket()
    env = daemon_env(tmp_path, NOTIFY_SOCKET=listener.name, NPUD_FAKE_LOAD_FAILURES="1")
    proc = subprocess.Popen([*FAKE_DAEMON, "--socket", name, "--no-http", "--load-retry-delay", "3"],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        listener.wait_for("STATUS=model failed to load (attempt 1), retrying in ")
        npuctl = subprocess.run([str(Path(sys.executable).parent / "npuctl"), "--socket", name, "--wait",
                                 "--timeout", "60", "generate", "--job", "title", "--input", "x"],
                                capture_output=True, text=True, timeout=90)
        assert npuctl.returncode == 0, (npuctl.returncode, npuctl.stderr)
        assert npuctl.stdout.strip() == "Fake Title About The Input"
    finally:
        listener.close()
        proc.terminate()
        proc.wait(30)


def health_result(status: str, **fields: Any) -> HealthResult:
    base = {"status": status, "model": "m", "device": "NPU", "version": "0", "uptime_s": 1.0,
            "queue": {"depth": 0, "capacity": 8, "running": False},
            "busy_counter": {"enabled": True, "path": None}, "jobs_served": 0, "jobs_failed": 0,
            "load_time_ms": None, "device_info": None,
            "stats": {k: {} for k in ("requests", "rejections", "tokens_in", "tokens_out", "npu_busy_us", "latency_ms")}}
    return msgspec.convert({**base, **fields}, HealthResult)


class ScriptedHealth:
    """A client whose health answers follow a script (the last one repeats), on a fake clock
    that advances by each sleep: the waiting logic without a daemon and without real time."""

    def __init__(self, *answers: HealthResult) -> None:
        self.answers = list(answers)
        self.now = 0.0

    def health(self, timeout: float) -> HealthResult:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    def sleep(self, seconds: float) -> None:
        self.now += seconds


RETRYING = health_result("error", error="NPU lock /run/npu.lock held by another process for 60.0s",
                         load_attempts=1, retry_in_s=4.8)


def test_wait_waits_out_a_scheduled_retry_and_says_so_on_a_terminal() -> None:
    client = ScriptedHealth(RETRYING, RETRYING, health_result("loading", load_attempts=2), health_result("ready"))

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    shown = Terminal()
    wait_until_ready(client, 60, shown, clock=lambda: client.now, sleep=client.sleep)  # type: ignore[arg-type]
    assert not client.answers[1:]  # it got to "ready"
    assert "npud: model failed to load (attempt 1), retrying in 4.8s" in shown.getvalue()
    assert "npud: loading m on NPU" in shown.getvalue()


def test_wait_gives_up_on_a_retry_that_comes_after_the_timeout_and_at_once_on_a_final_failure() -> None:
    client = ScriptedHealth(RETRYING)
    with pytest.raises(NotReady) as info:
        wait_until_ready(client, 2, io.StringIO(), clock=lambda: client.now, sleep=client.sleep)  # type: ignore[arg-type]
    assert str(info.value.message) == (
        "model failed to load (attempt 1): NPU lock /run/npu.lock held by another process for 60.0s; "
        "npud retries in 4.8s, after --timeout 2s")
    assert client.now >= 2
    final = ScriptedHealth(health_result("error", error="no such model", load_attempts=1))
    with pytest.raises(NotReady, match="model failed to load \\(attempt 1\\): no such model$"):
        wait_until_ready(final, 60, io.StringIO(), clock=lambda: final.now, sleep=final.sleep)  # type: ignore[arg-type]
    assert final.now == 0  # no waiting for a load that will not be retried


def test_health_shows_a_scheduled_load_retry() -> None:
    """`npuctl health` during a scheduled retry: the error and when the next attempt comes, not a
    bare 'error' that reads like a final failure (verify review 2, note)."""
    shown = human(RETRYING)
    assert shown.startswith("error: m on NPU")
    assert "error: NPU lock /run/npu.lock held by another process for 60.0s" in shown
    assert "retrying the load in 4.8s" in shown
    assert "retrying" not in human(health_result("error", error="no such model"))
