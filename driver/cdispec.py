"""The CDI spec of one claim: which device nodes and environment its containers get.

One spec per claim, one CDI device per allocated device:
- GPU: device node `/dev/nvidia<minor>` (required); for the whole claim `/dev/nvidiactl`,
  `/dev/nvidia-uvm`, `/dev/nvidia-uvm-tools` (each when it exists) and
  `NVIDIA_VISIBLE_DEVICES=<uuid>,...` listing the claim's GPUs in device order.
- NIC: RDMA device node `/dev/infiniband/uverbs<n>` (when the NIC has an RDMA device whose verbs
  node exists); for the claim `/dev/infiniband/rdma_cm` (when it exists),
  `TOPODRA_NET_INTERFACES=<ifname>,...` and `TOPODRA_RDMA_DEVICES=<rdma dev>,...`; with
  `netdevices` on, a CDI `netDevices` entry per NIC moves the interface into the container
  (cdiVersion 1.1.0, runc 1.3+).
Device nodes are looked up under `dev_root` (default /dev) and appear in the container at /dev/...
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from driver.cdi import CdiDevice, CdiError, ContainerEdits, DeviceNode, NetDevice, Spec
from driver.model import Gpu, Nic

log = structlog.get_logger("topodra.kubeletplugin")


@dataclass(frozen=True)
class DeviceEnv:
    dev_root: Path = Path("/dev")
    sysfs_root: Path = Path("/sys")
    netdevices: bool = False


def _node(dev: DeviceEnv, rel: str) -> tuple[DeviceNode, bool]:
    host = dev.dev_root / rel
    return DeviceNode(path=f"/dev/{rel}", host_path=str(host)), host.exists()


def uverbs_for(rdma_device: str, sysfs_root: Path) -> str | None:
    """`uverbs<n>` of an RDMA device, from `<sysfs>/class/infiniband_verbs/uverbs*/ibdev`."""
    base = sysfs_root / "class" / "infiniband_verbs"
    with contextlib.suppress(OSError):
        for d in sorted(base.iterdir()):
            with contextlib.suppress(OSError):
                if (d / "ibdev").read_text().strip() == rdma_device:
                    return d.name
    return None


def build_spec(
    kind: str, claim_uid: str, devices: Sequence[tuple[str, Gpu | Nic]], dev: DeviceEnv
) -> tuple[Spec, dict[str, str]]:
    """The claim's spec and device name -> CDI device name. CdiError when a required node is missing."""
    cdi_devices: list[CdiDevice] = []
    names: dict[str, str] = {}
    uuids: list[str] = []
    ifnames: list[str] = []
    rdmas: list[str] = []
    for name, d in devices:
        if name in names:
            continue
        cdi_name = f"{claim_uid}-{name}"
        names[name] = cdi_name
        # Every CDI device needs at least one edit (runtimes refuse specs with an empty device): each
        # names its PCI address in its own variable.
        own_env = (f"TOPODRA_DEVICE_{name.upper().replace('-', '_')}={d.pci_bus_id}",)
        if isinstance(d, Gpu):
            node, ok = _node(dev, f"nvidia{d.minor}")
            if not ok:
                raise CdiError(f"device {name}: device node {node.host_path} does not exist")
            uuids.append(d.uuid)
            cdi_devices.append(CdiDevice(cdi_name, ContainerEdits(env=own_env, device_nodes=(node,))))
        else:
            nodes: list[DeviceNode] = []
            if d.rdma_device:
                rdmas.append(d.rdma_device)
                verbs = uverbs_for(d.rdma_device, dev.sysfs_root)
                if verbs is not None:
                    vnode, ok = _node(dev, f"infiniband/{verbs}")
                    if ok:
                        nodes.append(vnode)
                    else:
                        log.warning("rdma_node_missing", device=name, path=vnode.host_path)
            ifnames.append(d.if_name)
            nets = (NetDevice(d.if_name, d.if_name),) if dev.netdevices and d.if_name else ()
            cdi_devices.append(
                CdiDevice(cdi_name, ContainerEdits(env=own_env, device_nodes=tuple(nodes), net_devices=nets))
            )
    env: list[str] = []
    shared: list[DeviceNode] = []
    if uuids:
        env.append("NVIDIA_VISIBLE_DEVICES=" + ",".join(uuids))
        for rel in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
            node, ok = _node(dev, rel)
            if ok:
                shared.append(node)
    if ifnames:
        env.append("TOPODRA_NET_INTERFACES=" + ",".join(ifnames))
    if rdmas:
        env.append("TOPODRA_RDMA_DEVICES=" + ",".join(rdmas))
        node, ok = _node(dev, "infiniband/rdma_cm")
        if ok:
            shared.append(node)
    spec = Spec(kind=kind, devices=tuple(cdi_devices), edits=ContainerEdits(env=tuple(env), device_nodes=tuple(shared)))
    return spec, names
