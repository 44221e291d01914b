"""Does a node accept a pod apart from devices: cordon, taints, nodeSelector, required node affinity
(matchExpressions, and matchFields on metadata.name).

The planner chooses a node for a pod before kube-scheduler looks at it; a node the in-tree filters would
refuse is a wasted nomination (kube-scheduler then filters the whole cluster). These are the checks that
decide most placements; pods with constraints outside them (`Placement.opaque`) are not planned at all.
CPU and memory are not checked: DRA pods of this kind are bounded by devices, and a nomination that fails
costs one normal scheduling pass, never a wrong placement.
"""

from __future__ import annotations

from scheduler_plugin.model import Node, NodeTerm, Placement, Taint, Toleration

_BLOCKING = ("NoSchedule", "NoExecute")


def admits(node: Node, p: Placement) -> str:
    """"" when the node accepts the pod, else the reason (a short phrase)."""
    if node.unschedulable and not _tolerated(Taint("node.kubernetes.io/unschedulable", "", "NoSchedule"),
                                             p.tolerations):
        return "node is cordoned"
    for t in node.taints:
        if t.effect in _BLOCKING and not _tolerated(t, p.tolerations):
            return f"taint {t.key}={t.value}:{t.effect} not tolerated"
    if p.node_selector:
        labels = dict(node.labels)
        for k, v in p.node_selector:
            if labels.get(k) != v:
                return f"nodeSelector {k}={v} does not match"
    if p.terms and not any(_term(node, t) for t in p.terms):
        return "required node affinity does not match"
    return ""


def _tolerated(t: Taint, tolerations: tuple[Toleration, ...]) -> bool:
    for tol in tolerations:
        if tol.effect and tol.effect != t.effect:
            continue
        if tol.operator == "Exists":
            if not tol.key or tol.key == t.key:
                return True
        elif tol.key == t.key and tol.value == t.value:
            return True
    return False


def _term(node: Node, term: NodeTerm) -> bool:
    if not term.expressions and not term.names:
        return False  # an empty term matches no node
    for op, names in term.names:  # matchFields on metadata.name (others make the pod opaque)
        if (node.name in names) != (op == "In"):
            return False
    labels = dict(node.labels)
    for key, op, values in term.expressions:
        have = labels.get(key)
        if op == "In":
            ok = have is not None and have in values
        elif op == "NotIn":
            ok = have is None or have not in values
        elif op == "Exists":
            ok = have is not None
        elif op == "DoesNotExist":
            ok = have is None
        elif op in ("Gt", "Lt"):
            try:
                ok = have is not None and len(values) == 1 and (
                    int(have) > int(values[0]) if op == "Gt" else int(have) < int(values[0]))
            except ValueError:
                ok = False
        else:
            ok = False
        if not ok:
            return False
    return True
