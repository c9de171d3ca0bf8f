"""Why OpenVINO lists no NPU, told from a synthetic /dev/accel tree, its access and the groups:
driver not loaded, device without access (user not in the group, or in it but the service was
started before), or no user-space driver. The startup error says it, not "use --device CPU"."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from npud.accel import AccelNode, Groups, access_problem, inspect_nodes, npu_unavailable_message
from npud.busy import discover_npu
from npud.testing.sysfs import make_npu_sysfs

from .conftest import unique_socket

RENDER = AccelNode(path="/dev/accel/accel0", mode="crw-rw----", owner="root", group="render", usable=False)


def groups(process: set[str], configured: set[str]) -> Groups:
    return Groups(user="me", uid=1000, process=frozenset(process), configured=frozenset(configured))


def test_user_not_in_the_group() -> None:
    assert access_problem([RENDER], groups({"me"}, {"me"})) == (
        "/dev/accel/accel0 crw-rw---- root:render is there but this process (user me) cannot open it "
        "read/write: your user is not in the 'render' group. Run 'sudo usermod -aG render me', then "
        "reboot, or restart your user manager with 'sudo systemctl restart user@1000.service' (that "
        "stops every user service of yours, and a desktop session that runs under it: save your work "
        "first). Logging out and in is not enough: it does not restart the user manager, and with "
        "lingering on it only stops at shutdown. Check what your user services get with "
        "'systemd-run --user --pipe --wait id -nG'.")


def test_user_in_the_group_but_the_service_started_before() -> None:
    problem = access_problem([RENDER], groups({"me"}, {"me", "render"})) or ""
    assert problem.startswith("/dev/accel/accel0 crw-rw---- root:render is there but this process (user me) "
                              "cannot open it read/write: your user is in the 'render' group, but this "
                              "process was started before you were added, so it runs without that group.")
    assert "sudo systemctl restart user@1000.service" in problem and "usermod" not in problem


def test_in_the_group_but_the_mode_denies_it() -> None:
    node = AccelNode(path="/dev/accel/accel0", mode="crw-------", owner="root", group="render", usable=False)
    problem = access_problem([node], groups({"render"}, {"render"})) or ""
    assert "its mode gives the 'render' group no read/write, so no group membership helps" in problem
    assert "10-intel-vpu.rules" in problem and "usermod" not in problem


def test_a_root_only_node_is_not_fixed_by_joining_the_root_group() -> None:
    """Without a udev rule for accel (systemd before 254 has none; Intel's installation procedure
    for linux-npu-driver adds SUBSYSTEM=="accel", KERNEL=="accel*", GROUP="render", MODE="0660" in
    /etc/udev/rules.d/10-intel-vpu.rules) the kernel's node is crw------- root root, and npud told
    the owner to `sudo usermod -aG root USER`: useless for mode 0600 and harmful (membership of
    root). The message names the rule, its file and how to apply it, and the render group."""
    node = AccelNode(path="/dev/accel/accel0", mode="crw-------", owner="root", group="root", usable=False)
    me = Groups(user="me", uid=1000, process=frozenset({"me"}), configured=frozenset({"me"}))
    problem = access_problem([node], me) or ""
    assert problem == (
        "/dev/accel/accel0 crw------- root:root is there but this process (user me) cannot open it "
        "read/write: it belongs to the root group, so no group membership helps. No udev rule gives it "
        "to a group: systemd 254 and newer ship one (50-udev-default.rules: SUBSYSTEM==\"accel\", "
        "GROUP=\"render\"), older systems need Intel's: put the line 'SUBSYSTEM==\"accel\", "
        "KERNEL==\"accel*\", GROUP=\"render\", MODE=\"0660\"' into /etc/udev/rules.d/10-intel-vpu.rules "
        "(sudo tee), then run 'sudo udevadm control --reload-rules && sudo udevadm trigger "
        "--subsystem-match=accel'; 'ls -l /dev/accel/accel0' must then say crw-rw---- root render; your "
        "user must also be in 'render' (sudo usermod -aG render me, then reboot, or restart your user "
        "manager with 'sudo systemctl restart user@1000.service' (that stops every user service of "
        "yours, and a desktop session that runs under it: save your work first). Logging out and in is "
        "not enough: it does not restart the user manager, and with lingering on it only stops at "
        "shutdown. Check what your user services get with 'systemd-run --user --pipe --wait id -nG').")
    assert "-aG root" not in problem
    # A root-group node with a group mode (0660) is the same missing rule, never "join root".
    shared_root = AccelNode(path="/dev/accel/accel0", mode="crw-rw----", owner="root", group="root", usable=False)
    assert "-aG root" not in (access_problem([shared_root], me) or "")


def test_in_the_group_with_a_group_mode_and_still_denied() -> None:
    problem = access_problem([RENDER], groups({"render"}, {"render"})) or ""
    assert "something else denies it (a device filter such as a unit's DevicePolicy=" in problem


def test_a_usable_node_or_no_node_is_no_access_problem() -> None:
    usable = AccelNode(path="/dev/accel/accel1", mode="crw-rw----", owner="root", group="render", usable=True)
    assert access_problem([RENDER, usable], groups(set(), set())) is None
    assert access_problem([], groups(set(), set())) is None


def test_inspect_nodes_on_a_synthetic_tree(tmp_path: Path) -> None:
    dev = tmp_path / "accel"
    dev.mkdir()
    (dev / "accel0").touch()
    os.chmod(dev / "accel0", 0o660)
    (dev / "not-a-node").touch()
    nodes = inspect_nodes(dev, access=lambda path, mode: False)
    assert [(n.path, n.mode, n.usable) for n in nodes] == [(str(dev / "accel0"), "-rw-rw----", False)]
    assert inspect_nodes(tmp_path / "missing") == []


def test_why_openvino_lists_no_npu(tmp_path: Path) -> None:
    no_sysfs = discover_npu(str(tmp_path / "sys"))
    message = npu_unavailable_message([], groups(set(), set()), no_sysfs, ["CPU"])
    assert message.startswith("device NPU is not available (OpenVINO sees: CPU): there is no /dev/accel/accel* "
                              "node. no intel_vpu device under")
    assert "'sudo modprobe intel_vpu'" in message and message.endswith("Without an NPU, use --device CPU.")
    denied = npu_unavailable_message([RENDER], groups(set(), set()), no_sysfs, ["CPU"])
    assert denied.startswith("device NPU is not available (OpenVINO sees: CPU): the NPU is present but not "
                             "accessible: /dev/accel/accel0 crw-rw---- root:render is there")
    assert "--device CPU" not in denied
    usable = AccelNode(path="/dev/accel/accel0", mode="crw-rw----", owner="root", group="render", usable=True)
    no_umd = npu_unavailable_message([usable], groups({"render"}, {"render"}), no_sysfs, ["CPU"])
    assert no_umd.startswith("device NPU is not available (OpenVINO sees: CPU), although /dev/accel/accel0 is "
                             "usable by this process: the kernel side is fine, the NPU user-space driver is "
                             "missing or too old: install the NPU user-space driver")
    assert "intel-level-zero-npu" in no_umd


def npud_without_npu(tmp_path: Path, dev: Path) -> subprocess.CompletedProcess[str]:
    """The real npud, on this machine (OpenVINO lists no NPU), with a synthetic /dev/accel."""
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "openvino_model.xml").touch()
    make_npu_sysfs(tmp_path / "sys")
    return subprocess.run(
        [sys.executable, "-m", "npud", "--device", "NPU", "--model", str(model), "--socket", unique_socket(),
         "--no-http", "--dev-accel", str(dev), "--sysfs-root", str(tmp_path / "sys"), "--cache-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})


def test_startup_says_the_device_is_there_but_not_accessible(tmp_path: Path) -> None:
    """A node this process cannot use: as root every mode is usable, so drop to nobody in a child."""
    # Outside pytest's private (0700) tmp root, so that the unprivileged child can look at it.
    dev = Path(tempfile.mkdtemp(prefix="npud-test-dev-"))
    os.chmod(dev, 0o755)
    (dev / "accel0").touch()
    os.chmod(dev / "accel0", 0o600)
    if os.getuid() == 0:
        proc = subprocess.run(
            # Imports first: the interpreter's files need not be readable by nobody.
            [sys.executable, "-c", "import os, pathlib; from npud.accel import *; from npud.busy import discover_npu; "
             "os.setgroups([]); os.setgid(65534); os.setuid(65534); "
             f"nodes = inspect_nodes(pathlib.Path({str(dev)!r})); "
             "print(npu_unavailable_message(nodes, current_groups(), discover_npu('/nonexistent'), ['CPU']))"],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert out.startswith("device NPU is not available (OpenVINO sees: CPU): the NPU is present but not "
                              f"accessible: {dev}/accel0 -rw------- root:root is there but this process "
                              "(user nobody) cannot open it read/write: it belongs to the root group, so no "
                              "group membership helps. No udev rule gives it to a group")
        assert "10-intel-vpu.rules" in out and "-aG root" not in out
    proc = npud_without_npu(tmp_path, dev)
    shutil.rmtree(dev)
    assert proc.returncode == 1
    if os.getuid() == 0:
        # As root the node is usable: the kernel side is fine, the user-space driver is missing.
        assert "cannot start: device NPU is not available (OpenVINO sees: CPU), although" in proc.stderr
        assert "the NPU user-space driver is missing or too old" in proc.stderr


def test_startup_without_a_device_node_names_the_driver(tmp_path: Path) -> None:
    proc = npud_without_npu(tmp_path, tmp_path / "no-accel")
    assert proc.returncode == 1
    assert "cannot start: device NPU is not available (OpenVINO sees: CPU): there is no /dev/accel/accel* node." in proc.stderr
    assert "Without an NPU, use --device CPU." in proc.stderr
