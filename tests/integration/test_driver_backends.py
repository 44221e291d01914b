"""Slices from all three discovery backends are accepted by the real apiserver, attributes intact."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from driver.discovery import BackendConfig, discover
from driver.discovery.filebackend import parse_topology
from driver.model import NodeTopology
from driver.publisher import SlicePublisher
from driver.slices import device_entries, normalize_devices
from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, api_matches, node_slices, wait_for
from tests.fakes.nvml import build_fake_nvml, nvml_env, write_nvml_config
from tests.fakes.sysfs import build_sysfs

pytestmark = pytest.mark.cluster

TOPO = """
nodes:
- name: {name}
  pcieRoots: {{pci0000:00: {{numaNode: 0}}, pci0000:80: {{numaNode: 1}}}}
  gpus:
  - {{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00, nvlinkPeers: ["0000:8a:00.0"],
      clique: "5e1c0de0-0000-4000-8000-00000000d3e0.3"}}
  - {{pciBusID: "0000:8a:00.0", pcieRoot: pci0000:80, nvlinkPeers: ["0000:0a:00.0"], healthy: false,
      productName: NVIDIA A100-SXM4-40GB, architecture: Ampere, cudaComputeCapability: "8.0", memory: 40Gi,
      driverVersion: "535.104.05", brand: Tesla}}
  nics:
  - {{pciBusID: "0000:0c:00.0", pcieRoot: pci0000:00, ifName: ib0, rdmaDevice: mlx5_0, sriov: pf,
      speedMbps: 400000, mtu: 4096}}
  - {{pciBusID: "0000:8c:00.0", pcieRoot: pci0000:80, ifName: eth9, linkUp: false, vendorID: "0x8086"}}
"""


def _node(cluster: Any) -> str:
    name = f"drv-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(name)
    return name


def _by_name(slices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices for d in s["spec"].get("devices") or []}


def _check_common(client: KubeClient, node: str, slices: list[dict[str, Any]]) -> None:
    uid = client.get(f"/api/v1/nodes/{node}")["metadata"]["uid"]
    for s in slices:
        assert s["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": True}
        ]
        assert s["spec"]["nodeName"] == node and s["spec"]["driver"] == "topodra.dev"
        assert s["spec"]["pool"]["name"] == node
        assert s["spec"]["pool"]["resourceSliceCount"] == len(slices)


def test_file_backend(cluster: Any, tmp_path: Path) -> None:
    node = _node(cluster)
    f = tmp_path / "t.yaml"
    f.write_text(TOPO.format(name=node))
    client = KubeClient.load(str(cluster.kubeconfig))
    topo = discover(BackendConfig(node_name=node, backends=("file",), topology_file=f))
    SlicePublisher(client, "topodra.dev", node).sync(topo)
    slices = node_slices(client, node)
    _check_common(client, node, slices)
    devs = _by_name(slices)
    assert sorted(devs) == ["gpu-0", "gpu-1", "nic-0", "nic-1"]
    g0, g1, n0, n1 = (devs[k]["attributes"] for k in ("gpu-0", "gpu-1", "nic-0", "nic-1"))
    assert g0["type"] == {"string": "gpu"} and n0["type"] == {"string": "nic"}
    assert g0["productName"] == {"string": "NVIDIA H100 80GB HBM3"}
    assert g0["brand"] == {"string": "Nvidia"} and g0["architecture"] == {"string": "Hopper"}
    assert g0["cudaComputeCapability"] == {"version": "9.0.0"}
    assert g0["driverVersion"] == {"version": "550.54.15"} and g0["cudaDriverVersion"] == {"version": "12.4.0"}
    assert g0["index"] == {"int": 0} and g0["minor"] == {"int": 0} and g0["uuid"]["string"].startswith("GPU-")
    assert g0["clique"] == {"string": "5e1c0de0-0000-4000-8000-00000000d3e0.3"}
    assert g0["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:00"}
    assert g0["resource.kubernetes.io/pciBusID"] == {"string": "0000:0a:00.0"}
    assert g0["resource.kubernetes.io/numaNode"] == {"int": 0}
    assert devs["gpu-0"]["capacity"] == {"memory": {"value": "80Gi"}}
    assert g1["driverVersion"] == {"version": "535.104.5"} and g1["architecture"] == {"string": "Ampere"}
    assert devs["gpu-1"]["capacity"] == {"memory": {"value": "40Gi"}}
    assert "clique" not in g1
    (taint,) = devs["gpu-1"]["taints"]  # unhealthy: tainted, with the server's timeAdded
    assert taint["key"] == "topodra.dev/unhealthy" and taint["effect"] == "NoSchedule" and taint["timeAdded"]
    assert n0["ifName"] == {"string": "ib0"} and n0["rdma"] == {"bool": True}
    assert n0["rdmaDevice"] == {"string": "mlx5_0"} and n0["sriov"] == {"bool": True}
    assert n0["mtu"] == {"int": 4096} and n0["state"] == {"string": "up"}
    assert n0["mac"]["string"].startswith("02:") and n0["vendorID"] == {"string": "0x15b3"}
    assert devs["nic-0"]["capacity"] == {"bandwidth": {"value": "400G"}}
    assert n1["state"] == {"string": "down"} and n1["rdma"] == {"bool": False} and "capacity" not in devs["nic-1"]
    assert n1["resource.kubernetes.io/numaNode"] == {"int": 1}
    # everything sent is stored (no silently dropped field)
    stored = normalize_devices([d for s in slices for d in s["spec"]["devices"]])
    assert stored == normalize_devices(device_entries(topo))


def test_sysfs_backend(cluster: Any, tmp_path: Path) -> None:
    node = _node(cluster)
    topo = parse_topology(TOPO.format(name=node))[0]
    root = build_sysfs(tmp_path / "sys", topo)
    client = KubeClient.load(str(cluster.kubeconfig))
    found = discover(BackendConfig(node_name=node, backends=("sysfs",), sysfs_root=root))
    assert len(found.nics) == 2 and not found.gpus
    SlicePublisher(client, "topodra.dev", node).sync(found)
    devs = _by_name(node_slices(client, node))
    assert sorted(devs) == ["nic-0", "nic-1"]
    for name, want in (("nic-0", topo.nics[0]), ("nic-1", topo.nics[1])):
        a = devs[name]["attributes"]
        assert a["ifName"] == {"string": want.if_name} and a["mac"] == {"string": want.mac}
        assert a["resource.kubernetes.io/pciBusID"] == {"string": want.pci_bus_id}
        assert a["resource.kubernetes.io/pcieRoot"] == {"string": want.pcie_root}
        assert a["resource.kubernetes.io/numaNode"] == {"int": want.numa_node}
        assert a["vendorID"] == {"string": want.vendor_id} and a["mtu"] == {"int": want.mtu}
    assert devs["nic-0"]["attributes"]["rdmaDevice"] == {"string": "mlx5_0"}
    assert devs["nic-0"]["capacity"] == {"bandwidth": {"value": "400G"}}
    assert devs["nic-0"]["attributes"]["sriov"] == {"bool": True}
    assert devs["nic-1"]["attributes"]["state"] == {"string": "down"} and "capacity" not in devs["nic-1"]
    # every attribute, exactly: what sysfs gave equals what the file described
    assert api_matches(client, NodeTopology(node, (), topo.nics))


@pytest.mark.skipif(not Path("/sys/class/net").is_dir(), reason="no /sys on this machine")
def test_sysfs_backend_on_this_machines_real_sys(cluster: Any) -> None:
    """Read-only: whatever NICs this machine really has are published and accepted as they are."""
    node = _node(cluster)
    found = discover(BackendConfig(node_name=node, backends=("sysfs",), sysfs_root=Path("/sys")))
    client = KubeClient.load(str(cluster.kubeconfig))
    SlicePublisher(client, "topodra.dev", node).sync(found)
    assert api_matches(client, found)
    devs = _by_name(node_slices(client, node))
    assert len(devs) == len(found.nics)
    for name, nic in found.named_devices().items():
        a = devs[name]["attributes"]
        assert a["ifName"] == {"string": nic.if_name}
        assert a["mac"] == {"string": Path(f"/sys/class/net/{nic.if_name}/address").read_text().strip()}
        assert a["resource.kubernetes.io/pciBusID"] == {"string": nic.pci_bus_id}
        assert a["resource.kubernetes.io/pcieRoot"]["string"].startswith("pci")


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed for the fake NVML")
def test_nvml_and_sysfs_backends_in_driver_process(cluster: Any, tmp_path: Path) -> None:
    """The real pynvml talks to the fake libnvidia-ml.so.1 found through LD_LIBRARY_PATH."""
    node = _node(cluster)
    topo = parse_topology(TOPO.format(name=node))[0]
    root = build_sysfs(tmp_path / "sys", topo)
    lib = build_fake_nvml(tmp_path / "lib")
    cfg = write_nvml_config(tmp_path / "nvml.conf", topo)
    env = nvml_env(lib, cfg)
    args = [
        "--node-name",
        node,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--backend",
        "nvml,sysfs",
        "--sysfs-root",
        str(root),
        "--no-kubelet-plugin",
        "--rediscover-interval",
        "0",
    ]
    client = KubeClient.load(str(cluster.kubeconfig))
    # NVML reports no health (so no taint) and one driver version for the whole system.
    gpus = tuple(replace(g, healthy=True, driver_version="550.54.15") for g in topo.gpus)
    expected = NodeTopology(node, gpus, topo.nics)
    with DriverProcess(args, tmp_path / "driver.log", env) as drv:
        try:
            wait_for(lambda: api_matches(client, expected), timeout=30, what=f"slices of {node}")
        except AssertionError as e:
            raise AssertionError(f"{e}\ndriver log:\n{drv.log()[-4000:]}") from None
    devs = _by_name(node_slices(client, node))
    g0, g1 = devs["gpu-0"]["attributes"], devs["gpu-1"]["attributes"]
    assert g0["uuid"] == {"string": topo.gpus[0].uuid} and g1["uuid"] == {"string": topo.gpus[1].uuid}
    assert g1["productName"] == {"string": "NVIDIA A100-SXM4-40GB"} and g1["brand"] == {"string": "Tesla"}
    assert g1["cudaComputeCapability"] == {"version": "8.0.0"} and g1["architecture"] == {"string": "Ampere"}
    assert g0["clique"] == {"string": "5e1c0de0-0000-4000-8000-00000000d3e0.3"}
    assert g0["nvlinkPeers"] == {"int": 1}
    assert g1["resource.kubernetes.io/pcieRoot"] == {"string": "pci0000:80"}  # from sysfs
    assert g1["resource.kubernetes.io/numaNode"] == {"int": 1}
    assert devs["gpu-1"]["capacity"] == {"memory": {"value": "40Gi"}}
    assert devs["nic-0"]["attributes"]["ifName"] == {"string": "ib0"}
