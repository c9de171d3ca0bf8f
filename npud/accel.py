"""The NPU's device nodes (``/dev/accel/accel*``) and why a process may not be able to use them.

When OpenVINO lists no NPU, the reason is one of three, and each has its own fix:

- no node at all: the ``intel_vpu`` kernel driver is not loaded (or the kernel is too old);
- a node this process cannot open read/write: the node belongs to a group (``render``, on some
  systems ``video``) this process is not in. Either the user is not in the group, or it is and
  this process was started before that: a process's groups are fixed when its session starts,
  and for a user service that session is the user manager (``user@UID.service``), which logging
  out and in does not restart (and with lingering never stops before a reboot);
- a node the process can use: then the kernel side is fine and the user-space driver (Level Zero
  NPU driver, compiler, loader) is missing or too old.

Everything here is a pure function of the nodes, their access and the groups, so tests drive it
with a synthetic ``/dev/accel`` tree; only :func:`current_groups` and :func:`inspect_nodes` look
at the real system (with ``os.access`` injectable).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .busy import NpuDiscovery

#: Where the README explains the user-space driver packages.
USER_SPACE_DRIVER_HINT = (
    "install the NPU user-space driver from https://github.com/intel/linux-npu-driver/releases "
    "(intel-level-zero-npu, intel-driver-compiler-npu, intel-fw-npu) and the Level Zero loader "
    "(README: 'The NPU user-space driver')"
)


@dataclass(frozen=True)
class AccelNode:
    """One ``/dev/accel/accel*`` node as this process sees it."""

    path: str
    mode: str  # "crw-rw----"
    owner: str
    group: str
    #: This process can open it read/write (the NPU driver opens it O_RDWR).
    usable: bool

    def describe(self) -> str:
        return f"{self.path} {self.mode} {self.owner}:{self.group}"


@dataclass(frozen=True)
class Groups:
    """The groups this process has, and the ones the user database gives its user."""

    user: str
    uid: int
    process: frozenset[str]
    configured: frozenset[str]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def inspect_nodes(dev_accel: Path, access: Callable[[str, int], bool] = os.access) -> list[AccelNode]:
    """The ``accel*`` nodes under ``dev_accel`` (none if the directory is missing)."""
    try:
        paths = sorted(p for p in dev_accel.iterdir() if p.name.startswith("accel"))
    except OSError:
        return []
    nodes = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        nodes.append(AccelNode(
            path=str(path),
            mode=stat.filemode(st.st_mode),
            owner=user_name(st.st_uid),
            group=group_name(st.st_gid),
            usable=access(str(path), os.R_OK | os.W_OK),
        ))
    return nodes


def current_groups() -> Groups:
    """This process's groups and its user's configured groups (read at the edge)."""
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
        user, base_gid = entry.pw_name, entry.pw_gid
        configured = {group_name(g) for g in os.getgrouplist(user, base_gid)}
    except KeyError:
        user, configured = str(uid), set()
    process = {group_name(g) for g in (*os.getgroups(), os.getegid())}
    return Groups(user, uid, frozenset(process), frozenset(configured))


def restart_user_manager_hint(uid: int) -> str:
    return (
        "reboot, or restart your user manager with 'sudo systemctl restart user@{uid}.service' "
        "(that stops every user service of yours, and a desktop session that runs under it: save "
        "your work first). Logging out and in is not enough: it does not restart the user manager, "
        "and with lingering on it only stops at shutdown. Check what your user services get with "
        "'systemd-run --user --pipe --wait id -nG'"
    ).format(uid=uid)


#: The group the NPU's node should belong to (Intel's rule, and systemd's own since 254).
NPU_GROUP = "render"
#: Intel's udev rule for the NPU's node, from linux-npu-driver's installation procedure (its
#: release notes) and Intel's NPU setup guides, in the file they name.
UDEV_RULE = 'SUBSYSTEM=="accel", KERNEL=="accel*", GROUP="render", MODE="0660"'
UDEV_RULE_FILE = "/etc/udev/rules.d/10-intel-vpu.rules"


def udev_rule_hint(node: AccelNode) -> str:
    """How to give the node to the render group for good (a chmod lasts until the next boot)."""
    return (
        f"No udev rule gives it to a group: systemd 254 and newer ship one (50-udev-default.rules: "
        f'SUBSYSTEM=="accel", GROUP="render"), older systems need Intel\'s: put the line '
        f"'{UDEV_RULE}' into {UDEV_RULE_FILE} (sudo tee), then run 'sudo udevadm control "
        f"--reload-rules && sudo udevadm trigger --subsystem-match=accel'; 'ls -l {node.path}' must then "
        f"say crw-rw---- root {NPU_GROUP}")


def access_problem(nodes: Sequence[AccelNode], groups: Groups) -> str | None:
    """Why this process cannot use any NPU node, and what to do; None if it can (or none exist).

    Never "join the root group": a node of group root (or one whose mode gives its group nothing)
    is a missing udev rule, and membership of root would be useless for a 0600 node and a gift of
    root-owned files for everything else.
    """
    if not nodes or any(node.usable for node in nodes):
        return None
    node = nodes[0]
    where = f"{node.describe()} is there but this process (user {groups.user}) cannot open it read/write"
    group_rw = node.mode[4:6] == "rw"
    if node.group == "root" or not group_rw:
        whose = ("it belongs to the root group" if node.group == "root"
                 else f"its mode gives the '{node.group}' group no read/write")
        join = ("" if NPU_GROUP in groups.process else
                f"; your user must also be in '{NPU_GROUP}'"
                + (f": {restart_user_manager_hint(groups.uid)}" if NPU_GROUP in groups.configured else
                   f" (sudo usermod -aG {NPU_GROUP} {groups.user}, then {restart_user_manager_hint(groups.uid)})"))
        return f"{where}: {whose}, so no group membership helps. {udev_rule_hint(node)}{join}."
    if node.group in groups.process:
        return (f"{where}, although it is in the '{node.group}' group and the mode gives the group "
                "read/write: something else denies it (a device filter such as a unit's DevicePolicy= "
                "or PrivateDevices=, an ACL, a security module).")
    if node.group in groups.configured:
        return (f"{where}: your user is in the '{node.group}' group, but this process was started "
                f"before you were added, so it runs without that group. To give it to npud's "
                f"service, {restart_user_manager_hint(groups.uid)}.")
    return (f"{where}: your user is not in the '{node.group}' group. Run 'sudo usermod -aG "
            f"{node.group} {groups.user}', then {restart_user_manager_hint(groups.uid)}.")


def npu_unavailable_message(nodes: Sequence[AccelNode], groups: Groups, sysfs: NpuDiscovery,
                            devices: Sequence[str]) -> str:
    """Why OpenVINO lists no NPU: driver not loaded, node not accessible, or no user-space driver."""
    lead = f"device NPU is not available (OpenVINO sees: {', '.join(devices) or 'no device'})"
    if not nodes:
        detail = sysfs.problem("") if sysfs.device is None else (
            f"sysfs has the intel_vpu device {sysfs.device} but there is no device node: check "
            "'ls -l /dev/accel' and 'sudo dmesg | grep -i vpu'.")
        return f"{lead}: there is no /dev/accel/accel* node. {detail} Without an NPU, use --device CPU."
    problem = access_problem(nodes, groups)
    if problem is not None:
        return f"{lead}: the NPU is present but not accessible: {problem}"
    usable = ", ".join(node.path for node in nodes if node.usable)
    return (f"{lead}, although {usable} is usable by this process: the kernel side is fine, the "
            f"NPU user-space driver is missing or too old: {USER_SPACE_DRIVER_HINT}. "
            "To run without the NPU, use --device CPU.")
