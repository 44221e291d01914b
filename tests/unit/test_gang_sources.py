"""Gang sources: which gang a pod is in, its size, topology, timeout and priority, and every bad value reported."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_plugin.config import DEFAULT_LEVELS, GangConfig, Level
from scheduler_plugin.gang import (
    GangKey,
    GangSpec,
    GroupObject,
    OwnerRef,
    Waiting,
    gang_of,
    merge_members,
    parse_coscheduling_podgroup,
    parse_job,
    parse_upstream_podgroup,
)
from scheduler_plugin.model import Pod, parse_pod

NS = "ml"
CFG = GangConfig()
T0 = "2026-05-01T10:00:00Z"
T0_UNIX = 1777629600.0


class Objs:
    """The cache's view of group objects, filled from the same dicts the apiserver returns."""

    def __init__(self, *objs: GroupObject, coscheduling: bool = True) -> None:
        self.objs = {(o.api_version, o.namespace, o.name): o for o in objs}
        self.coscheduling = coscheduling

    def upstream_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.objs.get(("scheduling.k8s.io/v1beta1", namespace, name))

    def coscheduling_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.objs.get(("scheduling.x-k8s.io/v1alpha1", namespace, name))

    def job(self, namespace: str, name: str) -> GroupObject | None:
        return self.objs.get(("batch/v1", namespace, name))

    def coscheduling_served(self) -> bool:
        return self.coscheduling


class PlainObjs:
    """A GangObjects without the optional `coscheduling_served`."""

    def __init__(self, *objs: GroupObject) -> None:
        self.inner = Objs(*objs)

    def upstream_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.inner.upstream_podgroup(namespace, name)

    def coscheduling_podgroup(self, namespace: str, name: str) -> GroupObject | None:
        return self.inner.coscheduling_podgroup(namespace, name)

    def job(self, namespace: str, name: str) -> GroupObject | None:
        return self.inner.job(namespace, name)


def meta(name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
         uid: str = "") -> dict[str, Any]:
    return {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "creationTimestamp": T0,
            "labels": labels or {}, "annotations": annotations or {}}


def pod(name: str = "p-0", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        group: str = "", priority: int = 0) -> Pod:
    spec: dict[str, Any] = {"schedulerName": "default-scheduler", "priority": priority, "containers": []}
    if group:
        spec["schedulingGroup"] = {"podGroupName": group}
    m = meta(name, labels, annotations)
    m["creationTimestamp"] = "2026-05-01T10:00:05Z"
    return parse_pod({"metadata": m, "spec": spec})


def upstream(name: str = "w", min_count: Any = 4, key: str | None = None, priority: int | None = None,
             annotations: dict[str, str] | None = None, basic: bool = False) -> GroupObject:
    spec: dict[str, Any] = {"schedulingPolicy": {"basic": {}} if basic else {"gang": {"minCount": min_count}}}
    if key is not None:
        spec["schedulingConstraints"] = {"topology": [{"key": key}]}
    if priority is not None:
        spec["priority"] = priority
    return parse_upstream_podgroup({"apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup",
                                    "metadata": meta(name, annotations=annotations), "spec": spec})


def cosched(name: str = "pg", min_member: Any = 3, timeout: Any = None,
            annotations: dict[str, str] | None = None) -> GroupObject:
    spec: dict[str, Any] = {"minMember": min_member}
    if timeout is not None:
        spec["scheduleTimeoutSeconds"] = timeout
    return parse_coscheduling_podgroup({"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
                                        "metadata": meta(name, annotations=annotations), "spec": spec})


def job(name: str = "train", parallelism: Any = 4, completions: Any = None, marked: bool = True,
        labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> GroupObject:
    spec: dict[str, Any] = {"template": {}}
    if parallelism is not None:
        spec["parallelism"] = parallelism
    if completions is not None:
        spec["completions"] = completions
    lab = dict(labels or {})
    if marked:
        lab["topodra.dev/gang"] = "true"
    return parse_job({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(name, lab, annotations),
                      "spec": spec})


def job_labels(name: str = "train", uid: str = "") -> dict[str, str]:
    return {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/controller-uid": uid or f"uid-{name}"}


def spec_of(p: Pod, objs: Any = None, cfg: GangConfig = CFG, levels: tuple[Level, ...] = DEFAULT_LEVELS) -> GangSpec:
    got = gang_of(p, objs if objs is not None else Objs(), cfg, levels)
    assert isinstance(got, GangSpec), got
    return got


# --- sources -------------------------------------------------------------------------------------------------


def test_upstream_podgroup() -> None:
    g = spec_of(pod(group="w", priority=5), Objs(upstream("w", 16, "nvidia.com/gpu.clique", priority=1000)))
    assert g.key == GangKey(NS, "podgroup", "w") and str(g.key) == "ml/w"
    assert (g.size, g.required, g.preferred, g.priority, g.problems) == (16, "clique", None, 1000, ())
    assert g.created == T0_UNIX and g.timeout_seconds == 300.0
    assert g.owner == OwnerRef("scheduling.k8s.io/v1beta1", "PodGroup", NS, "w", "uid-w")


def test_upstream_priority_falls_back_to_the_pod() -> None:
    assert spec_of(pod(group="w", priority=7), Objs(upstream("w"))).priority == 7


def test_upstream_basic_policy_is_not_a_gang() -> None:
    objs = Objs(upstream("w", basic=True))
    assert gang_of(pod(group="w"), objs, CFG, DEFAULT_LEVELS) is None
    # ... and the next sources still speak
    g = spec_of(pod(group="w", annotations={"topodra.dev/gang": "g", "topodra.dev/gang-size": "2"}), objs)
    assert (g.key.source, g.size) == ("annotation", 2)


def test_upstream_podgroup_not_cached_waits() -> None:
    got = gang_of(pod(group="w"), Objs(), CFG, DEFAULT_LEVELS)
    assert isinstance(got, Waiting) and got.key == GangKey(NS, "podgroup", "w") and "ml/w" in got.reason


def test_coscheduling() -> None:
    p = pod(labels={"scheduling.x-k8s.io/pod-group": "pg"})
    g = spec_of(p, Objs(cosched("pg", 3, timeout=45)))
    assert (g.key, g.size, g.timeout_seconds) == (GangKey(NS, "coscheduling", "pg"), 3, 45.0)
    assert g.owner is not None and g.owner.api_version == "scheduling.x-k8s.io/v1alpha1"
    assert spec_of(p, PlainObjs(cosched("pg", 3))).size == 3  # without coscheduling_served: assume served
    assert isinstance(gang_of(p, Objs(), CFG, DEFAULT_LEVELS), Waiting)


def test_coscheduling_label_ignored_when_crd_not_served() -> None:
    p = pod(labels={"scheduling.x-k8s.io/pod-group": "pg"})
    assert gang_of(p, Objs(coscheduling=False), CFG, DEFAULT_LEVELS) is None


@pytest.mark.parametrize(("parallelism", "completions", "size"), [
    (None, None, 1), (4, None, 4), (4, 8, 4), (8, 4, 4), (2, 2, 2),
])
def test_job_size(parallelism: int | None, completions: int | None, size: int) -> None:
    g = spec_of(pod(labels=job_labels()), Objs(job(parallelism=parallelism, completions=completions)))
    assert (g.key, g.size, g.problems) == (GangKey(NS, "job", "train"), size, ())
    assert g.owner == OwnerRef("batch/v1", "Job", NS, "train", "uid-train")


def test_job_older_labels_and_configurable_marker() -> None:
    p = pod(labels={"job-name": "train", "controller-uid": "uid-train"})
    assert spec_of(p, Objs(job())).size == 4
    cfg = GangConfig(job_label="example.com/all-or-nothing", job_label_value="yes")
    marked = job(marked=False, labels={"example.com/all-or-nothing": "yes"})
    assert spec_of(p, Objs(marked), cfg).size == 4
    assert gang_of(p, Objs(job()), cfg, DEFAULT_LEVELS) is None  # the default marker no longer counts


def test_unmarked_job_is_not_a_gang() -> None:
    assert gang_of(pod(labels=job_labels()), Objs(job(marked=False)), CFG, DEFAULT_LEVELS) is None


def test_job_not_cached_or_replaced_waits() -> None:
    got = gang_of(pod(labels=job_labels()), Objs(), CFG, DEFAULT_LEVELS)
    assert isinstance(got, Waiting) and got.key.source == "job"
    got = gang_of(pod(labels=job_labels(uid="uid-new")), Objs(job()), CFG, DEFAULT_LEVELS)
    assert isinstance(got, Waiting) and "uid-new" in got.reason


def test_hand_written_job_name_label_is_not_a_job_link() -> None:
    # Without the controller-uid label that the Job controller sets, the pod must not wait for a Job forever.
    assert gang_of(pod(labels={"job-name": "x"}), Objs(), CFG, DEFAULT_LEVELS) is None


def test_kueue_plain_pod_group() -> None:
    p = pod(labels={"kueue.x-k8s.io/pod-group-name": "kg"}, annotations={"kueue.x-k8s.io/pod-group-total-count": "6"})
    g = spec_of(p)
    assert (g.key, g.size, g.owner, g.problems) == (GangKey(NS, "kueue", "kg"), 6, None, ())
    assert g.created == T0_UNIX + 5  # no object: the pod's age


def test_annotation_gang() -> None:
    g = spec_of(pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "8"}, priority=3))
    assert (g.key, g.size, g.owner, g.priority, g.problems) == (GangKey(NS, "annotation", "a"), 8, None, 3, ())


def test_annotation_names_are_configurable() -> None:
    cfg = GangConfig(name_annotation="x/g", size_annotation="x/n")
    assert spec_of(pod(annotations={"x/g": "a", "x/n": "2"}), cfg=cfg).size == 2
    assert gang_of(pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "2"}), Objs(), cfg,
                   DEFAULT_LEVELS) is None


def test_pod_in_no_gang() -> None:
    assert gang_of(pod(labels={"app": "x"}, annotations={"topodra.dev/topology-required": "rack"}), Objs(), CFG,
                   DEFAULT_LEVELS) is None


# --- precedence ----------------------------------------------------------------------------------------------

ALL_ANNOTATIONS = {"kueue.x-k8s.io/pod-group-total-count": "5", "topodra.dev/gang": "a", "topodra.dev/gang-size": "6"}


@pytest.mark.parametrize(("drop", "source", "size"), [
    ((), "podgroup", 2),
    (("podgroup",), "coscheduling", 3),
    (("podgroup", "coscheduling"), "job", 4),
    (("podgroup", "coscheduling", "job"), "kueue", 5),
    (("podgroup", "coscheduling", "job", "kueue"), "annotation", 6),
])
def test_first_source_wins(drop: tuple[str, ...], source: str, size: int) -> None:
    labels = {"scheduling.x-k8s.io/pod-group": "pg", **job_labels("train"), "kueue.x-k8s.io/pod-group-name": "kg"}
    if "coscheduling" in drop:
        del labels["scheduling.x-k8s.io/pod-group"]
    if "job" in drop:
        labels.update(job_labels("other"))  # a Job that exists but is not marked as a gang
    if "kueue" in drop:
        del labels["kueue.x-k8s.io/pod-group-name"]
    p = pod(labels=labels, annotations=ALL_ANNOTATIONS, group="" if "podgroup" in drop else "w")
    objs = Objs(upstream("w", 2), cosched("pg", 3), job("train", 4), job("other", 9, marked=False))
    g = spec_of(p, objs)
    assert (g.key.source, g.size) == (source, size)


# --- topology ------------------------------------------------------------------------------------------------

LEVELS = (
    Level("zone", ("topology.kubernetes.io/zone",), 1.0),
    Level("rack", ("topology.kubernetes.io/rack", "example.com/rack"), 2.0),
    Level("clique", ("nvidia.com/gpu.clique",), 4.0),
)
GANG = {"topodra.dev/gang": "a", "topodra.dev/gang-size": "2"}


@pytest.mark.parametrize(("annotations", "required", "preferred"), [
    ({"topodra.dev/topology-required": "rack"}, "rack", None),
    ({"topodra.dev/topology-preferred": "clique"}, None, "clique"),
    ({"topodra.dev/topology-required": "zone", "topodra.dev/topology-preferred": "node"}, "zone", "node"),
    ({"topodra.dev/topology-required": "rack", "topodra.dev/topology-preferred": "rack"}, "rack", "rack"),
    ({"kai.scheduler/topology-required-placement": "topology.kubernetes.io/zone"}, "zone", None),
    ({"kai.scheduler/topology-preferred-placement": "example.com/rack"}, None, "rack"),
    ({"kueue.x-k8s.io/podset-required-topology": "nvidia.com/gpu.clique"}, "clique", None),
    ({"kueue.x-k8s.io/podset-preferred-topology": "kubernetes.io/hostname"}, None, "node"),
    ({"kai.scheduler/topology-required-placement": "kubernetes.io/hostname"}, "node", None),
    # several families: levels nest, so the narrowest ask holds them all
    ({"topodra.dev/topology-required": "zone", "kueue.x-k8s.io/podset-required-topology": "example.com/rack"},
     "rack", None),
    ({}, None, None),
])
def test_topology_annotation_families(annotations: dict[str, str], required: str | None,
                                      preferred: str | None) -> None:
    g = spec_of(pod(annotations={**GANG, **annotations}), levels=LEVELS)
    assert (g.required, g.preferred, g.problems) == (required, preferred, ())


def test_upstream_topology_key_maps_to_level() -> None:
    g = spec_of(pod(group="w"), Objs(upstream("w", key="example.com/rack")), levels=LEVELS)
    assert g.required == "rack"
    g = spec_of(pod(group="w"), Objs(upstream("w", key="kubernetes.io/hostname")), levels=LEVELS)
    assert g.required == "node"


def test_default_levels_know_the_contract_labels() -> None:
    for label, level in [("topology.kubernetes.io/zone", "zone"), ("cloud.google.com/gce-topology-block", "block"),
                         ("fabric.topograph.run/tier-0", "rack"), ("network.topology.kubernetes.io/accelerator",
                                                                   "clique")]:
        g = spec_of(pod(annotations={**GANG, "kueue.x-k8s.io/podset-required-topology": label}))
        assert g.required == level, label


def test_object_annotation_beats_pod_annotation() -> None:
    objs = Objs(job(annotations={"topodra.dev/topology-required": "zone", "topodra.dev/gang-timeout-seconds": "60"}))
    p = pod(labels=job_labels(), annotations={"topodra.dev/topology-required": "rack",
                                              "topodra.dev/topology-preferred": "clique",
                                              "topodra.dev/gang-timeout-seconds": "10"})
    g = spec_of(p, objs, levels=LEVELS)
    assert (g.required, g.preferred, g.timeout_seconds) == ("zone", "clique", 60.0)  # preferred: only the pod says
    objs = Objs(cosched(annotations={"kai.scheduler/topology-required-placement": "topology.kubernetes.io/zone"}))
    p = pod(labels={"scheduling.x-k8s.io/pod-group": "pg"},
            annotations={"kai.scheduler/topology-required-placement": "nvidia.com/gpu.clique"})
    assert spec_of(p, objs, levels=LEVELS).required == "zone"


# --- timeouts ------------------------------------------------------------------------------------------------


def test_timeouts() -> None:
    p = pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}, annotations={"topodra.dev/gang-timeout-seconds": "20"})
    assert spec_of(p, Objs(cosched(timeout=90))).timeout_seconds == 90.0  # the PodGroup field first
    assert spec_of(p, Objs(cosched())).timeout_seconds == 20.0  # then the annotation
    assert spec_of(p, Objs(cosched(annotations={"topodra.dev/gang-timeout-seconds": "2.5"}))).timeout_seconds == 2.5
    assert spec_of(pod(annotations=GANG)).timeout_seconds == 300.0  # then the default
    assert spec_of(pod(annotations=GANG), cfg=GangConfig(default_timeout_seconds=42)).timeout_seconds == 42.0


# --- bad values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "objs", "message"), [
    (pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "four"}), Objs(), "'four', not a whole number"),
    (pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "0"}), Objs(), "is 0; a gang needs 1"),
    (pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "-2"}), Objs(), "not a whole number"),
    (pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "9" * 40}), Objs(), "not a whole number"),
    (pod(annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "4294967296"}), Objs(), "a gang needs 1"),
    (pod(annotations={"topodra.dev/gang": "a"}), Objs(), "gang-size on pod ml/p-0 is missing"),
    (pod(annotations={"topodra.dev/gang-size": "3"}), Objs(), "no gang name in topodra.dev/gang"),
    (pod(annotations={"topodra.dev/gang": "", "topodra.dev/gang-size": "3"}), Objs(), "no gang name"),
    (pod(labels={"kueue.x-k8s.io/pod-group-name": "kg"}), Objs(), "pod-group-total-count on pod ml/p-0 is missing"),
    (pod(labels={"kueue.x-k8s.io/pod-group-name": "kg"}, annotations={"kueue.x-k8s.io/pod-group-total-count": "1.5"}),
     Objs(), "not a whole number"),
    (pod(group="w"), Objs(upstream("w", "16")), "minCount is '16', not a whole number"),
    (pod(group="w"), Objs(upstream("w", 0)), "minCount is 0"),
    (pod(group="w"), Objs(upstream("w", None)), "has no minCount"),
    (pod(group="w"), Objs(upstream("w", key="example.com/row")), "no topology level uses"),
    (pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}), Objs(cosched(min_member=0)), "minMember is 0"),
    (pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}), Objs(cosched(min_member=None)), "minMember is not set"),
    (pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}), Objs(cosched(timeout=-5)), "scheduleTimeoutSeconds"),
    (pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}), Objs(cosched(timeout="60")), "scheduleTimeoutSeconds"),
    (pod(labels=job_labels()), Objs(job(parallelism=0)), "is 0; a gang needs 1"),
    (pod(labels=job_labels()), Objs(job(parallelism="4")), "spec.parallelism is '4'"),
    (pod(labels=job_labels()), Objs(job(completions=True)), "spec.completions is True"),
    (pod(annotations={**GANG, "topodra.dev/topology-required": "row"}), Objs(), "'row', not a topology level"),
    (pod(annotations={**GANG, "topodra.dev/topology-preferred": "Rack"}), Objs(), "not a topology level"),
    (pod(annotations={**GANG, "kai.scheduler/topology-required-placement": "rack"}), Objs(), "no topology level uses"),
    (pod(annotations={**GANG, "kueue.x-k8s.io/podset-preferred-topology": "x/y"}), Objs(), "no topology level uses"),
    (pod(annotations={**GANG, "topodra.dev/topology-required": "rack", "topodra.dev/topology-preferred": "zone"}),
     Objs(), "preferred topology 'zone' is wider than required topology 'rack'"),
    (pod(annotations={**GANG, "topodra.dev/topology-required": "node",
                      "kai.scheduler/topology-preferred-placement": "topology.kubernetes.io/zone"}),
     Objs(), "is wider than required"),
    (pod(annotations={**GANG, "topodra.dev/gang-timeout-seconds": "soon"}), Objs(), "'soon', not a number of seconds"),
    (pod(annotations={**GANG, "topodra.dev/gang-timeout-seconds": "0"}), Objs(), "not a number of seconds > 0"),
    (pod(labels=job_labels()), Objs(job(annotations={"topodra.dev/gang-timeout-seconds": "1e9"})),
     "on Job ml/train is '1e9'"),
])
def test_bad_values_become_problems(p: Pod, objs: Objs, message: str) -> None:
    g = spec_of(p, objs)
    assert g.problems, g
    assert any(message in s for s in g.problems), g.problems
    assert g.size >= 1


def test_problems_name_where_the_value_came_from() -> None:
    g = spec_of(pod(annotations={**GANG, "topodra.dev/topology-required": "row"}))
    assert g.problems == ("annotation topodra.dev/topology-required on pod ml/p-0 is 'row', not a topology level "
                          "(levels: zone, block, rack, clique, node)",)


def test_members_disagreeing_on_size() -> None:
    a = spec_of(pod("p-0", annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "4"}, priority=1))
    b = spec_of(pod("p-1", annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "4"}, priority=9))
    c = spec_of(pod("p-2", annotations={"topodra.dev/gang": "a", "topodra.dev/gang-size": "8"}))
    merged = merge_members([("p-0", a), ("p-1", b)])
    assert (merged.size, merged.priority, merged.problems) == (4, 9, ())
    merged = merge_members([("p-0", a), ("p-1", b), ("p-2", c)])
    assert merged.problems == ("members of gang ml/a disagree on size: 4 (pods p-0, p-1); 8 (pod p-2)",)


def test_members_disagreeing_on_topology_and_timeout() -> None:
    a = spec_of(pod("p-0", annotations={**GANG, "topodra.dev/topology-required": "rack"}))
    b = spec_of(pod("p-1", annotations={**GANG, "topodra.dev/gang-timeout-seconds": "5"}))
    problems = merge_members([("p-0", a), ("p-1", b)]).problems
    assert problems == ("members of gang ml/a disagree on required topology: rack (pod p-0); none (pod p-1)",
                        "members of gang ml/a disagree on timeout: 300.0 (pod p-0); 5.0 (pod p-1)")


def test_merge_members_rejects_misuse() -> None:
    a = spec_of(pod(annotations=GANG))
    b = spec_of(pod(annotations={**GANG, "topodra.dev/gang": "b"}))
    with pytest.raises(ValueError, match="several gangs"):
        merge_members([("p-0", a), ("p-1", b)])
    with pytest.raises(ValueError, match="at least one"):
        merge_members([])


# --- parsing -------------------------------------------------------------------------------------------------


def test_pod_fields_for_gangs() -> None:
    p = pod(priority=100)
    assert (p.priority, p.created, p.scheduler_name) == (100, T0_UNIX + 5, "default-scheduler")
    q = parse_pod({"metadata": {"creationTimestamp": "yesterday"}, "spec": {"priority": "high"}})
    assert (q.priority, q.created, q.scheduler_name) == (0, 0.0, "")


# --- never raises --------------------------------------------------------------------------------------------

KEYS = st.sampled_from([
    "scheduling.x-k8s.io/pod-group", "batch.kubernetes.io/job-name", "job-name", "batch.kubernetes.io/controller-uid",
    "controller-uid", "kueue.x-k8s.io/pod-group-name", "kueue.x-k8s.io/pod-group-total-count", "topodra.dev/gang",
    "topodra.dev/gang-size", "topodra.dev/gang-timeout-seconds", "topodra.dev/topology-required",
    "topodra.dev/topology-preferred", "kai.scheduler/topology-required-placement",
    "kai.scheduler/topology-preferred-placement", "kueue.x-k8s.io/podset-required-topology",
    "kueue.x-k8s.io/podset-preferred-topology",
]) | st.text(max_size=12)
VALUES = st.sampled_from(["", "1", "0", "-1", "4", "1.5", "nan", "inf", "1e3", "zone", "rack", "node", "true", "w",
                          "pg", "train", "uid-train", "topology.kubernetes.io/zone", "kubernetes.io/hostname",
                          "9" * 5000]) | st.text(max_size=12)
ANNOTATIONS = st.dictionaries(KEYS, VALUES, max_size=8)
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                       max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(labels=ANNOTATIONS, annotations=ANNOTATIONS, obj_annotations=ANNOTATIONS, group=st.sampled_from(["", "w"]),
       obj_labels=ANNOTATIONS)
def test_gang_of_never_raises(labels: dict[str, str], annotations: dict[str, str], obj_annotations: dict[str, str],
                              group: str, obj_labels: dict[str, str]) -> None:
    objs = Objs(upstream("w", annotations=obj_annotations), cosched(annotations=obj_annotations),
                job(labels=obj_labels, annotations=obj_annotations))
    got = gang_of(pod(labels=labels, annotations=annotations, group=group), objs, CFG, DEFAULT_LEVELS)
    assert got is None or isinstance(got, Waiting | GangSpec)
    if isinstance(got, GangSpec):
        assert got.size >= 1 and got.timeout_seconds > 0
        assert all(isinstance(s, str) and s for s in got.problems)


@settings(max_examples=300, deadline=None)
@given(obj=JSONISH, spec=JSONISH)
def test_parsers_never_raise(obj: Any, spec: Any) -> None:
    for parse in (parse_upstream_podgroup, parse_coscheduling_podgroup, parse_job):
        parse(obj)
        g = parse({"metadata": obj, "spec": spec})
        assert g.size is None or g.size >= 1
        g = parse({"metadata": {}, "spec": {"schedulingPolicy": {"gang": spec}, "minMember": spec,
                                            "scheduleTimeoutSeconds": spec, "parallelism": spec, "completions": spec,
                                            "schedulingConstraints": {"topology": spec}}})
        assert g.size is None or g.size >= 1


# --- real apiserver ------------------------------------------------------------------------------------------

PAUSE = {"name": "c", "image": "registry.k8s.io/pause:3.10"}


def _raw(resp: Any) -> dict[str, Any]:
    import json

    out: dict[str, Any] = json.loads(resp.data)
    return out


def _job_pod(api: Any, namespace: str, job_body: dict[str, Any]) -> tuple[dict[str, Any], Pod]:
    """Create a Job (its pods stay pending: scheduler `nobody`) and return it with its first pod."""
    import time

    from kubernetes import client

    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    job_obj = _raw(batch.create_namespaced_job(namespace, job_body, _preload_content=False))
    name = job_obj["metadata"]["name"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = _raw(core.list_namespaced_pod(namespace, label_selector=f"batch.kubernetes.io/job-name={name}",
                                             _preload_content=False))["items"]
        if pods:
            return job_obj, parse_pod(pods[0])
        time.sleep(0.2)
    raise AssertionError(f"the Job controller made no pods for Job {name}")


def _gang_job(name: str, parallelism: int, completions: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"topodra.dev/gang": "true"},
                         "annotations": {"topodra.dev/topology-required": "rack"}},
            "spec": {"parallelism": parallelism, "completions": completions, "template": {"spec": {
                "restartPolicy": "Never", "schedulerName": "nobody", "containers": [PAUSE]}}}}


@pytest.mark.cluster
def test_real_upstream_podgroup_and_job(gw_cluster: Any, gw_namespace: str) -> None:
    """What a 1.37 apiserver with GenericWorkload stores reads as the sources expect (field names, defaults)."""
    from kubernetes import client

    api, ns = gw_cluster.api_client(), gw_namespace
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    pg = _raw(custom.create_namespaced_custom_object(
        "scheduling.k8s.io", "v1beta1", ns, "podgroups", _preload_content=False, body={
            "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup", "metadata": {"name": "w"},
            "spec": {"schedulingPolicy": {"gang": {"minCount": 3}},
                     "schedulingConstraints": {"topology": [{"key": "nvidia.com/gpu.clique"}]}}}))
    p = parse_pod(_raw(core.create_namespaced_pod(ns, _preload_content=False, body={
        "metadata": {"name": "m-0", "annotations": {"topodra.dev/topology-preferred": "node"}},
        "spec": {"schedulingGroup": {"podGroupName": "w"}, "schedulerName": "nobody", "containers": [PAUSE]}})))
    assert (p.group, p.scheduler_name, p.priority) == ("w", "nobody", 0) and p.created > 0
    parsed = parse_upstream_podgroup(pg)
    g = gang_of(p, PlainObjs(parsed), CFG, DEFAULT_LEVELS)
    assert isinstance(g, GangSpec)
    assert (g.key.source, g.size, g.required, g.preferred, g.problems) == ("podgroup", 3, "clique", "node", ())
    assert g.owner is not None and g.owner.uid == pg["metadata"]["uid"] and g.created == parsed.created > 0

    # WorkloadWithJob gives every Job a PodGroup (basic unless the Job asks for a gang) and links its pods to it:
    # the basic group must not hide the Job marker.
    job_obj, jp = _job_pod(api, ns, _gang_job("train", 2, 4))
    assert jp.group, "WorkloadWithJob did not link the Job's pod to a PodGroup"
    auto = parse_upstream_podgroup(_raw(custom.get_namespaced_custom_object(
        "scheduling.k8s.io", "v1beta1", ns, "podgroups", jp.group, _preload_content=False)))
    assert auto.basic, auto
    g = spec_of(jp, PlainObjs(parse_job(job_obj), auto))
    assert (g.key, g.size, g.required, g.problems) == (GangKey(ns, "job", "train"), 2, "rack", ())


@pytest.mark.cluster
def test_real_coscheduling_podgroup_and_job(cluster: Any, namespace: str) -> None:
    from kubernetes import client

    from topodra_cli.localcluster.crds import install_coscheduling_podgroup

    api = cluster.api_client()
    install_coscheduling_podgroup(api)
    pg = _raw(client.CustomObjectsApi(api).create_namespaced_custom_object(
        "scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", _preload_content=False, body={
            "apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "pg"},
            "spec": {"minMember": 4, "scheduleTimeoutSeconds": 30}}))
    p = replace(pod(labels={"scheduling.x-k8s.io/pod-group": "pg"}), namespace=namespace)
    g = spec_of(p, PlainObjs(parse_coscheduling_podgroup(pg)))
    assert (g.size, g.timeout_seconds, g.problems) == (4, 30.0, ())
    assert g.owner == OwnerRef("scheduling.x-k8s.io/v1alpha1", "PodGroup", namespace, "pg", pg["metadata"]["uid"])

    job_obj, jp = _job_pod(api, namespace, _gang_job("train", 3, 2))
    assert jp.group == ""  # no WorkloadWithJob here
    g = spec_of(jp, PlainObjs(parse_job(job_obj)))
    assert (g.key, g.size, g.required) == (GangKey(namespace, "job", "train"), 2, "rack")
    assert g.owner is not None and g.owner.uid == jp.label("batch.kubernetes.io/controller-uid")
