"""Filter verb: keep the nodes where the pod's claims fit with the alignment they require.

Each refused node gets a sentence a person understands. Shortfalls that freeing devices could fix go
to FailedNodes (preemption may help); alignment and constraint refusals go to
FailedAndUnresolvableNodes, as the contract recommends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler_plugin.claims import Requirements, Unresolved, resolve
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import Index
from scheduler_plugin.model import Pod

PREFIX = "topodra: "
NO_DEVICES = PREFIX + "no devices published for this node (no ResourceSlice)"


@dataclass(slots=True)
class FilterOutcome:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    error: str = ""
    notes: tuple[str, ...] = ()


def is_shortfall(reason: str) -> bool:
    return ", pod needs" in reason


def run_filter(index: Index, cfg: ExtenderConfig, pod: Pod, names: tuple[str, ...], now: float) -> FilterOutcome:
    # The pod is being decided again: whatever we set aside for it earlier no longer holds.
    index.drop_reservation(pod.uid)
    index.refresh(now)
    try:
        req = resolve(pod, index, cfg.alignment)
    except Unresolved as e:
        return FilterOutcome(error=f"{PREFIX}{e}; retry")
    out = FilterOutcome(notes=req.notes)
    if req.empty:
        out.passed = list(names)
        return out
    table, shared = index.fits(req)
    nodes = index.nodes
    last: Fit | None = None
    for name in names:
        st = nodes.get(name)
        if st is None or st.total == 0:
            out.unresolvable[name] = NO_DEVICES
            continue
        f = index.fit(req, st, table, shared)
        if f.ok:
            out.passed.append(name)
            last = f
        elif is_shortfall(f.reason):
            out.failed[name] = PREFIX + f.reason
        else:
            out.unresolvable[name] = PREFIX + f.reason
    if len(out.passed) == 1 and last is not None:
        # kube-scheduler must take this node: count its devices as used until the API shows the allocation.
        index.reserve(pod, out.passed[0], last, claim_keys(pod), now)
        index.hint(pod, out.passed[0], now)
    return out


def claim_keys(pod: Pod) -> list[tuple[str, str]]:
    generated = dict(pod.claim_statuses)
    out = []
    for ref in pod.claims:
        name = ref.claim_name or generated.get(ref.name)
        if name:
            out.append((pod.namespace, name))
    return out


def requirements_or_none(index: Index, cfg: ExtenderConfig, pod: Pod) -> Requirements | None:
    try:
        return resolve(pod, index, cfg.alignment)
    except Unresolved:
        return None
