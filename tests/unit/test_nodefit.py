"""nodefit.admits: the node checks the planner makes before nominating (cordon, taints, nodeSelector, affinity),
judged on Node and Pod objects parsed from the dicts the apiserver returns."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_plugin.model import Node, Placement, parse_node, parse_pod
from scheduler_plugin.nodefit import admits
from tests.unit.test_extender_support import node_obj, pod


def _node(taints: list[dict[str, str]] | None = None, cordoned: bool = False, **labels: str) -> Node:
    obj = node_obj("n", **labels)
    obj["spec"] = {"unschedulable": cordoned, "taints": taints or []}
    return parse_node(obj)


def _placement(**spec: Any) -> Placement:
    obj = pod("p")
    obj["spec"].update(spec)
    return parse_pod(obj).placement


def _terms(*terms: list[tuple[str, str, list[str]]]) -> dict[str, Any]:
    sel = [{"matchExpressions": [{"key": k, "operator": op, "values": v} for k, op, v in t]} for t in terms]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": sel}}}


def test_plain_pod_on_plain_node() -> None:
    assert admits(_node(), _placement()) == ""


def test_cordon_refuses_unless_tolerated() -> None:
    node = _node(cordoned=True)
    assert admits(node, _placement()) == "node is cordoned"
    tol = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
    assert admits(node, _placement(tolerations=[tol])) == ""
    # Tolerating every taint (empty key, Exists) also tolerates the cordon, as kube-scheduler's NodeUnschedulable.
    assert admits(node, _placement(tolerations=[{"operator": "Exists"}])) == ""
    # A toleration of another effect does not.
    tol_exec = {**tol, "effect": "NoExecute"}
    assert admits(node, _placement(tolerations=[tol_exec])) == "node is cordoned"


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_blocking_taint_effects(effect: str) -> None:
    node = _node(taints=[{"key": "gpu", "value": "h100", "effect": effect}])
    assert admits(node, _placement()) == f"taint gpu=h100:{effect} not tolerated"
    # Equal: key and value must both match; an empty toleration effect matches every effect.
    assert admits(node, _placement(tolerations=[{"key": "gpu", "operator": "Equal", "value": "h100"}])) == ""
    assert admits(node, _placement(tolerations=[{"key": "gpu", "value": "h100"}])) == ""  # Equal is the default
    assert admits(node, _placement(tolerations=[{"key": "gpu", "operator": "Equal", "value": "a100"}])) != ""
    # Exists with a key: any value of that key.
    assert admits(node, _placement(tolerations=[{"key": "gpu", "operator": "Exists"}])) == ""
    assert admits(node, _placement(tolerations=[{"key": "other", "operator": "Exists"}])) != ""
    # A toleration for the other blocking effect does not help.
    other = "NoExecute" if effect == "NoSchedule" else "NoSchedule"
    assert admits(node, _placement(tolerations=[{"key": "gpu", "operator": "Exists", "effect": other}])) != ""
    assert admits(node, _placement(tolerations=[{"key": "gpu", "operator": "Exists", "effect": effect}])) == ""


def test_prefer_no_schedule_does_not_block() -> None:
    node = _node(taints=[{"key": "soft", "value": "", "effect": "PreferNoSchedule"}])
    assert admits(node, _placement()) == ""


def test_every_taint_must_be_tolerated() -> None:
    node = _node(taints=[{"key": "a", "value": "1", "effect": "NoSchedule"},
                         {"key": "b", "value": "2", "effect": "NoSchedule"}])
    assert admits(node, _placement(tolerations=[{"key": "a", "operator": "Exists"}])) == \
        "taint b=2:NoSchedule not tolerated"
    both = [{"key": "a", "operator": "Exists"}, {"key": "b", "value": "2"}]
    assert admits(node, _placement(tolerations=both)) == ""


def test_node_selector_needs_every_label() -> None:
    node = _node(rack="r1", zone="z1")
    assert admits(node, _placement(nodeSelector={"rack": "r1"})) == ""
    assert admits(node, _placement(nodeSelector={"rack": "r1", "zone": "z1"})) == ""
    assert admits(node, _placement(nodeSelector={"rack": "r2"})) == "nodeSelector rack=r2 does not match"
    assert admits(node, _placement(nodeSelector={"missing": "x"})) == "nodeSelector missing=x does not match"


@pytest.mark.parametrize(("expr", "ok"), [
    (("rack", "In", ["r1", "r2"]), True),
    (("rack", "In", ["r3"]), False),
    (("absent", "In", ["r1"]), False),
    (("rack", "NotIn", ["r3"]), True),
    (("rack", "NotIn", ["r1"]), False),
    (("absent", "NotIn", ["r1"]), True),  # a missing label is "not in"
    (("rack", "Exists", []), True),
    (("absent", "Exists", []), False),
    (("rack", "DoesNotExist", []), False),
    (("absent", "DoesNotExist", []), True),
    (("gen", "Gt", ["8"]), True),
    (("gen", "Gt", ["9"]), False),
    (("gen", "Lt", ["10"]), True),
    (("gen", "Lt", ["9"]), False),
    (("rack", "Gt", ["1"]), False),  # not an integer label
    (("gen", "Gt", ["x"]), False),  # not an integer value
    (("gen", "Gt", ["1", "2"]), False),  # Gt takes exactly one value
    (("absent", "Gt", ["1"]), False),
    (("rack", "Bogus", ["r1"]), False),
])
def test_affinity_operators(expr: tuple[str, str, list[str]], ok: bool) -> None:
    node = _node(rack="r1", gen="9")
    got = admits(node, _placement(affinity=_terms([expr])))
    assert (got == "") is ok, got
    if not ok:
        assert got == "required node affinity does not match"


def test_affinity_expressions_and_terms() -> None:
    node = _node(rack="r1", zone="z1")
    # Expressions of a term are ANDed ...
    assert admits(node, _placement(affinity=_terms([("rack", "In", ["r1"]), ("zone", "In", ["z2"])]))) != ""
    assert admits(node, _placement(affinity=_terms([("rack", "In", ["r1"]), ("zone", "In", ["z1"])]))) == ""
    # ... terms are ORed.
    assert admits(node, _placement(affinity=_terms([("zone", "In", ["z2"])], [("rack", "In", ["r1"])]))) == ""


def test_empty_term_matches_no_node() -> None:
    node = _node(rack="r1")
    assert admits(node, _placement(affinity=_terms([]))) == "required node affinity does not match"
    # An empty term next to a matching one: the other term still admits.
    assert admits(node, _placement(affinity=_terms([], [("rack", "Exists", [])]))) == ""


def test_selector_and_affinity_both_apply() -> None:
    node = _node(rack="r1")
    p = _placement(nodeSelector={"rack": "r1"}, affinity=_terms([("rack", "NotIn", ["r1"])]))
    assert admits(node, p) == "required node affinity does not match"


def test_checks_come_in_order_cordon_taint_selector() -> None:
    node = _node(taints=[{"key": "t", "value": "", "effect": "NoSchedule"}], cordoned=True)
    assert admits(node, _placement(nodeSelector={"x": "y"})) == "node is cordoned"
    tol = [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]
    assert admits(node, _placement(nodeSelector={"x": "y"}, tolerations=tol)) == "taint t=:NoSchedule not tolerated"


def _fields(op: str, names: list[str], key: str = "metadata.name", **exprs: str) -> dict[str, Any]:
    term: dict[str, Any] = {"matchFields": [{"key": key, "operator": op, "values": names}]}
    if exprs:
        term["matchExpressions"] = [{"key": k, "operator": "In", "values": [v]} for k, v in exprs.items()]
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


def test_match_fields_on_the_node_name_are_evaluated() -> None:
    """DaemonSet-style pods (and users' pins) name their node by matchFields metadata.name; the planner
    honours it instead of leaving the pod to kube-scheduler (a gang of such pods was never placed)."""
    node = _node(rack="r1")  # named "n"
    p = _placement(affinity=_fields("In", ["n"]))
    assert not p.opaque and admits(node, p) == ""
    assert admits(node, _placement(affinity=_fields("In", ["other"]))) == "required node affinity does not match"
    assert admits(node, _placement(affinity=_fields("NotIn", ["n"]))) == "required node affinity does not match"
    assert admits(node, _placement(affinity=_fields("NotIn", ["other"]))) == ""
    # Fields and expressions of one term are ANDed.
    assert admits(node, _placement(affinity=_fields("In", ["n"], rack="r2"))) != ""
    assert admits(node, _placement(affinity=_fields("In", ["n"], rack="r1"))) == ""


def test_other_match_fields_stay_opaque() -> None:
    assert _placement(affinity=_fields("In", ["x"], key="metadata.uid")).opaque
