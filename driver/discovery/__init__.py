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

__all__ = ["BACKENDS", "BackendConfig", "DiscoveryError", "TopologyFileError", "discover", "discover_fleet"]


@dataclass(frozen=True)
class BackendConfig:
    node_name: str
    backends: tuple[str, ...] = ("file",)
    topology_file: Path | None = None
    sysfs_root: Path = field(default_factory=lambda: Path("/sys"))
    include_virtual_nics: bool = False

    def __post_init__(self) -> None:
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            raise DiscoveryError(f"unknown backend {unknown or self.backends!r}; choose from {', '.join(BACKENDS)}")
        if "file" in self.backends and len(self.backends) > 1:
            raise DiscoveryError("the file backend cannot be combined with nvml or sysfs")
        if "file" in self.backends and self.topology_file is None:
            raise DiscoveryError("the file backend needs a topology file (--topology FILE)")


def discover(cfg: BackendConfig) -> NodeTopology:
    """What this node has now. Raises DiscoveryError (or TopologyFileError) with a clear reason."""
    if cfg.backends == ("file",):
        assert cfg.topology_file is not None
        for node in discover_fleet(cfg.topology_file):
            if node.node_name == cfg.node_name:
                return node
        raise DiscoveryError(f"topology file {cfg.topology_file} has no node named {cfg.node_name!r}")
    gpus: tuple[Gpu, ...] = ()
    nics: tuple[Nic, ...] = ()
    if "nvml" in cfg.backends:
        from driver.discovery.nvml import discover_gpus

        gpus = tuple(discover_gpus(cfg.sysfs_root))
    if "sysfs" in cfg.backends:
        from driver.discovery.sysfs import discover_nics

        nics = tuple(discover_nics(cfg.sysfs_root, cfg.include_virtual_nics))
    return NodeTopology(node_name=cfg.node_name, gpus=gpus, nics=nics)


def discover_fleet(topology_file: Path | str) -> list[NodeTopology]:
    """Every node of a topology file (fleet mode, the demo, scale tests)."""
    from driver.discovery.filebackend import load_topology_file

    return load_topology_file(topology_file)
