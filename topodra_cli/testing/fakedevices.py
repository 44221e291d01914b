"""A real node's fake accelerators: a topology file, character device nodes and a small sysfs tree.

The driver then runs on the real node with the file backend, and its CDI specs name device nodes that
exist on this machine (harmless memory devices made with mknod, so root is needed). Shared by the
end-to-end suites (tests/e2e) that start a real node with the driver.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

GPU0 = "GPU-e2e00000-0000-4000-8000-000000000000"
GPU1 = "GPU-e2e00000-0000-4000-8000-000000000001"
# gpu-0 alone on pci0000:00; gpu-1 and the only NIC (nic-0, RDMA mlx5_0) on pci0000:80: an aligned
# GPU + NIC claim can only get gpu-1 + nic-0.
TOPOLOGY = f"""
nodes:
- name: NODE
  pcieRoots:
    pci0000:00: {{numaNode: 0}}
    pci0000:80: {{numaNode: 1}}
  gpus:
  - {{pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, uuid: {GPU0}, minor: 0}}
  - {{pciBusID: "0000:81:00.0", pcieRoot: pci0000:80, uuid: {GPU1}, minor: 1}}
  nics:
  - {{pciBusID: "0000:82:00.0", pcieRoot: pci0000:80, ifName: ib0, mac: "02:00:00:00:00:01", rdmaDevice: mlx5_0}}
"""
# Host device nodes the driver's specs point at: (path under the dev root, major, minor). Distinct
# numbers (all harmless memory devices) show which host node each container path came from.
DEV_NODES = (("nvidia0", 1, 3), ("nvidia1", 1, 5), ("nvidiactl", 1, 7), ("infiniband/uverbs0", 1, 8),
             ("infiniband/rdma_cm", 1, 9))


@dataclass(frozen=True)
class FakeDevices:
    topology: Path
    dev_root: Path
    sysfs_root: Path

    def driver_args(self) -> tuple[str, ...]:
        """`topodra driver` flags for these devices (no periodic rediscovery: the tree never changes)."""
        return ("--dev-root", str(self.dev_root), "--sysfs-root", str(self.sysfs_root),
                "--rediscover-interval", "0")


def make_fake_devices(base: Path, node_name: str) -> FakeDevices:
    """Write TOPOLOGY for `node_name`, DEV_NODES and the NIC's sysfs entries (RDMA verbs, link up) under `base`."""
    dev, sysfs = base / "dev", base / "sys"
    for rel, major, minor in DEV_NODES:
        (dev / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mknod(dev / rel, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    verbs = sysfs / "class" / "infiniband_verbs" / "uverbs0"
    verbs.mkdir(parents=True)
    (verbs / "ibdev").write_text("mlx5_0\n")
    (sysfs / "class" / "net" / "ib0").mkdir(parents=True)
    (sysfs / "class" / "net" / "ib0" / "operstate").write_text("up\n")
    topology = base / "topology.yaml"
    topology.write_text(TOPOLOGY.replace("NODE", node_name))
    return FakeDevices(topology, dev, sysfs)
