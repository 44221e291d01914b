"""Several real nodes on one machine, each seeing the host paths a real node has.

A DaemonSet names host paths (`/var/lib/kubelet`, `/var/run/cdi`, ...) that are the same on every node. Two
kubelets on one machine cannot share them, so an isolated node runs its containerd and kubelet in a mount
namespace of its own where those paths are bind mounts of the node's dirs; what they mount there (container
root filesystems, volumes) stays in that namespace and goes with its last process.

It also gets an address of its own on `lo`: hostNetwork pods of different nodes (the driver's probe port)
then bind different addresses. The kubelet refuses a loopback node IP, hence 10.250.x.y rather than 127.x.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from topodra_cli.localcluster.processes import ClusterError, ProcessSpec, ProcessTable

HOLDER = "mountns"
# The holder's program after it execs: ProcessTable recognises it by this name.
SLEEP = "/bin/sleep"


def node_ip_for(node_dir: Path) -> str:
    """A stable address for the node, from its dir: 10.250.a.b, b in 2..253."""
    h = int.from_bytes(hashlib.sha256(str(node_dir).encode()).digest()[:2], "big")
    return f"10.250.{h >> 8}.{2 + (h & 0xFF) % 252}"


def add_node_ip(ip: str) -> None:
    if ip in _lo_addresses():
        return
    r = subprocess.run(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], capture_output=True, text=True, check=False)
    if r.returncode != 0 and ip not in _lo_addresses():
        raise ClusterError(f"cannot add the node address {ip} to lo: {r.stderr.strip()}")


def remove_node_ip(ip: str) -> None:
    if ip and ip in _lo_addresses():
        subprocess.run(["ip", "addr", "del", f"{ip}/32", "dev", "lo"], capture_output=True, check=False)


def _lo_addresses() -> set[str]:
    r = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True, check=False)
    return {w.split("/")[0] for line in r.stdout.splitlines() for w in line.split()[3:4]}


def start_mount_namespace(procs: ProcessTable, binds: Mapping[str, Path], timeout: float = 10) -> int:
    """Start the process that holds the node's mount namespace, with `binds` (path seen there -> node dir)."""
    script = ["set -e"]
    for target, source in binds.items():
        source.mkdir(parents=True, exist_ok=True)
        # The mount point must exist on the host; it stays an empty dir there.
        Path(target).mkdir(parents=True, exist_ok=True)
        script.append(f"mount --bind '{source}' '{target}'")
    script.append(f"exec {SLEEP} 2147483647")
    procs.start(ProcessSpec(HOLDER, (SLEEP,), wrap=(
        "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", "; ".join(script), "--")))
    pid = procs.pid(HOLDER)
    assert pid is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = procs.exited(HOLDER)
        if code is not None:
            raise ClusterError(f"the node's mount namespace did not start ({code}): {procs.tail(HOLDER, 10)}")
        with contextlib.suppress(OSError):
            if "sleep" in Path(f"/proc/{pid}/cmdline").read_text() and all(
                    _mounted_in(pid, t) for t in binds):
                return pid
        time.sleep(0.05)
    raise ClusterError(f"the node's mount namespace is not ready after {timeout:.0f}s: {procs.tail(HOLDER, 10)}")


def _mounted_in(pid: int, target: str) -> bool:
    real = str(Path(target).resolve())
    text = Path(f"/proc/{pid}/mountinfo").read_text()
    return any(line.split()[4] == real for line in text.splitlines())


def enter(pid: int) -> tuple[str, ...]:
    """The prefix that runs a program in the node's mount namespace."""
    return ("nsenter", f"--mount=/proc/{pid}/ns/mnt", "--")
