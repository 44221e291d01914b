"""The sysfs backend against fake trees (real symlinks), and a read-only smoke run on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from driver.discovery import BackendConfig, discover
from driver.discovery.sysfs import discover_nics
from driver.model import Nic, NodeTopology
from tests.fakes.sysfs import build_sysfs


def _nic(bdf: str, root: str, name: str, **kw: object) -> Nic:
    base: dict[str, object] = {
        "pci_bus_id": bdf, "if_name": name, "mac": "02:00:00:00:00:01", "vendor_id": "0x15b3",
        "device_id": "0x1021", "numa_node": 1, "pcie_root": root, "mtu": 4096, "speed_mbps": 200000,
    }
    base.update(kw)
    return Nic(**base)  # type: ignore[arg-type]


TOPO = NodeTopology(
    node_name="n",
    nics=(
        _nic("0000:4c:00.0", "pci0000:40", "ib0", rdma_device="mlx5_0", sriov_role="pf", mac="02:aa:00:00:00:01"),
        _nic("0000:4c:00.2", "pci0000:40", "ib0v0", sriov_role="vf", sriov_pf="0000:4c:00.0", numa_node=1),
        _nic("0001:0a:00.0", "pci0001:0a", "eth1", link_up=False, speed_mbps=0, numa_node=-1, vendor_id="0x8086"),
        _nic("0000:00:03.0", "pci0000:00", "eth0", numa_node=0, mtu=1500),
    ),
)


def test_fake_tree_round_trip(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", TOPO, nic_children={"eth0": "virtio2"})
    # the links are real and relative, like the kernel's
    link = root / "bus" / "pci" / "devices" / "0000:4c:00.0"
    assert link.is_symlink() and str(link.readlink()).startswith("../../../devices/pci0000:40/")
    got = {n.if_name: n for n in discover_nics(root)}
    assert set(got) == {"ib0", "ib0v0", "eth1", "eth0"}  # lo, veth, bridge, docker0 skipped
    for want in TOPO.nics:
        n = got[want.if_name]
        assert n.pci_bus_id == want.pci_bus_id
        assert n.pcie_root == want.pcie_root
        assert n.numa_node == want.numa_node
        assert n.vendor_id == want.vendor_id and n.device_id == want.device_id
        assert n.mac == want.mac and n.mtu == want.mtu
        assert n.speed_mbps == want.speed_mbps and n.link_up == want.link_up
        assert n.rdma_device == want.rdma_device
        assert (n.sriov_role, n.sriov_pf) == (want.sriov_role, want.sriov_pf)


def test_virtual_interfaces_optional(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", TOPO)
    names = {n.if_name for n in discover_nics(root, include_virtual=True)}
    assert {"veth1234", "br0", "docker0"} <= names and "lo" not in names
    virtual = next(n for n in discover_nics(root, include_virtual=True) if n.if_name == "br0")
    assert virtual.pci_bus_id == "" and virtual.pcie_root == ""


def test_missing_tree_is_empty(tmp_path: Path) -> None:
    assert discover_nics(tmp_path / "nothing") == []


def test_unreadable_files_are_defaults(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", TOPO)
    speed = root / "class" / "net" / "ib0" / "speed"
    speed.unlink()  # the kernel answers EINVAL for speed of some links
    (root / "class" / "net" / "ib0" / "mtu").write_text("garbage\n")
    ib0 = next(n for n in discover_nics(root) if n.if_name == "ib0")
    assert ib0.speed_mbps == 0 and ib0.mtu == 1500


def test_backend_through_discover(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", TOPO)
    topo = discover(BackendConfig(node_name="x", backends=("sysfs",), sysfs_root=root))
    assert topo.node_name == "x" and len(topo.nics) == 4 and topo.gpus == ()
    names = topo.named_devices()
    assert [names[f"nic-{i}"].pci_bus_id for i in range(4)] == sorted(n.pci_bus_id for n in TOPO.nics)


@pytest.mark.skipif(not Path("/sys/class/net").is_dir(), reason="no /sys on this machine")
def test_smoke_real_sys() -> None:
    """Read-only run on the real /sys: never crashes, and what it reports is self-consistent."""
    nics = discover_nics("/sys")
    for n in nics:
        assert n.if_name != "lo"
        assert n.pci_bus_id and Path("/sys/bus/pci/devices", n.pci_bus_id).exists()
        assert n.pcie_root.startswith("pci")
        assert Path("/sys/class/net", n.if_name).exists()
        # the same answers as reading /sys by hand
        resolved = Path("/sys/bus/pci/devices", n.pci_bus_id).resolve()
        assert resolved.relative_to(Path("/sys/devices").resolve()).parts[0] == n.pcie_root
        assert n.mac == Path("/sys/class/net", n.if_name, "address").read_text().strip().lower()
        assert n.mtu == int(Path("/sys/class/net", n.if_name, "mtu").read_text())
        assert n.vendor_id == f"0x{int(Path(resolved, 'vendor').read_text(), 16):04x}"
