"""One real node's kubelet: its configuration and command line, and the kernel settings it changes.

The configuration choices (cgroupfs on hybrid cgroup v1, a private cgroup root, loopback-only
serving, the taint that keeps other tests' pods away) are explained in docs/e2e.md.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from topodra_cli.localcluster.nodestate import RealNodeState
from topodra_cli.localcluster.processes import pids_by_cmdline

REAL_NODE_LABEL = "topodra.dev/real-node"
# Other tests share the cluster: only pods that tolerate this taint land on a real node.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
# Kernel settings every kubelet sets at start (setupKernelTunables); recorded before the first of our
# kubelets starts and restored when the last one stops. /run is wiped by a reboot, like the settings.
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
TUNABLES_RECORD = Path("/run/topodra/kernel-tunables-before-kubelet.json")
# Every kubelet of ours names its node on the command line; a host kubelet may not.
_OUR_KUBELET_FLAG = "--hostname-override="


def kubelet_config(
    st: RealNodeState,
    *,
    runtime_socket: Path,
    pod_logs_dir: Path,
    client_ca: Path,
    feature_gates: Mapping[str, bool],
) -> dict[str, Any]:
    """The KubeletConfiguration document."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": "127.0.0.1",
        "port": st.kubelet_port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": st.kubelet_healthz_port,
        # Hybrid cgroup v1 machines: 1.36+ refuses cgroup v1 unless told not to.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": True,
        "cgroupRoot": st.cgroup_root,
        "failSwapOn": False,
        "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{runtime_socket}",
        "podLogsDir": str(pod_logs_dir),
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "AlwaysAllow"},  # loopback-only test node
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%", "imagefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerWithTaints": [REAL_NODE_TAINT],
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "featureGates": dict(feature_gates),
    }


def kubelet_argv(
    kubelet: Path, *, config: Path, kubeconfig: Path, root_dir: Path, cert_dir: Path, node_name: str,
    node_ip: str = "",
) -> tuple[str, ...]:
    return (
        str(kubelet),
        f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={root_dir}",
        f"--cert-dir={cert_dir}", f"{_OUR_KUBELET_FLAG}{node_name}",
        f"--node-labels={REAL_NODE_LABEL}=true",
        *([f"--node-ip={node_ip}"] if node_ip else []),
        "--v=2",
    )


def record_kernel_tunables() -> None:
    """Before a kubelet starts: remember the settings it will change, unless a running one already did."""
    if TUNABLES_RECORD.exists():
        return
    values = {}
    for t in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            values[t] = Path("/proc/sys", t).read_text().strip()
    with contextlib.suppress(OSError):
        TUNABLES_RECORD.parent.mkdir(parents=True, exist_ok=True)
        tmp = TUNABLES_RECORD.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values))
        tmp.rename(TUNABLES_RECORD)


def restore_kernel_tunables() -> None:
    """Once no real-node kubelet runs on the machine any more, put back what the first one changed."""
    if not TUNABLES_RECORD.exists() or any(pids_by_cmdline(_OUR_KUBELET_FLAG)):
        return
    with contextlib.suppress(OSError, ValueError):
        for t, v in json.loads(TUNABLES_RECORD.read_text()).items():
            if t in KERNEL_TUNABLES:
                with contextlib.suppress(OSError):
                    Path("/proc/sys", t).write_text(f"{v}\n")
        TUNABLES_RECORD.unlink()
