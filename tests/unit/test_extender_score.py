"""Scores: alignment quality, packing by job and by free-domain size; invariants over random nodes."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import requirements_or_none, run_filter
from scheduler_plugin.model import parse_pod
from scheduler_plugin.score import run_prioritize
from tests.unit.test_extender_support import add_node, claim, dev, make_index, pod
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()


def _scores(idx: Any, p: dict[str, Any], names: list[str]) -> dict[str, int]:
    pp = parse_pod(p)
    return dict(run_prioritize(idx, CFG, pp, requirements_or_none(idx, CFG, pp), tuple(names), 0.0))


def _rack_fleet() -> Any:
    idx = make_index()
    for rack in ("r1", "r2"):
        for i in range(2):
            add_node(idx, f"{rack}-n{i}", eight_by_eight(), **{"topodra.dev/rack": rack,
                                                                              "topodra.dev/block": "b0"})
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "quad", gpus=4, nics=4))
    return idx


def test_same_job_domain_is_preferred() -> None:
    idx = _rack_fleet()
    apply_event(idx, "pods", "ADDED", pod("w-0", labels={"topodra.dev/job": "w"}, node="r2-n0"))
    s = _scores(idx, pod("w-1", templates={"acc": "quad"}, labels={"topodra.dev/job": "w"}),
                ["r1-n0", "r1-n1", "r2-n0", "r2-n1"])
    assert s["r2-n1"] > s["r1-n0"] and s["r2-n0"] > s["r1-n1"]



def test_ties_prefer_one_domain_for_every_caller() -> None:
    idx = _rack_fleet()
    names = ["r2-n1", "r1-n1", "r2-n0", "r1-n0"]
    s = _scores(idx, pod("x-0", templates={"acc": "quad"}, labels={"topodra.dev/job": "x"}), names)
    assert s["r1-n0"] == s["r1-n1"] == 10 and s["r2-n0"] == s["r2-n1"] < 10
    # A pod with neither devices nor a job gets neutral scores.
    assert set(_scores(idx, pod("plain"), names).values()) == {0}


def test_fuller_domain_preferred_to_keep_big_ones_whole() -> None:
    idx = _rack_fleet()
    taken = [("r1-n0", f"gpu-{i}") for i in range(8)] + [("r1-n0", f"nic-{i}") for i in range(8)]
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "big", {}, allocated=taken))
    s = _scores(idx, pod("p", templates={"acc": "quad"}), ["r1-n1", "r2-n0"])
    assert s["r1-n1"] > s["r2-n0"]


def test_hint_from_prioritize_packs_the_next_pod_before_binding_shows() -> None:
    idx = _rack_fleet()
    lab = {"topodra.dev/job": "w"}
    taken = [("r1-n0", f"gpu-{i}") for i in range(4)]  # r1 fuller: the first pod goes there
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "x", {}, allocated=taken))
    first = _scores(idx, pod("w-0", templates={"acc": "quad"}, labels=lab), ["r1-n0", "r1-n1", "r2-n0", "r2-n1"])
    assert max(first, key=lambda n: first[n]).startswith("r1")
    second = _scores(idx, pod("w-1", templates={"acc": "quad"}, labels=lab), ["r1-n1", "r2-n0"])
    assert second["r1-n1"] > second["r2-n0"]


def test_alignment_quality_orders_nodes() -> None:
    idx = make_index()
    add_node(idx, "pcie", [dev("gpu-0", "gpu", "r0", 0), dev("nic-0", "nic", "r0", 0)])
    add_node(idx, "numa", [dev("gpu-0", "gpu", "r0", 0), dev("nic-0", "nic", "r1", 0)])
    add_node(idx, "none", [dev("gpu-0", "gpu", "r0", 0), dev("nic-0", "nic", "r1", 1)])
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "pair"))
    s = _scores(idx, pod("p", templates={"acc": "pair"}), ["pcie", "numa", "none"])
    assert s["pcie"] > s["numa"] > s["none"]
    off = _scores(idx, pod("p", templates={"acc": "pair"}, annotations={"topodra.dev/alignment": "none"}),
                  ["pcie", "none"])
    assert off["pcie"] == off["none"]


# ---- properties ---------------------------------------------------------------------------------

_device = st.tuples(st.sampled_from(["gpu", "nic"]), st.integers(0, 3), st.integers(0, 1))
_node = st.lists(_device, max_size=10)


def _build(nodes: list[list[tuple[str, int, int]]]) -> Any:
    idx = make_index()
    for n, devs in enumerate(nodes):
        add_node(idx, f"n{n}", [dev(f"{k}-{i}", k, f"pci{r}", numa) for i, (k, r, numa) in enumerate(devs)],
                 **{"topodra.dev/rack": f"r{n % 2}"})
    return idx


@settings(max_examples=60, deadline=None)
@given(nodes=st.lists(_node, min_size=1, max_size=5), gpus=st.integers(0, 3), nics=st.integers(0, 3),
       match=st.sampled_from([None, f"{STD}/pcieRoot", f"{STD}/numaNode"]),
       align=st.sampled_from(["preferred", "pcieRoot", "numaNode", "none"]))
def test_filter_partitions_and_scores_stay_in_range(nodes: list[list[tuple[str, int, int]]], gpus: int, nics: int,
                                                    match: str | None, align: str) -> None:
    idx = _build(nodes)
    if gpus + nics == 0:
        gpus = 1
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", gpus=gpus, nics=nics, match=match))
    p = pod("p", templates={"acc": "t"}, annotations={"topodra.dev/alignment": align})
    names = [f"n{i}" for i in range(len(nodes))] + ["ghost"]
    out = run_filter(idx, CFG, parse_pod(p), tuple(names), 0.0)
    idx.drop_reservation("uid-p")
    assert sorted([*out.passed, *out.failed, *out.unresolvable]) == sorted(names)
    assert all(r.startswith("topodra: ") and len(r) < 200 for r in [*out.failed.values(), *out.unresolvable.values()])
    scores = _scores(idx, p, names)
    assert set(scores) == set(names) and all(0 <= s <= 10 for s in scores.values())


@settings(max_examples=60, deadline=None)
@given(base=_node, extra=_node, gpus=st.integers(1, 3), nics=st.integers(0, 3),
       match=st.sampled_from([None, f"{STD}/pcieRoot", f"{STD}/numaNode"]),
       align=st.sampled_from(["preferred", "pcieRoot", "numaNode"]))
def test_more_free_devices_never_hurt(base: list[tuple[str, int, int]], extra: list[tuple[str, int, int]], gpus: int,
                                      nics: int, match: str | None, align: str) -> None:
    idx = _build([base, base + extra])
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "t", gpus=gpus, nics=nics, match=match))
    p = pod("p", templates={"acc": "t"}, annotations={"topodra.dev/alignment": align})
    out = run_filter(idx, CFG, parse_pod(p), ("n0", "n1"), 0.0)
    if "n0" in out.passed:
        assert "n1" in out.passed


_dom = st.one_of(st.none(), st.sampled_from(["a", "b", "c"]))


@settings(max_examples=80, deadline=None)
@given(tuples=st.lists(st.tuples(_dom, _dom, _dom, _dom), min_size=1, max_size=6),
       job=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), min_size=4, max_size=4),
       free=st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 16)), min_size=4, max_size=4))
def test_batched_packing_equals_reference(tuples: list[tuple[str | None, ...]], job: list[dict[str, int]],
                                          free: list[dict[str, int]]) -> None:
    from collections import Counter

    from scheduler_plugin.score import packing_by_domain, packing_quality

    jc, fc = [Counter(j) for j in job], [Counter(f) for f in free]
    max_free = [max(c.values(), default=0) for c in fc]
    got = packing_by_domain(list(range(len(tuples))), tuples, jc, fc, max_free, CFG)
    for i, t in enumerate(tuples):
        assert abs(got[i] - packing_quality(t, jc, fc, max_free, CFG)) < 1e-12
