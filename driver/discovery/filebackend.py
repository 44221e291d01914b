"""`file` backend: simulated nodes described by a YAML topology file (CI, kind, the demo, fleets).

Format (all keys camelCase, unknown keys are errors so typos never pass silently):

    defaults: {gpu: {<gpu fields>}, nic: {<nic fields>}}     # optional, merged into every device
    nodes:                                                   # explicit nodes
    - name: node-a
      labels: {topology.kubernetes.io/rack: rack-1}
      pcieRoots: {pci0000:00: {numaNode: 0}}                 # optional; devices inherit numaNode
      gpus: [{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00, ...}]
      nics: [{pciBusID: "0000:0b:00.0", pcieRoot: pci0000:00, ifName: ib0, ...}]
    nodeSets:                                                # many alike nodes (fleets, scale tests)
    - namePattern: "gpu-{i:04d}"
      count: 1000
      rackSize: 16       # optional: {rack} = i // rackSize, {block} = i // blockSize
      labels: {topology.kubernetes.io/rack: "rack-{rack}"}
      template: {pcieRoots: ..., gpus: [...], nics: [...]}

In a node set, string values of labels and devices may use {i}, {node}, {rack}, {block}.
See docs/driver.md for every field.
"""

from __future__ import annotations

import hashlib
import uuid as uuidlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from driver.discovery.common import TopologyFileError, is_pcie_root, normalize_bdf, parse_quantity
from driver.model import Gpu, Nic, NodeTopology

GPU_FIELDS = {
    "pciBusID",
    "pcieRoot",
    "numaNode",
    "uuid",
    "index",
    "minor",
    "productName",
    "brand",
    "architecture",
    "cudaComputeCapability",
    "driverVersion",
    "cudaDriverVersion",
    "memory",
    "nvlinkPeers",
    "clique",
    "healthy",
}
NIC_FIELDS = {
    "pciBusID",
    "pcieRoot",
    "numaNode",
    "ifName",
    "mac",
    "vendorID",
    "deviceID",
    "mtu",
    "speedMbps",
    "linkUp",
    "rdmaDevice",
    "sriov",
    "sriovPF",
    "healthy",
}
NODE_FIELDS = {"name", "labels", "pcieRoots", "gpus", "nics"}
SET_FIELDS = {"namePattern", "count", "rackSize", "blockSize", "labels", "template"}
TOP_FIELDS = {"apiVersion", "kind", "defaults", "nodes", "nodeSets"}

GPU_DEFAULTS: dict[str, Any] = {
    "productName": "NVIDIA H100 80GB HBM3",
    "brand": "Nvidia",
    "architecture": "Hopper",
    "cudaComputeCapability": "9.0",
    "driverVersion": "550.54.15",
    "cudaDriverVersion": "12.4",
    "memory": "80Gi",
}
NIC_DEFAULTS: dict[str, Any] = {"vendorID": "0x15b3", "deviceID": "0x1021", "mtu": 1500, "speedMbps": 0}

# Deterministic UUIDs and MACs for simulated devices: same file, same identities, on every run.
_NS = uuidlib.UUID("6b1f7c0e-3c57-4d0e-9a57-746f706f6472")


class _Ctx:
    """Where in the file we are, for error messages."""

    def __init__(self, path: str, node: str = "", device: str = "") -> None:
        self.path, self.node, self.device = path, node, device

    def err(self, field: str, msg: str) -> TopologyFileError:
        where = [f"topology file {self.path}"]
        if self.node:
            where.append(f"node {self.node!r}")
        if self.device:
            where.append(self.device)
        if field:
            where.append(f"field {field!r}")
        return TopologyFileError(", ".join(where) + f": {msg}")


def load_topology_file(path: Path | str) -> list[NodeTopology]:
    """Every node described by the file, in file order. Raises TopologyFileError naming what is wrong."""
    p = str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TopologyFileError(f"topology file {p}: cannot read: {e.strerror or e}") from e
    return parse_topology(text, p)


def parse_topology(text: str, source: str = "<string>") -> list[NodeTopology]:
    ctx = _Ctx(source)
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        doc = yaml.load(text, Loader=loader)  # a safe loader (C if available)
    except yaml.YAMLError as e:
        raise ctx.err("", f"not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ctx.err("", "top level must be a mapping with 'nodes' and/or 'nodeSets'")
    _no_unknown(doc, TOP_FIELDS, ctx, "")
    defaults = _mapping(doc.get("defaults") or {}, ctx, "defaults")
    _no_unknown(defaults, {"gpu", "nic"}, ctx, "defaults")
    gpu_def = {**GPU_DEFAULTS, **_mapping(defaults.get("gpu") or {}, ctx, "defaults.gpu")}
    nic_def = {**NIC_DEFAULTS, **_mapping(defaults.get("nic") or {}, ctx, "defaults.nic")}
    _no_unknown(gpu_def, GPU_FIELDS, ctx, "defaults.gpu")
    _no_unknown(nic_def, NIC_FIELDS, ctx, "defaults.nic")

    out: list[NodeTopology] = []
    for i, raw in enumerate(_seq(doc.get("nodes") or [], ctx, "nodes")):
        node = _mapping(raw, ctx, f"nodes[{i}]")
        out.append(_node(node, gpu_def, nic_def, ctx, None))
    for si, raw in enumerate(_seq(doc.get("nodeSets") or [], ctx, "nodeSets")):
        out.extend(_node_set(_mapping(raw, ctx, f"nodeSets[{si}]"), si, gpu_def, nic_def, ctx))
    names = [n.node_name for n in out]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ctx.err("name", f"node names must be unique; repeated: {', '.join(dup[:5])}")
    return out


def _node_set(
    s: dict[str, Any], si: int, gpu_def: dict[str, Any], nic_def: dict[str, Any], ctx: _Ctx
) -> list[NodeTopology]:
    where = f"nodeSets[{si}]"
    _no_unknown(s, SET_FIELDS, ctx, where)
    pattern = s.get("namePattern")
    if not isinstance(pattern, str) or "{i" not in pattern:
        raise ctx.err(f"{where}.namePattern", "required, a string containing {i} (e.g. 'gpu-{i:04d}')")
    count = s.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ctx.err(f"{where}.count", "required, a non-negative integer")
    rack = _pos_int(s.get("rackSize", 1), ctx, f"{where}.rackSize")
    block = _pos_int(s.get("blockSize", 1), ctx, f"{where}.blockSize")
    template = _mapping(s.get("template") or {}, ctx, f"{where}.template")
    _no_unknown(template, NODE_FIELDS - {"name"}, ctx, f"{where}.template")
    labels = _mapping(s.get("labels") or {}, ctx, f"{where}.labels")
    out = []
    for i in range(count):
        vars_: dict[str, Any] = {"i": i, "rack": i // rack, "block": i // block}
        try:
            name = pattern.format(**vars_)
        except (KeyError, ValueError, IndexError) as e:
            raise ctx.err(f"{where}.namePattern", f"cannot format: {e}") from e
        vars_["node"] = name
        node = {**template, "name": name, "labels": {**template.get("labels", {}), **labels}}
        out.append(_node(node, gpu_def, nic_def, ctx, vars_))
    return out


def _node(
    node: dict[str, Any], gpu_def: dict[str, Any], nic_def: dict[str, Any], ctx0: _Ctx, vars_: dict[str, Any] | None
) -> NodeTopology:
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise ctx0.err("name", "every node needs a non-empty string 'name'")
    ctx = _Ctx(ctx0.path, name)
    _no_unknown(node, NODE_FIELDS, ctx, "")
    labels_raw = _mapping(node.get("labels") or {}, ctx, "labels")
    labels = {str(k): _fmt(str(v), vars_, ctx, f"labels.{k}") for k, v in labels_raw.items()}
    roots: dict[str, int] = {}
    for root, spec in _mapping(node.get("pcieRoots") or {}, ctx, "pcieRoots").items():
        if not is_pcie_root(str(root)):
            raise ctx.err("pcieRoots", f"{root!r} is not a PCIe root name like 'pci0000:00'")
        spec_m = _mapping(spec or {}, ctx, f"pcieRoots.{root}")
        _no_unknown(spec_m, {"numaNode"}, ctx, f"pcieRoots.{root}")
        roots[str(root)] = _int(spec_m.get("numaNode", -1), ctx, f"pcieRoots.{root}.numaNode")
    raw_gpus = _seq(node.get("gpus") or [], ctx, "gpus")
    raw_nics = _seq(node.get("nics") or [], ctx, "nics")
    gpus = _gpus(raw_gpus, gpu_def, roots, ctx, vars_)
    nics = _nics(raw_nics, nic_def, roots, ctx, vars_)
    return NodeTopology(node_name=name, gpus=tuple(gpus), nics=tuple(nics), labels=labels)


def _gpus(
    raws: list[Any], defaults: dict[str, Any], roots: dict[str, int], ctx: _Ctx, vars_: dict[str, Any] | None
) -> list[Gpu]:
    specs = []
    for i, raw in enumerate(raws):
        dctx = _Ctx(ctx.path, ctx.node, f"gpus[{i}]")
        spec = {**defaults, **_mapping(raw, dctx, "")}
        _no_unknown(spec, GPU_FIELDS, dctx, "")
        bdf = _bdf(spec.get("pciBusID"), dctx)
        specs.append((bdf, spec, _Ctx(ctx.path, ctx.node, f"gpus[{i}] ({bdf})")))
    _unique([s[0] for s in specs], ctx, "gpus")
    specs.sort(key=lambda s: s[0])
    out = []
    for order, (bdf, spec, dctx) in enumerate(specs):
        root, numa = _placement(spec, roots, dctx)
        index = _int(spec.get("index", order), dctx, "index")
        peers = tuple(_bdf(p, dctx, "nvlinkPeers") for p in _seq(spec.get("nvlinkPeers") or [], dctx, "nvlinkPeers"))
        clique = spec.get("clique")
        try:
            memory = parse_quantity(spec.get("memory"))
        except ValueError as e:
            raise dctx.err("memory", f"{e} (use bytes or a quantity such as 80Gi)") from e
        if memory <= 0:
            raise dctx.err("memory", "must be positive")
        out.append(
            Gpu(
                pci_bus_id=bdf,
                uuid=_fmt(_str(spec.get("uuid") or _gpu_uuid(ctx.node, bdf), dctx, "uuid"), vars_, dctx, "uuid"),
                index=index,
                minor=_int(spec.get("minor", index), dctx, "minor"),
                product_name=_str(spec.get("productName"), dctx, "productName"),
                brand=_str(spec.get("brand"), dctx, "brand"),
                architecture=_str(spec.get("architecture"), dctx, "architecture"),
                cuda_compute_capability=_version(spec.get("cudaComputeCapability"), dctx, "cudaComputeCapability"),
                driver_version=_version(spec.get("driverVersion"), dctx, "driverVersion"),
                cuda_driver_version=_version(spec.get("cudaDriverVersion"), dctx, "cudaDriverVersion"),
                memory_bytes=memory,
                numa_node=numa,
                pcie_root=root,
                nvlink_peers=peers,
                clique_id=None if clique is None else _fmt(_str(clique, dctx, "clique"), vars_, dctx, "clique"),
                healthy=_bool(spec.get("healthy", True), dctx, "healthy"),
            )
        )
    return out


def _nics(
    raws: list[Any], defaults: dict[str, Any], roots: dict[str, int], ctx: _Ctx, vars_: dict[str, Any] | None
) -> list[Nic]:
    specs = []
    for i, raw in enumerate(raws):
        dctx = _Ctx(ctx.path, ctx.node, f"nics[{i}]")
        spec = {**defaults, **_mapping(raw, dctx, "")}
        _no_unknown(spec, NIC_FIELDS, dctx, "")
        bdf = _bdf(spec.get("pciBusID"), dctx)
        specs.append((bdf, spec, _Ctx(ctx.path, ctx.node, f"nics[{i}] ({bdf})")))
    _unique([s[0] for s in specs], ctx, "nics")
    specs.sort(key=lambda s: s[0])
    out = []
    for order, (bdf, spec, dctx) in enumerate(specs):
        root, numa = _placement(spec, roots, dctx)
        role = spec.get("sriov", "none")
        if role not in ("none", "pf", "vf"):
            raise dctx.err("sriov", "must be one of none, pf, vf")
        pf = spec.get("sriovPF")
        if role == "vf" and pf is None:
            raise dctx.err("sriovPF", "required when sriov is 'vf'")
        rdma = spec.get("rdmaDevice")
        out.append(
            Nic(
                pci_bus_id=bdf,
                if_name=_fmt(_str(spec.get("ifName") or f"eth{order}", dctx, "ifName"), vars_, dctx, "ifName"),
                mac=_mac(spec.get("mac") or _nic_mac(ctx.node, bdf), dctx),
                vendor_id=_hex_id(spec.get("vendorID"), dctx, "vendorID"),
                device_id=_hex_id(spec.get("deviceID"), dctx, "deviceID"),
                numa_node=numa,
                pcie_root=root,
                mtu=_int(spec.get("mtu"), dctx, "mtu"),
                speed_mbps=_int(spec.get("speedMbps"), dctx, "speedMbps"),
                link_up=_bool(spec.get("linkUp", True), dctx, "linkUp"),
                rdma_device=None if rdma is None else _str(rdma, dctx, "rdmaDevice"),
                sriov_role=role,
                sriov_pf=None if pf is None else _bdf(pf, dctx, "sriovPF"),
                healthy=_bool(spec.get("healthy", True), dctx, "healthy"),
            )
        )
    return out


def _placement(spec: Mapping[str, Any], roots: dict[str, int], ctx: _Ctx) -> tuple[str, int]:
    root = spec.get("pcieRoot")
    if root is None:
        raise ctx.err("pcieRoot", "required (e.g. 'pci0000:00')")
    root = str(root)
    if not is_pcie_root(root):
        raise ctx.err("pcieRoot", f"{root!r} is not a PCIe root name like 'pci0000:00'")
    numa = spec.get("numaNode", roots.get(root, -1))
    return root, _int(numa, ctx, "numaNode")


def _gpu_uuid(node: str, bdf: str) -> str:
    return "GPU-" + str(uuidlib.uuid5(_NS, f"{node}/{bdf}"))


def _nic_mac(node: str, bdf: str) -> str:
    h = hashlib.sha256(f"{node}/{bdf}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *h[:5]))  # locally administered, unicast


def _no_unknown(m: Mapping[str, Any], allowed: set[str], ctx: _Ctx, where: str) -> None:
    extra = sorted(set(map(str, m)) - allowed)
    if extra:
        raise ctx.err(
            f"{where + '.' if where else ''}{extra[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})"
        )


def _mapping(v: Any, ctx: _Ctx, field: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ctx.err(field, f"must be a mapping, got {type(v).__name__}")
    return v


def _seq(v: Any, ctx: _Ctx, field: str) -> list[Any]:
    if not isinstance(v, list):
        raise ctx.err(field, f"must be a list, got {type(v).__name__}")
    return v


def _str(v: Any, ctx: _Ctx, field: str) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float) or v == "":
        raise ctx.err(field, f"must be a non-empty string, got {v!r}")
    return str(v)


def _int(v: Any, ctx: _Ctx, field: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ctx.err(field, f"must be an integer, got {v!r}")
    return v


def _pos_int(v: Any, ctx: _Ctx, field: str) -> int:
    n = _int(v, ctx, field)
    if n < 1:
        raise ctx.err(field, "must be >= 1")
    return n


def _bool(v: Any, ctx: _Ctx, field: str) -> bool:
    if not isinstance(v, bool):
        raise ctx.err(field, f"must be true or false, got {v!r}")
    return v


def _bdf(v: Any, ctx: _Ctx, field: str = "pciBusID") -> str:
    if not isinstance(v, str):
        raise ctx.err(field, f'required, a quoted PCI address string like "0000:0a:00.0", got {v!r}')
    try:
        return normalize_bdf(v)
    except ValueError as e:
        raise ctx.err(field, str(e)) from e


def _version(v: Any, ctx: _Ctx, field: str) -> str:
    s = _str(v, ctx, field)
    parts = s.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ctx.err(field, f"must be a dotted version like '12.4' or '550.54.15', got {s!r}")
    return s


def _hex_id(v: Any, ctx: _Ctx, field: str) -> str:
    s = _str(v, ctx, field).lower()
    try:
        n = int(s, 16)
    except ValueError as e:
        raise ctx.err(field, f"must be a hex id like '0x15b3', got {s!r}") from e
    return f"0x{n:04x}"


def _mac(v: Any, ctx: _Ctx) -> str:
    s = _str(v, ctx, "mac").lower()
    parts = s.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ctx.err("mac", f"must look like '02:00:00:00:00:01', got {s!r}")
    return s


def _unique(bdfs: list[str], ctx: _Ctx, field: str) -> None:
    seen = set()
    for b in bdfs:
        if b in seen:
            raise ctx.err(field, f"PCI address {b} appears twice")
        seen.add(b)


def _fmt(s: str, vars_: dict[str, Any] | None, ctx: _Ctx, field: str) -> str:
    if vars_ is None or "{" not in s:
        return s
    try:
        return s.format(**vars_)
    except (KeyError, ValueError, IndexError) as e:
        raise ctx.err(field, f"cannot format {s!r}: {e} (known: {', '.join(sorted(vars_))})") from e
