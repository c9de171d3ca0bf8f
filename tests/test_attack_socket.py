"""Attack review (issue 14 follow-up): the Unix socket transport, through a real socket.

These tests fail on purpose until the findings are fixed; see the attack14 report.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any

import pytest

from npud.testing.fake import FakeBehaviour, FakeLoader

from .conftest import RawConnection
from .test_http_boundaries import wait_for
from .test_reliability import request, title


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
    assert sum(n for key, n in requests.items() if key.startswith("generate:")) == 2, requests


def test_a_cancelled_running_job_is_not_counted_as_served(daemon_factory: Any) -> None:
    """health.jobs_served counts a running job that was cancelled (or whose client hung up) as
    served: the stopped generation returns finish_reason 'cancelled' and is tallied as a success,
    while a withdrawn queued job is counted nowhere. The systemd STATUS line repeats the number."""
    behaviour = FakeBehaviour(gate=threading.Event())
    daemon = daemon_factory(FakeLoader(behaviour))
    with daemon.connect() as conn:
        conn.send_json(request(1))
        assert behaviour.started.wait(10)
        conn.send_json(request("c", "cancel", {"id": 1}))
        replies = {r["id"]: r for r in (conn.read_json(), conn.read_json())}
    assert replies[1]["error"]["code"] == -32008
    wait_for(lambda: not daemon.call("health")["result"]["queue"]["running"], "the generation to stop")
    health = daemon.call("health")["result"]
    assert health["jobs_served"] == 0, f"jobs_served {health['jobs_served']}, jobs_failed {health['jobs_failed']}"
