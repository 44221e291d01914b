"""Choose the best node for one pending pod from the extender's own cache.

kube-scheduler tries a pod's nominated node first and, when it passes, filters no other node (contract part 2
§7). Planning here, over every node at once and by node signature (nodes of the same shape are judged once),
is what lets topodra steer a pod to its best node without kube-scheduler running the DRA filter on every node.

The choice is the node kube-scheduler would pick with the extender's scores if it looked at every node:
the best prioritize score; among equals, the fullest node that still fits (keeps empty nodes whole), then
name order, so consecutive pods of a job fill the same place.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from itertools import compress

from scheduler_plugin.claims import Requirements
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.filter import judge
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import NO_DEVICES, Index
from scheduler_plugin.model import Placement, Pod
from scheduler_plugin.nodefit import admits
from scheduler_plugin.score import TIE_EPSILON, align_of, packing_by_domain

MAX_PLACEMENTS = 256  # distinct node constraints whose eligible-node lists are kept


@dataclass(frozen=True, slots=True)
class Choice:
    node: str
    fit: Fit  # on the node's own device order: its witness names the devices to set aside


@dataclass(frozen=True, slots=True)
class NoChoice:
    reason: str


class Planner:
    """Single-pod placement over the whole cache. Pure over the index, apart from its own memo."""

    def __init__(self, index: Index, cfg: ExtenderConfig) -> None:
        self.index = index
        self.cfg = cfg
        self._eligible: dict[Placement, tuple[int, tuple[str, ...]]] = {}

    def eligible(self, placement: Placement) -> tuple[str, ...]:
        """Nodes (name order) that accept the pod apart from devices; recomputed when Node objects change."""
        ix = self.index
        got = self._eligible.get(placement)
        if got is not None and got[0] == ix.node_gen:
            return got[1]
        names = tuple(sorted(n for n, st in ix.nodes.items() if st.node is not None and not admits(st.node, placement)))
        if len(self._eligible) >= MAX_PLACEMENTS:
            self._eligible.clear()
        self._eligible[placement] = (ix.node_gen, names)
        return names

    def best_node(self, pod: Pod, req: Requirements, exclude: Collection[str] = ()) -> Choice | NoChoice:
        ix = self.index
        names = self.eligible(pod.placement)
        if exclude:
            names = tuple(n for n in names if n not in exclude)
        if not names:
            return NoChoice("no node accepts the pod's node selector, affinity and tolerations")
        table = ix.fits(req)
        if table.shared:
            sigs = list(map(ix.sig_of.get, names))
            judge(ix, req, table, sigs)
            ok = list(compress(names, map(table.ok_sigs.__contains__, sigs)))
        else:
            ok = [n for n in names if (st := ix.nodes.get(n)) is not None and st.total
                  and ix.fit(req, st, table).ok]
        if not ok:
            return NoChoice(_why_none(ix, req, names))
        node = self._best(pod, req, ok)
        st = ix.nodes[node]
        return Choice(node, ix.fit_exact(req, st))

    def _best(self, pod: Pod, req: Requirements, ok: list[str]) -> str:
        ix, cfg = self.index, self.cfg
        table = ix.fits(req)
        job = ix.job_domains(ix.job_of(pod), exclude_uid=pod.uid)
        free = ix.domain_free
        max_free = [max(c.values(), default=0) for c in free]
        nks = list(map(ix.nk_of.get, ok))
        pairs = ix.nk_list
        uniq = {k for k in nks if k is not None}
        doms = list({pairs[k][1] for k in uniq})
        packing = packing_by_domain(doms, ix.dom_list, job, free, max_free, cfg)
        rank = ix.dom_rank()
        wp = cfg.weights.packing
        # As run_prioritize: alignment counts only for pods that do not turn it off.
        use_align = table.shared and req.align != "none" and cfg.weights.alignment > 0
        raw: dict[int, float] = {}
        for k in uniq:
            sig, d = pairs[k]
            p = packing[d] + TIE_EPSILON * (1 - rank[d])
            if use_align and sig != NO_DEVICES:
                a = align_of(ix, cfg, req, table, sig)
                raw[k] = (a[0] + wp * p) / a[1]
            else:
                raw[k] = p
        top = max(raw.values())
        best = {k for k, v in raw.items() if v >= top - 1e-12}
        cands: Iterable[str] = compress(ok, (k in best for k in nks))
        nodes = ix.nodes
        return min(cands, key=lambda n: (nodes[n].free_gpus, n))


def _why_none(ix: Index, req: Requirements, names: tuple[str, ...]) -> str:
    """One representative reason: the most common refusal among the nodes' signatures."""
    table = ix.fits(req)
    counts: dict[str, int] = {}
    for n in names:
        sig = ix.sig_of.get(n)
        reason = table.reasons.get(sig, "no devices published") if table.shared else "does not fit"
        counts[reason] = counts.get(reason, 0) + 1
    reason, count = max(counts.items(), key=lambda kv: kv[1])
    return f"no node fits ({count} of {len(names)}: {reason.removeprefix('topodra: ')})"
