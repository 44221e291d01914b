"""End to end on a real node: kubelet 1.37 + containerd 2.x + the topodra driver as processes.

Needs root and writable cgroups (CI runs as root); skipped with the reason otherwise. Pods use
hostNetwork (there is no pod network) and locally built images (there is no registry).

The driver runs on a topology file for the real node, with a device root holding character device
nodes made here (`--dev-root`) and a small sysfs tree (`--sysfs-root`) naming the NIC's RDMA verbs
device, so its CDI specs reference device nodes that exist on this machine. A probe container
prints its environment and every device node it sees; the test compares that, minus what a
claimless pod sees, with the claim's CDI spec: exactly the spec's environment and device nodes
(with the major:minor of the spec's host paths). The container then waits for a file on a hostPath
volume, so the spec can be read while the claim is surely still prepared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from driver.model import DRIVER_NAME
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot
from topodra_cli.localcluster.mounts import mounts_under
from topodra_cli.localcluster.podspec import real_node_pod
from topodra_cli.localcluster.realnode import RealNode
from topodra_cli.testing.fakedevices import DEV_NODES as DEV_NODES  # re-exported: older imports
from topodra_cli.testing.fakedevices import GPU0, GPU1, make_fake_devices
from topodra_cli.testing.fakedevices import TOPOLOGY as TOPOLOGY
from topodra_cli.testing.objects import STD, gpu_nic_template

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

_CANNOT = machine_cannot()
if _CANNOT:
    pytestmark.append(pytest.mark.skip(reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))

PROBE = (
    "echo ==env; env; echo ==dev; find /dev \\( -type c -o -type b \\) -exec stat -c '%n %t %T' {} \\; ;"
    " echo ==end"
)
UID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
WAIT_GO = "; while [ ! -e /sync/go ]; do sleep 0.1; done"


# ---- helpers ------------------------------------------------------------------------------------


def _node_logs(node: RealNode) -> str:
    return "\n".join(
        f"--- {c} log (tail) ---\n{node.log_tail(c, 40)}" for c in ("kubelet", "containerd", "driver")
        if node.log_path(c).exists()
    )


def _events(core: Any, ns: str, pod: str) -> str:
    evs = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={pod}").items
    return "\n".join(f"{e.type} {e.reason}: {e.message}" for e in evs)


def wait_pod(cluster: LocalCluster, node: RealNode, ns: str, name: str, phases: tuple[str, ...],
             timeout: float = 120, log_has: str | None = None) -> Any:
    """Until the pod is in one of `phases` (and, if given, its log contains `log_has`)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    deadline = time.monotonic() + timeout
    pod = None
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, ns)
        if pod.status.phase in phases:
            if log_has is None:
                return pod
            try:
                if log_has in core.read_namespaced_pod_log(name, ns):
                    return pod
            except client.ApiException:
                pass
        elif pod.status.phase in ("Failed", "Succeeded"):
            break
        time.sleep(0.5)
    phase = pod.status.phase if pod is not None else "?"
    raise AssertionError(
        f"pod {ns}/{name} is {phase}, wanted {phases}"
        + (f" with {log_has!r} in its log" if log_has else "")
        + f"; events:\n{_events(core, ns, name)}\n{_node_logs(node)}"
    )


def wait_until(pred: Any, timeout: float, what: str, node: RealNode) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{_node_logs(node)}")


@dataclass(frozen=True)
class Probe:
    env: dict[str, str]
    devices: dict[str, tuple[int, int]]  # container path -> (major, minor)


def parse_probe(log: str) -> Probe:
    env: dict[str, str] = {}
    devices: dict[str, tuple[int, int]] = {}
    section = ""
    for line in log.splitlines():
        if line.startswith("==") and line[2:] in ("env", "dev", "end"):
            section = line[2:]
            continue
        if section == "env" and "=" in line:
            k, _, v = line.partition("=")
            env[k] = v
        elif section == "dev" and line.strip():
            path, major, minor = line.rsplit(" ", 2)
            devices[path] = (int(major, 16), int(minor, 16))
    assert section == "end", f"probe output incomplete:\n{log}"
    return Probe(env, devices)


def spec_edits(spec: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(env, container path -> host path) of a CDI spec: its own edits plus every device's."""
    env: dict[str, str] = {}
    nodes: dict[str, str] = {}
    for edits in [spec.get("containerEdits") or {}] + [d.get("containerEdits") or {} for d in spec["devices"]]:
        for e in edits.get("env") or ():
            k, _, v = e.partition("=")
            env[k] = v
        for n in edits.get("deviceNodes") or ():
            nodes[n["path"]] = n.get("hostPath") or n["path"]
    return env, nodes


def host_dev(path: str) -> tuple[int, int]:
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode), f"{path} is not a character device"
    return os.major(st.st_rdev), os.minor(st.st_rdev)


# ---- fixtures -----------------------------------------------------------------------------------


@dataclass
class Env:
    node: RealNode
    base: Path

    def sync_dir(self, pod: str) -> Path:
        d = self.base / "sync" / pod
        d.mkdir(parents=True, exist_ok=True)
        return d


@pytest.fixture(scope="module")
def e2e(cluster: LocalCluster) -> Iterator[Env]:
    base = Path(tempfile.mkdtemp(prefix="te2e-", dir="/tmp"))
    name = default_node_name()
    fake = make_fake_devices(base, name)
    node = RealNode(cluster, name, topology=fake.topology, driver_args=fake.driver_args())
    t0 = time.monotonic()
    node.start()
    print(f"real node {node.name} Ready in {time.monotonic() - t0:.1f}s")
    try:
        yield Env(node, base)
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def baseline(cluster: LocalCluster, e2e: Env) -> Probe:
    """What a claimless probe pod sees (its environment and default device nodes)."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    ns = f"base-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        core.create_namespaced_pod(ns, real_node_pod("probe", PROBE, node_name=e2e.node.name))
        wait_pod(cluster, e2e.node, ns, "probe", ("Succeeded",))
        return parse_probe(core.read_namespaced_pod_log("probe", ns))
    finally:
        core.delete_namespace(ns)


def device_classes(cluster: LocalCluster) -> None:
    from kubeaccess.sync import KubeClient
    from tests.fakes.kube import apply_device_classes

    apply_device_classes(KubeClient.load(str(cluster.kubeconfig)))


# ---- tests --------------------------------------------------------------------------------------


def test_plain_pod_runs_to_completion_and_logs_are_readable(
    cluster: LocalCluster, e2e: Env, namespace: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    marker = uuid.uuid4().hex
    core.create_namespaced_pod(namespace, real_node_pod(
        "plain", f"echo hello {marker}; echo pid=$$$$", node_name=e2e.node.name))
    done = wait_pod(cluster, e2e.node, namespace, "plain", ("Succeeded",))
    assert done.spec.node_name == e2e.node.name
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    # Through the apiserver, which reaches the kubelet by its Hostname address (loopback).
    log = core.read_namespaced_pod_log("plain", namespace)
    assert f"hello {marker}" in log
    # `$$$$` is `$$` after the kubelet's $(VAR) expansion; PID 1 = its own PID namespace, a real container.
    assert "pid=1\n" in log
    core.delete_namespaced_pod("plain", namespace)


def test_driver_registers_with_the_kubelet_and_publishes(cluster: LocalCluster, e2e: Env) -> None:
    from kubeaccess.sync import KubeClient
    from tests.fakes.kube import node_slices

    e2e.node.wait_driver_registered(timeout=60)  # the kubelet called NotifyRegistrationStatus(true)
    # ... and on the kubelet's side, its DRA plugin manager connected to the announced endpoint.
    def kubelet_connected() -> bool:
        return any('"Connection changed"' in ln and f'driverName="{DRIVER_NAME}"' in ln and "connected=true" in ln
                   for ln in e2e.node.log_path("kubelet").read_text(errors="replace").splitlines())

    wait_until(kubelet_connected, 30, "the kubelet to connect to the driver", e2e.node)
    reg = e2e.node.kubelet_root / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"
    assert reg.is_socket()
    assert (e2e.node.kubelet_root / "plugins" / DRIVER_NAME / "dra.sock").is_socket()
    kube = KubeClient.load(str(cluster.kubeconfig))

    def devices() -> list[str]:
        return sorted(d["name"] for s in node_slices(kube, e2e.node.name) for d in s["spec"].get("devices") or ())

    wait_until(lambda: devices() == ["gpu-0", "gpu-1", "nic-0"], 60, "the node's ResourceSlices", e2e.node)


def _run_claim_pod(cluster: LocalCluster, e2e: Env, baseline: Probe, ns: str, pod_name: str, template: str,
                   *, complete: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a probe pod with one claim from `template`; check its view against the CDI spec; let it complete
    (or, with complete=False, delete it while it runs); check that the claim is unprepared (spec and
    checkpoint entry removed) and deleted. Returns the spec and the allocation results."""
    from kubernetes import client

    api = cluster.api_client()
    core = client.CoreV1Api(api)
    res = client.ResourceV1Api(api)
    e2e.node.wait_driver_registered(timeout=60)
    sync = e2e.sync_dir(f"{ns}-{pod_name}")
    pod = real_node_pod(pod_name, PROBE + WAIT_GO, node_name=e2e.node.name, claims=[("acc", template)])
    pod["spec"]["volumes"] = [{"name": "sync", "hostPath": {"path": str(sync), "type": "Directory"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "sync", "mountPath": "/sync"}]
    core.create_namespaced_pod(ns, pod)
    running = wait_pod(cluster, e2e.node, ns, pod_name, ("Running",), log_has="==end")

    statuses = running.status.resource_claim_statuses or []
    assert len(statuses) == 1 and statuses[0].resource_claim_name, statuses
    claim_name = statuses[0].resource_claim_name
    claim = api.sanitize_for_serialization(res.read_namespaced_resource_claim(claim_name, ns))
    uid = claim["metadata"]["uid"]
    results = claim["status"]["allocation"]["devices"]["results"]
    assert {r["driver"] for r in results} == {DRIVER_NAME}
    assert {r["pool"] for r in results} == {e2e.node.name}
    spec_file = e2e.node.cdi_dir / f"{DRIVER_NAME}-{uid}.json"
    assert spec_file.is_file(), f"no CDI spec {spec_file}; have {sorted(os.listdir(e2e.node.cdi_dir))}"
    spec = json.loads(spec_file.read_text())
    want_env, want_nodes = spec_edits(spec)
    assert want_nodes, f"the spec names no device nodes: {spec}"

    seen = parse_probe(core.read_namespaced_pod_log(pod_name, ns))
    got_env = {k: v for k, v in seen.env.items() if k not in baseline.env}
    assert got_env == want_env, f"container environment beyond a claimless pod's: {got_env}; spec: {want_env}"
    got_devs = {p: mm for p, mm in seen.devices.items() if p not in baseline.devices}
    assert set(got_devs) == set(want_nodes), f"container device nodes {got_devs}; spec {want_nodes}"
    for path, host in want_nodes.items():
        assert got_devs[path] == host_dev(host), f"{path}: container {got_devs[path]}, host {host}"

    if complete:
        (sync / "go").touch()
        done = wait_pod(cluster, e2e.node, ns, pod_name, ("Succeeded",))
        assert done.status.container_statuses[0].state.terminated.exit_code == 0
    else:
        assert spec_file.is_file() and uid in _prepared_claims(e2e.node)
    core.delete_namespaced_pod(pod_name, ns)

    def pod_gone() -> bool:
        try:
            core.read_namespaced_pod(pod_name, ns)
            return False
        except client.ApiException as e:
            return e.status == 404

    def claim_gone() -> bool:
        try:
            res.read_namespaced_resource_claim(claim_name, ns)
            return False
        except client.ApiException as e:
            return e.status == 404

    wait_until(pod_gone, 60, f"pod {ns}/{pod_name} to be deleted", e2e.node)
    # NodeUnprepareResources: at termination, or by the kubelet's 60 s reconcile for gone pods.
    wait_until(lambda: not spec_file.exists(), 100, f"the driver to remove {spec_file.name}", e2e.node)
    assert uid not in _prepared_claims(e2e.node)
    wait_until(claim_gone, 60, f"claim {ns}/{claim_name} to be deleted", e2e.node)
    return spec, results


def _prepared_claims(node: RealNode) -> set[str]:
    """Claim UIDs in the driver's checkpoint and in the kubelet's DRA checkpoint."""
    uids: set[str] = set()
    for f in (node.driver_state_dir / "checkpoint.json", node.kubelet_root / "dra_manager_state"):
        if f.is_file():
            uids |= set(UID_RE.findall(f.read_text()))
    return uids


def test_gpu_claim_pod_sees_exactly_its_cdi_spec(
    cluster: LocalCluster, e2e: Env, baseline: Probe, namespace: str
) -> None:
    from kubernetes import client

    device_classes(cluster)
    client.ResourceV1Api(cluster.api_client()).create_namespaced_resource_claim_template(namespace, gpu_nic_template(
        None, "one-gpu", gpus=1, nics=0))
    spec, results = _run_claim_pod(cluster, e2e, baseline, namespace, "gpu", "one-gpu")
    assert len(results) == 1 and results[0]["request"] == "gpu"
    gpu = results[0]["device"]
    uuid_of = {"gpu-0": GPU0, "gpu-1": GPU1}
    assert gpu in uuid_of
    env, nodes = spec_edits(spec)
    assert env.get("NVIDIA_VISIBLE_DEVICES") == uuid_of[gpu]
    assert f"/dev/nvidia{gpu[-1]}" in nodes


def test_aligned_gpu_nic_claim_pod_sees_exactly_its_cdi_spec(
    cluster: LocalCluster, e2e: Env, baseline: Probe, namespace: str
) -> None:
    from kubernetes import client

    device_classes(cluster)
    client.ResourceV1Api(cluster.api_client()).create_namespaced_resource_claim_template(namespace, gpu_nic_template(
        None, "gpu-nic", gpus=1, nics=1, match=f"{STD}/pcieRoot"))
    spec, results = _run_claim_pod(cluster, e2e, baseline, namespace, "pair", "gpu-nic")
    assert sorted((r["request"], r["device"]) for r in results) == [("gpu", "gpu-1"), ("nic", "nic-0")]
    env, nodes = spec_edits(spec)
    assert env.get("NVIDIA_VISIBLE_DEVICES") == GPU1
    assert env.get("TOPODRA_NET_INTERFACES") == "ib0"
    assert env.get("TOPODRA_RDMA_DEVICES") == "mlx5_0"
    assert {"/dev/nvidia1", "/dev/infiniband/uverbs0"} <= set(nodes)


def test_deleting_a_running_pod_unprepares_its_claim(
    cluster: LocalCluster, e2e: Env, baseline: Probe, namespace: str
) -> None:
    from kubernetes import client

    device_classes(cluster)
    client.ResourceV1Api(cluster.api_client()).create_namespaced_resource_claim_template(namespace, gpu_nic_template(
        None, "one-gpu", gpus=1, nics=0))
    _, results = _run_claim_pod(cluster, e2e, baseline, namespace, "deleted", "one-gpu", complete=False)
    assert len(results) == 1


def test_gang_job_runs_to_complete_through_the_extender(
    cluster: LocalCluster, e2e: Env, namespace: str, tmp_path: Path
) -> None:
    """A Job of 2 pods marked as a gang: planned whole, bound together by the extender, both run, Complete."""
    from kubernetes import client

    from tests.gang_invariants import GangInvariants, default_gang_of
    from tests.integration.test_extender_support import extender_scheduler

    device_classes(cluster)
    client.ResourceV1Api(cluster.api_client()).create_namespaced_resource_claim_template(namespace, gpu_nic_template(
        None, "one-gpu", gpus=1, nics=0))
    pod = real_node_pod("w", "echo gang member done", node_name=e2e.node.name, claims=[("gpu", "one-gpu")])
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "gang", "labels": {"topodra.dev/gang": "true"}},
           "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0,
                    "template": {"metadata": {}, "spec": pod["spec"]}}}
    batch = client.BatchV1Api(cluster.api_client())
    with extender_scheduler(cluster, tmp_path / "ext", bind=True, percentage=0), \
            GangInvariants(cluster, [namespace], default_gang_of(job_sizes={"gang": 2})) as inv:
        batch.create_namespaced_job(namespace, job)
        wait_until(lambda: any(c.type == "Complete" and c.status == "True"
                               for c in (batch.read_namespaced_job_status("gang", namespace).status.conditions or [])),
                   180, "the gang Job to complete", e2e.node)
    assert inv.counters.gangs_fully_bound >= 1


def test_stop_leaves_nothing_behind(cluster: LocalCluster, e2e: Env) -> None:
    """Last in this module: stop the node and check processes, mounts and cgroups are gone."""
    node = e2e.node
    st = node.state
    assert st is not None
    pids = {n: node.procs.pid(n) for n in node.procs.names()}
    assert {"containerd", "kubelet", "driver"} <= set(pids)
    node.stop()
    for name, pid in pids.items():
        assert pid is None or not node.procs.running(name), f"{name} (pid {pid}) still running"
    assert not mounts_under(node.dir)
    assert not [r for r in st.cgroup_roots() if r.exists()]
    assert not node.kubelet_root.exists()
    assert (node.dir / "logs" / "kubelet.log").exists()

