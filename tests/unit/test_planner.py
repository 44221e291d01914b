"""Planner.best_node: one pending pod's node over the whole cache, as kube-scheduler would pick it with the
extender's scores (best score, then the fullest node, then name), on an Index filled through the watch path."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler_plugin.cache import apply_event
from scheduler_plugin.claims import Requirements, resolve
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import run_filter
from scheduler_plugin.index import Index
from scheduler_plugin.model import Pod, parse_pod
from scheduler_plugin.planner import Choice, NoChoice, Planner
from scheduler_plugin.score import run_prioritize
from scheduler_plugin.wire import MAX_PRIORITY
from tests.unit.test_extender_support import add_node, claim, dev, make_index, pod
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()
ALIGNED = [dev("gpu-0", "gpu", "pci0000:80", 0), dev("nic-0", "nic", "pci0000:80", 0)]
UNALIGNED = [dev("gpu-0", "gpu", "pci0000:00", 0), dev("nic-0", "nic", "pci0000:20", 1)]


def _index(*templates: dict[str, Any]) -> Index:
    idx = make_index()
    for t in templates or (gpu_nic_template("ml", "pair"), gpu_nic_template("ml", "aligned", match=f"{STD}/pcieRoot"),
                           gpu_nic_template("ml", "two", gpus=2, nics=0)):
        apply_event(idx, "resourceclaimtemplates", "ADDED", t)
    return idx


def _pod(name: str, tmpl: str = "pair", **kw: Any) -> tuple[Pod, Requirements, dict[str, Any]]:
    spec = kw.pop("spec", {})
    obj = pod(name, templates={"acc": tmpl}, **kw)
    obj["spec"].update(spec)
    p = parse_pod(obj)
    return p, resolve(p, _SRC[0], CFG.alignment), obj


_SRC: list[Index] = []


def _best(idx: Index, name: str, tmpl: str = "pair", **kw: Any) -> Choice | NoChoice:
    _SRC[:] = [idx]
    idx.refresh(0.0)
    p, req, _ = _pod(name, tmpl, **kw)
    return Planner(idx, CFG).best_node(p, req)


def _allocate(idx: Index, node: str, *devices: str, name: str = "") -> None:
    apply_event(idx, "resourceclaims", "ADDED",
                claim("ml", name or f"busy-{node}", {}, allocated=[(node, d) for d in devices]))


def test_aligned_node_beats_name_order() -> None:
    idx = _index()
    add_node(idx, "a", UNALIGNED)
    add_node(idx, "b", ALIGNED)
    got = _best(idx, "p")
    assert isinstance(got, Choice) and got.node == "b"
    # The witness names real devices of b: one GPU and one NIC.
    keys = {idx.nodes["b"].free_keys[i][2] for i in got.fit.witness}
    assert keys == {"gpu-0", "nic-0"}


def test_choice_has_the_best_prioritize_score() -> None:
    """Whatever the mix, the chosen node is one kube-scheduler would rank first with the extender's scores."""
    idx = _index()
    for i in range(6):
        add_node(idx, f"n{i}", eight_by_eight(), **{"topodra.dev/rack": f"r{i % 3}"})
    _allocate(idx, "n0", "gpu-0", "gpu-2", "gpu-4", "gpu-6")  # every aligned GPU's partner root still has a NIC
    _allocate(idx, "n1", *[f"nic-{i}" for i in range(8)])  # GPUs only: no pairs at all
    _allocate(idx, "n4", "gpu-0", "gpu-1", "nic-0", "nic-1", "gpu-2", "gpu-3")  # fills rack r1 a little
    names = tuple(sorted(idx.nodes))
    for tmpl in ("pair", "aligned", "two"):
        got = _best(idx, f"p-{tmpl}", tmpl)
        assert isinstance(got, Choice), got
        p, req, _ = _pod(f"p-{tmpl}", tmpl)
        passed = run_filter(idx, CFG, p, names, 0.0).passed
        idx.drop_reservation(p.uid)
        scores = dict(run_prioritize(idx, CFG, p, req, tuple(passed), 0.0))
        assert got.node in passed
        assert scores[got.node] == MAX_PRIORITY, (tmpl, got.node, scores)


def test_fullest_node_among_equals() -> None:
    idx = _index()
    for n in ("a", "b", "c"):
        add_node(idx, n, eight_by_eight())
    _allocate(idx, "c", "gpu-0", "nic-0")  # c: 7 GPUs free, a and b: 8
    got = _best(idx, "p")
    assert isinstance(got, Choice) and got.node == "c"
    # Equal fullness: name order.
    apply_event(idx, "resourceclaims", "DELETED", claim("ml", "busy-c", {}))
    got = _best(idx, "p")
    assert isinstance(got, Choice) and got.node == "a"


def test_node_selector_is_respected() -> None:
    idx = _index()
    add_node(idx, "a", ALIGNED, pool="x")
    add_node(idx, "b", UNALIGNED, pool="y")
    got = _best(idx, "p", spec={"nodeSelector": {"pool": "y"}})
    assert isinstance(got, Choice) and got.node == "b"
    got = _best(idx, "p", spec={"nodeSelector": {"pool": "z"}})
    assert got == NoChoice("no node accepts the pod's node selector, affinity and tolerations")


def test_cordoned_and_tainted_nodes_are_skipped() -> None:
    idx = _index()
    add_node(idx, "a", ALIGNED)
    add_node(idx, "b", ALIGNED)
    add_node(idx, "c", UNALIGNED)
    apply_event(idx, "nodes", "MODIFIED", {"metadata": {"name": "a"}, "spec": {"unschedulable": True}})
    apply_event(idx, "nodes", "MODIFIED", {"metadata": {"name": "b"},
                                           "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})
    got = _best(idx, "p")
    assert isinstance(got, Choice) and got.node == "c"
    got = _best(idx, "p", spec={"tolerations": [{"key": "k", "operator": "Exists"}]})
    assert isinstance(got, Choice) and got.node == "b"


def test_no_choice_names_the_common_reason() -> None:
    idx = _index()
    add_node(idx, "a", UNALIGNED)
    add_node(idx, "b", UNALIGNED)
    add_node(idx, "c", [dev("gpu-0", "gpu", "r", 0)])
    got = _best(idx, "p", "aligned")
    assert isinstance(got, NoChoice)
    assert got.reason == "no node fits (2 of 3: no PCIe root with a free GPU and a free NIC)"
    got = _best(idx, "p", "two")
    assert isinstance(got, NoChoice) and got.reason.startswith("no node fits (3 of 3: "), got
    assert got.reason.endswith("pod needs 2)"), got


def test_exclude() -> None:
    idx = _index()
    add_node(idx, "a", ALIGNED)
    add_node(idx, "b", ALIGNED)
    _SRC[:] = [idx]
    idx.refresh(0.0)
    p, req, _ = _pod("p")
    first = Planner(idx, CFG).best_node(p, req)
    assert isinstance(first, Choice) and first.node == "a"
    got = Planner(idx, CFG).best_node(p, req, exclude={"a"})
    assert isinstance(got, Choice) and got.node == "b"
    assert isinstance(Planner(idx, CFG).best_node(p, req, exclude={"a", "b"}), NoChoice)


def test_reservations_of_earlier_choices_are_seen() -> None:
    """Consecutive pods: each choice is reserved, so the next one sees those devices as taken."""
    idx = _index()
    add_node(idx, "a", eight_by_eight())
    add_node(idx, "b", eight_by_eight())
    add_node(idx, "c", ALIGNED)
    _SRC[:] = [idx]
    planner = Planner(idx, CFG)
    where: list[str] = []
    taken: set[tuple[str, str, str]] = set()
    for i in range(17):
        idx.refresh(float(i))
        p, req, _ = _pod(f"p{i}", "aligned")
        got = planner.best_node(p, req)
        assert isinstance(got, Choice), (i, got)
        keys = idx.reserve(p, got.node, got.fit, [], float(i), ttl=1000.0)
        assert len(keys) == 2 and not taken & set(keys), (i, keys)
        taken |= set(keys)
        where.append(got.node)
    # The one-pair node first (fullest), then one 8-GPU node to the end before the other.
    assert where == ["c"] + ["a"] * 8 + ["b"] * 8
    idx.refresh(17.0)
    p, req, _ = _pod("p17", "aligned")
    got = planner.best_node(p, req)
    assert got == NoChoice("no node fits (3 of 3: 0 free GPUs, pod needs 1)")
    # A reservation dropped (its pod gone): the devices come back.
    idx.drop_reservation("uid-p3")
    idx.refresh(18.0)
    got = planner.best_node(p, req)
    assert isinstance(got, Choice) and got.node == "a"


def test_eligible_follows_node_changes() -> None:
    idx = _index()
    add_node(idx, "a", ALIGNED, pool="x")
    idx.refresh(0.0)
    planner = Planner(idx, CFG)
    _SRC[:] = [idx]
    p, _, _ = _pod("p", spec={"nodeSelector": {"pool": "x"}})
    assert planner.eligible(p.placement) == ("a",)
    apply_event(idx, "nodes", "MODIFIED", {"metadata": {"name": "a", "labels": {"pool": "y"}}})
    assert planner.eligible(p.placement) == ()
    add_node(idx, "b", ALIGNED, pool="x")
    assert planner.eligible(p.placement) == ("b",)


@pytest.mark.parametrize("align", ["none", "preferred"])
def test_alignment_mode_matches_prioritize(align: str) -> None:
    """With alignment off the planner must not prefer aligned nodes where prioritize ranks them equal."""
    idx = _index()
    add_node(idx, "a", UNALIGNED, **{"topodra.dev/rack": "r0"})
    add_node(idx, "b", ALIGNED, **{"topodra.dev/rack": "r1"})
    ann = {"topodra.dev/alignment": align}
    got = _best(idx, "p", annotations=ann)
    assert isinstance(got, Choice)
    p, req, _ = _pod("p", annotations=ann)
    scores = dict(run_prioritize(idx, CFG, p, req, ("a", "b"), 0.0))
    assert scores[got.node] == max(scores.values()), (got.node, scores)
