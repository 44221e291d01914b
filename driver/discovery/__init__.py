"""Hardware discovery behind one interface: `discover(BackendConfig) -> NodeTopology`.

Backends: `nvml` (GPUs through pynvml), `sysfs` (NICs from a sysfs tree), `file` (a YAML topology
file of simulated nodes). `nvml` and `sysfs` combine (`backends=("nvml", "sysfs")`) for a real node.
The kubelet plugin calls `discover` too, so both see the same devices under the same names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from driver.discovery.common import DiscoveryError, TopologyFileError
from driver.model import Gpu, Nic, NodeTopology

BACKENDS = ("nvml", "sysfs", "file")

__all__ = [
    "BACKENDS",
    "BackendConfig",
    "Discovery",
    "DiscoveryError",
    "TopologyFileError",
    "discover",
    "discover_fleet",
    "discover_node",
]


@dataclass(frozen=True)
class BackendConfig:
    node_name: str
    backends: tuple[str, ...] = ("file",)
    topology_file: Path | None = None
    sysfs_root: Path = field(default_factory=lambda: Path("/sys"))
    include_virtual_nics: bool = False
    driver_root: Path | None = None  # mounted host driver root where libnvidia-ml.so.1 is searched

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise DiscoveryError(f"unknown backend {unknown or self.backends!r}; choose from {', '.join(BACKENDS)}")
        if "file" in self.backends and len(self.backends) > 1:
            raise DiscoveryError("the file backend cannot be combined with nvml or sysfs")
        if "file" in self.backends and self.topology_file is None:
            raise DiscoveryError("the file backend needs a topology file (--topology FILE)")


@dataclass(frozen=True)
class Discovery:
    topology: NodeTopology
    # Why the nvml backend found no GPU (no library, NVML cannot start, or zero devices); None when it
    # found some or is not in use. The node's other devices are still published.
    no_gpus: str | None = None


def discover(cfg: BackendConfig) -> NodeTopology:
    """What this node has now. Raises DiscoveryError (or TopologyFileError) with a clear reason."""
    return discover_node(cfg).topology


def discover_node(cfg: BackendConfig) -> Discovery:
    """Like `discover`, but a node without NVML or GPUs is not an error: it has no GPUs, and says why."""
    if cfg.backends == ("file",):
        assert cfg.topology_file is not None
        for node in discover_fleet(cfg.topology_file):
            if node.node_name == cfg.node_name:
                return Discovery(node)
        raise DiscoveryError(f"topology file {cfg.topology_file} has no node named {cfg.node_name!r}")
    gpus: tuple[Gpu, ...] = ()
    nics: tuple[Nic, ...] = ()
    no_gpus: str | None = None
    if "nvml" in cfg.backends:
        from driver.discovery.nvml import discover_gpus

        try:
            gpus = tuple(discover_gpus(cfg.sysfs_root, cfg.driver_root))
        except DiscoveryError as e:
            no_gpus = str(e)
        else:
            if not gpus:
                no_gpus = "NVML is loaded but reports no GPU on this node"
    if "sysfs" in cfg.backends:
        from driver.discovery.sysfs import discover_nics

        nics = tuple(discover_nics(cfg.sysfs_root, cfg.include_virtual_nics))
    return Discovery(NodeTopology(node_name=cfg.node_name, gpus=gpus, nics=nics), no_gpus)


def discover_fleet(topology_file: Path | str) -> list[NodeTopology]:
    """Every node of a topology file (fleet mode, the demo, scale tests)."""
    from driver.discovery.filebackend import load_topology_file

    return load_topology_file(topology_file)
