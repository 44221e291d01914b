"""The fast path of filter and prioritize: per node-list state kept across calls, patched as nodes change.

kube-scheduler sends the same node list call after call (every node, with percentageOfNodesToScore 100).
A *view* is one such list: the names in request order and, per position, the node's signature and domain
tuple and its piece of the JSON reply. Per set of pod requirements (one `FitTable`) a view keeps every
position's filter verdict and prioritize group. When nodes change (`Index.change_log`) only their positions
are patched, so a call costs one comparison of the name list, work in the number of changed nodes, and
joining prebuilt byte strings, instead of a dictionary lookup or two per node.

A list is given a view the second time it is seen (a list seen once costs the same as before: the
reference path in filter.py and score.py). The answers are those of `run_filter` and `run_prioritize`,
byte for byte (tests/unit/test_extender_views.py checks this after random changes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, islice, repeat
from operator import add, eq, mul

import orjson

from scheduler_plugin.claims import Requirements, Unresolved, resolve
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.filter import claim_keys, judge, run_filter
from scheduler_plugin.fit import Fit
from scheduler_plugin.index import NO_DEVICES, FitTable, Index
from scheduler_plugin.model import Pod
from scheduler_plugin.score import TIE_EPSILON, align_from_fit, normalize_map, packing_by_domain, run_prioritize
from scheduler_plugin.wire import MAX_PRIORITY, MIN_PRIORITY, filter_result, priority_list

MAX_VIEWS = 4  # distinct node lists kept
MAX_SEEN = 8  # fingerprints of lists seen once (a view is made on the second sighting)
MAX_STATES = 8  # per view: pod requirements kept (filter and prioritize each); bounds memory
GROUP = 1 << 32  # prioritize group key: alignment-term id * GROUP + domain-tuple id

PASSED, FAILED, UNRESOLVABLE = 0, 1, 2
_SCORE_TAIL = {s: f"{s}}}".encode() for s in range(MIN_PRIORITY, MAX_PRIORITY + 1)}


class NodeView:
    """One node list: per position the node's signature and domain tuple, patched from the change log."""

    def __init__(self, names: tuple[str, ...], index: Index) -> None:
        self.names = names
        self.pos = dict(zip(names, range(len(names)), strict=True))
        # Copied to exact-size objects: orjson's result keeps its 4 KiB output buffer (the cache's size per
        # node count is in docs/benchmarks-extender.md).
        self.name_json: list[bytes] = [bytes(memoryview(j)) for j in map(orjson.dumps, names)]
        self._pieces: list[bytes] | None = None  # per node '{"Host":"name","Score":' then its score's '7}'
        self.filter_states: dict[FitTable, FilterState] = {}
        self.prio_states: dict[FitTable, PrioState] = {}
        self.zero_body: bytes | None = None
        self.gen = 0
        self.sig: list[int | None] = []
        self.dom: list[int | None] = []
        self.dom_count: Counter[int] = Counter()
        self.log: list[int] = []  # positions whose signature or domain changed, in order (per gen)
        self.epoch = index.epoch
        self.seen = 0
        self.rebuild(index)

    def rebuild(self, index: Index) -> None:
        self.gen += 1
        self.epoch = index.epoch
        self.seen = index.change_base + len(index.change_log)
        self.sig = list(map(index.sig_of.get, self.names))  # None: unknown node
        self.dom = list(map(index.dom_of.get, self.names))
        self.dom_count = Counter(self.dom)  # type: ignore[arg-type]
        self.dom_count.pop(None, None)  # type: ignore[call-overload]
        self.log = []

    def sync(self, index: Index) -> None:
        end = index.change_base + len(index.change_log)
        if self.epoch != index.epoch or self.seen < index.change_base or len(self.log) > len(self.names) + 4096:
            self.rebuild(index)
            return
        if self.seen == end:
            return
        sig_of, dom_of, pos, sig, dom, dc = index.sig_of, index.dom_of, self.pos, self.sig, self.dom, self.dom_count
        for name in index.change_log[self.seen - index.change_base:]:
            p = pos.get(name)
            if p is None:
                continue
            s, d = sig_of.get(name), dom_of.get(name)
            if s == sig[p] and d == dom[p]:
                continue
            od = dom[p]
            if od != d:
                if od is not None:
                    dc[od] -= 1
                    if dc[od] <= 0:
                        del dc[od]
                if d is not None:
                    dc[d] += 1
            sig[p], dom[p] = s, d
            self.log.append(p)
        self.seen = end

    # ---- filter -----------------------------------------------------------------------------------
    def filter_state(self, index: Index, req: Requirements, table: FitTable) -> FilterState:
        st = self.filter_states.get(table)
        if st is None:
            if len(self.filter_states) >= MAX_STATES:
                del self.filter_states[next(iter(self.filter_states))]
            st = self.filter_states[table] = FilterState(self, index, req, table)
        else:
            st.sync(self, index, req, table)
        return st

    # ---- prioritize -------------------------------------------------------------------------------
    def prio_state(self, index: Index, cfg: ExtenderConfig, req: Requirements, table: FitTable) -> PrioState:
        st = self.prio_states.get(table)
        if st is None:
            if len(self.prio_states) >= MAX_STATES:
                del self.prio_states[next(iter(self.prio_states))]
            st = self.prio_states[table] = PrioState(self, index, cfg, req, table)
        else:
            st.sync(self, index, cfg, req, table)
        return st

    def priority_body(self, scores: Sequence[int]) -> bytes:
        """`priority_list(zip(names, scores))`: prebuilt per-node pieces interleaved with one shared piece
        per score value, so a reply allocates no per-node bytes: one slice assignment and one join."""
        if self._pieces is None:
            heads = map(bytes.__add__, map(b'{"Host":'.__add__, self.name_json), repeat(b',"Score":'))
            pieces: list[bytes] = [b""] * (2 * len(self.names))
            pieces[0::2] = [b"[" + h if i == 0 else b"," + h for i, h in enumerate(heads)]
            self._pieces = pieces
        self._pieces[1::2] = map(_SCORE_TAIL.__getitem__, scores)
        return b"".join(self._pieces) + b"]"

    def zero(self) -> bytes:
        if self.zero_body is None:
            self.zero_body = priority_list([(n, MIN_PRIORITY) for n in self.names])
        return self.zero_body


class FilterState:
    """Per position of a view: the filter verdict for one set of requirements and its piece of the reply."""

    def __init__(self, view: NodeView, index: Index, req: Requirements, table: FitTable) -> None:
        self.gen = -1
        self.at = 0
        self.cat: list[int] = []
        self.frag: list[bytes] = []  # '"name"' (passed) or '"name":"reason"' (refused)
        self.flags: list[list[bool]] = []
        self.counts = [0, 0, 0]
        self.body: bytes | None = None
        self._tails: dict[int | None, bytes] = {}
        self._cats: dict[int | None, int] = {}
        self.build(view, index, req, table)

    def _judged(self, table: FitTable, sig: int | None) -> tuple[int, bytes]:
        c = self._cats.get(sig)
        if c is None:
            if sig in table.ok_sigs:
                c, tail = PASSED, b""
            else:
                c = FAILED if sig in table.short_sigs else UNRESOLVABLE
                tail = b":" + orjson.dumps(table.reasons[sig])
            self._cats[sig], self._tails[sig] = c, tail
        return c, self._tails[sig]

    def build(self, view: NodeView, index: Index, req: Requirements, table: FitTable) -> None:
        self.gen, self.at, self.body = view.gen, len(view.log), None
        judge(index, req, table, view.sig)
        for s in set(view.sig):
            self._judged(table, s)
        self.cat = list(map(self._cats.__getitem__, view.sig))
        self.frag = list(map(bytes.__add__, view.name_json, map(self._tails.__getitem__, view.sig)))
        self.flags = [list(map(eq, self.cat, repeat(c))) for c in (PASSED, FAILED, UNRESOLVABLE)]
        self.counts = [f.count(True) for f in self.flags]

    def sync(self, view: NodeView, index: Index, req: Requirements, table: FitTable) -> None:
        if self.gen != view.gen:
            self.build(view, index, req, table)
            return
        if self.at == len(view.log):
            return
        changed = set(view.log[self.at:])
        self.at = len(view.log)
        sig = view.sig
        judge(index, req, table, [sig[p] for p in changed])
        for p in changed:
            c, tail = self._judged(table, sig[p])
            old = self.cat[p]
            if c != old:
                self.flags[old][p] = False
                self.flags[c][p] = True
                self.counts[old] -= 1
                self.counts[c] += 1
                self.cat[p] = c
            self.frag[p] = view.name_json[p] + tail
        self.body = None

    def reply(self) -> bytes:
        """Byte for byte `filter_result(passed, failed, unresolvable)` in request order."""
        if self.body is None:
            f, j = self.frag, b",".join
            self.body = b"".join((
                b'{"Nodes":null,"NodeNames":[', j(compress(f, self.flags[PASSED])),
                b'],"FailedNodes":{', j(compress(f, self.flags[FAILED])),
                b'},"FailedAndUnresolvableNodes":{', j(compress(f, self.flags[UNRESOLVABLE])),
                b'},"Error":""}',
            ))
        return self.body


class PrioState:
    """Per position of a view: the node's scoring group (alignment term, domain tuple) for one set of
    requirements; nodes in one group get one raw score, computed once per call.

    The alignment term is derived once per Fit (nodes of one shape share a Fit object, held by the
    table), so building a state is C-level lookups per node: signature -> Fit -> term id."""

    def __init__(self, view: NodeView, index: Index, cfg: ExtenderConfig, req: Requirements,
                 table: FitTable) -> None:
        self.gen = -1
        self.at = 0
        self.terms: list[tuple[float, float]] = []
        self._term_ids: dict[tuple[float, float], int] = {}
        self._fit_aid: dict[int, int] = {}  # id of a Fit (kept alive by the table, or _no_devices) -> term id
        self._no_devices = Fit(False)  # stands in for NO_DEVICES, whose alignment term is (0, 0)
        self._shapes = 0  # table.by_shape values already learnt (by_shape only grows)
        self.group: list[int | None] = []
        self.count: Counter[int] = Counter()
        self.build(view, index, cfg, req, table)

    def _aid(self, cfg: ExtenderConfig, f: Fit) -> int:
        aid = self._fit_aid.get(id(f))
        if aid is None:
            a = (0.0, max(cfg.weights.packing, 1e-12)) if f is self._no_devices else align_from_fit(cfg, f)
            aid = self._term_ids.get(a)
            if aid is None:
                aid = self._term_ids[a] = len(self.terms)
                self.terms.append(a)
            self._fit_aid[id(f)] = aid
        return aid

    def _group(self, index: Index, cfg: ExtenderConfig, req: Requirements, table: FitTable, sig: int | None,
               dom: int | None) -> int | None:
        if sig is None or dom is None:
            return None
        f = self._no_devices if sig == NO_DEVICES else index.fit_sig(req, sig, table)
        return self._aid(cfg, f) * GROUP + dom

    def build(self, view: NodeView, index: Index, cfg: ExtenderConfig, req: Requirements, table: FitTable) -> None:
        self.gen, self.at = view.gen, len(view.log)
        by_sig = table.by_sig
        for s in set(view.sig).difference(by_sig):
            if s is not None and s != NO_DEVICES:
                index.fit_sig(req, s, table)
        if None in view.sig or NO_DEVICES in view.sig:
            self.group = [self._group(index, cfg, req, table, s, d) for s, d in zip(view.sig, view.dom, strict=True)]
        else:  # every node known and publishing devices: C-level maps, signature -> Fit -> term id
            # Every Fit of a shared table is one of its by_shape values (a few hundred): learn those.
            for f in islice(table.by_shape.values(), self._shapes, None):
                self._aid(cfg, f)
            self._shapes = len(table.by_shape)
            aids = map(self._fit_aid.__getitem__, map(id, map(by_sig.__getitem__, view.sig)))  # type: ignore[arg-type]
            try:
                self.group = list(map(add, map(mul, aids, repeat(GROUP)), view.dom))
            except KeyError:  # a Fit not among by_shape's values: take the per-node way
                self.group = [self._group(index, cfg, req, table, s, d)
                              for s, d in zip(view.sig, view.dom, strict=True)]
        self.count = Counter(self.group)  # type: ignore[arg-type]
        self.count.pop(None, None)  # type: ignore[call-overload]

    def sync(self, view: NodeView, index: Index, cfg: ExtenderConfig, req: Requirements, table: FitTable) -> None:
        if self.gen != view.gen:
            self.build(view, index, cfg, req, table)
            return
        if self.at == len(view.log):
            return
        changed = set(view.log[self.at:])
        self.at = len(view.log)
        count = self.count
        for p in changed:
            old, new = self.group[p], self._group(index, cfg, req, table, view.sig[p], view.dom[p])
            if old == new:
                continue
            if old is not None:
                count[old] -= 1
                if count[old] <= 0:
                    del count[old]
            if new is not None:
                count[new] += 1
            self.group[p] = new


class Views:
    """The node lists recently asked about, most recent first."""

    def __init__(self) -> None:
        self.views: list[NodeView] = []
        self._seen_once: list[tuple[int, int]] = []  # (length, hash) of lists without a view

    def get(self, names: tuple[str, ...], index: Index) -> NodeView | None:
        n = len(names)
        for i, v in enumerate(self.views):
            if len(v.names) == n and v.names == names:
                if i:
                    self.views.insert(0, self.views.pop(i))
                v.sync(index)
                return v
        if not names:
            return None
        fp = (n, hash(names))
        if fp not in self._seen_once:
            self._seen_once.insert(0, fp)
            del self._seen_once[MAX_SEEN:]
            return None
        self._seen_once.remove(fp)
        if len(set(names)) != n:  # duplicate names: the reference path handles them
            return None
        v = NodeView(names, index)
        self.views.insert(0, v)
        del self.views[MAX_VIEWS:]
        return v


@dataclass(frozen=True, slots=True)
class FilterReply:
    body: bytes
    passed: int
    failed: int
    unresolvable: int
    error: str = ""
    notes: tuple[str, ...] = ()


def uses_alignment(cfg: ExtenderConfig, req: Requirements) -> bool:
    """Whether prioritize scores these requirements per (alignment term, domain) group: a `PrioState`."""
    return not req.empty and req.align != "none" and cfg.weights.alignment > 0


def filter_reply(index: Index, cfg: ExtenderConfig, pod: Pod, names: tuple[str, ...], now: float,
                 views: Views) -> FilterReply:
    """`run_filter` serialised, through a view when the node list has one."""
    index.drop_reservation(pod.uid)
    index.refresh(now)
    view: NodeView | None = None
    try:
        req = resolve(pod, index, cfg.alignment)
    except Unresolved:
        req = None
    if req is not None and not req.empty:
        table = index.fits(req)
        if table.shared:
            view = views.get(names, index)
    if view is None or req is None:
        out = run_filter(index, cfg, pod, names, now)
        return FilterReply(filter_result(out.passed, out.failed, out.unresolvable, out.error), len(out.passed),
                           len(out.failed), len(out.unresolvable), out.error, out.notes)
    st = view.filter_state(index, req, table)
    if uses_alignment(cfg, req):
        # kube-scheduler calls prioritize after filter for the same pod and list: have its scoring groups
        # ready (built once per shape, then patched like the filter verdicts), so prioritize only looks up.
        view.prio_state(index, cfg, req, table)
    if st.counts[PASSED] == 1:
        # kube-scheduler must take this node: count its devices as used until the API shows the allocation.
        node = view.names[st.cat.index(PASSED)]
        index.reserve(pod, node, index.fit_exact(req, index.nodes[node]), claim_keys(pod), now)
        index.hint(pod, node, now)
    c = st.counts
    return FilterReply(st.reply(), c[PASSED], c[FAILED], c[UNRESOLVABLE], "", req.notes + table.notes)


def prioritize_reply(index: Index, cfg: ExtenderConfig, pod: Pod, req: Requirements | None,
                     names: tuple[str, ...], now: float, views: Views) -> bytes:
    """`run_prioritize` serialised, through a view when the node list has one."""
    index.refresh(now)
    table = index.fits(req) if req is not None and uses_alignment(cfg, req) else None
    view = views.get(names, index) if table is None or table.shared else None
    if view is None:
        return priority_list(run_prioritize(index, cfg, pod, req, names, now))
    job_key = index.job_of(pod)
    if job_key is None and (req is None or req.empty):
        return view.zero()
    job = index.job_domains(job_key, exclude_uid=pod.uid)
    free = index.domain_free
    max_free = [max(c.values(), default=0) for c in free]
    doms = list(view.dom_count)
    packing = packing_by_domain(doms, index.dom_list, job, free, max_free, cfg)
    rank = index.dom_rank()
    for d in doms:
        packing[d] += TIE_EPSILON * (1 - rank[d])
    keys: Sequence[int | None]
    raw_of: dict[int | None, float]
    if table is None or req is None:
        keys = view.dom
        raw_of = {d: packing[d] for d in doms}
    else:
        st = view.prio_state(index, cfg, req, table)
        keys, terms, wp = st.group, st.terms, cfg.weights.packing
        raw_of = {}
        for g in st.count:
            a = terms[g // GROUP]
            raw_of[g] = (a[0] + wp * packing[g % GROUP]) / a[1]
    raw_of[None] = 0.0
    score_of = normalize_map(raw_of)
    scores = list(map(score_of.__getitem__, keys))
    if job_key is not None and scores:
        top = max(scores)
        best = {(g if table is None else g % GROUP) for g in raw_of if g is not None and score_of[g] == top}
        # Only a guess kube-scheduler is bound to follow at domain level is worth remembering.
        if len(best) == 1:
            index.hint(pod, names[scores.index(top)], now)
    return view.priority_body(scores)
