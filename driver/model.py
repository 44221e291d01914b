"""Domain model of one node's accelerator hardware, shared by every discovery backend.

Discovery backends produce these; the slice builder and the kubelet plugin consume them.
Nothing here talks to hardware or the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DRIVER_NAME = "topodra.dev"


@dataclass(frozen=True)
class Gpu:
    pci_bus_id: str  # lower-case dddd:bb:dd.f
    uuid: str
    index: int
    minor: int
    product_name: str
    brand: str
    architecture: str
    cuda_compute_capability: str  # "9.0"
    driver_version: str
    cuda_driver_version: str  # "12.4"
    memory_bytes: int
    numa_node: int  # -1 when unknown
    pcie_root: str  # "pci0000:00"
    nvlink_peers: tuple[str, ...] = ()  # PCI bus ids of NVLink peers
    clique_id: str | None = None  # NVLink fabric clique ("<clusterUUID>.<cliqueId>")
    healthy: bool = True


@dataclass(frozen=True)
class Nic:
    pci_bus_id: str
    if_name: str
    mac: str
    vendor_id: str  # "0x15b3"
    device_id: str
    numa_node: int
    pcie_root: str
    mtu: int = 1500
    speed_mbps: int = 0  # 0 when unknown
    link_up: bool = True
    rdma_device: str | None = None  # "mlx5_0"
    sriov_role: str = "none"  # "pf" | "vf" | "none"
    sriov_pf: str | None = None  # PF PCI bus id for a VF
    healthy: bool = True


@dataclass(frozen=True)
class NodeTopology:
    """Everything discovered on one node."""

    node_name: str
    gpus: tuple[Gpu, ...] = ()
    nics: tuple[Nic, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)

    def named_devices(self) -> dict[str, Gpu | Nic]:
        """Device name -> device; names are numbered in PCI address order, so stable across restarts."""
        out: dict[str, Gpu | Nic] = {}
        for i, g in enumerate(sorted(self.gpus, key=lambda d: d.pci_bus_id)):
            out[f"gpu-{i}"] = g
        for i, n in enumerate(sorted(self.nics, key=lambda d: d.pci_bus_id)):
            out[f"nic-{i}"] = n
        return out
