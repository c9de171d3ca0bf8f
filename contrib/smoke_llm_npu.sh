#!/usr/bin/env bash
# The acceptance check for NPU owners: python -m npud.smoke with npud's flags and environment.
# e.g.  contrib/smoke_llm_npu.sh --model ~/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${NPUD_VENV:-$repo/.venv}/bin/python"
[ -x "$python" ] || python=python3
exec "$python" -m npud.smoke "$@"
