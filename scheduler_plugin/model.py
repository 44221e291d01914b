"""Plain data parsed from API objects: only the fields the extender uses, in compact frozen form.

Parsing is lenient (missing or oddly typed fields become empty values) because these objects come from
the apiserver, which already validated them; the request body is validated separately in `wire.py`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A `version` attribute. Not a plain string: in CEL it is a semver object, and comparing it with a
    string is an error (`==`) where a plain string would just be unequal."""

    text: str

    def __str__(self) -> str:
        return self.text


class ListAttr(tuple[str | int | bool | Version, ...]):
    """A list-valued attribute (`ints`, `bools`, `strings`, `versions`; alpha in Kubernetes 1.37). Kept so
    that CEL sees it exists (`has()` is true); the extender's CEL does not evaluate its value."""

    __slots__ = ()


AttrValue = str | int | bool | Version | ListAttr
Json = dict[str, Any]
DeviceKey = tuple[str, str, str]  # (driver, pool, device)

# Taint effects that keep the allocator away from a device unless the request tolerates them.
BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


def _d(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _l(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def parse_time(v: Any) -> float:
    """RFC 3339 timestamp (`metadata.creationTimestamp`) as unix seconds; 0.0 when missing or malformed."""
    if not isinstance(v, str) or not v:
        return 0.0
    try:
        return datetime.fromisoformat(v).timestamp()
    except (ValueError, OverflowError):
        return 0.0


def qualify(driver: str, name: str) -> str:
    """Attribute names without a domain belong to the driver's domain (DRA rule).

    Interned: thousands of devices carry the same few names, and the cache should hold each once.
    """
    return sys.intern(name if "/" in name else f"{driver}/{name}")


def attr_value(v: Mapping[str, Any]) -> AttrValue | None:
    for key in ("string", "int", "bool"):
        if key in v:
            x = v[key]
            if isinstance(x, str | int | bool):
                return x
    x = v.get("version")
    if isinstance(x, str):
        return Version(x)
    for key in ("ints", "bools", "strings", "versions"):
        xs = v.get(key)
        if isinstance(xs, list):
            return ListAttr(Version(e) if key == "versions" and isinstance(e, str) else e
                            for e in xs if isinstance(e, str | int | bool))
    return None


@dataclass(frozen=True, slots=True)
class Device:
    driver: str
    pool: str
    name: str
    attrs: tuple[tuple[str, AttrValue], ...]  # qualified name -> value, sorted
    tainted: bool

    @property
    def key(self) -> DeviceKey:
        return (self.driver, self.pool, self.name)


@dataclass(frozen=True, slots=True)
class Slice:
    name: str
    driver: str
    pool: str
    generation: int
    node: str | None  # None: not bound to one node (nodeSelector / allNodes); the extender ignores those
    devices: tuple[Device, ...]


def parse_slice(obj: Mapping[str, Any]) -> Slice:
    spec = _d(obj.get("spec"))
    driver = _s(spec.get("driver"))
    pool = _d(spec.get("pool"))
    pool_name = _s(pool.get("name"))
    devices = []
    for d in _l(spec.get("devices")):
        d = _d(d)
        attrs: dict[str, AttrValue] = {}
        for k, v in _d(d.get("attributes")).items():
            val = attr_value(_d(v))
            if val is not None:
                # Short strings repeat across devices (roots, types, models): keep one copy of each.
                attrs[qualify(driver, str(k))] = sys.intern(val) if isinstance(val, str) and len(val) <= 64 else val
        tainted = any(_d(t).get("effect") in BLOCKING_EFFECTS for t in _l(d.get("taints")))
        devices.append(Device(driver, pool_name, _s(d.get("name")), tuple(sorted(attrs.items())), tainted))
    gen = pool.get("generation")
    return Slice(
        name=_s(_d(obj.get("metadata")).get("name")),
        driver=driver,
        pool=pool_name,
        generation=gen if isinstance(gen, int) else 0,
        node=_s(spec.get("nodeName")) or None,
        devices=tuple(devices),
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One device request, or one alternative of a `firstAvailable` list."""

    name: str
    class_name: str
    selectors: tuple[str, ...]  # CEL expressions
    all: bool  # allocationMode All
    count: int
    tolerates: bool  # has tolerations: the extender cannot judge tainted devices then
    alternatives: tuple[Request, ...] = ()  # firstAvailable subrequests (then class_name is empty)


@dataclass(frozen=True, slots=True)
class Constraint:
    requests: tuple[str, ...]  # empty = every request of the claim
    match_attribute: str | None
    distinct_attribute: str | None


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    requests: tuple[Request, ...]
    constraints: tuple[Constraint, ...]


def _selectors(v: Any) -> tuple[str, ...]:
    return tuple(_s(_d(_d(s).get("cel")).get("expression")) for s in _l(v) if _d(_d(s).get("cel")).get("expression"))


def _request(name: str, r: Mapping[str, Any]) -> Request:
    mode = _s(r.get("allocationMode")) or "ExactCount"
    count = r.get("count")
    return Request(
        name=name,
        class_name=_s(r.get("deviceClassName")),
        selectors=_selectors(r.get("selectors")),
        all=mode == "All",
        count=count if isinstance(count, int) and count > 0 else 1,
        tolerates=bool(_l(r.get("tolerations"))),
    )


def parse_claim_spec(spec: Mapping[str, Any]) -> ClaimSpec:
    """`ResourceClaimSpec` (resource.k8s.io/v1): `devices.requests[]` with `exactly` or `firstAvailable`."""
    devices = _d(spec.get("devices"))
    reqs = []
    for r in _l(devices.get("requests")):
        r = _d(r)
        name = _s(r.get("name"))
        if r.get("firstAvailable"):
            alts = tuple(_request(f"{name}/{_s(_d(s).get('name'))}", _d(s)) for s in _l(r.get("firstAvailable")))
            reqs.append(Request(name, "", (), False, 0, False, alts))
        else:
            reqs.append(_request(name, _d(r.get("exactly"))))
    cons = []
    for c in _l(devices.get("constraints")):
        c = _d(c)
        cons.append(
            Constraint(
                requests=tuple(_s(x) for x in _l(c.get("requests"))),
                match_attribute=_s(c.get("matchAttribute")) or None,
                distinct_attribute=_s(c.get("distinctAttribute")) or None,
            )
        )
    return ClaimSpec(tuple(reqs), tuple(cons))


@dataclass(frozen=True, slots=True)
class Claim:
    namespace: str
    name: str
    uid: str
    spec: ClaimSpec
    allocated: tuple[DeviceKey, ...]
    is_allocated: bool
    reserved_for: tuple[str, ...]  # pod UIDs


def parse_claim(obj: Mapping[str, Any]) -> Claim:
    meta = _d(obj.get("metadata"))
    status = _d(obj.get("status"))
    alloc = _d(status.get("allocation"))
    results = _l(_d(alloc.get("devices")).get("results"))
    keys = tuple(
        (_s(_d(r).get("driver")), _s(_d(r).get("pool")), _s(_d(r).get("device"))) for r in results
    )
    return Claim(
        namespace=_s(meta.get("namespace")),
        name=_s(meta.get("name")),
        uid=_s(meta.get("uid")),
        spec=parse_claim_spec(_d(obj.get("spec"))),
        allocated=keys,
        is_allocated=bool(alloc),
        reserved_for=tuple(_s(_d(x).get("uid")) for x in _l(status.get("reservedFor"))),
    )


@dataclass(frozen=True, slots=True)
class ClaimTemplate:
    namespace: str
    name: str
    spec: ClaimSpec


def parse_template(obj: Mapping[str, Any]) -> ClaimTemplate:
    meta = _d(obj.get("metadata"))
    return ClaimTemplate(_s(meta.get("namespace")), _s(meta.get("name")),
                         parse_claim_spec(_d(_d(obj.get("spec")).get("spec"))))


@dataclass(frozen=True, slots=True)
class DeviceClass:
    name: str
    selectors: tuple[str, ...]


def parse_device_class(obj: Mapping[str, Any]) -> DeviceClass:
    return DeviceClass(_s(_d(obj.get("metadata")).get("name")), _selectors(_d(obj.get("spec")).get("selectors")))


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...]
    unschedulable: bool = False  # cordoned
    taints: tuple[Taint, ...] = ()

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None


def parse_node(obj: Mapping[str, Any]) -> Node:
    meta = _d(obj.get("metadata"))
    spec = _d(obj.get("spec"))
    labels = tuple(sorted((str(k), str(v)) for k, v in _d(meta.get("labels")).items()))
    taints = tuple(Taint(_s(_d(t).get("key")), _s(_d(t).get("value")), _s(_d(t).get("effect")))
                   for t in _l(spec.get("taints")))
    return Node(_s(meta.get("name")), labels, bool(spec.get("unschedulable")), taints)


@dataclass(frozen=True, slots=True)
class PodClaimRef:
    name: str
    claim_name: str | None
    template_name: str | None


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str  # "" with operator Exists: every taint
    operator: str  # Equal | Exists
    value: str
    effect: str  # "" = every effect


@dataclass(frozen=True, slots=True)
class NodeTerm:
    """One required node-affinity term: all its expressions must hold (terms are ORed)."""

    expressions: tuple[tuple[str, str, tuple[str, ...]], ...]  # (key, operator, values)
    # matchFields: kube-scheduler supports only metadata.name (In/NotIn), as DaemonSet pods use it.
    names: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (operator, node names)


@dataclass(frozen=True, slots=True)
class Placement:
    """The node constraints of a pod that the extender evaluates itself when it plans a node.

    `opaque` is set when the pod has constraints the extender does not evaluate (pod affinity, topology
    spread, matchFields other than metadata.name, host ports ...): such pods are never steered,
    kube-scheduler judges them as usual.
    """

    node_selector: tuple[tuple[str, str], ...] = ()
    terms: tuple[NodeTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    opaque: bool = False


NO_PLACEMENT = Placement()


def parse_placement(spec: Mapping[str, Any]) -> Placement:
    aff = _d(spec.get("affinity"))
    opaque = bool(aff.get("podAffinity") or aff.get("podAntiAffinity") or _l(spec.get("topologySpreadConstraints")))
    terms = []
    req = _d(_d(aff.get("nodeAffinity")).get("requiredDuringSchedulingIgnoredDuringExecution"))
    for t in _l(req.get("nodeSelectorTerms")):
        t = _d(t)
        names = []
        for f in _l(t.get("matchFields")):
            f = _d(f)
            if _s(f.get("key")) != "metadata.name" or _s(f.get("operator")) not in ("In", "NotIn"):
                opaque = True
            names.append((_s(f.get("operator")), tuple(str(v) for v in _l(f.get("values")))))
        exprs = tuple((_s(_d(e).get("key")), _s(_d(e).get("operator")),
                       tuple(str(v) for v in _l(_d(e).get("values")))) for e in _l(t.get("matchExpressions")))
        terms.append(NodeTerm(exprs, tuple(names)))
    for c in _l(spec.get("containers")) + _l(spec.get("initContainers")):
        if any(_d(p).get("hostPort") for p in _l(_d(c).get("ports"))):
            opaque = True
    tolerations = tuple(Toleration(_s(_d(t).get("key")), _s(_d(t).get("operator")) or "Equal",
                                   _s(_d(t).get("value")), _s(_d(t).get("effect")))
                        for t in _l(spec.get("tolerations")))
    selector = tuple(sorted((str(k), str(v)) for k, v in _d(spec.get("nodeSelector")).items()))
    if not (selector or terms or tolerations or opaque):
        return NO_PLACEMENT
    return Placement(selector, tuple(terms), tolerations, opaque)


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node_name: str
    terminal: bool
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    group: str  # spec.schedulingGroup.podGroupName (1.36+), "" if none
    claims: tuple[PodClaimRef, ...]
    claim_statuses: tuple[tuple[str, str], ...]  # pod claim name -> generated ResourceClaim name
    placement: Placement = NO_PLACEMENT  # what the pod asks of a node (selector, affinity, tolerations)
    nominated_node: str = ""  # status.nominatedNodeName
    gated: bool = False  # spec.schedulingGates not empty: kube-scheduler does not look at it yet
    priority: int = 0  # spec.priority (filled by the Priority admission plugin)
    created: float = 0.0  # metadata.creationTimestamp, unix seconds
    scheduler_name: str = ""  # spec.schedulerName

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    meta = _d(obj.get("metadata"))
    spec = _d(obj.get("spec"))
    status = _d(obj.get("status"))
    claims = tuple(
        PodClaimRef(
            _s(_d(c).get("name")),
            _s(_d(c).get("resourceClaimName")) or None,
            _s(_d(c).get("resourceClaimTemplateName")) or None,
        )
        for c in _l(spec.get("resourceClaims"))
    )
    statuses = tuple(
        (_s(_d(s).get("name")), _s(_d(s).get("resourceClaimName")))
        for s in _l(status.get("resourceClaimStatuses"))
        if _d(s).get("resourceClaimName")
    )
    return Pod(
        namespace=_s(meta.get("namespace")),
        name=_s(meta.get("name")),
        uid=_s(meta.get("uid")),
        node_name=_s(spec.get("nodeName")),
        terminal=_s(status.get("phase")) in ("Succeeded", "Failed"),
        labels=tuple(sorted((str(k), str(v)) for k, v in _d(meta.get("labels")).items())),
        annotations=tuple(sorted((str(k), str(v)) for k, v in _d(meta.get("annotations")).items())),
        group=_s(_d(spec.get("schedulingGroup")).get("podGroupName")),
        claims=claims,
        claim_statuses=statuses,
        placement=parse_placement(spec),
        nominated_node=_s(status.get("nominatedNodeName")),
        gated=bool(_l(spec.get("schedulingGates"))),
        priority=prio if isinstance(prio := spec.get("priority"), int) and not isinstance(prio, bool) else 0,
        created=parse_time(meta.get("creationTimestamp")),
        scheduler_name=_s(spec.get("schedulerName")),
    )
