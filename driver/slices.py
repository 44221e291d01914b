"""ResourceSlice building and pool planning: pure functions, no API calls.

`desired_slices` turns a NodeTopology into the device lists of one pool (pool name = node name), split
to respect the API limits. `plan_pool` compares them with the slices the API holds and says what to
delete, update and create, and at which pool generation. Objects are plain JSON-shaped dicts in the
`resource.k8s.io/v1` form, ready to send.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from driver.discovery.common import parse_quantity
from driver.model import DRIVER_NAME, Gpu, Nic, NodeTopology

API_VERSION = "resource.k8s.io/v1"

# API limits (resource.k8s.io/v1 validation, contract §11).
MAX_DEVICES = 128
MAX_DEVICES_WITH_TAINTS = 64
MAX_ATTRS_AND_CAPS = 32
MAX_STRING_BYTES = 64
MAX_VERSION_BYTES = 64
MAX_NAME = 253

STD_PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
STD_PCI_BUS_ID = "resource.kubernetes.io/pciBusID"
STD_NUMA_NODE = "resource.kubernetes.io/numaNode"
UNHEALTHY_TAINT_KEY = "topodra.dev/unhealthy"

Json = dict[str, Any]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_C_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------------------
# attribute values


def _s(v: str) -> Json:
    """String attribute, cut to the 64-byte limit on a character boundary."""
    b = v.encode()
    if len(b) > MAX_STRING_BYTES:
        v = b[:MAX_STRING_BYTES].decode(errors="ignore")
    return {"string": v}


def _i(v: int) -> Json:
    return {"int": v}


def _b(v: bool) -> Json:
    return {"bool": v}


@functools.lru_cache(maxsize=4096)
def semver(v: str) -> str | None:
    """Dotted numeric version -> strict semver `X.Y.Z` (no leading zeros), as NVIDIA's driver publishes it.

    "12.4" -> "12.4.0", "550.54.15" -> "550.54.15", "535.104.05" -> "535.104.5"; None if not numeric.
    """
    parts = v.strip().split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    out = ".".join(str(n) for n in nums)
    return out if len(out) <= MAX_VERSION_BYTES else None


def _ver(v: str) -> Json | None:
    sv = semver(v)
    return None if sv is None else {"version": sv}


def binary_quantity(n: int) -> str:
    """Bytes as a Kubernetes quantity with the largest exact binary suffix (80Gi, 512Mi, 1000)."""
    for suffix, shift in (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def decimal_quantity(n: int) -> str:
    """A count as a quantity with the largest exact decimal suffix (400G, 25G, 1500)."""
    for suffix, exp in (("E", 18), ("P", 15), ("T", 12), ("G", 9), ("M", 6), ("k", 3)):
        if n and n % 10**exp == 0:
            return f"{n // 10**exp}{suffix}"
    return str(n)


def _common(attrs: Json, dev: Gpu | Nic) -> None:
    if dev.pci_bus_id:
        attrs[STD_PCI_BUS_ID] = _s(dev.pci_bus_id)
    if dev.pcie_root:
        attrs[STD_PCIE_ROOT] = _s(dev.pcie_root)
    if dev.numa_node >= 0:
        attrs[STD_NUMA_NODE] = _i(dev.numa_node)


def gpu_device(name: str, g: Gpu) -> Json:
    """Attribute names and formats follow kubernetes-sigs/dra-driver-nvidia-gpu, so selectors carry over."""
    attrs: Json = {
        "type": _s("gpu"),
        "uuid": _s(g.uuid),
        "index": _i(g.index),
        "minor": _i(g.minor),
        "productName": _s(g.product_name),
        "brand": _s(g.brand),
        "architecture": _s(g.architecture),
    }
    for key, raw in (
        ("cudaComputeCapability", g.cuda_compute_capability),
        ("driverVersion", g.driver_version),
        ("cudaDriverVersion", g.cuda_driver_version),
    ):
        v = _ver(raw)
        if v is not None:
            attrs[key] = v
    if g.clique_id:
        attrs["clique"] = _s(g.clique_id)
    if g.nvlink_peers:
        attrs["nvlinkPeers"] = _i(len(g.nvlink_peers))
    _common(attrs, g)
    dev: Json = {"name": name, "attributes": attrs, "capacity": {"memory": {"value": binary_quantity(g.memory_bytes)}}}
    return _with_health(dev, g.healthy)


def nic_device(name: str, n: Nic) -> Json:
    """Attribute names and formats follow kubernetes-sigs/dranet where it has one (ifName, mac, mtu, ...)."""
    attrs: Json = {
        "type": _s("nic"),
        "ifName": _s(n.if_name),
        "mac": _s(n.mac),
        "vendorID": _s(n.vendor_id),
        "deviceID": _s(n.device_id),
        "mtu": _i(n.mtu),
        "state": _s("up" if n.link_up else "down"),
        "rdma": _b(n.rdma_device is not None),
        "sriov": _b(n.sriov_role == "pf"),
        "isSriovVf": _b(n.sriov_role == "vf"),
        "virtual": _b(not n.pci_bus_id),  # dranet: no PCI function behind the interface
    }
    if n.rdma_device:
        attrs["rdmaDevice"] = _s(n.rdma_device)
    if n.sriov_pf:
        attrs["sriovPF"] = _s(n.sriov_pf)
    _common(attrs, n)
    dev: Json = {"name": name, "attributes": attrs}
    if n.speed_mbps > 0:  # bits per second, so `bandwidth` compares with quantity("100G")
        dev["capacity"] = {"bandwidth": {"value": decimal_quantity(n.speed_mbps * 1_000_000)}}
    return _with_health(dev, n.healthy)


def _with_health(dev: Json, healthy: bool) -> Json:
    if not healthy:
        dev["taints"] = [{"key": UNHEALTHY_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
    return dev


def device_entries(topo: NodeTopology) -> list[Json]:
    """All devices of a node, GPUs then NICs, each in PCI order (names from the shared model)."""
    out = []
    for name, d in topo.named_devices().items():
        out.append(gpu_device(name, d) if isinstance(d, Gpu) else nic_device(name, d))
    return out


# ---------------------------------------------------------------------------------------------------------
# slices of one pool


@dataclass(frozen=True)
class DesiredSlice:
    name: str
    devices: tuple[Json, ...]


def slice_name(node: str, driver: str, index: int) -> str:
    """Stable name `<node>-<driver>-<index as 5 hex digits>`; name order = slice order within the pool."""
    suffix = f"-{driver}-{index:05x}"
    if len(node) + len(suffix) > MAX_NAME:
        digest = hashlib.sha256(node.encode()).hexdigest()[:10]
        node = node[: MAX_NAME - len(suffix) - 11].rstrip("-.") + "-" + digest
    return node + suffix


def devices_per_slice(devices: Sequence[Json]) -> int:
    return MAX_DEVICES_WITH_TAINTS if any(d.get("taints") for d in devices) else MAX_DEVICES


def desired_slices(topo: NodeTopology, driver: str = DRIVER_NAME, max_devices: int | None = None) -> list[DesiredSlice]:
    """The pool's slices: ≥ 1 (an empty one when there are no devices), split in device order.

    The chunk size is the API limit for the whole pool (64 as soon as one device carries a taint), so a
    device keeps its slice as long as the device list does not change.
    """
    devices = device_entries(topo)
    limit = devices_per_slice(devices)
    if max_devices is not None:
        limit = max(1, min(limit, max_devices))
    chunks = [devices[i : i + limit] for i in range(0, len(devices), limit)] or [[]]
    return [DesiredSlice(slice_name(topo.node_name, driver, i), tuple(c)) for i, c in enumerate(chunks)]


def slice_object(
    ds: DesiredSlice, driver: str, node: str, generation: int, count: int, owner: Json | None = None
) -> Json:
    meta: Json = {"name": ds.name}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourceSlice",
        "metadata": meta,
        "spec": {
            "driver": driver,
            "pool": {"name": node, "generation": generation, "resourceSliceCount": count},
            "nodeName": node,
            "devices": list(ds.devices),
        },
    }


def node_owner(node: str, uid: str) -> Json:
    return {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid, "controller": True}


# ---------------------------------------------------------------------------------------------------------
# comparing what we send with what the API stores


def normalize_devices(devices: Sequence[Mapping[str, Any]] | None) -> list[Json]:
    """Devices in a comparable form: quantities as integers, server-set taint `timeAdded` dropped."""
    out = []
    for d in devices or ():
        nd: Json = {"name": d.get("name"), "attributes": dict(d.get("attributes") or {})}
        caps = d.get("capacity") or {}
        nd["capacity"] = {k: _qty(v.get("value")) for k, v in caps.items()}
        taints = [{k: v for k, v in t.items() if k != "timeAdded"} for t in d.get("taints") or ()]
        nd["taints"] = sorted(taints, key=lambda t: (t.get("key", ""), t.get("effect", "")))
        for k in d:
            if k not in ("name", "attributes", "capacity", "taints"):
                nd[k] = d[k]
        out.append(nd)
    return out


def _qty(v: Any) -> Any:
    try:
        return parse_quantity(v)
    except ValueError:
        return v


def devices_equal(a: Sequence[Mapping[str, Any]] | None, b: Sequence[Mapping[str, Any]] | None) -> bool:
    return normalize_devices(a) == normalize_devices(b)


def device_diff(sent: Sequence[Mapping[str, Any]], stored: Sequence[Mapping[str, Any]] | None) -> list[str]:
    """Human-readable differences (what the API dropped or changed), empty if none."""
    diffs: list[str] = []
    sn, tn = normalize_devices(sent), normalize_devices(stored)
    if len(sn) != len(tn):
        return [f"device count sent {len(sn)} stored {len(tn)}"]
    for s, t in zip(sn, tn, strict=True):
        for k in sorted(set(s) | set(t)):
            if s.get(k) != t.get(k):
                if isinstance(s.get(k), dict) and isinstance(t.get(k), dict):
                    for kk in sorted(set(s[k]) | set(t[k])):
                        if s[k].get(kk) != t[k].get(kk):
                            diffs.append(f"{s['name']}.{k}.{kk}: sent {s[k].get(kk)!r} stored {t[k].get(kk)!r}")
                else:
                    diffs.append(f"{s['name']}.{k}: sent {s.get(k)!r} stored {t.get(k)!r}")
    return diffs


# ---------------------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class Plan:
    """What to do to make the API match: deletes first, then updates, then creates."""

    generation: int
    deletes: tuple[Json, ...] = ()  # existing objects (name, uid, resourceVersion used as preconditions)
    updates: tuple[Json, ...] = ()  # full objects carrying metadata.resourceVersion
    creates: tuple[Json, ...] = ()
    reasons: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.deletes or self.updates or self.creates)


def _gen(obj: Mapping[str, Any]) -> int:
    return int(((obj.get("spec") or {}).get("pool") or {}).get("generation") or 0)


def _matches(existing: Mapping[str, Any], ds: DesiredSlice, node: str, count: int, owner: Json | None) -> bool:
    spec = existing.get("spec") or {}
    pool = spec.get("pool") or {}
    if pool.get("name") != node or spec.get("nodeName") != node or pool.get("resourceSliceCount") != count:
        return False
    if owner is not None:
        refs = (existing.get("metadata") or {}).get("ownerReferences") or []
        if not any(r.get("uid") == owner["uid"] and r.get("controller") for r in refs):
            return False
    return devices_equal(spec.get("devices"), ds.devices)


def plan_pool(
    desired: Sequence[DesiredSlice],
    existing: Sequence[Mapping[str, Any]],
    driver: str,
    node: str,
    owner: Json | None,
    min_generation: int = 0,
) -> Plan:
    """Smallest correct set of writes that makes `existing` (this driver's slices of `node`) equal `desired`.

    If every existing slice is already right and only some are missing (deleted by someone else), the
    missing ones are re-created at the current generation. Any other change bumps the generation and
    rewrites every slice of the pool, so consumers never mix old and new device lists. When no slice
    exists at all (first start, or all wiped), the pool starts at `min_generation` (the publisher passes
    the last generation it wrote, so a pool's generation never goes backwards within one process).
    """
    by_name = {(e.get("metadata") or {}).get("name"): e for e in existing}
    want = {d.name: d for d in desired}
    count = len(desired)
    gens = {_gen(e) for e in existing}
    current = max(gens) if gens else max(0, min_generation)
    obsolete = [e for n, e in by_name.items() if n not in want]
    good = all(_matches(by_name[n], want[n], node, count, owner) for n in by_name if n in want)
    if not obsolete and good and len(gens) <= 1:
        missing = [d for d in desired if d.name not in by_name]
        creates = tuple(slice_object(d, driver, node, current, count, owner) for d in missing)
        verb = "re-create" if by_name else "create"
        reasons = tuple(f"{verb} {d.name}" for d in missing)
        return Plan(generation=current, creates=creates, reasons=reasons)
    gen = current + 1
    why = [f"obsolete {(e.get('metadata') or {}).get('name')}" for e in obsolete]
    ups: list[Json] = []
    news: list[Json] = []
    for d in desired:
        obj = slice_object(d, driver, node, gen, count, owner)
        if d.name in by_name:
            obj["metadata"]["resourceVersion"] = by_name[d.name]["metadata"].get("resourceVersion")
            ups.append(obj)
            why.append(f"update {d.name}")
        else:
            news.append(obj)
            why.append(f"create {d.name}")
    return Plan(gen, tuple(dict(e) for e in obsolete), tuple(ups), tuple(news), tuple(why))


# ---------------------------------------------------------------------------------------------------------
# self-check against the API limits (used by tests and as a guard before sending)


def validate_slice(obj: Mapping[str, Any]) -> list[str]:
    """Problems the apiserver would reject, checked locally; empty when fine."""
    errs: list[str] = []
    name = (obj.get("metadata") or {}).get("name", "")
    if len(name) > MAX_NAME or not _DNS_SUBDOMAIN.match(name):
        errs.append(f"slice name {name!r} is not a DNS subdomain")
    spec = obj.get("spec") or {}
    devices = spec.get("devices") or []
    limit = devices_per_slice(devices)
    if len(devices) > limit:
        errs.append(f"{len(devices)} devices > {limit}")
    seen = set()
    for d in devices:
        dn = d.get("name", "")
        if not _DNS_LABEL.match(dn) or len(dn) > 63:
            errs.append(f"device name {dn!r} is not a DNS label")
        if dn in seen:
            errs.append(f"device name {dn!r} repeated")
        seen.add(dn)
        attrs, caps = d.get("attributes") or {}, d.get("capacity") or {}
        if len(attrs) + len(caps) > MAX_ATTRS_AND_CAPS:
            errs.append(f"{dn}: {len(attrs) + len(caps)} attributes+capacities > {MAX_ATTRS_AND_CAPS}")
        for q in list(attrs) + list(caps):
            if not _qualified(q):
                errs.append(f"{dn}: {q!r} is not a qualified name")
        for q, v in attrs.items():
            if len(v) != 1:
                errs.append(f"{dn}: attribute {q} must have exactly one value")
            if "string" in v and len(v["string"].encode()) > MAX_STRING_BYTES:
                errs.append(f"{dn}: attribute {q} longer than {MAX_STRING_BYTES} bytes")
            if "version" in v and (semver(v["version"]) != v["version"]):
                errs.append(f"{dn}: attribute {q} is not strict semver")
    return errs


@functools.lru_cache(maxsize=4096)  # a pool has a few dozen distinct names; fleets check them 10^5 times
def _qualified(q: str) -> bool:
    domain, _, ident = q.rpartition("/")
    if domain and (len(domain) > 63 or not _DNS_SUBDOMAIN.match(domain)):
        return False
    return 0 < len(ident) <= 32 and _C_IDENT.match(ident) is not None
