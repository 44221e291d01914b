"""The record a real node leaves in its dir: enough for a later run to tear it down after a crash."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "realnode.json"


@dataclass
class RealNodeState:
    name: str
    cgroup_root: str  # e.g. /topodra-1a2b3c4d
    kubelet_port: int
    kubelet_healthz_port: int
    containerd_version: str
    driver: bool
    cgroup_mounts: list[str] = field(default_factory=list)
    # An isolated node (several on one machine, each with the paths of a real node): its own address on
    # `lo` (the kubelet rejects loopback node IPs) and the host paths its mount namespace binds.
    node_ip: str = ""
    binds: dict[str, str] = field(default_factory=dict)

    def cgroup_roots(self) -> list[Path]:
        """The node's own cgroup in every hierarchy."""
        return [Path(m, self.cgroup_root.lstrip("/")) for m in self.cgroup_mounts]


def load_state(node_dir: Path) -> RealNodeState | None:
    try:
        return RealNodeState(**json.loads((node_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_state(node_dir: Path, state: RealNodeState) -> None:
    (node_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
