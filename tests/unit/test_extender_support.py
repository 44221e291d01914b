"""Builders shared by the extender unit tests (hand-made API objects, fed through the watch path)."""

from __future__ import annotations

from typing import Any

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import ExtenderConfig, default_config
from scheduler_plugin.index import Index
from topodra_cli.testing.objects import STD, Json, device_classes


def dev(name: str, kind: str, root: str | None = None, numa: int | None = None, **extra: Any) -> Json:
    attrs: Json = {"type": {"string": kind}}
    if root is not None:
        attrs[f"{STD}/pcieRoot"] = {"string": root}
    if numa is not None:
        attrs[f"{STD}/numaNode"] = {"int": numa}
    attrs[f"{STD}/pciBusID"] = {"string": f"0000:{abs(hash(name)) % 250:02x}:00.0"}
    for k, v in extra.items():
        attrs[k] = {"int": v} if isinstance(v, int) and not isinstance(v, bool) else {"string": str(v)}
    return {"name": name, "attributes": attrs}


def slice_obj(node: str, devices: list[Json], driver: str = "topodra.dev", generation: int = 1,
              name: str | None = None) -> Json:
    return {
        "metadata": {"name": name or f"{node}-{driver}-00000", "resourceVersion": "1"},
        "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": generation,
                                                                 "resourceSliceCount": 1}, "devices": devices},
    }


def node_obj(name: str, **labels: str) -> Json:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}}


def claim(ns: str, name: str, spec: Json, allocated: list[tuple[str, str]] | None = None,
          uid: str = "") -> Json:
    obj: Json = {"metadata": {"namespace": ns, "name": name, "uid": uid or f"uid-{name}"}, "spec": spec}
    if allocated is not None:
        obj["status"] = {"allocation": {"devices": {"results": [
            {"request": "r", "driver": "topodra.dev", "pool": pool, "device": d} for pool, d in allocated]}}}
    return obj


def pod(name: str, claims: dict[str, str] | None = None, templates: dict[str, str] | None = None,
        ns: str = "ml", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        node: str = "", uid: str | None = None) -> Json:
    refs = [{"name": k, "resourceClaimName": v} for k, v in (claims or {}).items()]
    refs += [{"name": k, "resourceClaimTemplateName": v} for k, v in (templates or {}).items()]
    spec: Json = {"containers": [{"name": "main", "image": "x"}], "resourceClaims": refs}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "labels": labels or {},
                         "annotations": annotations or {}}, "spec": spec}


def make_index(cfg: ExtenderConfig | None = None) -> Index:
    idx = Index(cfg or default_config())
    for dc in device_classes():
        apply_event(idx, "deviceclasses", "ADDED", dc)
    return idx


def add_node(idx: Index, name: str, devices: list[Json], **labels: str) -> None:
    apply_event(idx, "nodes", "ADDED", node_obj(name, **labels))
    apply_event(idx, "resourceslices", "ADDED", slice_obj(name, devices))
