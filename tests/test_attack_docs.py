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


def test_the_user_unit_env_example_does_not_offer_an_allow_list() -> None:
    """contrib/npud.env.example is installed as ~/.config/npud/npud.env for the *user* units and
    offers '#OV_GENAI_NPU_ALLOW_UID=1001  (Let another local user in over the socket)'. README
    'Serving other users' says allow-lists cannot work in the user units and npud refuses to start
    with one there (status 1; with Restart=on-failure, a restart loop). Uncommenting the example
    line breaks the daemon."""
    example = (REPO / "contrib" / "npud.env.example").read_text()
    offered = [line for line in example.splitlines() if re.match(r"#?\s*OV_GENAI_NPU_ALLOW_(UID|GID)=", line)]
    assert offered == [], f"the user-unit env example offers an allow-list the user units refuse: {offered}"


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
