#!/usr/bin/env bash
# Install npud as a system service for the users of this machine (README "Serving other users"):
# the npud account (sysusers.d), the shared NPU lock /run/npu.lock (tmpfiles.d), the units in
# /etc/systemd/system, /etc/npud/npud.env.
# usage: sudo contrib/install-system-units.sh [--npud PATH] [--root DIR]
#   --npud PATH  use this npud (outside /home and /root: the unit's ProtectHome= hides them);
#                default: create the virtual environment /opt/npud and install npud into it
#   --root DIR   install below DIR and do not touch the running system (no users, no reload)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
npud="" root=""
while [ $# -gt 0 ]; do
    case "$1" in
        --npud) npud="$2"; shift 2 ;;
        --root) root="${2%/}"; shift 2 ;;
        *) echo "usage: $0 [--npud PATH] [--root DIR]" >&2; exit 2 ;;
    esac
done
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-system-units.sh: run it as root (sudo), or with --root DIR" >&2
    exit 1
fi
if [ -z "$npud" ]; then
    prefix="$root/opt/npud"
    python="${PYTHON:-python3}"
    if ! "$python" -m venv "$prefix" >/dev/null 2>&1; then
        echo "install-system-units.sh: '$python -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2
        exit 1
    fi
    # Built from a copy: pip run as root in the owner's checkout leaves root-owned build/ and
    # *.egg-info there, and the owner's next contrib/bootstrap.sh fails on them.
    src="$(mktemp -d)"
    trap 'rm -rf "$src"' EXIT
    tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude='*.egg-info' --exclude=build -cf - . \
        | tar -C "$src" -xf -
    "$prefix/bin/python" -m pip --disable-pip-version-check -q install "$src/npuclient" "$src"
    npud="/opt/npud/bin/npud"
fi
case "$npud" in
    /home/*|/root/*)
        echo "install-system-units.sh: $npud is under /home or /root, which the system unit hides" >&2
        echo "(ProtectHome=yes); install npud elsewhere, e.g. without --npud (into /opt/npud)" >&2
        exit 1 ;;
    /*) ;;
    *) echo "install-system-units.sh: --npud needs an absolute path" >&2; exit 1 ;;
esac
units="$root/etc/systemd/system"
mkdir -p "$units" "$root/etc/sysusers.d" "$root/etc/tmpfiles.d" "$root/etc/npud"
sed "s|^ExecStart=/usr/bin/env npud|ExecStart=$npud|" "$repo/systemd/system/npud.service" > "$units/npud.service"
cp "$repo/systemd/system/npud.socket" "$repo/systemd/system/npud-http.socket" "$units/"
cp "$repo/systemd/system/npud.sysusers.conf" "$root/etc/sysusers.d/npud.conf"
cp "$repo/systemd/system/npud.tmpfiles.conf" "$root/etc/tmpfiles.d/npu.conf"
if [ ! -e "$root/etc/npud/npud.env" ]; then
    install -m 0644 "$repo/contrib/npud-system.env.example" "$root/etc/npud/npud.env"
fi
if [ -z "$root" ]; then
    systemd-sysusers /etc/sysusers.d/npud.conf
    systemd-tmpfiles --create /etc/tmpfiles.d/npu.conf   # /run/npu.lock now; at every boot from now on
    # systemd creates these at the first start; the model copy and npud.smoke need them before.
    install -d -o npud -g npud /var/lib/npud /var/lib/npud/models /var/cache/npud
    systemctl daemon-reload
fi
. "$repo/contrib/envfile.sh"   # env_value, is_true, http_socket_enabled
env_file="$root/etc/npud/npud.env"
# An earlier install (or a kept env file) can contradict what this one announces: say so, loudly.
# Set in the file (even to nothing, which npud reads as off: HTTP on) it overrides the unit's NO_HTTP=1.
if [ -r "$env_file" ] && grep -q "^[[:space:]]*OV_GENAI_NPU_NO_HTTP[[:space:]]*=" "$env_file"; then
    no_http="$(env_value "$env_file" OV_GENAI_NPU_NO_HTTP)"
else
    no_http=1
fi
if http_socket_enabled "$units" && is_true "$no_http"; then
    cat >&2 <<MSG
WARNING: npud-http.socket is enabled (an earlier install) but HTTP is off for the system units
(OV_GENAI_NPU_NO_HTTP=$no_http): npud refuses to start while systemd passes it that socket, for the
Unix socket's clients too. Run: sudo systemctl disable --now npud-http.socket
(or offer HTTP with a token: README "Serving other users").
MSG
fi
lock="$(env_value "$env_file" OV_GENAI_NPU_LOCK_FILE)"
if [ -n "$lock" ] && [ "$lock" != /run/npu.lock ]; then
    cat >&2 <<MSG
WARNING: $env_file (kept from an earlier install) sets OV_GENAI_NPU_LOCK_FILE=$lock, which
overrides the unit's shared /run/npu.lock: no other program takes that lock. Remove the line (or
set it to /run/npu.lock) to share the NPU lock.
MSG
fi
allow="$(env_value "$env_file" OV_GENAI_NPU_ALLOW_UID)$(env_value "$env_file" OV_GENAI_NPU_ALLOW_GID)"
token="$(env_value "$env_file" OV_GENAI_NPU_TOKEN_FILE)"
if [ -n "${allow//[, ]/}" ] && ! is_true "$no_http" && [ -z "$token" ]; then
    cat >&2 <<MSG
WARNING: $env_file sets an allow-list (OV_GENAI_NPU_ALLOW_UID/_ALLOW_GID) with HTTP on
(OV_GENAI_NPU_NO_HTTP=$no_http) and no OV_GENAI_NPU_TOKEN_FILE: npud refuses to start with that
(status 2), for the Unix socket's clients too, because the shim would serve every local user.
Add a token (README "Serving other users") or set OV_GENAI_NPU_NO_HTTP=1 (and run
sudo systemctl disable --now npud-http.socket).
MSG
fi
cat <<MSG
Installed the system units into $units (ExecStart=$npud).
Settings: $root/etc/npud/npud.env    Account: npud (in render); clients' group: npud-users
NPU lock: /run/npu.lock (root:render 0660, $root/etc/tmpfiles.d/npu.conf): other programs that use
the NPU take the same flock (--lock-file /run/npu.lock).

Put the model where the unit looks (or set OV_GENAI_NPU_MODEL in /etc/npud/npud.env):
  sudo cp -r ~/.local/share/npud/models/Qwen2.5-1.5B-Instruct-int4-ov /var/lib/npud/models/
  sudo chown -R npud:npud /var/lib/npud/models
Check it as the service will run it (and warm the compile cache):
  sudo -u npud $(dirname "$npud")/npud-smoke --env-file /etc/npud/npud.env
Start (not together with the user units):
  sudo systemctl enable --now npud.socket
HTTP is off (OV_GENAI_NPU_NO_HTTP=1: it has no peer check); README "Serving other users" says
how to turn it on with a token.
Let a user in: sudo usermod -aG npud-users alice, and put the group's number (the file runs no
command) into /etc/npud/npud.env:
  echo "OV_GENAI_NPU_ALLOW_GID=\$(getent group npud-users | cut -d: -f3)" | sudo tee -a /etc/npud/npud.env
MSG
