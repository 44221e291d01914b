"""Which gang a pod belongs to, and what that gang asks for (docs/gang.md, "Asking for a gang").

Sources, first match wins, all within the pod's namespace:

1. upstream PodGroup (`spec.schedulingGroup.podGroupName`), unless its policy is `basic`;
2. scheduler-plugins coscheduling (label `scheduling.x-k8s.io/pod-group`), when that CRD is served;
3. a `batch/v1` Job carrying the configured gang label (its pods only name the Job);
4. a Kueue plain-pod group (label + total-count annotation);
5. our own annotations (`topodra.dev/gang`, `topodra.dev/gang-size`).

Nothing here raises on user input: every unusable value becomes a sentence in `GangSpec.problems`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from scheduler_plugin.config import GangConfig, Level
from scheduler_plugin.gang.model import (
    COSCHEDULING_API,
    MAX_SIZE,
    UPSTREAM_API,
    GangKey,
    GangObjects,
    GangSpec,
    GroupObject,
    KnowsCoscheduling,
    Waiting,
)
from scheduler_plugin.model import Pod

COSCHEDULING_LABEL = "scheduling.x-k8s.io/pod-group"
JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")  # the second one before 1.27
# Set by the Job controller next to the name; a hand-written `job-name` label without it is not a Job link.
JOB_UID_LABELS = ("batch.kubernetes.io/controller-uid", "controller-uid")
KUEUE_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
KUEUE_TOTAL_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
KAI_REQUIRED = "kai.scheduler/topology-required-placement"
KAI_PREFERRED = "kai.scheduler/topology-preferred-placement"
KUEUE_REQUIRED = "kueue.x-k8s.io/podset-required-topology"
KUEUE_PREFERRED = "kueue.x-k8s.io/podset-preferred-topology"
HOSTNAME_LABEL = "kubernetes.io/hostname"
NODE_LEVEL = "node"

_WHOLE = re.compile(r"[0-9]{1,10}")
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,6})?")


@dataclass(frozen=True, slots=True)
class _Holder:
    """Somewhere annotations can be read from: the group object, then the pod."""

    where: str
    annotations: dict[str, str]


def gang_of(pod: Pod, objs: GangObjects, cfg: GangConfig, levels: tuple[Level, ...]) -> GangSpec | Waiting | None:
    """The gang `pod` belongs to; `Waiting` if its group object is not cached yet; None if it is in no gang."""
    ns = pod.namespace
    if pod.group:
        key = GangKey(ns, "podgroup", pod.group)
        obj = objs.upstream_podgroup(ns, pod.group)
        if obj is None:
            return Waiting(key, f"waiting for PodGroup {key} ({UPSTREAM_API}) named by the pod")
        if not obj.basic:  # a basic PodGroup schedules pods one by one: let the other sources speak
            return _spec(key, pod, cfg, levels, obj, obj.size, [])

    name = pod.label(COSCHEDULING_LABEL)
    if name and (not isinstance(objs, KnowsCoscheduling) or objs.coscheduling_served()):
        key = GangKey(ns, "coscheduling", name)
        obj = objs.coscheduling_podgroup(ns, name)
        if obj is None:
            return Waiting(key, f"waiting for PodGroup {key} ({COSCHEDULING_API}) named by label {COSCHEDULING_LABEL}")
        return _spec(key, pod, cfg, levels, obj, obj.size, [])

    name = _first_label(pod, JOB_NAME_LABELS)
    uid = _first_label(pod, JOB_UID_LABELS)
    if name and uid:
        key = GangKey(ns, "job", name)
        obj = objs.job(ns, name)
        if obj is None:
            return Waiting(key, f"waiting for Job {key} to appear in the cache")
        if obj.uid and obj.uid != uid:
            return Waiting(key, f"the cached Job {key} has uid {obj.uid}, the pod's Job has uid {uid}")
        if obj.label(cfg.job_label) == cfg.job_label_value:
            return _spec(key, pod, cfg, levels, obj, obj.size, [])

    where = f"pod {ns}/{pod.name}"
    name = pod.label(KUEUE_GROUP_LABEL)
    if name:
        problems: list[str] = []
        size = _size(pod.annotation(KUEUE_TOTAL_ANNOTATION), f"annotation {KUEUE_TOTAL_ANNOTATION} on {where}",
                     problems)
        return _spec(GangKey(ns, "kueue", name), pod, cfg, levels, None, size, problems)

    name = pod.annotation(cfg.name_annotation)
    raw_size = pod.annotation(cfg.size_annotation)
    if name is None and raw_size is None:
        return None
    problems = []
    if not name:
        problems.append(f"{where} has annotation {cfg.size_annotation} but no gang name in {cfg.name_annotation}")
    size = _size(raw_size, f"annotation {cfg.size_annotation} on {where}", problems)
    return _spec(GangKey(ns, "annotation", name or pod.name), pod, cfg, levels, None, size, problems)


def merge_members(members: Sequence[tuple[str, GangSpec]]) -> GangSpec:
    """One spec for a gang from its members' specs, as `(pod name, gang_of(pod))` pairs, oldest first.

    Members of an object-backed gang share the object's size, but annotation and Kueue gangs read it from each
    pod, and topology or timeout annotations may sit on the pods of any gang: members that disagree make the
    gang refused rather than sized by whichever pod came first. The gang is as old as its oldest member and
    as urgent as its most urgent one.
    """
    if not members:
        raise ValueError("merge_members needs at least one member")
    first = members[0][1]
    if any(spec.key != first.key for _, spec in members):
        raise ValueError(f"merge_members got members of several gangs: {sorted({str(s.key) for _, s in members})}")
    problems: list[str] = []
    for _, spec in members:
        problems.extend(p for p in spec.problems if p not in problems)
    fields: tuple[tuple[str, Callable[[GangSpec], object]], ...] = (
        ("size", lambda s: s.size),
        ("required topology", lambda s: s.required),
        ("preferred topology", lambda s: s.preferred),
        ("timeout", lambda s: s.timeout_seconds),
    )
    for what, get in fields:
        groups: dict[object, list[str]] = {}
        for pod, spec in members:
            groups.setdefault(get(spec), []).append(pod)
        if len(groups) > 1:
            parts = "; ".join(f"{value if value is not None else 'none'} ({_names(pods)})"
                              for value, pods in groups.items())
            problems.append(f"members of gang {first.key} disagree on {what}: {parts}")
    return replace(
        first,
        created=min(spec.created for _, spec in members),
        priority=max(spec.priority for _, spec in members),
        problems=tuple(problems),
    )


def _names(pods: list[str], shown: int = 3) -> str:
    more = f" and {len(pods) - shown} more" if len(pods) > shown else ""
    return "pod" + ("s " if len(pods) > 1 else " ") + ", ".join(pods[:shown]) + more


def _first_label(pod: Pod, keys: tuple[str, ...]) -> str | None:
    for k in keys:
        v = pod.label(k)
        if v:
            return v
    return None


def _size(raw: str | None, where: str, problems: list[str]) -> int | None:
    if raw is None:
        problems.append(f"{where} is missing, so the gang size is unknown")
        return None
    v = raw.strip()
    if not _WHOLE.fullmatch(v):
        problems.append(f"{where} is {raw!r}, not a whole number")
        return None
    n = int(v)
    if n < 1 or n > MAX_SIZE:
        problems.append(f"{where} is {n}; a gang needs 1 to {MAX_SIZE} members")
        return None
    return n


def _spec(key: GangKey, pod: Pod, cfg: GangConfig, levels: tuple[Level, ...], obj: GroupObject | None,
          size: int | None, problems: list[str]) -> GangSpec:
    holders = [_Holder(f"pod {pod.namespace}/{pod.name}", dict(pod.annotations))]
    if obj is not None:
        holders.insert(0, _Holder(obj.describe(), dict(obj.annotations)))
        problems = [*obj.problems, *problems]
    required, preferred = _topology(holders, obj, cfg, levels, problems)
    timeout = _timeout(holders, obj, cfg, problems)
    return GangSpec(
        key=key,
        size=size if size is not None else 1,  # only with a problem, so the gang is refused anyway
        required=required,
        preferred=preferred,
        timeout_seconds=timeout,
        priority=obj.priority if obj is not None and obj.priority is not None else pod.priority,
        created=obj.created if obj is not None and obj.created else pod.created,
        owner=obj.owner if obj is not None else None,
        problems=tuple(problems),
    )


def _lookup(holders: list[_Holder], annotation: str) -> tuple[str, str] | None:
    """(value, where) of the first holder that has `annotation`: the object's word beats the pod's."""
    for h in holders:
        if annotation in h.annotations:
            return h.annotations[annotation], f"annotation {annotation} on {h.where}"
    return None


def _topology(holders: list[_Holder], obj: GroupObject | None, cfg: GangConfig, levels: tuple[Level, ...],
              problems: list[str]) -> tuple[str | None, str | None]:
    """Required and preferred level. Levels nest, so when several sources ask, the narrowest one wins."""
    order = [lv.name for lv in levels]
    if NODE_LEVEL not in order:
        order.append(NODE_LEVEL)
    by_label: dict[str, str] = {}
    for lv in levels:  # highest first: a label listed by two levels belongs to the higher one
        for label in lv.labels:
            by_label.setdefault(label, lv.name)
    by_label[HOSTNAME_LABEL] = NODE_LEVEL

    def by_name(value: str, where: str) -> str | None:
        if value.strip() in order:
            return value.strip()
        problems.append(f"{where} is {value!r}, not a topology level (levels: {', '.join(order)})")
        return None

    def by_key(value: str, where: str) -> str | None:
        level = by_label.get(value.strip())
        if level is None:
            problems.append(f"{where} is {value!r}, a node label that no topology level uses "
                            f"(known labels: {', '.join(sorted(by_label))})")
        return level

    required: list[str | None] = []
    preferred: list[str | None] = []
    if obj is not None and obj.topology_key:
        required.append(by_key(obj.topology_key, f"{obj.describe()}: spec.schedulingConstraints.topology[0].key"))
    families: tuple[tuple[str, str, Callable[[str, str], str | None]], ...] = (
        (cfg.required_annotation, cfg.preferred_annotation, by_name),
        (KAI_REQUIRED, KAI_PREFERRED, by_key),
        (KUEUE_REQUIRED, KUEUE_PREFERRED, by_key),
    )
    for req_key, pref_key, resolve in families:
        for annotation, out in ((req_key, required), (pref_key, preferred)):
            found = _lookup(holders, annotation)
            if found is not None:
                out.append(resolve(*found))

    def narrowest(levels_asked: list[str | None]) -> str | None:
        known = [lv for lv in levels_asked if lv is not None]
        return max(known, key=order.index) if known else None

    req, pref = narrowest(required), narrowest(preferred)
    if req is not None and pref is not None and order.index(pref) < order.index(req):
        problems.append(f"preferred topology {pref!r} is wider than required topology {req!r}: every placement "
                        f"inside one {req} already lies inside one {pref}; prefer a level at or below {req}")
    return req, pref


def _timeout(holders: list[_Holder], obj: GroupObject | None, cfg: GangConfig, problems: list[str]) -> float:
    if obj is not None and obj.timeout_seconds is not None:
        return obj.timeout_seconds
    found = _lookup(holders, cfg.timeout_annotation)
    if found is None:
        return cfg.default_timeout_seconds
    raw, where = found
    if _SECONDS.fullmatch(raw.strip()) and float(raw) > 0:
        return float(raw)
    problems.append(f"{where} is {raw!r}, not a number of seconds > 0")
    return cfg.default_timeout_seconds
