"""The Helm chart installed the way users install it, on two real nodes, with kube-scheduler wired to it.

Two isolated real nodes (kubelet + containerd each, own mount namespace with a real node's host paths,
own node IP; docs/e2e.md) run the image `make image` builds. The first is the control-plane node: the
chart's extender DaemonSet runs there on the host network, its init container writes kube-scheduler's
configuration into /etc/kubernetes/topodra, and kube-scheduler is restarted in that node's mount
namespace from exactly that file (only its own kubeconfig path is the harness's), with leader election,
as kubeadm runs it. Only documented values are used (VALUES below); the simulated devices come from
the file backend, the chart's stand-in device nodes and a topology file on a hostPath.

The module's tests run in order on one installation: install and verify, placements through the
extender, a user pod's CDI view, the extender killed during a stream of pods and during a gang, a
driver pod deleted under a running pod, `helm upgrade`, `helm uninstall`, then the chart's own
kube-scheduler (mode own) on the same nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.model import DRIVER_NAME
from tests.conftest import _session_cluster
from tests.e2e.test_real_node import PROBE, parse_probe, spec_edits
from topodra_cli import __version__
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot, resolves_to_loopback
from topodra_cli.localcluster.kubelet import REAL_NODE_LABEL
from topodra_cli.localcluster.nodens import HOLDER, enter
from topodra_cli.localcluster.processes import free_port
from topodra_cli.localcluster.realnode import RealNode
from topodra_cli.testing.objects import STD, gpu_nic_template

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

_CANNOT = machine_cannot()
if _CANNOT:
    pytestmark.append(pytest.mark.skip(reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))

CHART = repo_root() / "deploy" / "helm" / "topodra"
RELEASE, NS = "topodra", "topodra-system"
DEV_ROOT = "/var/run/topodra-dev"
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"
GPU_LABEL = "nvidia.com/gpu.present"
IMAGE = f"ghcr.io/topodra/topodra:{__version__}"
SCHEDULER_IMAGE = "registry.k8s.io/kube-scheduler:v1.37.2"
# Per node: gpu-0 alone on pci0000:00, gpu-1 with nic-0 on pci0000:80 (an aligned pair has one answer).
TOPOLOGY_NODE = """
- name: {name}
  pcieRoots:
    pci0000:00: {{numaNode: 0}}
    pci0000:80: {{numaNode: 1}}
  gpus:
  - {{pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, uuid: GPU-{tag}-0000-4000-8000-000000000000, minor: 0}}
  - {{pciBusID: "0000:81:00.0", pcieRoot: pci0000:80, uuid: GPU-{tag}-0000-4000-8000-000000000001, minor: 1}}
  nics:
  - {{pciBusID: "0000:82:00.0", pcieRoot: pci0000:80, ifName: eth9, mac: "02:00:00:00:00:0{n}"}}
"""


def _helm() -> Path:
    out = subprocess.run(["bash", str(repo_root() / "hack" / "build-helm.sh")], capture_output=True, text=True,
                         check=True).stdout
    return Path(out.strip().splitlines()[-1]) / "helm"


@dataclass
class ChartEnv:
    cluster: LocalCluster
    nodes: list[RealNode]
    base: Path
    values_file: Path
    extender_port: int

    @property
    def control_plane(self) -> RealNode:
        return self.nodes[0]

    def helm(self, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        argv = [str(_helm()), "--kubeconfig", str(self.cluster.kubeconfig), *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n"
                                 f"{self.diagnostics()}")
        return r

    def kubectl(self, *args: str, check: bool = True) -> str:
        argv = [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.cluster.kubeconfig), *args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def host_path(self, node: RealNode, path: str) -> Path:
        """Where a node's host path (as its pods see it) lies on this machine."""
        for target, source in node.host_binds().items():
            if path == target or path.startswith(target + "/"):
                return Path(source) / path[len(target):].lstrip("/")
        return Path(path)

    def diagnostics(self) -> str:
        parts = [self.kubectl("get", "pods", "-A", "-o", "wide", check=False),
                 self.kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)[-4000:]]
        for node in self.nodes:
            for comp in ("kubelet", "containerd"):
                parts.append(f"--- {node.name} {comp} ---\n{node.log_tail(comp, 25)}")
        return "\n".join(parts)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, env: ChartEnv) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except Exception as e:
            last = e
            last_ok = False
        else:
            last_ok = bool(last)
        if last_ok:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{env.diagnostics()}")


def _node_names() -> list[str]:
    names = list(dict.fromkeys([default_node_name(), "localhost"]))
    return [n for n in names if resolves_to_loopback(n)]


def _values(env_port: int, topology: Path, extender_port: int, metrics_port: int) -> dict[str, Any]:
    """Only documented values (values.yaml, docs/install.md): the simulated-GPU set plus the local cluster's
    apiserver address (no kube-proxy here) and the real nodes' taint."""
    real_node = {"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}
    return {
        "image": {"pullPolicy": "Never"},
        "kubernetesApi": {"host": "127.0.0.1", "port": str(env_port)},
        "driver": {
            "backend": "file",
            "topologyFile": "/etc/topodra/topology.yaml",
            "devRoot": DEV_ROOT,
            "fakeDeviceNodes": 2,
            "hostNetwork": True,
            "metricsPort": metrics_port,
            "rediscoverInterval": 0,
            "extraVolumes": [{"name": "topology", "hostPath": {"path": str(topology), "type": "File"}}],
            "extraVolumeMounts": [{"name": "topology", "mountPath": "/etc/topodra/topology.yaml",
                                   "readOnly": True}],
        },
        "extender": {
            "port": extender_port,
            "tolerations": [{"key": CONTROL_PLANE, "operator": "Exists", "effect": "NoSchedule"}, real_node],
        },
    }


@pytest.fixture(scope="module")
def chart() -> Iterator[ChartEnv]:
    from topodra_cli.imagebuild import build_binary_image, build_topodra_image, default_out

    names = _node_names()
    if len(names) < 2:
        pytest.skip(f"two node names resolving to loopback are needed, have {names}")
    base = Path(tempfile.mkdtemp(prefix="thelm-", dir="/tmp"))
    topology = base / "topology.yaml"
    topology.write_text("nodes:" + "".join(
        TOPOLOGY_NODE.format(name=n, tag=f"{i:08x}", n=i) for i, n in enumerate(names)))
    t0 = time.monotonic()
    image = build_topodra_image(default_out())
    with _session_cluster("helm-") as cluster:
        sched_image = build_binary_image(SCHEDULER_IMAGE, cluster.bin_dir / "kube-scheduler", base / "images")
        nodes: list[RealNode] = []
        try:
            for n in names:
                node = RealNode(cluster, n, isolated=True)
                node.extra_binds[DEV_ROOT] = node.dir / "dev"  # the chart's stand-in device nodes
                node.start()
                nodes.append(node)
                node.load_image(image)
                node.load_image(sched_image)
            cluster.label_node(nodes[0].name, {CONTROL_PLANE: "", GPU_LABEL: "true"})
            for node in nodes[1:]:
                cluster.label_node(node.name, {GPU_LABEL: "true"})
            print(f"helm e2e: {len(nodes)} real nodes Ready with the image loaded in {time.monotonic() - t0:.1f}s")
            assert cluster.state is not None
            values = base / "values.yaml"
            ext_port = free_port()
            values.write_text(yaml.safe_dump(_values(cluster.state.apiserver_port, topology, ext_port,
                                                     free_port())))
            yield ChartEnv(cluster, nodes, base, values, ext_port)
        finally:
            for node in nodes:
                node.stop()
            shutil.rmtree(base, ignore_errors=True)


# ---- helpers ------------------------------------------------------------------------------------------


def _pods(env: ChartEnv, component: str) -> list[dict[str, Any]]:
    out = env.kubectl("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/component={component}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) and \
        not pod["metadata"].get("deletionTimestamp")


def _ready_on(env: ChartEnv, component: str) -> dict[str, dict[str, Any]]:
    return {p["spec"]["nodeName"]: p for p in _pods(env, component) if _ready(p)}


def _slices(env: ChartEnv) -> dict[str, list[str]]:
    out = json.loads(env.kubectl("get", "resourceslices", "-o", "json"))
    by_node: dict[str, list[str]] = {}
    for s in out["items"]:
        if s["spec"]["driver"] == DRIVER_NAME:
            by_node.setdefault(s["spec"].get("nodeName", ""), []).extend(d["name"] for d in s["spec"]["devices"])
    return {n: sorted(d) for n, d in by_node.items()}


def _scheduler_config_file(env: ChartEnv) -> Path:
    return env.host_path(env.control_plane, "/etc/kubernetes/topodra/kube-scheduler-config.yaml")


def _scheduler_tls(env: ChartEnv) -> tuple[dict[str, Any], ssl.SSLContext]:
    """The extender entry of the written configuration and a TLS context made from its tlsConfig, as
    kube-scheduler makes it (CA, and the client certificate when the chart enables client auth)."""
    cfg = yaml.safe_load(_scheduler_config_file(env).read_text())
    (ext,) = cfg["extenders"]
    tls = ext["tlsConfig"]
    ctx = ssl.create_default_context(cafile=str(env.host_path(env.control_plane, tls["caFile"])))
    if tls.get("certFile"):
        ctx.load_cert_chain(str(env.host_path(env.control_plane, tls["certFile"])),
                            str(env.host_path(env.control_plane, tls["keyFile"])))
    return ext, ctx


def _extender_call(env: ChartEnv, verb: str, body: Any) -> Any:
    """POST to the extender at the URL, with the TLS files, that the written configuration gives kube-scheduler."""
    ext, ctx = _scheduler_tls(env)
    req = urllib.request.Request(f"{ext['urlPrefix'].rstrip('/')}/{ext[verb + 'Verb']}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        return json.loads(r.read())


def _extender_metrics(env: ChartEnv) -> str:
    _, ctx = _scheduler_tls(env)
    with urllib.request.urlopen(f"https://127.0.0.1:{env.extender_port}/metrics", context=ctx, timeout=10) as r:
        text: str = r.read().decode()
    return text


def _metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def _user_pod(name: str, command: str, claims: list[tuple[str, str]] | None = None,
              scheduler: str | None = None) -> dict[str, Any]:
    """A user pod for either real node (no node pinned: kube-scheduler and the extender choose)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {
            "hostNetwork": True, "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "topodra.local/busybox:1", "imagePullPolicy": "Never",
                            "command": ["sh", "-c", command]}],
        },
    }
    if scheduler:
        pod["spec"]["schedulerName"] = scheduler
    if claims:
        pod["spec"]["resourceClaims"] = [{"name": n, "resourceClaimTemplateName": t} for n, t in claims]
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": n} for n, _ in claims]}
    return pod


def _create(env: ChartEnv, ns: str, obj: dict[str, Any]) -> None:
    f = env.base / f"obj-{uuid.uuid4().hex[:8]}.json"
    f.write_text(json.dumps(obj))
    env.kubectl("create", "-n", ns, "-f", str(f))


def _pod(env: ChartEnv, ns: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(env.kubectl("get", "pod", "-n", ns, name, "-o", "json"))
    return out


def _namespace(env: ChartEnv) -> str:
    ns = f"user-{uuid.uuid4().hex[:6]}"
    env.kubectl("create", "namespace", ns)
    env.cluster.wait_default_service_account(ns)
    return ns


# ---- tests, in order ----------------------------------------------------------------------------------


def test_install_runs_the_driver_on_every_node_and_wires_the_scheduler(chart: ChartEnv) -> None:
    env = chart
    t0 = time.monotonic()
    env.helm("install", RELEASE, str(CHART), "-n", NS, "--create-namespace", "-f", str(env.values_file))
    names = {n.name for n in env.nodes}
    drivers = wait_for(lambda: (r := _ready_on(env, "driver")) and set(r) == names and r, 180,
                       "a ready driver pod on every node", env)
    print(f"helm e2e: driver pods ready on {sorted(names)} {time.monotonic() - t0:.1f}s after helm install")
    for node_name, pod in drivers.items():
        started = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
        ready_at = next(c["lastTransitionTime"] for c in pod["status"]["conditions"] if c["type"] == "Ready")
        print(f"helm e2e: {node_name}: driver container started {started}, ready (registered, published) "
              f"{ready_at}")
    # Each registered with its own kubelet: its per-pod registration socket is in that node's kubelet root.
    for node in env.nodes:
        uid = drivers[node.name]["metadata"]["uid"]
        reg = node.kubelet_root / "plugins_registry" / f"{DRIVER_NAME}-{uid}-reg.sock"
        assert reg.is_socket(), f"{node.name}: {sorted(p.name for p in reg.parent.iterdir())}"
    wait_for(lambda: _slices(env) == {n: ["gpu-0", "gpu-1", "nic-0"] for n in names}, 60,
             "each node's slices", env)
    # The extender runs on the control-plane node only, and its init container wrote the scheduler's files.
    ext = wait_for(lambda: _ready_on(env, "extender"), 120, "a ready extender pod", env)
    assert set(ext) == {env.control_plane.name}
    cfg_file = _scheduler_config_file(env)
    assert cfg_file.is_file(), sorted(p.name for p in cfg_file.parent.iterdir())
    cfg = yaml.safe_load(cfg_file.read_text())
    assert cfg["extenders"][0]["urlPrefix"].startswith(f"https://127.0.0.1:{env.extender_port}/")
    # kube-scheduler as kubeadm runs it: on the control-plane node (its mount namespace), from that file,
    # with leader election (the extender's active replica is the one beside the leader).
    holder = env.control_plane.procs.pid(HOLDER)
    assert holder is not None
    env.cluster.set_scheduler_base(cfg_file, leader_elect=True, wrap=enter(holder))
    # The URL as kube-scheduler calls it: filter answers for a pod without claims, every node passes.
    # nodeCacheCapable: kube-scheduler sends node names only.
    args = {"Pod": {"metadata": {"name": "probe", "namespace": "default", "uid": str(uuid.uuid4())},
                    "spec": {"containers": [{"name": "c", "image": "x"}]}},
            "NodeNames": sorted(names)}
    wait_for(lambda: not _extender_call(env, "filter", args).get("Error"), 90,
             "the extender to answer filter as the active replica", env)
    answer = _extender_call(env, "filter", args)
    passed = answer.get("nodeNames") or answer.get("NodeNames") or \
        [n["metadata"]["name"] for n in (answer.get("nodes") or answer.get("Nodes") or {}).get("items") or ()]
    assert sorted(passed) == sorted(names), answer



def _template(env: ChartEnv, ns: str, name: str, gpus: int = 1, nics: int = 0) -> None:
    match = f"{STD}/pcieRoot" if gpus and nics else None
    _create(env, ns, gpu_nic_template(None, name, gpus=gpus, nics=nics, match=match))


def _wait_phase(env: ChartEnv, ns: str, name: str, phases: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = _pod(env, ns, name)
        phase = pod["status"].get("phase")
        if phase in phases:
            return pod
        if phase in ("Failed", "Succeeded"):
            raise AssertionError(f"pod {ns}/{name} ended {phase}, wanted {phases}")
        return None

    pod: dict[str, Any] = wait_for(check, timeout, f"pod {ns}/{name} to be {phases}", env)
    return pod


def _create_waiting_pod(env: ChartEnv, ns: str, name: str, command: str, claims: list[tuple[str, str]]) -> Path:
    """A pod that runs `command`, then waits until `<returned dir>/go` exists (a hostPath it shares)."""
    sync = env.base / "sync" / f"{ns}-{name}"
    sync.mkdir(parents=True)
    pod = _user_pod(name, command + "; while [ ! -e /sync/go ]; do sleep 0.1; done", claims)
    pod["spec"]["volumes"] = [{"name": "sync", "hostPath": {"path": str(sync), "type": "Directory"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "sync", "mountPath": "/sync"}]
    _create(env, ns, pod)
    return sync


def _node(env: ChartEnv, name: str) -> RealNode:
    return next(n for n in env.nodes if n.name == name)


def _claim_of(env: ChartEnv, ns: str, pod: dict[str, Any]) -> dict[str, Any]:
    (st,) = pod["status"]["resourceClaimStatuses"]
    out: dict[str, Any] = json.loads(env.kubectl("get", "resourceclaim", "-n", ns, st["resourceClaimName"],
                                                 "-o", "json"))
    return out


def test_user_pod_is_placed_through_the_extender_and_sees_exactly_its_devices(chart: ChartEnv) -> None:
    """An aligned GPU + NIC claim: placed via the extender (its metrics count the calls), allocated to the pair
    on one PCIe root, and inside the container exactly the CDI spec's environment and device nodes."""
    env = chart
    ns = _namespace(env)
    before = _metric_sum(_extender_metrics(env), "topodra_extender_requests_total")
    _template(env, ns, "pair", gpus=1, nics=1)
    sync = _create_waiting_pod(env, ns, "probe", PROBE, [("acc", "pair")])
    running = _wait_phase(env, ns, "probe", ("Running",))
    node = _node(env, running["spec"]["nodeName"])
    claim = _claim_of(env, ns, running)
    results = claim["status"]["allocation"]["devices"]["results"]
    assert sorted((r["request"], r["device"]) for r in results) == [("gpu", "gpu-1"), ("nic", "nic-0")]
    assert {r["pool"] for r in results} == {node.name}
    spec_file = node.cdi_dir / f"{DRIVER_NAME}-{claim['metadata']['uid']}.json"
    spec = json.loads(spec_file.read_text())
    want_env, want_nodes = spec_edits(spec)
    wait_for(lambda: "==end" in env.kubectl("logs", "-n", ns, "probe"), 30, "the probe's output", env)
    seen = parse_probe(env.kubectl("logs", "-n", ns, "probe"))
    # A claimless probe on the same node: what every container sees anyway.
    base_pod = _user_pod("baseline", PROBE)
    base_pod["spec"]["nodeSelector"]["kubernetes.io/hostname"] = node.name
    _create(env, ns, base_pod)
    _wait_phase(env, ns, "baseline", ("Succeeded",))
    baseline = parse_probe(env.kubectl("logs", "-n", ns, "baseline"))
    got_env = {k: v for k, v in seen.env.items() if k not in baseline.env}
    assert got_env == want_env, f"environment beyond a claimless pod's: {got_env}; spec: {want_env}"
    got_devs = {p: mm for p, mm in seen.devices.items() if p not in baseline.devices}
    assert set(got_devs) == set(want_nodes), f"device nodes {got_devs}; spec {want_nodes}"
    for path, host in want_nodes.items():
        st = os.stat(env.host_path(node, host))
        assert got_devs[path] == (os.major(st.st_rdev), os.minor(st.st_rdev)), path
    assert want_env.get("TOPODRA_NET_INTERFACES") == "eth9"
    (sync / "go").touch()
    _wait_phase(env, ns, "probe", ("Succeeded",))
    after = _metric_sum(_extender_metrics(env), "topodra_extender_requests_total")
    assert after > before, f"the extender counted no calls ({before} -> {after})"
    env.kubectl("delete", "namespace", ns, "--wait=false")


def _delete_pod(env: ChartEnv, component: str, node: str) -> str:
    (pod,) = [p for p in _pods(env, component) if p["spec"]["nodeName"] == node
              and not p["metadata"].get("deletionTimestamp")]
    env.kubectl("delete", "pod", "-n", NS, pod["metadata"]["name"], "--wait=false")
    return str(pod["metadata"]["uid"])


def _replaced(env: ChartEnv, component: str, node: str, old_uid: str) -> bool:
    ready = _ready_on(env, component)
    return node in ready and ready[node]["metadata"]["uid"] != old_uid


def _kill_extender(env: ChartEnv) -> tuple[str, int]:
    """SIGKILL the serving extender's process (a crash); the kubelet restarts the container in place."""
    (pod,) = [p for p in _pods(env, "extender") if p["spec"]["nodeName"] == env.control_plane.name]
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "extender")
    cid = status["containerID"].split("://", 1)[1]
    env.control_plane.ctr("tasks", "kill", "-s", "SIGKILL", cid)
    return str(pod["metadata"]["name"]), int(status.get("restartCount", 0))


def _restarted(env: ChartEnv, name: str, count: int) -> bool:
    pod = json.loads(env.kubectl("get", "pod", "-n", NS, name, "-o", "json"))
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == "extender")
    return int(status.get("restartCount", 0)) > count and _ready(pod)


def test_killing_the_extender_during_a_stream_of_pods_and_a_gang_loses_nothing(chart: ChartEnv) -> None:
    """The serving extender's process is killed while single pods and a gang Job are pending: the kubelet
    restarts it (no scheduling needed; a deleted pod would need the extender to be scheduled, see
    docs/install.md), every pod runs to completion, the gang is never partially bound."""
    from kubernetes import client

    from tests.gang_invariants import GangInvariants, default_gang_of

    env = chart
    ns = _namespace(env)
    _template(env, ns, "one-gpu", gpus=1)
    job_pod = _user_pod("w", "echo member; sleep 1", [("gpu", "one-gpu")])
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": "gang", "labels": {"topodra.dev/gang": "true"}},
           "spec": {"parallelism": 2, "completions": 2, "backoffLimit": 0,
                    "template": {"metadata": {}, "spec": job_pod["spec"]}}}
    singles = [f"single-{i}" for i in range(4)]
    with GangInvariants(env.cluster.api_client(), [ns], default_gang_of(job_sizes={"gang": 2})) as inv:
        _create(env, ns, _user_pod(singles[0], "echo one", [("gpu", "one-gpu")]))
        pod_name, restarts = _kill_extender(env)
        _create(env, ns, job)
        for name in singles[1:]:
            _create(env, ns, _user_pod(name, "echo one", [("gpu", "one-gpu")]))
        wait_for(lambda: _restarted(env, pod_name, restarts), 120, "the kubelet to restart the extender", env)
        for name in singles:
            _wait_phase(env, ns, name, ("Succeeded",), timeout=180)
        batch = client.BatchV1Api(env.cluster.api_client())
        wait_for(lambda: any(c.type == "Complete" and c.status == "True" for c in
                             (batch.read_namespaced_job_status("gang", ns).status.conditions or [])),
                 180, "the gang Job to complete", env)
    assert inv.counters.gangs_fully_bound >= 1
    env.kubectl("delete", "namespace", ns, "--wait=false")


def test_deleting_a_driver_pod_under_a_running_pod_keeps_it_running(chart: ChartEnv) -> None:
    """The replacement driver registers; the user pod keeps running; its claim is unprepared when it ends."""
    env = chart
    ns = _namespace(env)
    _template(env, ns, "one-gpu", gpus=1)
    sync = _create_waiting_pod(env, ns, "holder", "echo started", [("gpu", "one-gpu")])
    running = _wait_phase(env, ns, "holder", ("Running",))
    node = _node(env, running["spec"]["nodeName"])
    claim = _claim_of(env, ns, running)
    spec_file = node.cdi_dir / f"{DRIVER_NAME}-{claim['metadata']['uid']}.json"
    assert spec_file.is_file()
    container_id = running["status"]["containerStatuses"][0]["containerID"]
    old = _delete_pod(env, "driver", node.name)
    wait_for(lambda: _replaced(env, "driver", node.name, old), 120, "a new ready driver pod", env)
    still = _pod(env, ns, "holder")
    assert still["status"]["phase"] == "Running"
    assert still["status"]["containerStatuses"][0]["containerID"] == container_id  # same container
    assert spec_file.is_file()
    (sync / "go").touch()
    _wait_phase(env, ns, "holder", ("Succeeded",))
    env.kubectl("delete", "pod", "-n", ns, "holder")
    wait_for(lambda: not spec_file.exists(), 100, "the claim to be unprepared (CDI spec removed)", env)
    env.kubectl("delete", "namespace", ns, "--wait=false")


def _secret_data(env: ChartEnv) -> dict[str, dict[str, str]]:
    out = json.loads(env.kubectl("get", "secrets", "-n", NS, "-o", "json"))
    return {s["metadata"]["name"]: s.get("data") or {} for s in out["items"] if s["type"] == "kubernetes.io/tls"}


def test_helm_upgrade_rolls_the_driver_without_failed_prepares_and_keeps_the_certificates(chart: ChartEnv) -> None:
    env = chart
    secrets = _secret_data(env)
    assert secrets
    drivers = {n: p["metadata"]["uid"] for n, p in _ready_on(env, "driver").items()}
    extenders = {n: p["metadata"]["uid"] for n, p in _ready_on(env, "extender").items()}
    # A user pod prepared across the roll.
    ns = _namespace(env)
    _template(env, ns, "one-gpu", gpus=1)
    _create(env, ns, _user_pod("during", "sleep 6; echo ok", [("gpu", "one-gpu")]))
    env.helm("upgrade", RELEASE, str(CHART), "-n", NS, "-f", str(env.values_file), "--set", "driver.logLevel=debug")

    def rolled() -> bool:
        now = _ready_on(env, "driver")
        return set(now) == set(drivers) and all(now[n]["metadata"]["uid"] != u for n, u in drivers.items())

    wait_for(rolled, 240, "every driver pod replaced by the upgrade", env)
    _wait_phase(env, ns, "during", ("Succeeded",), timeout=180)
    assert _secret_data(env) == secrets, "helm upgrade replaced the extender's certificates"
    assert {n: p["metadata"]["uid"] for n, p in _ready_on(env, "extender").items()} == extenders, \
        "a driver-only change restarted the extender"
    # An extender change rolls the extender with a surge pod scheduled through the old one, which then
    # hands the port over: scheduling goes on across the roll.
    env.helm("upgrade", RELEASE, str(CHART), "-n", NS, "-f", str(env.values_file), "--set", "driver.logLevel=debug",
             "--set", "extender.logLevel=debug")
    _create(env, ns, _user_pod("across", "sleep 2; echo ok", [("gpu", "one-gpu")]))

    def extender_rolled() -> bool:
        now = _ready_on(env, "extender")
        return set(now) == set(extenders) and all(now[n]["metadata"]["uid"] != u for n, u in extenders.items()) \
            and len(_pods(env, "extender")) == len(extenders)

    wait_for(extender_rolled, 180, "the extender rolled by the upgrade", env)
    _wait_phase(env, ns, "across", ("Succeeded",), timeout=180)
    _create(env, ns, _user_pod("after", "echo ok", [("gpu", "one-gpu")]))
    _wait_phase(env, ns, "after", ("Succeeded",), timeout=120)
    assert _secret_data(env) == secrets
    events = env.kubectl("get", "events", "-A", "--field-selector", "type=Warning", "-o", "json")
    failed = [e["message"] for e in json.loads(events)["items"]
              if "Prepare" in e.get("reason", "") or "prepare" in e.get("message", "").lower()]
    assert not failed, failed
    env.kubectl("delete", "namespace", ns, "--wait=false")


def test_helm_uninstall_leaves_nothing_behind(chart: ChartEnv) -> None:
    env = chart
    # The scheduler first (docs/install.md: uninstall order), then the chart.
    env.cluster.set_scheduler_base(None)
    env.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")

    def leftovers() -> list[str]:
        found = []
        for kind in ("daemonsets,deployments,pods,services,configmaps,secrets,serviceaccounts,roles,rolebindings",):
            out = env.kubectl("get", kind, "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
            found += out.split()
        for kind in ("clusterroles", "clusterrolebindings", "deviceclasses", "validatingadmissionpolicies",
                     "validatingadmissionpolicybindings"):
            out = env.kubectl("get", kind, "-o", "name")
            found += [o for o in out.split() if "topodra" in o]
        found += [f"resourceslice/{n}" for n, _ in _slices(env).items()]
        for node in env.nodes:
            found += [str(p) for p in (node.kubelet_root / "plugins_registry").glob(f"{DRIVER_NAME}*")]
            found += [str(p) for p in node.cdi_dir.glob(f"{DRIVER_NAME}-*.json")]
        return found

    # The kubelet wipes a driver's ResourceSlices some seconds after the plugin unregisters.
    wait_for(lambda: not leftovers(), 120, "nothing of topodra left (objects, slices, sockets, CDI specs)", env)


def test_own_scheduler_mode_places_opted_in_pods_and_leaves_the_others(chart: ChartEnv) -> None:
    """Mode own (managed control planes): the chart's kube-scheduler with the extender as a sidecar; only pods
    with its schedulerName go through it."""
    env = chart
    sched_port = free_port()
    env.helm("install", RELEASE, str(CHART), "-n", NS, "-f", str(env.values_file),
             "--set", "scheduler.mode=own", "--set", "scheduler.hostNetwork=true",
             "--set", f"scheduler.port={sched_port}", "--set", "scheduler.replicas=1",
             "--set", "scheduler.image.pullPolicy=Never",
             "--set-json", 'scheduler.tolerations=[{"operator":"Exists"}]')
    wait_for(lambda: len(_ready_on(env, "driver")) == len(env.nodes), 180, "the drivers", env)
    wait_for(lambda: _ready_on(env, "scheduler"), 180, "the chart's kube-scheduler pod", env)
    ns = _namespace(env)
    _template(env, ns, "pair", gpus=1, nics=1)
    _create(env, ns, _user_pod("opted-in", "echo placed; sleep 4", [("acc", "pair")], scheduler="topodra-scheduler"))
    _create(env, ns, _user_pod("plain", "echo plain"))
    running = _wait_phase(env, ns, "opted-in", ("Running", "Succeeded"), timeout=180)
    assert running["spec"]["schedulerName"] == "topodra-scheduler"
    results = _claim_of(env, ns, running)["status"]["allocation"]["devices"]["results"]
    assert sorted((r["request"], r["device"]) for r in results) == [("gpu", "gpu-1"), ("nic", "nic-0")]
    _wait_phase(env, ns, "opted-in", ("Succeeded",), timeout=60)
    _wait_phase(env, ns, "plain", ("Succeeded",), timeout=120)
    # The sidecar bound it (bind verb): its metrics count the calls. Its CA is the release's; not checked here.
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(f"https://127.0.0.1:{env.extender_port}/metrics", context=insecure, timeout=10) as r:
        text = r.read().decode()
    binds = [ln for ln in text.splitlines()
             if ln.startswith("topodra_extender_requests_total{") and 'verb="bind"' in ln and 'code="200"' in ln]
    assert binds and float(binds[0].rsplit(" ", 1)[1]) >= 1, \
        [ln for ln in text.splitlines() if ln.startswith("topodra_extender_requests_total")]
    env.helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "120s")
