"""The kubelet plugin as a real `topodra driver` process, claims allocated by the real scheduler.

A kubelet-like client (tests/fakes/kubeletsim.py) registers the plugin through its sockets and
prepares/unprepares the claims with hand-encoded protobuf on the exact method paths. Crash tests
kill the process with SIGKILL at named points (TOPODRA_CRASH_AT, test-only) and check that after a
restart the next prepare/unprepare leaves exactly the right files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, apply_device_classes, node_slices, wait_for
from tests.fakes.kubeletsim import KubeletSim

pytestmark = pytest.mark.cluster

DRIVER = "topodra.dev"
GPU0 = "GPU-aaaaaaaa-0000-4000-8000-000000000000"
GPU1 = "GPU-bbbbbbbb-0000-4000-8000-000000000001"
TOPOLOGY = f"""
nodes:
- name: NODE
  gpus:
  - {{pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, uuid: {GPU0}, minor: 0}}
  - {{pciBusID: "0000:81:00.0", pcieRoot: pci0000:80, uuid: {GPU1}, minor: 1}}
  nics:
  - {{pciBusID: "0000:82:00.0", pcieRoot: pci0000:80, ifName: ib0, mac: "02:00:00:00:00:01", rdmaDevice: mlx5_0}}
  - {{pciBusID: "0000:83:00.0", pcieRoot: pci0000:80, ifName: eth9, mac: "02:00:00:00:00:02"}}
"""


@dataclass
class Harness:
    cluster: Any
    client: KubeClient
    node: str
    base: Path  # short: unix socket paths stay < 108 characters
    proc: DriverProcess | None = None
    starts: int = 0

    @property
    def root(self) -> Path:
        return self.base / "k"

    @property
    def cdi(self) -> Path:
        return self.base / "cdi"

    @property
    def dev(self) -> Path:
        return self.base / "dev"

    @property
    def sysfs(self) -> Path:
        return self.base / "sys"

    @property
    def boot_file(self) -> Path:
        return self.base / "boot_id"

    @property
    def checkpoint(self) -> Path:
        return self.root / "plugins" / DRIVER / "checkpoint.json"

    def start(self, crash_at: str | None = None) -> DriverProcess:
        assert self.proc is None
        env = dict(os.environ, TOPODRA_BOOT_ID_FILE=str(self.boot_file))
        env.pop("TOPODRA_CRASH_AT", None)
        if crash_at:
            env["TOPODRA_CRASH_AT"] = crash_at
        self.starts += 1
        args = [
            "--node-name", self.node, "--backend", "file", "--topology", str(self.base / "topo.yaml"),
            "--kubeconfig", str(self.cluster.kubeconfig), "--kubelet-root-dir", str(self.root),
            "--cdi-dir", str(self.cdi), "--dev-root", str(self.dev), "--sysfs-root", str(self.sysfs),
            "--rediscover-interval", "0",
        ]  # fmt: skip
        self.proc = DriverProcess(args, self.base / f"driver-{self.starts}.log", env=env)
        return self.proc

    def kubelet(self, timeout: float = 30.0) -> KubeletSim:
        sim = KubeletSim(self.root)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.proc.poll() is not None:
                raise AssertionError(f"driver exited {self.proc.proc.returncode}:\n{self.proc.log()[-3000:]}")
            if sim.registration_sockets():
                try:
                    sim.register()
                    return sim
                except grpc.RpcError:
                    pass
            if time.monotonic() > deadline:
                raise AssertionError(f"plugin never registered:\n{self.proc.log()[-3000:]}")
            time.sleep(0.05)

    def wait_killed(self) -> None:
        assert self.proc is not None
        rc = self.proc.proc.wait(20)
        assert rc == -signal.SIGKILL, self.proc.log()[-3000:]
        self.proc.stop()
        self.proc = None

    def stop(self) -> int:
        assert self.proc is not None
        rc = self.proc.stop(20)
        self.proc = None
        return rc

    def specs(self) -> list[str]:
        return sorted(p.name for p in self.cdi.iterdir()) if self.cdi.exists() else []

    def ck_claims(self) -> dict[str, Any]:
        return dict(json.loads(self.checkpoint.read_text())["claims"])


@pytest.fixture()
def harness(cluster: Any) -> Iterator[Harness]:
    node = f"kp-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    client = KubeClient.load(str(cluster.kubeconfig))
    apply_device_classes(client)
    base = Path(tempfile.mkdtemp(prefix="tkp-", dir="/tmp"))
    (base / "topo.yaml").write_text(TOPOLOGY.replace("NODE", node))
    (base / "boot_id").write_text("boot-1\n")
    (base / "dev" / "infiniband").mkdir(parents=True)
    for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "infiniband/uverbs0", "infiniband/rdma_cm"):
        (base / "dev" / n).write_text("")
    verbs = base / "sys" / "class" / "infiniband_verbs" / "uverbs0"
    verbs.mkdir(parents=True)
    (verbs / "ibdev").write_text("mlx5_0\n")
    for ifname in ("ib0", "eth9"):
        (base / "sys" / "class" / "net" / ifname).mkdir(parents=True)
        (base / "sys" / "class" / "net" / ifname / "operstate").write_text("up\n")
    h = Harness(cluster, client, node, base)
    try:
        yield h
    finally:
        if h.proc is not None:
            h.proc.stop()
        shutil.rmtree(base, ignore_errors=True)


def allocate(h: Harness, ns: str, name: str = "pair", nic: bool = True) -> tuple[str, str, str]:
    """A claim (GPU + NIC on one PCIe root) and a pod using it; the real scheduler allocates it."""
    requests: list[dict[str, Any]] = [{"name": "gpu", "exactly": {"deviceClassName": "gpu.topodra.dev"}}]
    constraints = []
    if nic:
        requests.append(
            {
                "name": "nic",
                "firstAvailable": [
                    {
                        "name": "rdma",
                        "deviceClassName": "nic.topodra.dev",
                        "selectors": [{"cel": {"expression": f'device.attributes["{DRIVER}"].rdma == true'}}],
                    },
                    {"name": "any", "deviceClassName": "nic.topodra.dev"},
                ],
            }
        )
        constraints = [{"requests": ["gpu", "nic"], "matchAttribute": "resource.kubernetes.io/pcieRoot"}]
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name},
        "spec": {"devices": {"requests": requests, "constraints": constraints}},
    }
    h.client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims", body=claim)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"p-{name}"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": h.node},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "acc"}]}}],
            "resourceClaims": [{"name": "acc", "resourceClaimName": name}],
        },
    }
    h.client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

    def allocated() -> dict[str, Any] | None:
        c = h.client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}")
        return c if (c.get("status") or {}).get("allocation") else None

    c = wait_for(allocated, timeout=60, what=f"claim {name} allocated")
    assert c is not None
    return ns, c["metadata"]["uid"], name


def expected_spec(h: Harness, uid: str, nic: bool = True, gpu: str = "gpu-1") -> dict[str, Any]:
    dev = h.dev
    minor = gpu.removeprefix("gpu-")
    bus = "0000:81:00.0" if minor == "1" else "0000:01:00.0"
    devices: list[dict[str, Any]] = [
        {
            "name": f"{uid}-{gpu}",
            "containerEdits": {
                "env": [f"TOPODRA_DEVICE_GPU_{minor}={bus}"],
                "deviceNodes": [{"path": f"/dev/nvidia{minor}", "hostPath": f"{dev}/nvidia{minor}"}],
            },
        }
    ]
    env = [f"NVIDIA_VISIBLE_DEVICES={GPU1 if minor == '1' else GPU0}"]
    nodes = [
        {"path": "/dev/nvidiactl", "hostPath": f"{dev}/nvidiactl"},
        {"path": "/dev/nvidia-uvm", "hostPath": f"{dev}/nvidia-uvm"},
    ]
    if nic:
        devices.append(
            {
                "name": f"{uid}-nic-0",
                "containerEdits": {
                    "env": ["TOPODRA_DEVICE_NIC_0=0000:82:00.0"],
                    "deviceNodes": [{"path": "/dev/infiniband/uverbs0", "hostPath": f"{dev}/infiniband/uverbs0"}],
                },
            }
        )
        env += ["TOPODRA_NET_INTERFACES=ib0", "TOPODRA_RDMA_DEVICES=mlx5_0"]
        nodes.append({"path": "/dev/infiniband/rdma_cm", "hostPath": f"{dev}/infiniband/rdma_cm"})
    return {
        "cdiVersion": "0.5.0",
        "kind": f"{DRIVER}/device",
        "devices": devices,
        "containerEdits": {"env": env, "deviceNodes": nodes},
    }


def allocated_device(h: Harness, ref: tuple[str, str, str]) -> str:
    c = h.client.get(f"/apis/resource.k8s.io/v1/namespaces/{ref[0]}/resourceclaims/{ref[2]}")
    return str(c["status"]["allocation"]["devices"]["results"][0]["device"])


def spec_of(h: Harness, uid: str) -> dict[str, Any]:
    return dict(json.loads((h.cdi / f"{DRIVER}-{uid}.json").read_text()))


# ---------------------------------------------------------------------------------------------------------


def test_register_prepare_unprepare_with_real_allocation(harness: Harness, namespace: str) -> None:
    h = harness
    h.start()
    with h.kubelet() as k:
        assert k.info is not None
        assert k.info.endpoint == str(h.root / "plugins" / DRIVER / "dra.sock")
        assert k.info.supported_versions == ["v1.DRAPlugin", "v1beta1.DRAPlugin", "v1alpha1.DRAResourceHealth"]
        wait_for(lambda: node_slices(h.client, h.node) or None, timeout=30, what="slices published")
        ref = allocate(h, namespace)
        uid = ref[1]
        res = k.prepare([ref])
        assert list(res) == [uid] and res[uid].error == ""
        kind = f"{DRIVER}/device"
        got = [(d.request_names, d.pool_name, d.device_name, d.cdi_device_ids) for d in res[uid].devices]
        assert got == [
            (["gpu"], h.node, "gpu-1", [f"{kind}={uid}-gpu-1"]),
            (["nic"], h.node, "nic-0", [f"{kind}={uid}-nic-0"]),  # "nic/rdma" stripped to "nic"
        ]
        assert h.specs() == [f"{DRIVER}-{uid}.json"]
        assert spec_of(h, uid) == expected_spec(h, uid)
        assert h.ck_claims()[uid]["state"] == "PrepareCompleted"
        # the NIC's status for DRA networking
        def with_status() -> list[dict[str, Any]] | None:
            c = h.client.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/pair")
            return c["status"].get("devices") or None

        devs = wait_for(with_status, timeout=10, what="claim status.devices")
        assert [(d["device"], d["networkData"]) for d in devs] == [
            ("nic-0", {"interfaceName": "ib0", "hardwareAddress": "02:00:00:00:00:01"})
        ]
        assert devs[0]["conditions"][0]["type"] == "Ready"
        # repeat on the other wire version: same answer
        again = k.prepare([ref], version="v1beta1.DRAPlugin")
        assert [(d.device_name, d.cdi_device_ids) for d in again[uid].devices] == [
            (d.device_name, d.cdi_device_ids) for d in res[uid].devices
        ]
        assert k.unprepare([ref]) == {uid: ""}
        assert h.specs() == [] and h.ck_claims() == {}
        # a replaced claim (same name, new UID in the request) is refused
        bad = k.prepare([(namespace, str(uuid.uuid4()), "pair")])
        assert "got replaced" in next(iter(bad.values())).error
    assert h.stop() == 0
    assert not (h.root / "plugins_registry" / f"{DRIVER}-reg.sock").exists()
    assert not (h.root / "plugins" / DRIVER / "dra.sock").exists()


@pytest.mark.parametrize("point", ["after-started", "after-cdi", "after-completed", "before-response"])
def test_crash_during_prepare_then_restart(harness: Harness, namespace: str, point: str) -> None:
    h = harness
    h.start(crash_at=point)
    k = h.kubelet()
    ref = allocate(h, namespace, nic=False)
    uid = ref[1]
    with pytest.raises(grpc.RpcError) as ei:
        k.prepare([ref])
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    k.close()
    h.wait_killed()
    # what the crash left behind
    left = {"after-started": [], "after-cdi": [f"{DRIVER}-{uid}.json"]}.get(point, [f"{DRIVER}-{uid}.json"])
    assert h.specs() == left
    h.start()
    with h.kubelet() as k:
        if point in ("after-started", "after-cdi"):
            assert h.specs() == []  # the half-done prepare was rolled back at start
            assert uid not in h.ck_claims()
        res = k.prepare([ref])
        assert res[uid].error == ""
        [gpu] = [d.device_name for d in res[uid].devices]
        assert gpu == allocated_device(h, ref)
        assert h.specs() == [f"{DRIVER}-{uid}.json"]
        assert spec_of(h, uid) == expected_spec(h, uid, nic=False, gpu=gpu)
        assert h.ck_claims()[uid]["state"] == "PrepareCompleted"
        assert k.unprepare([ref]) == {uid: ""}
        assert h.specs() == [] and h.ck_claims() == {}


def test_crash_during_unprepare_then_restart(harness: Harness, namespace: str) -> None:
    h = harness
    h.start()
    ref = allocate(h, namespace, nic=False)
    uid = ref[1]
    with h.kubelet() as k:
        assert k.prepare([ref])[uid].error == ""
    h.stop()
    h.start(crash_at="after-unprepare-cdi")
    with h.kubelet() as k, pytest.raises(grpc.RpcError):
        k.unprepare([ref])
    h.wait_killed()
    assert h.specs() == [] and uid in h.ck_claims()
    h.start()
    with h.kubelet() as k:
        assert k.unprepare([ref]) == {uid: ""}
        assert h.specs() == [] and h.ck_claims() == {}


def test_restart_and_faked_reboot(harness: Harness, namespace: str) -> None:
    h = harness
    h.start()
    ref = allocate(h, namespace)
    uid = ref[1]
    with h.kubelet() as k:
        first = k.prepare([ref])
    h.stop()
    # driver restart: the claim is still known, the spec untouched, the answer identical
    h.start()
    with h.kubelet() as k:
        assert k.prepare([ref]) == first
    h.stop()
    # reboot: new boot id; the stale spec is cleaned at start, the next prepare writes it again
    h.boot_file.write_text("boot-2\n")
    h.start()
    with h.kubelet() as k:
        assert h.specs() == []
        assert uid in h.ck_claims()
        assert k.prepare([ref]) == first
        assert spec_of(h, uid) == expected_spec(h, uid)
        assert k.unprepare([ref]) == {uid: ""}
    assert h.specs() == []


def test_corrupt_checkpoint_recovers_claims(harness: Harness, namespace: str) -> None:
    h = harness
    h.start()
    ref = allocate(h, namespace, nic=False)
    uid = ref[1]
    with h.kubelet() as k:
        first = k.prepare([ref])
    h.stop()
    h.checkpoint.write_text('{"kind": "TopodraCheckpoint", "version": 1, "claims": {')
    p = h.start()
    with h.kubelet() as k:
        assert "checkpoint_corrupt" in p.log()
        assert h.ck_claims()[uid]["recovered"] is True
        assert k.prepare([ref]) == first
        assert k.unprepare([ref]) == {uid: ""}
    assert h.specs() == []
    assert list(h.checkpoint.parent.glob("checkpoint.json.corrupt-*"))
    events = h.client.get("/api/v1/namespaces/default/events", fieldSelector=f"involvedObject.name={h.node}")
    assert "CheckpointCorrupt" in {e["reason"] for e in events.get("items") or []}


def test_health_stream_and_link_down_taints_slice(harness: Harness, namespace: str) -> None:
    h = harness
    h.start()
    with h.kubelet() as k:
        stream = k.watch_health("v1alpha1", timeout=60)
        first = next(stream)
        assert {(x.pool, x.device, x.health) for x in first} == {
            (h.node, d, "Healthy") for d in ("gpu-0", "gpu-1", "nic-0", "nic-1")
        }
        (h.sysfs / "class" / "net" / "eth9" / "operstate").write_text("down\n")
        deadline = time.monotonic() + 30
        upd = first
        while time.monotonic() < deadline and not any(x.health == "Unhealthy" for x in upd):
            upd = next(stream)
        assert [(x.device, x.health, x.message) for x in upd if x.health != "Healthy"] == [
            ("nic-1", "Unhealthy", "link of eth9 is down")
        ]

        def tainted() -> bool | None:
            devs = {d["name"]: d for s in node_slices(h.client, h.node) for d in s["spec"]["devices"]}
            return True if devs.get("nic-1", {}).get("taints") else None

        wait_for(tainted, timeout=30, what="nic-1 tainted in the slice")
