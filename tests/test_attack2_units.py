"""Attack review 2: the units and their installers (issue 15), read against systemd's manuals and
run where this machine allows. Each test fails on the code it was written against; the docstring
quotes the promise it checks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

README = (REPO / "README.md").read_text()
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- the user units' installer


def test_install_user_units_uses_the_environment_the_acceptance_check_ran_in(tmp_path: Path) -> None:
    """contrib/smoke_llm_npu.sh (README step 4) runs in "the environment contrib/bootstrap.sh made
    (.venv, or $NPUD_VENV); never in another Python", so that it checks "the very configuration the
    service will run". contrib/install-user-units.sh (step 5) instead takes `command -v npud` first
    and ignores $NPUD_VENV:
    - any other npud on PATH (an older pipx or `pip install --user`) becomes ExecStart;
    - with $NPUD_VENV and no .venv in the checkout (how .ci/run works: NPUD_VENV=$(mktemp -d)/venv)
      it exits 1 "npud not found", which is why tests/test_owner_path.py::test_unit_installation
      fails under .ci/run on a fresh clone of main."""
    checkout = tmp_path / "clone"  # a checkout without .venv, like CI's fresh clone
    for part in ("contrib", "systemd"):
        shutil.copytree(REPO / part, checkout / part)
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "npud").write_text("#!/bin/sh\necho an older npud\n")
    (other / "npud").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "NPUD_VENV": str(BIN.parent), "PATH": f"{other}:/usr/bin:/bin"}
    proc = subprocess.run([str(checkout / "contrib" / "install-user-units.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    unit = (home / ".config" / "systemd" / "user" / "npud.service").read_text()
    assert f"ExecStart={BIN / 'npud'}\n" in unit, re.findall(r"ExecStart=.*", unit)


# ---------------------------------------------------------------- who may connect to the system service


def unit_values(path: Path, key: str) -> list[str]:
    return [v for line in path.read_text().splitlines() if line.startswith(f"{key}=")
            for v in line.split("=", 1)[1].split()]


def test_the_system_defaults_do_not_open_the_http_shim_to_every_local_user() -> None:
    """README "Serving other users": "Who may connect: the npud account, root, and what
    /etc/npud/npud.env allows ... The HTTP shim has no peer identity: set OV_GENAI_NPU_TOKEN_FILE or
    OV_GENAI_NPU_NO_HTTP=1 there (and do not enable npud-http.socket)". But:
    - the README's own command block (and the installer's closing message) enable npud-http.socket,
      and the /etc/npud/npud.env it installs sets neither a token nor NO_HTTP: every local user
      (any uid, not only npud-users) runs jobs through 127.0.0.1:18820;
    - not enabling npud-http.socket does not keep it off: the system npud.service lists it in
      Wants= and Sockets=, so it is started whenever npud.service is (systemd.unit(5), Wants=:
      "Units listed in this option will be started if the configuring unit is")."""
    system = REPO / "systemd" / "system"
    pulled_in = [key for key in ("Wants", "Requires", "Sockets")
                 if "npud-http.socket" in unit_values(system / "npud.service", key)]
    assert not pulled_in, f"npud.service starts npud-http.socket through {pulled_in}"
    defaults = (REPO / "contrib" / "npud-system.env.example").read_text()
    active = {line.split("=", 1)[0] for line in defaults.splitlines() if line and not line.startswith("#")}
    section = README[README.index("### Serving other users"):]
    section = section[: section.index("\n## ", 1)]
    enables_http = re.search(r"systemctl enable --now [^\n]*npud-http\.socket", section) is not None
    assert not enables_http or active & {"OV_GENAI_NPU_TOKEN_FILE", "OV_GENAI_NPU_NO_HTTP"}, (
        "the documented system setup serves HTTP to every local user without a token")

