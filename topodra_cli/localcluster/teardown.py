"""Tear a real node down, also one left behind by a killed run: processes, containers, cgroups, mounts.

Order: the driver and the kubelet; every container task, then containerd; shims that outlived it;
what still runs in the node's cgroups (its containers only), then the cgroups; every mount under the
node dir; the kubelet's log links; then everything in the node dir but the logs.

This module knows a node only by its dir, never by the cluster object, so the cluster can call it
(`stop_real_nodes`) without importing the real node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from topodra_cli.localcluster.containerd import CONTAINERD_VERSION, Containerd
from topodra_cli.localcluster.kubelet import restore_kernel_tunables
from topodra_cli.localcluster.mounts import mounts_under
from topodra_cli.localcluster.nodens import remove_node_ip
from topodra_cli.localcluster.nodestate import STATE_FILE, RealNodeState, load_state
from topodra_cli.localcluster.processes import ProcessTable

STOP_FIRST = ("driver", "kubelet")
STOP_LAST = "containerd"
KEEP_ON_STOP = ("logs", "pids", STATE_FILE)
CONTAINER_LOG_LINKS = Path("/var/log/containers")


def stop_real_nodes(cluster_dir: Path) -> None:
    """Tear down every real node under `<cluster_dir>/nodes` (LocalCluster.down and stale-dir cleanup)."""
    nodes = cluster_dir / "nodes"
    if not nodes.is_dir():
        return
    for d in sorted(nodes.iterdir()):
        if d.is_dir() and ((d / STATE_FILE).exists() or (d / "pids").is_dir()):
            teardown_node(d)


def teardown_node(node_dir: Path) -> None:
    if node_dir.parent.name != "nodes":  # never clean anything but <cluster>/nodes/<name>
        raise ValueError(f"{node_dir} is not a real node dir")
    st = load_state(node_dir)
    procs = ProcessTable(node_dir)
    containerd = Containerd(node_dir, st.containerd_version if st else CONTAINERD_VERSION)
    for name in STOP_FIRST:
        procs.stop(name)
    restore_kernel_tunables()
    if procs.running(STOP_LAST):
        containerd.kill_tasks()
    for name in [n for n in procs.names() if n not in (*STOP_FIRST, STOP_LAST)] + [STOP_LAST]:
        procs.stop(name)
    containerd.kill_shims()
    if st is not None:
        remove_cgroups(st)
        remove_node_ip(st.node_ip)
    unmount_under(node_dir)
    remove_container_log_links(node_dir / "pod-logs")
    leftover = mounts_under(node_dir)
    if leftover:
        print(f"realnode: warning: still mounted, keeping {node_dir}: {leftover[:5]}", file=sys.stderr)
        return
    for child in node_dir.iterdir() if node_dir.is_dir() else ():
        if child.name in KEEP_ON_STOP:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (node_dir / STATE_FILE).unlink(missing_ok=True)


def _cgroup_dirs(st: RealNodeState) -> list[Path]:
    out: list[Path] = []
    for r in st.cgroup_roots():
        if r.is_dir():
            out.extend(Path(dp) for dp, _, _ in os.walk(r))
    return sorted(out, key=lambda p: len(p.parts), reverse=True)  # deepest first


def remove_cgroups(st: RealNodeState) -> None:
    """Kill what still runs in the node's cgroups (its containers only), then remove them deepest first."""
    if not st.cgroup_root.strip("/"):
        return
    for attempt in range(50):
        dirs = _cgroup_dirs(st)
        if not dirs:
            return
        for d in dirs:
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    if int(pid) != os.getpid():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        for d in dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        if attempt:
            time.sleep(0.1)
    left = _cgroup_dirs(st)
    if left:
        print(f"realnode: warning: could not remove cgroups {[str(p) for p in left[:5]]}", file=sys.stderr)


def unmount_under(node_dir: Path) -> None:
    """Unmount everything at or below node_dir, deepest first (the kubelet bind-mounts its root dir)."""
    for _ in range(5):
        mps = mounts_under(node_dir)
        if not mps:
            return
        for mp in sorted(set(mps), key=len, reverse=True):
            r = subprocess.run(["umount", mp], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True, text=True, check=False)


def remove_container_log_links(pod_logs: Path) -> None:
    """The kubelet also links each container log into /var/log/containers; drop this node's links."""
    if not CONTAINER_LOG_LINKS.is_dir():
        return
    for link in CONTAINER_LOG_LINKS.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(f"{pod_logs}/"):
                link.unlink()
