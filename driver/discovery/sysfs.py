"""`sysfs` backend: real NICs read from a sysfs tree (default `/sys`; tests pass a fake tree).

For each `<root>/class/net/<if>` whose `device` link leads (possibly through a virtio/auxiliary child)
to a PCI function, report the function's address, ids, NUMA node and PCIe root (first element under
`<root>/devices` of its resolved path), plus the interface's MAC, MTU, speed, state, RDMA device
(`<pci dir>/infiniband/<name>`) and SR-IOV role (`sriov_totalvfs` > 0 = PF, `physfn` link = VF).
Interfaces without a PCI device (loopback, veth, bridges, bonds, tunnels, ifb) are skipped unless asked;
when included they carry no PCI address (and so no PCI attributes). Loopback is always skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from driver.discovery.common import is_bdf, pcie_root_from_resolved, read_int, read_text
from driver.model import Nic

log = structlog.get_logger("topodra.discovery.sysfs")

ARPHRD_LOOPBACK = 772


def discover_nics(sysfs_root: Path | str = "/sys", include_virtual: bool = False) -> list[Nic]:
    root = Path(sysfs_root)
    net = root / "class" / "net"
    if not net.is_dir():
        log.warning("sysfs_no_net_class", path=str(net))
        return []
    nics: list[Nic] = []
    for ifdir in sorted(net.iterdir(), key=lambda p: p.name):
        try:
            nic = _one(root, ifdir, include_virtual)
        except OSError as e:  # an interface vanishing mid-scan must not stop discovery
            log.warning("sysfs_nic_skipped", interface=ifdir.name, reason=str(e))
            continue
        if nic is not None:
            nics.append(nic)
    return nics


def _pci_function(root: Path, ifdir: Path) -> Path | None:
    """Resolved directory of the PCI function behind an interface, walking up from its `device`."""
    dev_link = ifdir / "device"
    if not dev_link.exists():
        return None
    devices = Path(os.path.realpath(root / "devices"))
    d = Path(os.path.realpath(dev_link))
    while d != devices and d.parent != d:
        if is_bdf(d.name):
            return d
        d = d.parent
    return None


def _one(root: Path, ifdir: Path, include_virtual: bool) -> Nic | None:
    name = ifdir.name
    if read_int(ifdir / "type", 1) == ARPHRD_LOOPBACK or name == "lo":
        log.debug("sysfs_nic_ignored", interface=name, reason="loopback")
        return None
    pci = _pci_function(root, ifdir)
    if pci is None:
        if not include_virtual:
            log.debug("sysfs_nic_ignored", interface=name, reason="virtual (no PCI device)")
            return None
        bdf, vendor, device, numa, pcie_root = "", "0x0000", "0x0000", -1, ""
    else:
        bdf = pci.name.lower()
        vendor = _hex(read_text(pci / "vendor"))
        device = _hex(read_text(pci / "device"))
        numa = read_int(pci / "numa_node", -1)
        pcie_root = pcie_root_from_resolved(root, pci)
    speed = read_int(ifdir / "speed", 0)
    state = read_text(ifdir / "operstate") or "unknown"
    rdma, role, pf = None, "none", None
    if pci is not None:
        ib = pci / "infiniband"
        if ib.is_dir():
            names = sorted(p.name for p in ib.iterdir())
            rdma = names[0] if names else None
        if (pci / "physfn").exists():
            role = "vf"
            pf = Path(os.path.realpath(pci / "physfn")).name.lower()
        elif read_int(pci / "sriov_totalvfs", 0) > 0:
            role = "pf"
    return Nic(
        pci_bus_id=bdf,
        if_name=name,
        mac=(read_text(ifdir / "address") or "").lower(),
        vendor_id=vendor,
        device_id=device,
        numa_node=numa,
        pcie_root=pcie_root,
        mtu=read_int(ifdir / "mtu", 1500),
        speed_mbps=max(speed, 0),  # -1 when the link is down
        link_up=state == "up",
        rdma_device=rdma,
        sriov_role=role,
        sriov_pf=pf,
    )


def _hex(text: str | None) -> str:
    try:
        return f"0x{int(text or '0', 16):04x}"
    except ValueError:
        return "0x0000"
