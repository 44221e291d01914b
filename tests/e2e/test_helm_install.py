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
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.model import DRIVER_NAME
from tests.conftest import _session_cluster
from topodra_cli import __version__
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot, resolves_to_loopback
from topodra_cli.localcluster.kubelet import REAL_NODE_LABEL
from topodra_cli.localcluster.nodens import HOLDER, enter
from topodra_cli.localcluster.processes import free_port
from topodra_cli.localcluster.realnode import RealNode

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
    log: list[str] = field(default_factory=list)

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
    from topodra_cli.imagebuild import build_binary_image, build_topodra_image

    names = _node_names()
    if len(names) < 2:
        pytest.skip(f"two node names resolving to loopback are needed, have {names}")
    base = Path(tempfile.mkdtemp(prefix="thelm-", dir="/tmp"))
    topology = base / "topology.yaml"
    topology.write_text("nodes:" + "".join(
        TOPOLOGY_NODE.format(name=n, tag=f"{i:08x}", n=i) for i, n in enumerate(names)))
    t0 = time.monotonic()
    image = build_topodra_image(Path.home() / ".cache" / "topodra" / "image")
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

