"""``npud`` command line: build the Config at the edge, set up logging, run the daemon."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .config import ConfigError, load_config
from .daemon import SystemdContext, run
from .engine import EngineLoader, OpenVinoLoader, StartupError
from .systemd import Notifier, listen_fds, watchdog_interval_s

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    """Log to stderr (journald captures it under systemd). Never request or response text."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None, loader: EngineLoader | None = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"npud: {exc}\n")
        return 2
    setup_logging(config.log_level)
    # systemd's variables are read (and removed) here at the edge, like every other setting.
    notifier = Notifier.from_environ(os.environ)
    try:
        activated = listen_fds(os.environ)
    except StartupError as exc:
        logging.getLogger("npud").error("cannot start: %s", exc)
        notifier.notify(f"STATUS=cannot start: {exc}")
        return 1
    systemd = SystemdContext(activated, notifier, watchdog_interval_s(os.environ))
    return run(config, loader or OpenVinoLoader(), systemd)


if __name__ == "__main__":
    sys.exit(main())
