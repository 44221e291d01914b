"""Prioritize verb: 0..10 per node for alignment quality and topology packing.

Alignment: the share of the pod's GPU-NIC pairs that can sit on one PCIe root (weighted higher) and
on one NUMA node. Packing, per configured level (zone, block, rack, clique by default): a domain that
already holds pods of the same job scores high; otherwise fuller domains score higher than emptier
ones, so big free domains stay whole for big jobs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from scheduler_plugin.claims import Requirements
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import Index
from scheduler_plugin.model import Pod
from scheduler_plugin.wire import MAX_PRIORITY, MIN_PRIORITY


def alignment_quality(fit: Fit, cfg: ExtenderConfig) -> float | None:
    """0..1, or None when the pod has no GPU-NIC pairs (alignment does not apply)."""
    k = fit.pairs_needed
    w = cfg.weights
    if k <= 0 or w.pcie + w.numa <= 0:
        return None
    return (w.pcie * fit.pairs_pcie / k + w.numa * fit.pairs_numa / k) / (w.pcie + w.numa)


def packing_quality(domains: Sequence[str | None], job: Sequence[Counter[str]], free: Sequence[Counter[str]],
                    max_free: Sequence[int], cfg: ExtenderConfig) -> float:
    w = cfg.weights
    total_w = sum(lv.weight for lv in cfg.levels)
    inner = w.same_job + w.keep_whole
    if total_w <= 0 or inner <= 0:
        return 0.0
    acc = 0.0
    for i, lv in enumerate(cfg.levels):
        d = domains[i] if i < len(domains) else None
        if d is None:
            continue
        same = 1.0 if job[i].get(d, 0) > 0 else 0.0
        whole = 1.0 - free[i].get(d, 0) / max_free[i] if max_free[i] > 0 else 0.0
        acc += lv.weight * (w.same_job * same + w.keep_whole * max(0.0, whole)) / inner
    return acc / total_w


def combine(align: float | None, pack: float, cfg: ExtenderConfig) -> float:
    """Raw quality 0..1."""
    wa = cfg.weights.alignment if align is not None else 0.0
    wp = cfg.weights.packing
    if wa + wp <= 0:
        return 0.0
    return (wa * (align or 0.0) + wp * pack) / (wa + wp)


def normalize(raw: Sequence[float]) -> list[int]:
    """Spread the candidates over 0..10 (best 10, worst 0; all equal: 0).

    Only 11 values exist on the wire, and what matters to kube-scheduler is the order among the
    nodes it asks about, so small but real differences (a slightly fuller rack) must not round away.
    """
    if not raw:
        return []
    lo, hi = min(raw), max(raw)
    if hi - lo < 1e-9:
        return [MIN_PRIORITY] * len(raw)
    span = MAX_PRIORITY - MIN_PRIORITY
    return [MIN_PRIORITY + round(span * (r - lo) / (hi - lo)) for r in raw]


TIE_EPSILON = 1e-6


def tie_break(raw: Sequence[float], domains: Sequence[tuple[str | None, ...]]) -> list[float]:
    """Among equally good nodes prefer one domain, the same for every caller.

    kube-scheduler breaks ties at random; pods of a job arriving faster than their bindings show
    would then scatter. A stable preference (the first domain in name order) sends them to the
    same place, and the extender's own hint then keeps the job there.
    """
    order = {d: i for i, d in enumerate(sorted(set(domains), key=lambda t: tuple(x or "" for x in t)))}
    n = max(1, len(order))
    return [r + TIE_EPSILON * (1 - order[d] / n) for r, d in zip(raw, domains, strict=True)]


def run_prioritize(index: Index, cfg: ExtenderConfig, pod: Pod, req: Requirements | None, names: tuple[str, ...],
                   now: float) -> list[tuple[str, int]]:
    index.refresh(now)
    job_key = index.job_of(pod)
    if job_key is None and (req is None or req.empty):
        # Neither devices nor a job: nothing to say about this pod; stay neutral.
        return [(n, MIN_PRIORITY) for n in names]
    job = index.job_domains(job_key, exclude_uid=pod.uid)
    free = index.domain_free
    max_free = [max(c.values(), default=0) for c in free]
    table, shared = (index.fits(req) if req is not None and not req.empty else ({}, True))
    use_align = req is not None and not req.empty and req.align != "none"
    cache: dict[tuple[int, tuple[str | None, ...]], float] = {}
    raw: list[float] = []
    nodes = index.nodes
    for name in names:
        st = nodes.get(name)
        if st is None:
            raw.append(0.0)
            continue
        key = (st.sig if shared else -2 - len(raw), st.domains)
        s = cache.get(key)
        if s is None:
            align = None
            if use_align and req is not None:
                f = index.fit(req, st, table, shared)
                align = alignment_quality(f, cfg) if f.ok else 0.0
            s = cache[key] = combine(align, packing_quality(st.domains, job, free, max_free, cfg), cfg)
        raw.append(s)
    out = list(zip(names, normalize(tie_break(raw, [nodes[n].domains if n in nodes else () for n in names])),
                   strict=True))
    if job_key is not None and out:
        top = max(s for _, s in out)
        best = [n for n, s in out if s == top]
        # Only a guess kube-scheduler is bound to follow at domain level is worth remembering.
        if len({nodes[n].domains for n in best if n in nodes}) == 1:
            index.hint(pod, best[0], now)
    return out
