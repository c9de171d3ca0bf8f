#!/usr/bin/env bash
# Install npud's systemd user units into ~/.config/systemd/user/ and print how to start them.
# usage: contrib/install-user-units.sh [path/to/npud]
#   (default: the npud contrib/bootstrap.sh installed, in .venv or $NPUD_VENV; else the one on PATH)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NPUD_VENV:-$repo/.venv}"
npud="${1:-}"
if [ -z "$npud" ]; then
    if [ -x "$venv/bin/npud" ]; then npud="$venv/bin/npud"; else npud="$(command -v npud || true)"; fi
fi
if [ ! -x "$npud" ]; then
    echo "npud not found; run contrib/bootstrap.sh first or pass its path" >&2
    exit 1
fi
npud="$(cd "$(dirname "$npud")" && pwd)/$(basename "$npud")"
config_home="${XDG_CONFIG_HOME:-$HOME/.config}"
units="$config_home/systemd/user"
mkdir -p "$units" "$config_home/npud"
for unit in npud.socket npud-http.socket npud.service openvino-genai-npu-worker.service; do
    sed "s|^ExecStart=/usr/bin/env npud|ExecStart=$npud|" "$repo/systemd/$unit" > "$units/$unit"
done
if [ ! -e "$config_home/npud/npud.env" ]; then
    cp "$repo/contrib/npud.env.example" "$config_home/npud/npud.env"
fi
. "$repo/contrib/envfile.sh"   # env_value, is_true, http_socket_enabled
no_http="$(env_value "$config_home/npud/npud.env" OV_GENAI_NPU_NO_HTTP)"
if http_socket_enabled "$units" && is_true "$no_http"; then
    cat >&2 <<MSG
WARNING: npud-http.socket is enabled but $config_home/npud/npud.env says OV_GENAI_NPU_NO_HTTP=$no_http:
npud refuses to start while systemd passes it a socket it must not serve, for the Unix socket's
clients too. Run: systemctl --user disable --now npud-http.socket (or remove that line).
MSG
fi
# An allow-list kept from an earlier install next to the shim on (the default) and no token:
# npud refuses that configuration (the shim would serve every user the list leaves out).
allow="$(env_value "$config_home/npud/npud.env" OV_GENAI_NPU_ALLOW_UID)$(env_value "$config_home/npud/npud.env" OV_GENAI_NPU_ALLOW_GID)"
token="$(env_value "$config_home/npud/npud.env" OV_GENAI_NPU_TOKEN_FILE)"
if [ -n "${allow//[, ]/}" ] && ! is_true "$no_http" && [ -z "$token" ]; then
    cat >&2 <<MSG
WARNING: $config_home/npud/npud.env sets an allow-list (OV_GENAI_NPU_ALLOW_UID/_ALLOW_GID) with the
HTTP shim on and no OV_GENAI_NPU_TOKEN_FILE: npud refuses to start with that (status 2), for the
Unix socket's clients too. Add OV_GENAI_NPU_TOKEN_FILE, or OV_GENAI_NPU_NO_HTTP=1 (and do not
enable npud-http.socket).
MSG
fi
cat <<MSG
Installed into $units (ExecStart=$npud).
Settings: $config_home/npud/npud.env (the acceptance check, contrib/smoke_llm_npu.sh, reads the same file)

Socket-activated (recommended):
  systemctl --user daemon-reload
  systemctl --user enable --now npud.socket npud-http.socket
Or always on (not together with the sockets above):
  systemctl --user daemon-reload
  systemctl --user enable --now openvino-genai-npu-worker.service
To keep it running without a login session and across reboots:
  sudo loginctl enable-linger \$USER

The NPU device /dev/accel/accel* is root:render 0660: your user must be in the "render" group
(sudo usermod -aG render \$USER), and your user services only get the group when the user
manager starts again: reboot, or 'sudo systemctl restart user@$(id -u).service' (that stops your
user services). Check: systemd-run --user --pipe --wait id -nG
MSG
