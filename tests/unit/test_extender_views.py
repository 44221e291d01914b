"""The verbs' fast path (per node-list views patched from the change log) answers byte for byte like the
reference path (run_filter / run_prioritize serialised), whatever happened to the nodes in between."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_plugin import index as index_mod
from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import requirements_or_none, run_filter
from scheduler_plugin.index import Index
from scheduler_plugin.model import parse_pod
from scheduler_plugin.score import run_prioritize
from scheduler_plugin.views import Views, filter_reply, prioritize_reply
from scheduler_plugin.wire import filter_result, priority_list
from tests.unit.test_extender_support import claim, make_index, node_obj, pod, slice_obj
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()
NODES = 8
SHAPES: list[tuple[dict[str, str], dict[str, str]]] = [
    ({"acc": "pair"}, {}),
    ({"acc": "quad"}, {}),
    ({"g": "g2", "n": "n2"}, {"topodra.dev/alignment": "pcieRoot"}),
    ({"acc": "eight"}, {}),
    ({}, {}),  # no devices: job packing only, or all 0
    ({"acc": "exact"}, {}),  # selector on a per-device attribute: the per-node path
    ({"acc": "loose"}, {"topodra.dev/alignment": "none"}),
]
NAMES = [f"n{i}" for i in range(NODES)]
LISTS = [tuple(NAMES), (*NAMES, "ghost"), tuple(reversed(NAMES[:5])), ("n1", "n1", "n2")]


def _node_events(i: int) -> list[tuple[str, str, dict[str, Any]]]:
    name = f"n{i}"
    return [("nodes", "ADDED", node_obj(name, **{"topodra.dev/rack": f"r{i % 3}", "topodra.dev/block": f"b{i % 2}"})),
            ("resourceslices", "ADDED", slice_obj(name, eight_by_eight()))]


def _world() -> list[tuple[str, str, dict[str, Any]]]:
    ev = [("resourceclaimtemplates", "ADDED", t) for t in (
        gpu_nic_template("ml", "pair", 1, 1, f"{STD}/pcieRoot"),
        gpu_nic_template("ml", "quad", 4, 4, f"{STD}/numaNode"),
        gpu_nic_template("ml", "g2", 2, 0), gpu_nic_template("ml", "n2", 0, 2), gpu_nic_template("ml", "eight", 8, 0),
        gpu_nic_template("ml", "loose", 1, 1),
        gpu_nic_template("ml", "exact", 1, 0, gpu_selectors=[f'device.attributes["{STD}"].pciBusID != "x"']))]
    for i in range(NODES):
        ev += _node_events(i)
    return ev


_op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, NODES - 1), st.sampled_from(["gpu", "nic"]), st.integers(0, 7)),
    st.tuples(st.just("delnode"), st.integers(0, NODES - 1)),
    st.tuples(st.just("addnode"), st.integers(0, NODES - 1)),
    st.tuples(st.just("delslice"), st.integers(0, NODES - 1)),  # a node that publishes no devices
    st.tuples(st.just("jobpod"), st.integers(0, NODES - 1), st.booleans()),
    st.tuples(st.just("call"), st.sampled_from(["filter", "prioritize", "both"]), st.integers(0, len(SHAPES) - 1),
              st.sampled_from([0, 0, 0, 1, 1, 2, 3]), st.booleans()),
)


class Pair:
    """Two indexes fed the same events: one answers through views, the other through the reference path."""

    def __init__(self) -> None:
        self.fast, self.ref = make_index(), make_index()
        self.views = Views()
        self.claims: set[str] = set()
        self.now = 0.0
        self.calls = 0
        for e in _world():
            self.apply(*e)
        for names in LISTS:  # a view is made on a list's second sighting: have them from the start
            self.views.get(names, self.fast)
            self.views.get(names, self.fast)

    def apply(self, kind: str, verb: str, obj: dict[str, Any]) -> None:
        apply_event(self.fast, kind, verb, obj)
        apply_event(self.ref, kind, verb, obj)

    def op(self, op: tuple[Any, ...]) -> None:
        if op[0] == "alloc":
            _, i, kind, d = op
            name = f"c-n{i}-{kind}-{d}"
            if name in self.claims:
                self.claims.discard(name)
                self.apply("resourceclaims", "DELETED", {"metadata": {"namespace": "ml", "name": name}})
            else:
                self.claims.add(name)
                self.apply("resourceclaims", "ADDED", claim("ml", name, {}, [(f"n{i}", f"{kind}-{d}")]))
        elif op[0] == "delnode":
            self.apply("nodes", "DELETED", node_obj(f"n{op[1]}"))
            self.apply("resourceslices", "DELETED", slice_obj(f"n{op[1]}", []))
        elif op[0] == "delslice":
            self.apply("resourceslices", "DELETED", slice_obj(f"n{op[1]}", []))
        elif op[0] == "addnode":
            for e in _node_events(op[1]):
                self.apply(*e)
        elif op[0] == "jobpod":
            self.calls += 1
            p = pod(f"b{self.calls}", labels={"topodra.dev/job": "train"} if op[2] else {}, node=f"n{op[1]}")
            self.apply("pods", "ADDED", p)
        else:
            self.call(*op[1:])

    def call(self, verb: str, shape: int, which: int, job: bool) -> None:
        if verb == "both":  # as kube-scheduler does: filter, then prioritize for the same pod and list
            self.call("filter", shape, which, job)
            self.calls -= 1  # the same pod name
            self.now -= 0.7
            self.call("prioritize", shape, which, job)
            return
        self.calls += 1
        self.now += 0.7
        templates, ann = SHAPES[shape]
        p = parse_pod(pod(f"p{self.calls}", templates=templates, annotations=ann,
                          labels={"topodra.dev/job": "train"} if job else {}))
        names = LISTS[which]
        if verb == "filter":
            got = filter_reply(self.fast, CFG, p, names, self.now, self.views)
            out = run_filter(self.ref, CFG, p, names, self.now)
            assert got.body == filter_result(out.passed, out.failed, out.unresolvable, out.error)
            assert (got.passed, got.failed, got.unresolvable) == (len(out.passed), len(out.failed),
                                                                  len(out.unresolvable))
            assert (got.error, got.notes) == (out.error, out.notes)
        else:
            body = prioritize_reply(self.fast, CFG, p, requirements_or_none(self.fast, CFG, p), names, self.now,
                                    self.views)
            want = priority_list(run_prioritize(self.ref, CFG, p, requirements_or_none(self.ref, CFG, p), names,
                                                self.now))
            assert body == want, (orjson.loads(body), orjson.loads(want))
        # Side effects (reservations, hints) must match too.
        assert self.fast.reserved == self.ref.reserved
        assert {u: (h.node, h.job) for u, h in self.fast.hints.items()} == \
            {u: (h.node, h.job) for u, h in self.ref.hints.items()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=80))
def test_views_answer_like_the_reference_after_random_changes(ops: list[tuple[Any, ...]]) -> None:
    w = Pair()
    for op in ops:
        w.op(op)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, min_size=1, max_size=30))
def test_views_survive_change_log_truncation_and_signature_resets(ops: list[tuple[Any, ...]]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(index_mod, "CHANGE_LOG_LIMIT", 3)
        mp.setattr(index_mod, "MAX_SIGNATURES", 6)
        w = Pair()
        for op in ops:
            w.op(op)


def test_repeated_list_gets_a_view_and_unchanged_calls_reuse_the_reply() -> None:
    w = Pair()
    names = LISTS[0]
    w.views = Views()
    for _ in range(2):
        w.call("filter", 0, 0, False)
    assert len(w.views.views) == 1 and w.views.views[0].names == names
    view = w.views.views[0]
    st_ = next(iter(view.filter_states.values()))
    body = st_.reply()
    w.call("filter", 0, 0, False)
    assert st_.reply() is body  # nothing changed: the same bytes
    w.op(("alloc", 3, "gpu", 0))
    w.call("filter", 0, 0, False)
    assert view.log and view.log[-1] == 3  # only the changed node's position was patched
    assert st_.at == len(view.log)


def test_list_seen_once_takes_the_reference_path() -> None:
    idx: Index = make_index()
    views = Views()
    assert views.get(("a", "b"), idx) is None
    assert views.get(("a", "c"), idx) is None
    assert views.get(("a", "b"), idx) is not None
    assert views.get(("x", "x"), idx) is None and views.get(("x", "x"), idx) is None  # duplicates: never


def test_long_random_run_patches_incrementally() -> None:
    import random

    rng = random.Random(7)
    w = Pair()
    for _ in range(1500):
        r = rng.random()
        if r < 0.45:
            w.op(("call", rng.choice(["filter", "prioritize"]), rng.randrange(len(SHAPES)),
                  rng.choice([0, 0, 0, 1, 2, 3]), rng.random() < 0.5))
        elif r < 0.85:
            w.op(("alloc", rng.randrange(NODES), rng.choice(["gpu", "nic"]), rng.randrange(8)))
        elif r < 0.88:
            w.op(("delnode", rng.randrange(NODES)))
        elif r < 0.9:
            w.op(("delslice", rng.randrange(NODES)))
        elif r < 0.95:
            w.op(("addnode", rng.randrange(NODES)))
        else:
            w.op(("jobpod", rng.randrange(NODES), rng.random() < 0.5))
    patched = [s.at for v in w.views.views for s in v.filter_states.values()]
    patched += [s.at for v in w.views.views for s in v.prio_states.values()]
    assert sum(patched) > 100  # the states were patched, not rebuilt


def _packing_before(doms: list[int], dom_list: list[tuple[str | None, ...]], job: list[Any], free: list[Any],
                    max_free: list[int]) -> dict[int, float]:
    """packing_by_domain as it was before the per-level maps (the floats must not change)."""
    w = CFG.weights
    total_w = sum(lv.weight for lv in CFG.levels)
    inner = w.same_job + w.keep_whole
    tuples = [dom_list[d] for d in doms]
    terms: list[dict[str | None, float]] = []
    sj, kw = w.same_job, w.keep_whole
    for i, lv in enumerate(CFG.levels):
        f = lv.weight / inner / total_w
        jc, fc = job[i], free[i]
        inv = 1.0 / max_free[i] if max_free[i] > 0 else 0.0
        values = {v for t in tuples if (v := t[i]) is not None}
        level: dict[str | None, float]
        if inv:
            level = {d: f * (sj * (jc.get(d, 0) > 0) + kw * max(0.0, 1.0 - fc.get(d, 0) * inv)) for d in values}
        else:
            level = {d: f * sj * (jc.get(d, 0) > 0) for d in values}
        terms.append({**level, None: 0.0})
    getters = [t.__getitem__ for t in terms]
    return {d: sum(g(x) for g, x in zip(getters, t, strict=True)) for d, t in zip(doms, tuples, strict=True)}


_dom = st.one_of(st.none(), st.sampled_from(["a", "b", "c", "d"]))


@settings(max_examples=200, deadline=None)
@given(tuples=st.lists(st.tuples(_dom, _dom, _dom, _dom), min_size=0, max_size=8),
       job=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), min_size=4, max_size=4),
       free=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(0, 17)), min_size=4,
                     max_size=4))
def test_packing_by_domain_floats_unchanged(tuples: list[tuple[str | None, ...]], job: list[dict[str, int]],
                                            free: list[dict[str, int]]) -> None:
    from collections import Counter

    from scheduler_plugin.score import packing_by_domain

    jc, fc = [Counter(j) for j in job], [Counter(f) for f in free]
    max_free = [max(c.values(), default=0) for c in fc]
    doms = list(range(len(tuples)))
    assert packing_by_domain(doms, tuples, jc, fc, max_free, CFG) == _packing_before(doms, tuples, jc, fc, max_free)


def test_filter_builds_the_prioritize_groups_for_its_shape() -> None:
    w = Pair()
    w.views = Views()
    for _ in range(2):  # the second sighting makes the view
        w.call("filter", 0, 0, False)
    view = w.views.views[0]
    assert len(view.prio_states) == 1  # built by filter (shape "pair" is scored per alignment term)
    built = next(iter(view.prio_states.values()))
    w.call("prioritize", 0, 0, True)
    assert next(iter(view.prio_states.values())) is built  # prioritize used it, not a new one
    w.op(("alloc", 3, "gpu", 0))
    w.call("filter", 0, 0, False)
    assert built.at == len(view.log)  # patched by filter
    w.call("prioritize", 0, 0, False)
    w.call("filter", 6, 0, False)  # alignment "none": prioritize needs no groups, none built
    assert len(view.prio_states) == 1
