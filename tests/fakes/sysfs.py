"""Build fake sysfs trees shaped like the kernel's, with real symlinks.

<root>/devices/pci0000:40/0000:40:01.0/0000:4c:00.0/          PCI function (vendor, device, numa_node)
<root>/devices/.../0000:4c:00.0/net/ib0/                        interface (address, mtu, speed, operstate)
<root>/devices/.../0000:4c:00.0/net/ib0/device -> ../../../0000:4c:00.0
<root>/devices/.../0000:4c:00.0/infiniband/mlx5_1/              RDMA device
<root>/bus/pci/devices/0000:4c:00.0 -> ../../../devices/pci0000:40/0000:40:01.0/0000:4c:00.0
<root>/class/net/ib0 -> ../../devices/pci0000:40/0000:40:01.0/0000:4c:00.0/net/ib0
<root>/devices/virtual/net/lo/ and <root>/class/net/lo -> ../../devices/virtual/net/lo
"""

from __future__ import annotations

import os
from pathlib import Path

from driver.model import Gpu, Nic, NodeTopology


def _w(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def pci_function(root: Path, bdf: str, pcie_root: str, numa: int, vendor: str, device: str, cls: str) -> Path:
    """Create a PCI function below a root port/bridge of `pcie_root`; returns its directory."""
    dom_bus = pcie_root.removeprefix("pci")  # "0000:40"
    bridge = f"{dom_bus}:01.0"
    d = root / "devices" / pcie_root / bridge / bdf
    d.mkdir(parents=True, exist_ok=True)
    _w(d / "vendor", vendor)
    _w(d / "device", device)
    _w(d / "class", cls)
    _w(d / "numa_node", str(numa))
    link = root / "bus" / "pci" / "devices" / bdf
    if not link.is_symlink():
        _link(link, d)
    return d


def add_gpu(root: Path, g: Gpu) -> Path:
    return pci_function(root, g.pci_bus_id, g.pcie_root, g.numa_node, "0x10de", "0x2330", "0x030200")


def add_nic(root: Path, n: Nic, *, child: str | None = None, total_vfs: int = 8) -> Path:
    """A NIC; `child` puts the netdev under a child device (like virtio: <bdf>/virtio2/net/eth0)."""
    d = pci_function(root, n.pci_bus_id, n.pcie_root, n.numa_node, n.vendor_id, n.device_id, "0x020000")
    parent = d / child if child else d
    ifdir = parent / "net" / n.if_name
    _w(ifdir / "address", n.mac)
    _w(ifdir / "mtu", str(n.mtu))
    _w(ifdir / "speed", str(n.speed_mbps if n.speed_mbps else -1))
    _w(ifdir / "operstate", "up" if n.link_up else "down")
    _w(ifdir / "type", "32" if n.rdma_device and n.if_name.startswith("ib") else "1")
    _link(ifdir / "device", parent)
    _link(root / "class" / "net" / n.if_name, ifdir)
    if n.rdma_device:
        ib = d / "infiniband" / n.rdma_device
        ib.mkdir(parents=True, exist_ok=True)
        _w(ib / "node_type", "1: CA")
        _link(root / "class" / "infiniband" / n.rdma_device, ib)
    if n.sriov_role == "pf":
        _w(d / "sriov_totalvfs", str(total_vfs))
        _w(d / "sriov_numvfs", "0")
    elif n.sriov_role == "vf" and n.sriov_pf:
        pf = root / "bus" / "pci" / "devices" / n.sriov_pf
        _link(d / "physfn", Path(os.path.realpath(pf)) if pf.exists() else pf)
    return d


def add_virtual(root: Path, name: str, *, loopback: bool = False, mac: str = "00:00:00:00:00:00") -> Path:
    ifdir = root / "devices" / "virtual" / "net" / name
    _w(ifdir / "address", mac)
    _w(ifdir / "mtu", "65536" if loopback else "1500")
    _w(ifdir / "operstate", "unknown" if loopback else "up")
    _w(ifdir / "type", "772" if loopback else "1")
    _link(root / "class" / "net" / name, ifdir)
    return ifdir


def build_sysfs(
    root: Path,
    topo: NodeTopology,
    *,
    virtual: tuple[str, ...] = ("lo", "veth1234", "br0", "docker0"),
    nic_children: dict[str, str] | None = None,
) -> Path:
    """A sysfs tree holding every GPU and NIC of `topo` plus some virtual interfaces."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "class" / "net").mkdir(parents=True, exist_ok=True)
    for g in topo.gpus:
        add_gpu(root, g)
    # PFs before VFs so the physfn links resolve.
    for n in sorted(topo.nics, key=lambda n: n.sriov_role == "vf"):
        add_nic(root, n, child=(nic_children or {}).get(n.if_name))
    for v in virtual:
        add_virtual(root, v, loopback=v == "lo")
    return root
