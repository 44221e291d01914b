"""The coordinator's answers to what kube-scheduler does behind its back (found by the adversarial gang tests):
first-fit DRA allocation onto a plan's devices, claims a failed try leaves allocated, lingering plan
annotations after a release."""

from __future__ import annotations

from scheduler_plugin.cache import apply_event
from scheduler_plugin.gang.coordinator import PLAN_ANNOTATION
from scheduler_plugin.model import parse_pod
from tests.unit.test_extender_support import claim, pod
from tests.unit.test_gang_coordinator import member, setup
from topodra_cli.testing.objects import gpu_nic_template

PAIR_SPEC = gpu_nic_template("ml", "pair", 1, 1)["spec"]["spec"]
QUAD_SPEC = gpu_nic_template("ml", "quad", 4, 4)["spec"]["spec"]


def test_devices_of_a_plan_taken_by_another_pod_are_chosen_again_on_that_node() -> None:
    idx, coord, acts, _ = setup()
    pods = {n: member(coord, n, 3) for n in ("a", "b", "c")}
    coord.plan_all()
    alone = next(n for n in pods if list(acts.steered.values()).count(acts.steered[n]) == 1)
    node, uid = acts.steered[alone], pods[alone].uid
    stolen = idx.reservations[uid].devices[0]
    # kube-scheduler gave a single pod exactly the first device the plan set aside for `alone`.
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "single", PAIR_SPEC, allocated=[(node, stolen[2])]))
    idx.refresh(0.0)
    assert idx.nodes[node].free_gpus == 4  # one too many: the stolen device counts once
    coord.repair_reservations()
    r = idx.reservations[uid]
    assert stolen not in r.devices and not set(r.devices) & set(idx.allocated)
    assert idx.nodes[node].free_gpus == 3
    g = next(iter(coord.gangs.values()))
    assert g.plan is not None and g.plan.members[uid].keys == r.devices


def test_no_new_plan_while_a_member_still_holds_an_allocation_from_an_earlier_try() -> None:
    idx, coord, acts, _ = setup()
    body = pod("a", templates={"acc": "quad"}, annotations={"topodra.dev/gang": "g", "topodra.dev/gang-size": "2"})
    body["status"] = {"resourceClaimStatuses": [{"name": "acc", "resourceClaimName": "a-acc"}]}
    left = claim("ml", "a-acc", QUAD_SPEC, allocated=[("n0", f"gpu-{i}") for i in range(4)])
    apply_event(idx, "resourceclaims", "ADDED", left)
    a = parse_pod(body)
    coord.observe(a.uid, a)
    member(coord, "b", 2)
    coord.plan_all()
    assert acts.steered == {}
    assert any(r == "GangWaiting" and "a to be deallocated" in m for r, m in acts.events), acts.events
    coord.plan_all()
    assert acts.released == ["a"]  # asked once to undo the old allocation (nothing else may, see steer.py)
    left.pop("status")
    apply_event(idx, "resourceclaims", "MODIFIED", left)
    coord.plan_all()
    assert set(acts.steered) == {"a", "b"}


def test_a_released_plan_is_not_adopted_again_from_lingering_annotations() -> None:
    _, coord, _, clock = setup()
    stamp = {PLAN_ANNOTATION: f"n0@{clock.t - 1:.3f}"}
    a = member(coord, "a", 2, **stamp)
    member(coord, "b", 2, **stamp)
    g = next(iter(coord.gangs.values()))
    assert g.plan is not None  # adopted (as after an extender restart)
    clock.t += 301  # past the default gang timeout
    coord.plan_all()
    assert g.plan is None
    coord.observe(a.uid, a)  # an update of a member whose annotation removal has not landed yet
    assert g.plan is None
