"""Extender wire format (k8s.io/kube-scheduler/extender/v1): request parsing and reply building.

kube-scheduler sends PascalCase top-level keys (Go field names, no JSON tags) and decodes replies
case-insensitively; nested Pod objects are ordinary camelCase Kubernetes JSON. Bad input raises
`BadRequest` with a reason that the server returns as HTTP 400.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from scheduler_plugin.model import Pod, parse_pod

MIN_PRIORITY = 0
MAX_PRIORITY = 10  # MaxExtenderPriority


class BadRequest(ValueError):
    """The request cannot be understood; the message says why."""


@dataclass(frozen=True, slots=True)
class ExtenderArgs:
    pod: Pod
    node_names: tuple[str, ...]


def _get(m: Mapping[str, Any], key: str) -> Any:
    if key in m:
        return m[key]
    low = key.lower()
    for k, v in m.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def _object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadRequest(f"body must be a JSON object ({what}), got {type(doc).__name__}")
    return doc


def parse_args(body: bytes) -> ExtenderArgs:
    doc = _object(body, "ExtenderArgs")
    raw_pod = _get(doc, "Pod")
    if raw_pod is None:
        raise BadRequest("missing field Pod")
    if not isinstance(raw_pod, dict):
        raise BadRequest("field Pod must be an object")
    meta = raw_pod.get("metadata")
    if not isinstance(meta, dict):
        raise BadRequest("unknown pod: Pod.metadata missing")
    for f in ("name", "namespace"):
        if not isinstance(meta.get(f), str) or not meta.get(f):
            raise BadRequest(f"unknown pod: Pod.metadata.{f} missing")
    if "spec" in raw_pod and not isinstance(raw_pod["spec"], dict):
        raise BadRequest("Pod.spec must be an object")
    names = _get(doc, "NodeNames")
    if names is None:
        nodes = _get(doc, "Nodes")
        items = nodes.get("items") if isinstance(nodes, dict) else None
        if not isinstance(items, list):
            raise BadRequest("missing field NodeNames (configure the extender with nodeCacheCapable: true)")
        names = [(i.get("metadata") or {}).get("name") if isinstance(i, dict) else None for i in items]
    # set(map(type, ...)) runs in C: this check is on the hot path of every call.
    if not isinstance(names, list) or not set(map(type, names)) <= {str}:
        raise BadRequest("field NodeNames must be a list of strings")
    try:
        pod = parse_pod(raw_pod)
    except (AttributeError, TypeError, ValueError) as e:
        raise BadRequest(f"Pod cannot be read: {e}") from None
    return ExtenderArgs(pod, tuple(names))


@dataclass(frozen=True, slots=True)
class BindingArgs:
    pod_name: str
    namespace: str
    uid: str
    node: str


def parse_bind_args(body: bytes) -> BindingArgs:
    """`ExtenderBindingArgs`: PodName, PodNamespace, PodUID, Node (all required strings)."""
    doc = _object(body, "ExtenderBindingArgs")
    vals = []
    for f in ("PodName", "PodNamespace", "PodUID", "Node"):
        v = _get(doc, f)
        if not isinstance(v, str) or not v:
            raise BadRequest(f"field {f} must be a non-empty string")
        vals.append(v)
    return BindingArgs(*vals)


def binding_result(error: str = "") -> bytes:
    return orjson.dumps({"Error": error})


def filter_result(passed: list[str] | tuple[str, ...], failed: dict[str, str], unresolvable: dict[str, str],
                  error: str = "") -> bytes:
    return orjson.dumps({
        "Nodes": None,
        "NodeNames": passed,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    })


def priority_list(scores: Sequence[tuple[str, int]]) -> bytes:
    return orjson.dumps([{"Host": h, "Score": s} for h, s in scores])
