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
