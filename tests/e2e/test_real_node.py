"""End to end on a real node: kubelet 1.37 + containerd 2.x + the topodra driver as processes.

Needs root and writable cgroups (CI runs as root); skipped with the reason otherwise. Pods use
hostNetwork (there is no pod network) and locally built images (there is no registry).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.realnode import (
    RealNode,
    _mountinfo,
    machine_cannot,
    real_node_pod,
)

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

_CANNOT = machine_cannot()
if _CANNOT:
    pytestmark.append(pytest.mark.skip(reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))


def _node_logs(node: RealNode) -> str:
    return "\n".join(
        f"--- {c} log (tail) ---\n{node.log_tail(c, 40)}" for c in ("kubelet", "containerd", "driver")
        if node.log_path(c).exists()
    )


def _events(core: Any, ns: str, pod: str) -> str:
    evs = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod}").items
    return "\n".join(f"{e.type} {e.reason}: {e.message}" for e in evs)


def wait_pod_phase(cluster: LocalCluster, node: RealNode, ns: str, name: str, phases: tuple[str, ...],
                   timeout: float = 120) -> Any:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase in phases:
            return pod
        if pod.status.phase in ("Failed", "Succeeded"):
            break
        time.sleep(0.5)
    phase = pod.status.phase if pod is not None else "?"
    raise AssertionError(
        f"pod {ns}/{name} is {phase}, wanted {phases}; events:\n{_events(core, ns, name)}\n{_node_logs(node)}"
    )


@pytest.fixture(scope="module")
def real_node(cluster: LocalCluster) -> Iterator[RealNode]:
    node = RealNode(cluster)
    t0 = time.monotonic()
    node.start()
    print(f"real node {node.name} Ready in {time.monotonic() - t0:.1f}s")
    try:
        yield node
    finally:
        node.stop()


def test_plain_pod_runs_to_completion_and_logs_are_readable(
    cluster: LocalCluster, real_node: RealNode, namespace: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    marker = uuid.uuid4().hex
    pod = real_node_pod("plain", f"echo hello {marker}; echo pid=$$$$", node_name=real_node.name)
    core.create_namespaced_pod(namespace, pod)
    done = wait_pod_phase(cluster, real_node, namespace, "plain", ("Succeeded",))
    assert done.spec.node_name == real_node.name
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    # Through the apiserver, which reaches the kubelet by its Hostname address (loopback).
    log = core.read_namespaced_pod_log("plain", namespace)
    assert f"hello {marker}" in log
    # `$$$$` is `$$` after the kubelet's $(VAR) expansion; PID 1 = its own PID namespace, a real container.
    assert "pid=1\n" in log
    core.delete_namespaced_pod("plain", namespace)


def test_stop_leaves_nothing_behind(cluster: LocalCluster, real_node: RealNode) -> None:
    """Last in this module: stop the node and check processes, mounts and cgroups are gone."""
    st = real_node.state
    assert st is not None
    pids = {n: real_node.procs.pid(n) for n in real_node.procs.names()}
    real_node.stop()
    for name, pid in pids.items():
        assert pid is None or not real_node.procs.running(name), f"{name} (pid {pid}) still running"
    prefix = str(real_node.dir)
    assert not [mp for mp, _ in _mountinfo() if mp == prefix or mp.startswith(prefix + "/")]
    from pathlib import Path

    assert not [m for m in st.cgroup_mounts if Path(m, st.cgroup_root.lstrip("/")).exists()]
    assert not real_node.kubelet_root.exists()
    assert (real_node.dir / "logs" / "kubelet.log").exists()
