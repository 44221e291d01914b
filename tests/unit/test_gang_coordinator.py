"""The gang coordinator on a real Index: collect → plan → barrier → burst, and release on timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.gang.coordinator import PLAN_ANNOTATION, Coordinator
from scheduler_plugin.gang.model import GangSpec
from scheduler_plugin.gang.store import GroupStore
from scheduler_plugin.model import Pod, parse_pod
from scheduler_plugin.planner import Planner
from tests.unit.test_extender_support import add_node, make_index, pod
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()


class FakeActions:
    """Records what the coordinator asks for; binds succeed unless told otherwise."""

    def __init__(self) -> None:
        self.steered: dict[str, str] = {}
        self.annotations: dict[str, dict[str, str | None]] = {}
        self.released: list[str] = []
        self.events: list[tuple[str, str]] = []
        self.bound: list[str] = []
        self.fail: set[str] = set()

    def steer(self, pod: Pod, node: str, annotations: dict[str, str | None]) -> None:
        self.steered[pod.name] = node
        self.annotations.setdefault(pod.name, {}).update(annotations)

    def annotate(self, pod: Pod, annotations: dict[str, str | None]) -> None:
        self.annotations.setdefault(pod.name, {}).update(annotations)

    def release_claims(self, pod: Pod, claims: list[tuple[str, str]]) -> None:
        self.released.append(pod.name)

    def event(self, spec: GangSpec, pods: Iterable[Pod], reason: str, message: str, warning: bool) -> None:
        self.events.append((reason, message))

    async def bind(self, ns: str, name: str, uid: str, node: str) -> str:
        if name in self.fail:
            return "refused"
        self.bound.append(name)
        return ""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def setup(nodes: int = 2) -> tuple[Any, Coordinator, FakeActions, Clock]:
    idx = make_index()
    for i in range(nodes):
        add_node(idx, f"n{i}", eight_by_eight(), **{"topodra.dev/rack": "r1"})
    apply_event(idx, "resourceclaimtemplates", "ADDED",
                gpu_nic_template("ml", "quad", gpus=4, nics=4, match=f"{STD}/numaNode"))
    idx.refresh(0.0)
    acts, clock = FakeActions(), Clock()
    coord = Coordinator(idx, CFG, GroupStore(), Planner(idx, CFG).eligible, acts, clock=clock,
                        bind_hold_seconds=0.2)
    return idx, coord, acts, clock


def member(coord: Coordinator, name: str, size: int, gang: str = "g", **ann: str) -> Pod:
    p = parse_pod(pod(name, templates={"acc": "quad"},
                      annotations={"topodra.dev/gang": gang, "topodra.dev/gang-size": str(size), **ann}))
    coord.observe(p.uid, p)
    return p


def test_collects_then_plans_whole_and_steers_every_member() -> None:
    idx, coord, acts, _ = setup()
    a = member(coord, "a", 3)
    member(coord, "b", 3)
    coord.plan_all()
    assert acts.steered == {}
    refusal = coord.filter(a, ("n0", "n1"))
    assert refusal is not None and not refusal.passed
    assert "2 of 3 members exist" in refusal.unresolvable["n0"]
    member(coord, "c", 3)
    coord.plan_all()
    assert set(acts.steered) == {"a", "b", "c"}
    assert all(str(acts.annotations[n][PLAN_ANNOTATION]).startswith(acts.steered[n] + "@") for n in "abc")
    # Two members share one node (4 + 4 GPUs), one uses the other; the plan's devices are set aside.
    assert sorted(list(acts.steered.values()).count(n) for n in ("n0", "n1")) == [1, 2]
    assert len(idx.reserved) == 3 * 8
    ok = coord.filter(a, ("n0", "n1"))
    assert ok is not None and ok.passed == [acts.steered["a"]]
    other = "n1" if acts.steered["a"] == "n0" else "n0"
    assert "placed this member on" in ok.unresolvable[other]


def test_single_pod_filter_is_not_the_coordinators() -> None:
    _, coord, _, _ = setup()
    p = parse_pod(pod("solo", templates={"acc": "quad"}))
    assert coord.filter(p, ("n0",)) is None


def test_barrier_holds_binds_until_every_member_is_ready_then_binds_all() -> None:
    _, coord, acts, _ = setup()
    pods = [member(coord, n, 2) for n in ("a", "b")]
    coord.plan_all()

    async def run() -> tuple[str, str]:
        first = asyncio.create_task(coord.bind("ml", "a", pods[0].uid, acts.steered["a"]))
        await asyncio.sleep(0.05)
        assert acts.bound == [] and not first.done()  # held: b is not ready yet
        second = await coord.bind("ml", "b", pods[1].uid, acts.steered["b"])
        return await first, second

    assert asyncio.run(run()) == ("", "")
    assert sorted(acts.bound) == ["a", "b"]


def test_a_held_bind_that_runs_out_keeps_the_member_ready_for_the_burst() -> None:
    _, coord, acts, _ = setup()
    pods = [member(coord, n, 2) for n in ("a", "b")]
    coord.plan_all()

    async def run() -> tuple[str, str]:
        first = await coord.bind("ml", "a", pods[0].uid, acts.steered["a"])  # runs out after 0.2 s
        assert acts.bound == []
        second = await coord.bind("ml", "b", pods[1].uid, acts.steered["b"])
        return first, second

    first, second = asyncio.run(run())
    assert "1 of 2 members ready" in first and second == ""
    assert sorted(acts.bound) == ["a", "b"]  # a was bound by b's burst, not by a retry


def test_timeout_releases_everything_the_gang_holds() -> None:
    idx, coord, acts, clock = setup()
    pods = [member(coord, n, 2, **{"topodra.dev/gang-timeout-seconds": "30"}) for n in ("a", "b")]
    coord.plan_all()
    assert idx.reserved

    async def run() -> str:
        return await coord.bind("ml", "a", pods[0].uid, acts.steered["a"])

    asyncio.run(run())
    clock.t += 31
    coord.plan_all()
    assert not idx.reserved
    assert acts.steered == {"a": "", "b": ""}  # nominations cleared
    assert acts.annotations["a"][PLAN_ANNOTATION] is None
    assert acts.released == ["a"]  # the ready member's claims are given back
    assert any(r == "GangReleased" for r, _ in acts.events)
    coord.plan_all()  # retried only after a pause: other gangs go first
    assert acts.steered == {"a": "", "b": ""}
    clock.t += 11
    coord.plan_all()
    assert set(acts.steered.values()) <= {"n0", "n1"} and all(acts.steered.values())


def test_gang_larger_than_the_cluster_is_refused_at_once() -> None:
    _, coord, acts, _ = setup(nodes=1)
    pods = [member(coord, n, 3) for n in ("a", "b", "c")]
    coord.plan_all()
    out = coord.filter(pods[0], ("n0",))
    assert out is not None and not out.passed
    assert "more than the cluster has" in out.unresolvable["n0"]
    assert any(r == "GangRefused" for r, _ in acts.events)


def test_restart_adopts_the_plan_from_the_members_annotations() -> None:
    _, coord, acts, _ = setup()
    for n in ("a", "b"):
        member(coord, n, 2)
    coord.plan_all()
    planned = dict(acts.annotations)
    # A new extender (new index, new coordinator) sees the members with their plan annotations.
    idx2, coord2, acts2, _ = setup()
    for n in ("a", "b"):
        member(coord2, n, 2, **{PLAN_ANNOTATION: str(planned[n][PLAN_ANNOTATION])})
    coord2.plan_all()
    # Not replanned: the same nodes, nominated again (kube-scheduler may have cleared the nominations).
    assert acts2.steered == acts.steered
    assert len(idx2.reserved) == 2 * 8
    g = next(iter(coord2.gangs.values()))
    assert g.plan is not None and {a.node for a in g.plan.members.values()} <= {"n0", "n1"}


def test_a_sample_without_the_planned_node_renominates_and_only_real_refusals_release() -> None:
    from dataclasses import replace

    _, coord, acts, clock = setup(nodes=3)
    a, _ = (member(coord, n, 2) for n in ("a", "b"))
    coord.plan_all()
    planned = acts.steered["a"]
    others = tuple(n for n in ("n0", "n1", "n2") if n != planned)
    acts.steered.clear()
    # No nomination on the pod (cleared by kube-scheduler, or not written yet): a sampled pass.
    for _ in range(3):
        out = coord.filter(a, others)
        assert out is not None and not out.passed and "nominating it again" in out.unresolvable[others[0]]
        clock.t += 3
    assert acts.steered == {"a": planned}
    assert next(iter(coord.gangs.values())).plan is not None  # not released
    # Nominated on the planned node and still missing from the pass: kube-scheduler refused it, twice.
    nominated = replace(a, nominated_node=planned)
    coord.filter(nominated, others)
    assert next(iter(coord.gangs.values())).plan is not None
    coord.filter(nominated, others)
    assert next(iter(coord.gangs.values())).plan is None
    assert any(r == "GangReleased" and planned in m for r, m in acts.events)
