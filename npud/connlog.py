"""Warnings about connections, bounded however many connections misbehave.

A local user can open connections as fast as the kernel accepts them. If each rejected (or
over-limit, oversize, slow, unread) connection logged its own WARNING, one loop of ``connect()``
would flood the journal: 300 connections in 10 ms gave 300 lines. Here the first event of each
(reason, uid) in an interval is logged at WARNING with its details; later ones are only counted,
and one summary line at the end of the interval reports the counts. So an interval logs at most
``max_keys`` detailed lines plus one summary, whatever the rate.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Any

# How long one aggregation window lasts: a sustained flood logs about one summary line per window.
SUMMARY_INTERVAL_S = 10.0
# Distinct (reason, uid) pairs logged in full per window; beyond that everything is counted only.
MAX_KEYS = 16

Key = tuple[str, "int | None"]
Scheduler = Callable[[float, Callable[[], None]], Any]


class ConnectionLog:
    """Rate-bounded connection warnings (see the module docstring).

    ``attach`` hands it a scheduler (the event loop's ``call_later``) so a window's summary is
    written when the window ends, not only when the next event arrives; ``flush`` writes it now
    (at shutdown).
    """

    def __init__(self, logger: logging.Logger, interval_s: float = SUMMARY_INTERVAL_S,
                 max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._max_keys = max_keys
        self._clock = clock
        self._schedule: Scheduler | None = None
        self._window_started: float | None = None
        self._logged: set[Key] = set()
        self._suppressed: collections.Counter[Key] = collections.Counter()

    def attach(self, schedule: Scheduler | None) -> None:
        self._schedule = schedule

    def warn(self, reason: str, uid: int | None, message: str, *args: Any) -> bool:
        """Log ``message % args`` at WARNING, or count it; True if it was logged."""
        if self._window_started is None:
            self._window_started = self._clock()
            if self._schedule is not None:
                self._schedule(self._interval_s, self.flush)
        key = (reason, uid)
        if key not in self._logged and len(self._logged) < self._max_keys:
            self._logged.add(key)
            self._log.warning(message, *args)
            return True
        self._suppressed[key] += 1
        return False

    def flush(self) -> None:
        """Write the summary of what this window suppressed (if anything) and start a new one."""
        if self._suppressed and self._window_started is not None:
            total = sum(self._suppressed.values())
            listed = self._suppressed.most_common(self._max_keys)
            parts = [f"{reason} uid={'?' if uid is None else uid}: {count}" for (reason, uid), count in listed]
            others = len(self._suppressed) - len(listed)
            if others:
                parts.append(f"and {others} other peers")
            self._log.warning("%d more connection warnings in the last %.0fs, not logged one by one (%s)",
                              total, self._clock() - self._window_started, ", ".join(parts))
        self._window_started = None
        self._logged.clear()
        self._suppressed.clear()
