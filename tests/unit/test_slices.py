"""Slice building and pool planning: attributes, API limits, splitting, names, generations."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from driver.discovery.filebackend import parse_topology
from driver.model import Gpu, Nic, NodeTopology
from driver.slices import (
    MAX_ATTRS_AND_CAPS,
    MAX_DEVICES,
    MAX_DEVICES_WITH_TAINTS,
    binary_quantity,
    decimal_quantity,
    desired_slices,
    device_diff,
    device_entries,
    devices_equal,
    gpu_device,
    nic_device,
    node_owner,
    plan_pool,
    semver,
    slice_name,
    slice_object,
    validate_slice,
)

STD = "resource.kubernetes.io"
OWNER = node_owner("n1", "uid-1")

GPU = Gpu(
    pci_bus_id="0000:0a:00.0",
    uuid="GPU-6b1f7c0e-3c57-4d0e-9a57-746f706f6472",
    index=0,
    minor=3,
    product_name="NVIDIA H100 80GB HBM3",
    brand="Nvidia",
    architecture="Hopper",
    cuda_compute_capability="9.0",
    driver_version="535.104.05",
    cuda_driver_version="12.4",
    memory_bytes=80 * 2**30,
    numa_node=1,
    pcie_root="pci0000:00",
    nvlink_peers=("0000:0b:00.0", "0000:0c:00.0"),
    clique_id="5e1c0de0-0000-4000-8000-00000000d3e0.7",
)
NIC = Nic(
    pci_bus_id="0000:0c:00.0",
    if_name="ibp12s0",
    mac="02:00:00:00:00:0a",
    vendor_id="0x15b3",
    device_id="0x1021",
    numa_node=1,
    pcie_root="pci0000:00",
    mtu=4096,
    speed_mbps=400_000,
    rdma_device="mlx5_0",
    sriov_role="pf",
)


def _topo(n_gpus: int, n_nics: int = 0, name: str = "n1", unhealthy: int | None = None) -> NodeTopology:
    gpus = tuple(
        replace(GPU, pci_bus_id=f"0000:{i // 32 + 1:02x}:{i % 32:02x}.0", index=i, healthy=i != unhealthy)
        for i in range(n_gpus)
    )
    nics = tuple(replace(NIC, pci_bus_id=f"0001:{j // 32 + 1:02x}:{j % 32:02x}.0") for j in range(n_nics))
    return NodeTopology(name, gpus, nics)


# ---- attributes -----------------------------------------------------------------------------------------


def test_gpu_attributes_exact() -> None:
    d = gpu_device("gpu-0", GPU)
    assert d == {
        "name": "gpu-0",
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": GPU.uuid},
            "index": {"int": 0},
            "minor": {"int": 3},
            "productName": {"string": "NVIDIA H100 80GB HBM3"},
            "brand": {"string": "Nvidia"},
            "architecture": {"string": "Hopper"},
            "cudaComputeCapability": {"version": "9.0.0"},
            "driverVersion": {"version": "535.104.5"},  # semver drops the leading zero, like NVIDIA's driver
            "cudaDriverVersion": {"version": "12.4.0"},
            "clique": {"string": "5e1c0de0-0000-4000-8000-00000000d3e0.7"},
            "nvlinkPeers": {"int": 2},
            f"{STD}/pciBusID": {"string": "0000:0a:00.0"},
            f"{STD}/pcieRoot": {"string": "pci0000:00"},
            f"{STD}/numaNode": {"int": 1},
        },
        "capacity": {"memory": {"value": "80Gi"}},
    }


def test_nic_attributes_exact() -> None:
    d = nic_device("nic-0", NIC)
    assert d == {
        "name": "nic-0",
        "attributes": {
            "type": {"string": "nic"},
            "ifName": {"string": "ibp12s0"},
            "mac": {"string": "02:00:00:00:00:0a"},
            "vendorID": {"string": "0x15b3"},
            "deviceID": {"string": "0x1021"},
            "mtu": {"int": 4096},
            "state": {"string": "up"},
            "rdma": {"bool": True},
            "rdmaDevice": {"string": "mlx5_0"},
            "sriov": {"bool": True},
            "isSriovVf": {"bool": False},
            "virtual": {"bool": False},
            f"{STD}/pciBusID": {"string": "0000:0c:00.0"},
            f"{STD}/pcieRoot": {"string": "pci0000:00"},
            f"{STD}/numaNode": {"int": 1},
        },
        "capacity": {"bandwidth": {"value": "400G"}},
    }


def test_unknowns_are_omitted_not_invented() -> None:
    g = replace(GPU, numa_node=-1, pcie_root="", clique_id=None, nvlink_peers=(), driver_version="weird")
    a = gpu_device("gpu-0", g)["attributes"]
    assert f"{STD}/numaNode" not in a and f"{STD}/pcieRoot" not in a
    assert "clique" not in a and "nvlinkPeers" not in a and "driverVersion" not in a
    n = replace(NIC, pci_bus_id="", pcie_root="", numa_node=-1, speed_mbps=0, rdma_device=None, link_up=False)
    d = nic_device("nic-0", n)
    assert "capacity" not in d
    assert d["attributes"]["virtual"] == {"bool": True} and d["attributes"]["state"] == {"string": "down"}
    assert d["attributes"]["rdma"] == {"bool": False} and "rdmaDevice" not in d["attributes"]
    assert f"{STD}/pciBusID" not in d["attributes"]
    vf = nic_device("nic-1", replace(NIC, sriov_role="vf", sriov_pf="0000:0c:00.0"))["attributes"]
    assert vf["isSriovVf"] == {"bool": True} and vf["sriov"] == {"bool": False}
    assert vf["sriovPF"] == {"string": "0000:0c:00.0"}


def test_unhealthy_devices_are_tainted() -> None:
    d = gpu_device("gpu-0", replace(GPU, healthy=False))
    assert d["taints"] == [{"key": "topodra.dev/unhealthy", "value": "true", "effect": "NoSchedule"}]
    assert "taints" not in gpu_device("gpu-0", GPU)


def test_long_strings_cut_to_64_bytes_on_a_character_boundary() -> None:
    d = gpu_device("gpu-0", replace(GPU, product_name="é" * 40))  # 80 bytes
    v = d["attributes"]["productName"]["string"]
    assert len(v.encode()) <= 64 and v == "é" * 32
    assert validate_slice(slice_object(desired_slices(NodeTopology("n", (GPU,)))[0], "topodra.dev", "n", 0, 1)) == []


@pytest.mark.parametrize(
    ("raw", "want"),
    [("9.0", "9.0.0"), ("12.4", "12.4.0"), ("550.54.15", "550.54.15"), ("535.104.05", "535.104.5"), ("7", "7.0.0"),
     ("x.y", None), ("1.2.3.4", None), ("", None)],
)
def test_semver(raw: str, want: str | None) -> None:
    assert semver(raw) == want


def test_quantities() -> None:
    assert binary_quantity(80 * 2**30) == "80Gi" and binary_quantity(512 * 2**20) == "512Mi"
    assert binary_quantity(1000) == "1000" and binary_quantity(0) == "0"
    assert decimal_quantity(400 * 10**9) == "400G" and decimal_quantity(25 * 10**9) == "25G"
    assert decimal_quantity(1500) == "1500" and decimal_quantity(0) == "0"


def test_every_demo_device_within_limits() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "deploy" / "examples"
    for f in sorted(root.glob("topology-*.yaml")):
        for topo in parse_topology(f.read_text(), str(f)):
            for ds in desired_slices(topo):
                obj = slice_object(ds, "topodra.dev", topo.node_name, 0, 1, OWNER)
                assert validate_slice(obj) == [], f"{f.name}: {topo.node_name}"
                for d in ds.devices:
                    assert len(d["attributes"]) + len(d.get("capacity", {})) <= MAX_ATTRS_AND_CAPS


# ---- slices of a pool ---------------------------------------------------------------------------------


def test_names_are_deterministic_and_sorted() -> None:
    assert slice_name("node-a", "topodra.dev", 0) == "node-a-topodra.dev-00000"
    assert slice_name("node-a", "topodra.dev", 17) == "node-a-topodra.dev-00011"
    names = [slice_name("n", "topodra.dev", i) for i in range(300)]
    assert names == sorted(names)
    long = slice_name("x" * 253, "topodra.dev", 1)
    assert len(long) <= 253 and long.endswith("-topodra.dev-00001")
    assert long == slice_name("x" * 253, "topodra.dev", 1)
    assert slice_name("x" * 253, "topodra.dev", 1) != slice_name("x" * 252 + "y", "topodra.dev", 1)


def test_device_names_follow_pci_order() -> None:
    topo = NodeTopology(
        "n",
        (replace(GPU, pci_bus_id="0000:8a:00.0"), replace(GPU, pci_bus_id="0000:0a:00.0")),
        (replace(NIC, pci_bus_id="0000:8c:00.0", if_name="b"), replace(NIC, pci_bus_id="0000:0c:00.0", if_name="a")),
    )
    devs = device_entries(topo)
    assert [d["name"] for d in devs] == ["gpu-0", "gpu-1", "nic-0", "nic-1"]
    assert devs[0]["attributes"][f"{STD}/pciBusID"] == {"string": "0000:0a:00.0"}
    assert devs[2]["attributes"]["ifName"] == {"string": "a"}


def test_empty_node_still_has_one_slice() -> None:
    (ds,) = desired_slices(NodeTopology("n"))
    assert ds.devices == () and ds.name == "n-topodra.dev-00000"


@pytest.mark.parametrize(
    ("gpus", "nics", "unhealthy", "sizes"),
    [
        (8, 8, None, [16]),
        (128, 0, None, [128]),
        (129, 0, None, [128, 1]),
        (200, 100, None, [128, 128, 44]),
        (64, 0, 5, [64]),
        (65, 0, 5, [64, 1]),
        (150, 20, 3, [64, 64, 42]),
    ],
)
def test_split(gpus: int, nics: int, unhealthy: int | None, sizes: list[int]) -> None:
    topo = _topo(gpus, nics, unhealthy=unhealthy)
    slices = desired_slices(topo)
    assert [len(s.devices) for s in slices] == sizes
    flat = [d["name"] for s in slices for d in s.devices]
    assert flat == [f"gpu-{i}" for i in range(gpus)] + [f"nic-{j}" for j in range(nics)]
    limit = MAX_DEVICES_WITH_TAINTS if unhealthy is not None else MAX_DEVICES
    for i, s in enumerate(slices):
        obj = slice_object(s, "topodra.dev", "n1", 4, len(slices), OWNER)
        assert validate_slice(obj) == []
        assert len(s.devices) <= limit
        assert obj["spec"]["pool"] == {"name": "n1", "generation": 4, "resourceSliceCount": len(slices)}
        assert obj["metadata"]["name"] == slice_name("n1", "topodra.dev", i)


def test_slice_object_shape() -> None:
    (ds,) = desired_slices(_topo(1, 1))
    obj = slice_object(ds, "topodra.dev", "n1", 2, 1, OWNER)
    assert obj["apiVersion"] == "resource.k8s.io/v1" and obj["kind"] == "ResourceSlice"
    assert obj["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "uid-1", "controller": True}
    ]
    spec = obj["spec"]
    assert spec["driver"] == "topodra.dev" and spec["nodeName"] == "n1"
    assert not ({"nodeSelector", "allNodes", "perDeviceNodeSelection"} & set(spec))  # exactly one node field


def test_validate_slice_catches_violations() -> None:
    (ds,) = desired_slices(_topo(1))
    obj: dict[str, Any] = slice_object(ds, "topodra.dev", "n1", 0, 1)
    bad = copy.deepcopy(obj)
    dev = bad["spec"]["devices"][0]
    dev["name"] = "GPU_0"
    dev["attributes"]["x" * 33] = {"int": 1}
    dev["attributes"]["long"] = {"string": "a" * 65}
    dev["attributes"]["v"] = {"version": "1.2"}
    dev["attributes"]["two"] = {"int": 1, "bool": True}
    for i in range(20):
        dev["attributes"][f"a{i}"] = {"int": i}
    errs = " | ".join(validate_slice(bad))
    for want in ("not a DNS label", "not a qualified name", "longer than 64", "strict semver", "exactly one value",
                 "attributes+capacities > 32"):
        assert want in errs
    bad2 = copy.deepcopy(obj)
    bad2["spec"]["devices"] = [dict(obj["spec"]["devices"][0], taints=[{"key": "k", "effect": "NoSchedule"}])] * 65
    assert any("65 devices > 64" in e for e in validate_slice(bad2))


# ---- comparing ---------------------------------------------------------------------------------------------


def test_devices_equal_ignores_server_defaults() -> None:
    sent = device_entries(_topo(1, 1, unhealthy=0))
    stored = copy.deepcopy(sent)
    stored[0]["capacity"]["memory"]["value"] = str(80 * 2**30)  # same quantity, other spelling
    stored[0]["taints"][0]["timeAdded"] = "2026-01-01T00:00:00Z"
    assert devices_equal(sent, stored) and device_diff(sent, stored) == []
    del stored[1]["attributes"]["rdma"]  # what a disabled feature gate would do
    assert not devices_equal(sent, stored)
    assert device_diff(sent, stored) == ["nic-0.attributes.rdma: sent {'bool': True} stored None"]


# ---- planning -----------------------------------------------------------------------------------------------


def _stored(plan_objs: Any, start_rv: int = 100) -> list[dict[str, Any]]:
    out = []
    for i, o in enumerate(plan_objs):
        s = copy.deepcopy(o)
        s["metadata"].update(uid=f"u{i}", resourceVersion=str(start_rv + i))
        out.append(s)
    return out


def test_plan_first_publish_then_nothing() -> None:
    desired = desired_slices(_topo(130))
    p = plan_pool(desired, [], "topodra.dev", "n1", OWNER)
    assert p.generation == 0 and len(p.creates) == 2 and not p.updates and not p.deletes
    assert p.reasons == ("create n1-topodra.dev-00000", "create n1-topodra.dev-00001")
    again = plan_pool(desired, _stored(p.creates), "topodra.dev", "n1", OWNER)
    assert again.empty and again.generation == 0


def test_plan_recreates_missing_slice_at_same_generation() -> None:
    desired = desired_slices(_topo(130))
    stored = _stored(plan_pool(desired, [], "topodra.dev", "n1", OWNER, min_generation=3).creates)
    assert {s["spec"]["pool"]["generation"] for s in stored} == {3}
    p = plan_pool(desired, stored[:1], "topodra.dev", "n1", OWNER)
    assert p.generation == 3 and [c["metadata"]["name"] for c in p.creates] == ["n1-topodra.dev-00001"]
    assert p.reasons == ("re-create n1-topodra.dev-00001",) and not p.updates
    # all of them wiped (the kubelet does that at its start): back at the last generation, not 0
    p = plan_pool(desired, [], "topodra.dev", "n1", OWNER, min_generation=3)
    assert p.generation == 3 and len(p.creates) == 2


def test_plan_change_bumps_generation_and_rewrites_all() -> None:
    stored = _stored(plan_pool(desired_slices(_topo(130)), [], "topodra.dev", "n1", OWNER).creates)
    changed = desired_slices(_topo(130, unhealthy=129))  # one device tainted: 64 per slice now -> 3 slices
    p = plan_pool(changed, stored, "topodra.dev", "n1", OWNER)
    assert p.generation == 1 and len(p.updates) == 2 and len(p.creates) == 1 and not p.deletes
    assert {o["spec"]["pool"]["resourceSliceCount"] for o in (*p.updates, *p.creates)} == {3}
    assert [u["metadata"]["resourceVersion"] for u in p.updates] == ["100", "101"]  # optimistic concurrency
    # shrink: the obsolete slice is deleted with UID + resourceVersion preconditions available
    stored2 = _stored((*p.updates, *p.creates), 200)
    p2 = plan_pool(desired_slices(_topo(10)), stored2, "topodra.dev", "n1", OWNER)
    assert p2.generation == 2 and len(p2.updates) == 1 and not p2.creates
    assert [d["metadata"]["name"] for d in p2.deletes] == ["n1-topodra.dev-00001", "n1-topodra.dev-00002"]
    assert all(d["metadata"]["uid"] and d["metadata"]["resourceVersion"] for d in p2.deletes)
    assert p2.updates[0]["spec"]["pool"]["resourceSliceCount"] == 1


def test_plan_repairs_foreign_edits() -> None:
    desired = desired_slices(_topo(2))
    stored = _stored(plan_pool(desired, [], "topodra.dev", "n1", OWNER).creates)
    for mutate in (
        lambda s: s["spec"]["devices"][0]["attributes"].pop("uuid"),
        lambda s: s["metadata"].pop("ownerReferences"),
        lambda s: s["spec"]["pool"].update(resourceSliceCount=2),
    ):
        edited = copy.deepcopy(stored)
        mutate(edited[0])
        p = plan_pool(desired, edited, "topodra.dev", "n1", OWNER)
        assert p.generation == 1 and len(p.updates) == 1
    # mixed generations (a half-applied earlier change) are never left alone
    mixed = _stored(plan_pool(desired_slices(_topo(130)), [], "topodra.dev", "n1", OWNER).creates)
    mixed[1]["spec"]["pool"]["generation"] = 5
    p = plan_pool(desired_slices(_topo(130)), mixed, "topodra.dev", "n1", OWNER)
    assert p.generation == 6 and len(p.updates) == 2
