#!/usr/bin/env bash
# README command 2: set up everything and run the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$repo/contrib/bootstrap.sh"
cd "$repo"
exec "${NPUD_VENV:-$repo/.venv}/bin/python" -m pytest "$@"
