"""Every job gets exactly one answer, is counted once (served, failed or cancelled) and produces
one log line, whatever ends it: a result, an error, cancel, its client hanging up, shutdown."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from typing import Any

import pytest

from npud import worker as worker_module
from npud.testing.fake import FakeBehaviour, FakeLoader

from .test_http_boundaries import GENERATE, JOB, Raw, wait_for
from .test_reliability import npu_daemon_with_lock_held, request, title, wait_running  # noqa: F401 (fixture)


def test_requests_given_up_by_a_hang_up_are_logged_and_counted(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """CONTRACT §10: 'Each request produces one log line with method, job, sizes, timings, peer
    pid/uid and outcome.' A request whose client hangs up (a running job stopped, a queued job
    withdrawn) produces no log line at all and is missing from health.stats / /metrics: the
    CancelledError bypasses Dispatcher.call's logging."""
    caplog.set_level(logging.INFO, logger="npud.rpc")
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour))
    running, queued = daemon.connect(), daemon.connect()
    running.send_json(request(1))
    assert behaviour.started.wait(10)
    queued.send_json(request(2))
    wait_for(lambda: daemon.call("health")["result"]["queue"]["depth"] == 1, "the second job to be queued")
    queued.sock.close()
    running.sock.close()
    wait_for(lambda: daemon.daemon.worker.idle, "both jobs to be given up")
    requests = daemon.call("health")["result"]["stats"]["requests"]
    lines = [r.getMessage() for r in caplog.records if "method=generate" in r.getMessage()]
    assert len(lines) == 2, f"log lines for two requests given up by their clients: {lines}"
    assert all(line.endswith("outcome=ClientGone") and "via=unix" in line for line in lines), lines
    assert {k: n for k, n in requests.items() if k.startswith("generate:")} == {"generate:ClientGone": 2}, requests
    health = daemon.call("health")["result"]
    assert (health["jobs_served"], health["jobs_failed"], health["jobs_cancelled"]) == (0, 0, 2)


def test_a_cancelled_running_job_is_not_counted_as_served(daemon_factory: Any) -> None:
    """health.jobs_served counted a running job that was cancelled (or whose client hung up) as
    served: the stopped generation returns finish_reason 'cancelled' and was tallied as a success,
    while a withdrawn queued job was counted nowhere. Both are jobs_cancelled now, and the systemd
    STATUS line and /metrics show the same three numbers as health."""
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    with daemon.connect() as conn:
        conn.send_json(request(1))
        assert behaviour.started.wait(10)
        conn.send_json(request(2))
        conn.send_json(request("c2", "cancel", {"id": 2}))  # queued
        conn.send_json(request("c1", "cancel", {"id": 1}))  # running
        replies = {r["id"]: r for r in (conn.read_json() for _ in range(4))}
    assert replies[1]["error"]["code"] == -32008 and replies[2]["error"]["code"] == -32008
    wait_for(lambda: not daemon.call("health")["result"]["queue"]["running"], "the generation to stop")
    health = daemon.call("health")["result"]
    assert (health["jobs_served"], health["jobs_failed"], health["jobs_cancelled"]) == (0, 0, 2), health
    assert health["stats"]["requests"]["generate:RequestCancelled"] == 2
    status = daemon.daemon._status_line(daemon.daemon.worker.snapshot())
    assert status.endswith("0 jobs served, 0 failed, 2 cancelled"), status
    with Raw(daemon.http_port) as raw:
        metrics = raw.exchange("GET", "/metrics").body.decode()
    assert 'npud_jobs_total{outcome="served"} 0' in metrics and 'npud_jobs_total{outcome="cancelled"} 2' in metrics


def test_a_client_hanging_up_during_the_lock_wait_logs_no_error(
        npu_daemon_with_lock_held: Any, caplog: pytest.LogCaptureFixture,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that closes its connection while its job waits for the NPU lock is a normal event
    (CONTRACT §4: 'a closed connection also ends a wait for the NPU lock'). The worker then
    resolves the abandoned future with RequestCancelled, which nobody retrieves: asyncio logs
    'Future exception was never retrieved' at ERROR with a traceback."""
    caplog.set_level(logging.ERROR)
    daemon, behaviour, _ = npu_daemon_with_lock_held
    answered = threading.Event()
    original = worker_module._resolve

    def resolve_and_signal(job: Any, outcome: Any) -> None:
        original(job, outcome)
        job.loop.call_soon_threadsafe(answered.set)  # runs after the worker's answer landed

    monkeypatch.setattr(worker_module, "_resolve", resolve_and_signal)
    with daemon.connect() as conn:
        conn.send_json(request(1))
        wait_running(daemon)
    assert answered.wait(20), "the worker never answered the abandoned job"
    answered.clear()
    # The worker keeps its last job (and so the abandoned future) until it takes the next one.
    assert daemon.call("generate", title(timeout_ms=100))["error"]["code"] == -32007
    assert answered.wait(20)
    gc.collect()  # an abandoned future used to sit in a reference cycle (exception -> traceback -> job)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], f"errors logged for a client that hung up: {errors}"
    assert behaviour.calls == []
    assert daemon.call("health")["result"]["jobs_cancelled"] == 1


def test_an_http_client_hanging_up_is_logged_and_counted(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The same over HTTP: closing the connection cancels the job (CONTRACT §11) and the request
    still gets its log line and its count."""
    caplog.set_level(logging.INFO, logger="npud.rpc")
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour), http=True)
    try:
        raw = Raw(daemon.http_port)
        raw.send(raw.request("POST", GENERATE, JOB))
        assert behaviour.started.wait(10)
        raw.sock.close()
        wait_for(lambda: daemon.daemon.worker.idle, "the job to be given up")
        wait_for(lambda: daemon.call("health")["result"]["stats"]["requests"], "the request to be counted")
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()
    lines = [r.getMessage() for r in caplog.records if "method=generate" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("via=http outcome=ClientGone"), lines
    health = daemon.call("health")["result"]
    assert health["stats"]["requests"]["generate:ClientGone"] == 1 and health["jobs_cancelled"] == 1
    assert [k for k in health["stats"]["requests"] if k.startswith("generate:")] == ["generate:ClientGone"]


def test_shutdown_does_not_answer_a_cancelled_job_twice(
        daemon_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A running job answered -32008 by cancel whose pipeline has not stopped yet when the
    --shutdown-timeout passes: the log said 'stopped and answered with -32006', which was not
    true (its client had its answer); nobody gets a second one."""
    caplog.set_level(logging.WARNING, logger="npud")
    behaviour = FakeBehaviour(gate=threading.Event(), ignore_stop=True)  # a pipeline slow to stop
    daemon = daemon_factory(FakeLoader(behaviour), shutdown_timeout_s=0.2)
    try:
        with daemon.connect() as conn:
            conn.send_json(request(1))
            assert behaviour.started.wait(10)
            conn.send_json(request("c", "cancel", {"id": 1}))
            replies = {r["id"]: r for r in (conn.read_json(), conn.read_json())}
            assert replies[1]["error"]["code"] == -32008
            daemon.stop()
            assert conn.at_eof()  # no second answer
    finally:
        assert behaviour.gate is not None
        behaviour.gate.set()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("answered with -32006" in m for m in messages), messages
    assert any("running job, already answered, had not stopped within 0.2s of shutdown" in m for m in messages)
    snap = daemon.daemon.worker.snapshot()
    assert (snap.jobs_served, snap.jobs_failed, snap.jobs_cancelled) == (0, 0, 1)


def test_the_worker_keeps_no_finished_job(daemon_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Privacy: a job holds its input text. Once answered, nothing in the daemon keeps it: not
    the worker while it waits for the next job, not an error's traceback (a reference cycle that
    only the garbage collector would break, at some later time)."""
    jobs: list[weakref.ref[Any]] = []
    submit = worker_module.Worker.submit

    def recording(self: Any, job: Any) -> None:
        jobs.append(weakref.ref(job))
        submit(self, job)

    monkeypatch.setattr(worker_module.Worker, "submit", recording)
    behaviour = FakeBehaviour(reply="")  # an empty output: GenerationFailed raised inside the worker
    daemon = daemon_factory(FakeLoader(behaviour))
    gc.disable()  # freed by reference counting, at once, or the test fails
    try:
        assert daemon.call("generate", title("secret text"))["error"]["code"] == -32003
        behaviour.reply = None
        assert daemon.call("generate", title("more secret text"))["result"]["job"] == "title"
        wait_for(lambda: daemon.daemon.worker.idle, "the worker to wait for the next job")
        wait_for(lambda: all(ref() is None for ref in jobs), "the finished jobs to be freed", bound_s=5)
    finally:
        gc.enable()
    assert len(jobs) == 2
