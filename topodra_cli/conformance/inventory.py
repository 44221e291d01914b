"""What the cluster offers, read once per check: nodes, topodra's ResourceSlice pools and their devices.

A pool counts when it is *complete and current* (as the program's secure-access test demands): every slice of
its highest generation is there (`resourceSliceCount` of them). Only complete pools on Ready, schedulable
nodes (that match `--node-selector`) take part in the checks; they are the *candidate* nodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from driver.model import DRIVER_NAME
from kubeaccess.errors import ApiError
from kubeaccess.sync import Json, KubeClient
from topodra_cli.conformance.kube import RESOURCE

STD_PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
STD_NUMA = "resource.kubernetes.io/numaNode"
GPU_CLASS = "gpu.topodra.dev"
NIC_CLASS = "nic.topodra.dev"
_BLOCKING = ("NoSchedule", "NoExecute")


@dataclass(frozen=True)
class Node:
    name: str
    ready: bool
    schedulable: bool
    labels: dict[str, str]
    taints: tuple[Json, ...]


@dataclass(frozen=True)
class Device:
    node: str
    pool: str
    name: str
    kind: str  # gpu | nic | "" (the `type` attribute)
    attrs: dict[str, Any]  # attribute name -> plain value; topodra's own names unqualified
    tainted: bool  # a NoSchedule/NoExecute device taint: not allocatable for the checks

    def attr(self, name: str) -> Any:
        return self.attrs.get(name, self.attrs.get(f"{DRIVER_NAME}/{name}"))


@dataclass(frozen=True)
class Pool:
    name: str
    node: str  # "" when the slices are not bound to one node
    generation: int
    expected: int  # resourceSliceCount of the current generation
    seen: int  # slices seen at the current generation

    @property
    def complete(self) -> bool:
        return self.seen == self.expected


@dataclass
class Inventory:
    version: str
    served: set[str]  # resources of resource.k8s.io/v1
    classes: set[str]
    nodes: dict[str, Node]
    pools: list[Pool]
    devices: list[Device]
    node_selector: tuple[tuple[str, str], ...] = ()
    problems: list[str] = field(default_factory=list)  # why nodes or pools do not count

    def candidates(self) -> list[str]:
        """Ready, schedulable, selected nodes with a complete current topodra pool."""
        out = []
        for p in self.pools:
            n = self.nodes.get(p.node)
            if n and p.complete and n.ready and n.schedulable and self._selected(n) and n.name not in out:
                out.append(n.name)
        return sorted(out)

    def _selected(self, n: Node) -> bool:
        return all(n.labels.get(k) == v for k, v in self.node_selector)

    def usable(self, kind: str, node: str | None = None) -> list[Device]:
        nodes = set(self.candidates()) if node is None else {node}
        return [d for d in self.devices if d.kind == kind and d.node in nodes and not d.tainted]

    def by_node(self, kind: str) -> dict[str, list[Device]]:
        out: dict[str, list[Device]] = defaultdict(list)
        for d in self.usable(kind):
            out[d.node].append(d)
        return dict(out)

    def device(self, pool: str, name: str) -> Device | None:
        return next((d for d in self.devices if d.pool == pool and d.name == name), None)

    def tolerations(self, nodes: list[str]) -> list[Json]:
        """Tolerations for the scheduling taints of `nodes`: the checks are asked to use exactly these nodes."""
        out: list[Json] = []
        for name in nodes:
            for t in self.nodes[name].taints:
                if t.get("effect") not in _BLOCKING or str(t.get("key", "")).startswith("node.kubernetes.io/"):
                    continue
                tol: Json = {"key": t["key"], "effect": t["effect"]}
                tol.update({"operator": "Equal", "value": t["value"]} if t.get("value") else {"operator": "Exists"})
                if tol not in out:
                    out.append(tol)
        return out


def _plain(v: Json) -> Any:
    for k in ("string", "int", "bool", "version"):
        if k in v:
            return v[k]
    return None


def _node(obj: Json) -> Node:
    conds = (obj.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    spec = obj.get("spec") or {}
    return Node(obj["metadata"]["name"], ready, not spec.get("unschedulable", False),
                dict(obj["metadata"].get("labels") or {}), tuple(spec.get("taints") or ()))


def read_inventory(c: KubeClient, node_selector: tuple[tuple[str, str], ...] = ()) -> Inventory:
    version = str(c.get("/version").get("gitVersion", "?"))
    nodes = {n.name: n for n in (_node(o) for o in c.get("/api/v1/nodes").get("items") or [])}
    try:
        served = {r["name"] for r in c.get(RESOURCE).get("resources") or [] if "/" not in r["name"]}
    except ApiError as e:
        if e.status not in (403, 404):
            raise
        return Inventory(version, set(), set(), nodes, [], [], node_selector,
                         [f"resource.k8s.io/v1 is not served ({e})"])
    classes = {d["metadata"]["name"] for d in c.get(f"{RESOURCE}/deviceclasses").get("items") or []}
    slices = c.get(f"{RESOURCE}/resourceslices", fieldSelector=f"spec.driver={DRIVER_NAME}").get("items") or []
    by_pool: dict[str, list[Json]] = defaultdict(list)
    for s in slices:
        by_pool[s["spec"]["pool"]["name"]].append(s)
    pools, devices, problems = [], [], []
    for name, group in sorted(by_pool.items()):
        gen = max(int(s["spec"]["pool"]["generation"]) for s in group)
        current = [s for s in group if int(s["spec"]["pool"]["generation"]) == gen]
        expected = int(current[0]["spec"]["pool"].get("resourceSliceCount") or 1)
        node = str(current[0]["spec"].get("nodeName") or "")
        pool = Pool(name, node, gen, expected, len(current))
        pools.append(pool)
        if not node:
            problems.append(f"pool {name}: slices not bound to one node (nodeSelector/allNodes); not used")
        elif not pool.complete:
            problems.append(f"pool {name}: {pool.seen} of {pool.expected} slices at generation {gen}")
        elif node not in nodes:
            problems.append(f"pool {name}: node {node} does not exist")
        elif not nodes[node].ready:
            problems.append(f"pool {name}: node {node} is not Ready")
        elif not nodes[node].schedulable:
            problems.append(f"pool {name}: node {node} is cordoned")
        for s in current:
            for d in s["spec"].get("devices") or []:
                attrs = {k: _plain(v) for k, v in (d.get("attributes") or {}).items()}
                tainted = any(t.get("effect") in _BLOCKING for t in d.get("taints") or [])
                devices.append(Device(node, name, d["name"], str(attrs.get("type", "")), attrs, tainted))
    return Inventory(version, served, classes, nodes, pools, devices, node_selector, problems)
