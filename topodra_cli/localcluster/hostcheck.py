"""Can this machine run a real node, and under which node name?"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from topodra_cli.localcluster.containerd import cni_bin_dirs
from topodra_cli.localcluster.images import find_busybox
from topodra_cli.localcluster.mounts import cgroup_mounts
from topodra_cli.localcluster.processes import ClusterError

# AF_UNIX sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH = 107


def machine_cannot() -> list[str]:
    """Why this machine can never run a real node (not root, cgroups not writable); empty when it can."""
    problems = []
    if os.geteuid() != 0:
        return ["not running as root (the kubelet and runc need root)"]
    mounts = cgroup_mounts()
    if not mounts:
        problems.append("no cgroup filesystem mounted")
    probe = f"topodra-probe-{os.getpid()}"
    for m in mounts:
        try:
            (m / probe).mkdir()
            (m / probe).rmdir()
        except OSError as e:
            problems.append(f"cannot create a cgroup in {m}: {e.strerror or e}")
            break
    return problems


def host_problems() -> list[str]:
    """Why this machine cannot run a real node now: machine_cannot() plus missing Debian packages."""
    problems = machine_cannot()
    if shutil.which("runc") is None:
        problems.append("runc not found on PATH (install Debian's runc: `make apt`)")
    try:
        find_busybox()
    except ClusterError as e:
        problems.append(str(e))
    if not cni_bin_dirs():
        problems.append("CNI loopback plugin not found in /usr/lib/cni (install containernetworking-plugins)")
    return problems


def socket_path_problems(*sockets: Path) -> list[str]:
    return [f"socket path {s} is longer than {MAX_SOCKET_PATH} characters; use a shorter cluster dir"
            for s in sockets if len(str(s)) > MAX_SOCKET_PATH]


def default_node_name() -> str:
    """This machine's hostname when it resolves to loopback, else `localhost`.

    The apiserver reaches kubelets by their Hostname address (the node name); with a name that resolves
    to loopback, logs and exec stay on 127.0.0.1.
    """
    h = socket.gethostname()
    return h if resolves_to_loopback(h) else "localhost"


def resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name).startswith("127.")
    except OSError:
        return False
