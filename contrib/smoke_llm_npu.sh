#!/usr/bin/env bash
# The acceptance check for NPU owners (npud.smoke) with npud's flags and environment.
# e.g.  contrib/smoke_llm_npu.sh --model ~/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov
# Runs in the environment contrib/bootstrap.sh made (.venv, or $NPUD_VENV); never in another Python,
# which would not have npud and its pinned OpenVINO.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NPUD_VENV:-$repo/.venv}"
python="$venv/bin/python"
# `python -m` and `python -c` put the working directory first on sys.path: run from /tmp, they
# would import an npud/ that another user planted there. Drop that entry before importing npud.
safe='import sys; sys.path.pop(0)'
if [ ! -x "$python" ] || ! "$python" -c "$safe; import npud" 2>/dev/null; then
    echo "smoke_llm_npu.sh: no Python environment with npud in $venv." >&2
    echo "Run contrib/bootstrap.sh first (it creates $repo/.venv, or \$NPUD_VENV if set)," >&2
    echo "or set NPUD_VENV to a virtual environment where npud is installed." >&2
    exit 2
fi
exec "$python" -c "$safe; from npud.smoke import main; sys.exit(main(sys.argv[1:]))" "$@"
