"""Attack review (issue 14 follow-up): what a new user following the files literally runs into.

These tests fail on purpose until the findings are fixed; see the attack14 report.
"""

from __future__ import annotations

import io
import re
from typing import Any

import pytest

from npuclient.cli import EXIT_INVALID_INPUT, main as npuctl

from .conftest import REPO


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_npuctl_refuses_an_unusable_timeout_with_exit_2(value: str, daemon_factory: Any) -> None:
    """README: exit 2 for invalid input. `npuctl --timeout -1 health` (or nan) dies with a
    ValueError traceback from socket.settimeout (exit 1) instead of a usage error."""
    daemon = daemon_factory()
    stderr = io.StringIO()
    try:
        code: object = npuctl(["--timeout", value, "health", "--socket", daemon.socket],
                              stdout=io.StringIO(), stderr=stderr)
    except SystemExit as exc:  # argparse's own refusal is fine too
        code = exc.code
    except Exception as exc:  # what the user sees: a traceback, exit status 1
        code = f"uncaught {exc!r}"
    assert code == EXIT_INVALID_INPUT, f"exit {code}: {stderr.getvalue()!r}"
