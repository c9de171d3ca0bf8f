"""The connection-warning log: first event per (reason, uid) in full, the rest as one summary."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from npud.connlog import ConnectionLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_per_key_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock()
    scheduled: list[tuple[float, Callable[[], None]]] = []
    clog = ConnectionLog(logging.getLogger("test.connlog"), interval_s=10, clock=clock)
    clog.attach(lambda delay, fn: scheduled.append((delay, fn)))
    logged = [clog.warn("peer_not_allowed", 65534, "rejected %s", i) for i in range(300)]
    logged.append(clog.warn("connections", 0, "over %s", "limit"))
    assert logged.count(True) == 2 and logged[0] and logged[-1]
    assert [delay for delay, _ in scheduled] == [10]  # one summary timer per window
    clock.now += 10
    scheduled[0][1]()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["rejected 0", "over limit",
                        "299 more connection warnings in the last 10s, not logged one by one "
                        "(peer_not_allowed uid=65534: 299)"]
    assert clog.warn("peer_not_allowed", 65534, "rejected again")  # a new window logs again
    assert len(scheduled) == 2


def test_keys_beyond_the_cap_are_counted_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    clog = ConnectionLog(logging.getLogger("test.connlog"), max_keys=2)
    assert [clog.warn("peer_not_allowed", uid, "uid %s", uid) for uid in range(5)] == [True, True, False, False, False]
    clog.flush()
    summary = caplog.records[-1].getMessage()
    assert summary.startswith("3 more connection warnings") and "and 1 other peers" in summary
    clog.flush()  # nothing suppressed since: no line
    assert len(caplog.records) == 3
