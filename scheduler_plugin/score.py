"""Prioritize verb: 0..10 per node for alignment quality and topology packing.

Alignment: the share of the pod's GPU-NIC pairs that can sit on one PCIe root (weighted higher) and
on one NUMA node. Packing, per configured level (zone, block, rack, clique by default): a domain that
already holds pods of the same job scores high; otherwise fuller domains score higher than emptier
ones, so big free domains stay whole for big jobs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import add

from scheduler_plugin.claims import Requirements
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import NO_DEVICES, FitTable, Index, JobKey
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


# kube-scheduler breaks ties at random; pods of a job arriving faster than their bindings show would then
# scatter. A stable preference among equally good domains (the first in name order) sends them to the same
# place, and the extender's own hint then keeps the job there.
TIE_EPSILON = 1e-6


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
    wa, wp = cfg.weights.alignment, cfg.weights.packing
    use_align = req is not None and not req.empty and req.align != "none" and wa > 0
    table = index.fits(req) if use_align and req is not None else None

    if table is not None and req is not None and not table.shared:
        return _prioritize_by_node(index, cfg, pod, req, table, names, job, free, max_free, now, job_key)
    # Per node only C-level lookups (map, set); the scoring itself runs once per distinct
    # (signature, domains) pair, so nodes of the same shape in the same rack cost one evaluation.
    nks = list(map(index.nk_of.get, names))  # None: unknown node
    pairs = index.nk_list
    uniq = set(nks)
    uniq.discard(None)
    doms = list({pairs[k][1] for k in uniq if k is not None})
    packing = packing_by_domain(doms, index.dom_list, job, free, max_free, cfg)
    # Among equals prefer one domain for every caller (TIE_EPSILON), folded into the packing term.
    rank = index.dom_rank()
    for d in doms:
        packing[d] += TIE_EPSILON * (1 - rank[d])
    raw_of: dict[int | None, float] = {None: 0.0}
    if table is None or req is None:
        for k in uniq:
            assert k is not None
            raw_of[k] = packing[pairs[k][1]]
    else:
        align = table.align
        for k in uniq:
            assert k is not None
            sig, d = pairs[k]
            a = align.get(sig)
            if a is None:
                a = align_of(index, cfg, req, table, sig)
            raw_of[k] = (a[0] + wp * packing[d]) / a[1]
    score_of = normalize_map(raw_of)
    scores = list(map(score_of.__getitem__, nks))
    if job_key is not None and scores:
        top = max(scores)
        best = {pairs[k][1] for k in uniq if k is not None and score_of[k] == top}
        # Only a guess kube-scheduler is bound to follow at domain level is worth remembering.
        if len(best) == 1:
            index.hint(pod, names[scores.index(top)], now)
    return list(zip(names, scores, strict=True))


def align_of(index: Index, cfg: ExtenderConfig, req: Requirements, table: FitTable, sig: int) -> tuple[float, float]:
    """(weighted alignment, weight of alignment + packing) of a node signature, memoised on the table."""
    a = table.align.get(sig)
    if a is None:
        a = table.align[sig] = (0.0, max(cfg.weights.packing, 1e-12)) if sig == NO_DEVICES else \
            align_from_fit(cfg, index.fit_sig(req, sig, table))
    return a


def align_from_fit(cfg: ExtenderConfig, f: Fit) -> tuple[float, float]:
    c, w = _align_term(f, cfg)
    return (c, max(w + cfg.weights.packing, 1e-12))


def normalize_map(raw: dict[int | None, float]) -> dict[int | None, int]:
    """`normalize` over the distinct values (unknown nodes, key None, always get the minimum)."""
    keys = [k for k in raw if k is not None]
    out: dict[int | None, int] = dict(zip(keys, normalize([raw[k] for k in keys]), strict=True))
    out[None] = MIN_PRIORITY
    return out


def _prioritize_by_node(index: Index, cfg: ExtenderConfig, pod: Pod, req: Requirements, table: FitTable,
                        names: tuple[str, ...], job: Sequence[Counter[str]], free: Sequence[Counter[str]],
                        max_free: Sequence[int], now: float, job_key: JobKey | None) -> list[tuple[str, int]]:
    """Selectors on per-device identity: every node is judged on its own devices (slow path)."""
    wp = cfg.weights.packing
    doms = [index.dom_of.get(n) for n in names]
    packing = packing_by_domain([d for d in set(doms) if d is not None], index.dom_list, job, free, max_free, cfg)
    raw = []
    for n, d in zip(names, doms, strict=True):
        st = index.nodes.get(n)
        c, w = (0.0, 0.0) if st is None else _align_term(index.fit(req, st, table), cfg)
        raw.append((c + wp * (packing[d] if d is not None else 0.0)) / max(w + wp, 1e-12))
    return list(zip(names, normalize(raw), strict=True))


def packing_by_domain(doms: Sequence[int], dom_list: Sequence[tuple[str | None, ...]], job: Sequence[Counter[str]],
                      free: Sequence[Counter[str]], max_free: Sequence[int],
                      cfg: ExtenderConfig) -> dict[int | None, float]:
    """packing_quality for many domain tuples: each (level, domain) term is computed once."""
    w = cfg.weights
    total_w = sum(lv.weight for lv in cfg.levels)
    inner = w.same_job + w.keep_whole
    if total_w <= 0 or inner <= 0:
        return {d: 0.0 for d in doms}
    tuples = [dom_list[d] for d in doms]
    cols = list(zip(*tuples, strict=True)) if tuples else []  # per level: each tuple's domain at that level
    acc: list[float] = [0.0] * len(doms)
    sj, kw = w.same_job, w.keep_whole
    for i, lv in enumerate(cfg.levels):
        f = lv.weight / inner / total_w
        jc, fc = job[i], free[i]
        inv = 1.0 / max_free[i] if max_free[i] > 0 else 0.0
        col = cols[i] if i < len(cols) else ()
        values = set(col)
        values.discard(None)
        level: dict[str | None, float]
        if inv:
            level = {d: f * (sj * (jc.get(d, 0) > 0) + kw * max(0.0, 1.0 - fc.get(d, 0) * inv)) for d in values}
        else:
            level = {d: f * sj * (jc.get(d, 0) > 0) for d in values}
        level[None] = 0.0
        # Summed level by level in the same order as before: the same floats, per level one C-level map.
        acc = list(map(add, acc, map(level.__getitem__, col))) if i else list(map(level.__getitem__, col))
    return dict(zip(doms, acc, strict=True))


def _align_term(f: Fit, cfg: ExtenderConfig) -> tuple[float, float]:
    """(weighted alignment, its weight); (0, 0) when alignment does not apply to this pod."""
    if not f.ok:
        return (0.0, cfg.weights.alignment)
    q = alignment_quality(f, cfg)
    return (0.0, 0.0) if q is None else (cfg.weights.alignment * q, cfg.weights.alignment)
