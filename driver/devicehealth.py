"""Apply health findings of the kubelet plugin to a discovered topology (so slices taint those devices)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from driver.model import NodeTopology


def mark_unhealthy(topo: NodeTopology, unhealthy: Mapping[str, str]) -> NodeTopology:
    """A copy of `topo` with the named devices (`gpu-<n>`, `nic-<n>`) marked `healthy=False`."""
    if not unhealthy:
        return topo
    bad = {id(d) for name, d in topo.named_devices().items() if name in unhealthy}
    return replace(
        topo,
        gpus=tuple(replace(g, healthy=False) if id(g) in bad else g for g in topo.gpus),
        nics=tuple(replace(n, healthy=False) if id(n) in bad else n for n in topo.nics),
    )
