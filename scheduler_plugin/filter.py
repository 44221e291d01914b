"""Filter verb: keep the nodes where the pod's claims fit with the alignment they require.

Each refused node gets a sentence a person understands. Shortfalls that freeing devices could fix go
to FailedNodes (preemption may help); alignment and constraint refusals go to
FailedAndUnresolvableNodes, as the contract recommends.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress
from operator import not_

from scheduler_plugin.claims import Requirements, Unresolved, resolve
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import NO_DEVICES, FitTable, Index
from scheduler_plugin.model import Pod

PREFIX = "topodra: "
NO_DEVICES_REASON = PREFIX + "no devices published for this node (no ResourceSlice)"


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
    table = index.fits(req)
    out.notes = req.notes + table.notes
    if table.shared:
        _by_signature(index, req, table, names, out)
    else:
        _by_node(index, req, table, names, out)
    if len(out.passed) == 1:
        # kube-scheduler must take this node: count its devices as used until the API shows the allocation.
        node = out.passed[0]
        index.reserve(pod, node, index.fit_exact(req, index.nodes[node]), claim_keys(pod), now)
        index.hint(pod, node, now)
    return out


def _verdict(f: Fit) -> tuple[str, bool]:
    return ("", False) if f.ok else (PREFIX + f.reason, is_shortfall(f.reason))


def _by_signature(index: Index, req: Requirements, table: FitTable, names: tuple[str, ...],
                  out: FilterOutcome) -> None:
    """One verdict per distinct node signature; per node only C-level lookups (map, compress)."""
    sigs = list(map(index.sig_of.get, names))  # None: unknown node
    judge(index, req, table, sigs)
    flags = list(map(table.ok_sigs.__contains__, sigs))
    out.passed = list(compress(names, flags))
    if len(out.passed) < len(names):
        # Refused nodes, still without a Python-level loop per node: split by verdict kind, then zip.
        refused = list(map(not_, flags))
        r_names, r_sigs = list(compress(names, refused)), list(compress(sigs, refused))
        short = list(map(table.short_sigs.__contains__, r_sigs))
        reason = table.reasons.__getitem__
        out.failed = dict(zip(compress(r_names, short), map(reason, compress(r_sigs, short)), strict=True))
        other = list(map(not_, short))
        out.unresolvable = dict(zip(compress(r_names, other), map(reason, compress(r_sigs, other)), strict=True))


def judge(index: Index, req: Requirements, table: FitTable, sigs: Iterable[int | None]) -> None:
    """Fill the table's per-signature verdicts (ok_sigs, reasons, short_sigs) for these signatures."""
    verdicts, ok = table.verdicts, table.ok_sigs
    for sig in set(sigs).difference(verdicts):
        v = verdicts[sig] = ((NO_DEVICES_REASON, False) if sig is None or sig == NO_DEVICES
                             else _verdict(index.fit_sig(req, sig, table)))
        if not v[0]:
            ok.add(sig)
        else:
            table.reasons[sig] = v[0]
            if v[1]:
                table.short_sigs.add(sig)


def _by_node(index: Index, req: Requirements, table: FitTable, names: tuple[str, ...], out: FilterOutcome) -> None:
    """Selectors on per-device identity: every node is judged on its own devices."""
    for name in names:
        st = index.nodes.get(name)
        if st is None or st.total == 0:
            out.unresolvable[name] = NO_DEVICES_REASON
            continue
        reason, short = _verdict(index.fit(req, st, table))
        if not reason:
            out.passed.append(name)
        else:
            (out.failed if short else out.unresolvable)[name] = reason


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
