"""Start npud on the CPU with SmolLM2-135M, ask for a title, print the result, stop npud.

Usage: python contrib/demo.py [--model M] [--device D] [--input TEXT]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import msgspec

from npuclient import Client, DaemonUnavailable

SAMPLE = (
    "I spent the whole weekend migrating our Postgres database from version 12 to 16, "
    "rebuilding the indexes and fixing the two extensions that broke along the way."
)


def wait_until_ready(client: Client, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll health while the model converts/loads (the first run converts SmolLM2 to IR)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"npud exited with status {daemon.returncode}")
        try:
            health = client.health()
        except DaemonUnavailable:
            health = None  # not listening yet
        if health is not None and health.status == "ready":
            return
        if health is not None and health.status == "error":
            raise SystemExit(f"model failed to load: {health.error}")
        time.sleep(0.1)
    raise SystemExit(f"npud was not ready after {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--input", default=SAMPLE)
    args = parser.parse_args()
    socket_name = f"@npud-demo-{os.getpid()}"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "npud", "--device", args.device, "--model", args.model, "--socket", socket_name,
         "--no-http"]
    )
    try:
        with Client(socket_name, timeout=120) as client:
            wait_until_ready(client, daemon, timeout=300)
            result = client.generate("title", args.input)
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result)).decode() + "\n")
        return 0
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


if __name__ == "__main__":
    sys.exit(main())
