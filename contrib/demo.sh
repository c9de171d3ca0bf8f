#!/usr/bin/env bash
# README command 1: set up everything, start npud on the CPU with SmolLM2-135M, send one title
# job, print the JSON result, stop the daemon.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/contrib/bootstrap.sh"
exec "${NPUD_VENV:-$repo/.venv}/bin/python" "$repo/contrib/demo.py" "$@"
