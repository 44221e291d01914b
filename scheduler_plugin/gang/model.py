"""Gang data: who a gang is, what it needs, and the group objects (PodGroups, Jobs) it is read from.

The `parse_*` functions are lenient like `scheduler_plugin.model`: they never raise on odd objects. A value
that is present but unusable (a string minCount, a negative timeout) is kept as a problem sentence instead of
being dropped, so a gang built from it is refused with that reason rather than scheduled with a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from scheduler_plugin.model import parse_time

UPSTREAM_API = "scheduling.k8s.io/v1beta1"
COSCHEDULING_API = "scheduling.x-k8s.io/v1alpha1"
JOB_API = "batch/v1"

# Upstream validation caps these at int32; anything larger is a typo, and refusing it keeps arithmetic sane.
MAX_SIZE = 2**31 - 1


@dataclass(frozen=True, slots=True)
class GangKey:
    namespace: str
    source: str  # "podgroup" | "coscheduling" | "job" | "kueue" | "annotation"
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """The object that Events and conditions about the gang go on; None for kueue and annotation gangs."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class GangSpec:
    key: GangKey
    size: int  # members needed before anything is placed (1 when the source gave no usable size)
    required: str | None  # level name or "node"; None = anywhere in the cluster
    preferred: str | None
    timeout_seconds: float
    priority: int  # higher first
    created: float  # unix time of the gang object, else of the pod (the caller may use its oldest member)
    owner: OwnerRef | None
    problems: tuple[str, ...] = ()  # non-empty: refuse the pod with these sentences


@dataclass(frozen=True, slots=True)
class GroupObject:
    """A parsed upstream PodGroup, coscheduling PodGroup or Job: only the fields gang sources read."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str
    created: float
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]
    size: int | None  # minCount / minMember / min(parallelism, completions); None when unset or unusable
    basic: bool = False  # upstream `schedulingPolicy.basic`: the group is not a gang
    topology_key: str | None = None  # upstream `schedulingConstraints.topology[0].key`
    timeout_seconds: float | None = None  # coscheduling `scheduleTimeoutSeconds`
    priority: int | None = None  # upstream `spec.priority`
    problems: tuple[str, ...] = ()  # unusable field values, as sentences

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)

    @property
    def owner(self) -> OwnerRef:
        return OwnerRef(self.api_version, self.kind, self.namespace, self.name, self.uid)

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class GangObjects(Protocol):
    """Read access to the cached group objects; None = not in the cache (not created yet, or not watched)."""

    def upstream_podgroup(self, namespace: str, name: str) -> GroupObject | None: ...
    def coscheduling_podgroup(self, namespace: str, name: str) -> GroupObject | None: ...
    def job(self, namespace: str, name: str) -> GroupObject | None: ...


@runtime_checkable
class KnowsCoscheduling(Protocol):
    """Optional extra on a `GangObjects`: whether the coscheduling PodGroup CRD is served.

    Without it a pod labelled for coscheduling waits for its PodGroup; with it returning False the label is
    ignored (nothing could ever create that PodGroup), and the later sources are tried.
    """

    def coscheduling_served(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Waiting:
    """The pod names a group object that is not (yet) in the cache."""

    key: GangKey
    reason: str


def _d(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, Mapping) else {}


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _pairs(v: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(x)) for k, x in _d(v).items()))


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _base(obj: Any, api_version: str, kind: str) -> dict[str, Any]:
    meta = _d(_d(obj).get("metadata"))
    return {
        "api_version": api_version,
        "kind": kind,
        "namespace": _s(meta.get("namespace")),
        "name": _s(meta.get("name")),
        "uid": _s(meta.get("uid")),
        "created": parse_time(meta.get("creationTimestamp")),
        "labels": _pairs(meta.get("labels")),
        "annotations": _pairs(meta.get("annotations")),
    }


def _count(v: Any, field: str, where: str, problems: list[str]) -> int | None:
    """A member count from a spec field: an int in 1..MAX_SIZE, else a problem (absent = None, no problem)."""
    if v is None:
        return None
    n = _int(v)
    if n is None:
        problems.append(f"{where}: {field} is {v!r}, not a whole number")
        return None
    if n < 1 or n > MAX_SIZE:
        problems.append(f"{where}: {field} is {n}; a gang needs 1 to {MAX_SIZE} members")
        return None
    return n


def parse_upstream_podgroup(obj: Any) -> GroupObject:
    """`scheduling.k8s.io/v1beta1` PodGroup (1.37): gang size, topology key and priority."""
    base = _base(obj, UPSTREAM_API, "PodGroup")
    where = f"PodGroup {base['namespace']}/{base['name']}"
    spec = _d(_d(obj).get("spec"))
    policy = _d(spec.get("schedulingPolicy"))
    problems: list[str] = []
    size = None
    basic = "gang" not in policy  # the apiserver requires exactly one of basic / gang
    if not basic:
        gang = _d(policy.get("gang"))
        size = _count(gang.get("minCount"), "spec.schedulingPolicy.gang.minCount", where, problems)
        if size is None and not problems:
            problems.append(f"{where}: spec.schedulingPolicy.gang has no minCount")
    topology = _d(spec.get("schedulingConstraints")).get("topology")
    first = topology[0] if isinstance(topology, list) and topology else None  # the API allows one entry
    key = _s(_d(first).get("key")) or None
    return GroupObject(**base, size=size, basic=basic, topology_key=key, priority=_int(spec.get("priority")),
                       problems=tuple(problems))


def parse_coscheduling_podgroup(obj: Any) -> GroupObject:
    """scheduler-plugins `scheduling.x-k8s.io/v1alpha1` PodGroup: minMember and scheduleTimeoutSeconds."""
    base = _base(obj, COSCHEDULING_API, "PodGroup")
    where = f"PodGroup {base['namespace']}/{base['name']}"
    spec = _d(_d(obj).get("spec"))
    problems: list[str] = []
    size = _count(spec.get("minMember"), "spec.minMember", where, problems)
    if size is None and not problems:
        problems.append(f"{where}: spec.minMember is not set")
    timeout: float | None = None
    raw = spec.get("scheduleTimeoutSeconds")
    if raw is not None:
        t = _int(raw)
        if t is None or t < 1:
            problems.append(f"{where}: spec.scheduleTimeoutSeconds is {raw!r}, not a whole number of seconds >= 1")
        else:
            timeout = float(t)
    return GroupObject(**base, size=size, timeout_seconds=timeout, problems=tuple(problems))


def parse_job(obj: Any) -> GroupObject:
    """`batch/v1` Job: the gang is its first wave, min(parallelism, completions).

    The apiserver defaults parallelism to 1; completions unset means "until one succeeds", so the wave is
    `parallelism` pods.
    """
    base = _base(obj, JOB_API, "Job")
    where = f"Job {base['namespace']}/{base['name']}"
    spec = _d(_d(obj).get("spec"))
    problems: list[str] = []
    par_raw = spec.get("parallelism", 1)
    par = _int(par_raw)
    if par is None:
        problems.append(f"{where}: spec.parallelism is {par_raw!r}, not a whole number")
    comp_raw = spec.get("completions")
    comp = par if comp_raw is None else _int(comp_raw)
    if comp_raw is not None and comp is None:
        problems.append(f"{where}: spec.completions is {comp_raw!r}, not a whole number")
    size = None
    if par is not None and comp is not None:
        size = _count(min(par, comp), "min(spec.parallelism, spec.completions)", where, problems)
    return GroupObject(**base, size=size, problems=tuple(problems))
