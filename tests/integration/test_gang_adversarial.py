"""Gangs under stress, through the real kube-scheduler with topodra as filter, nominator and binder.

Each test ends with every gang wholly bound or wholly unbound, and every gang that fits running, and runs
under `GangInvariants` (no partial bind beyond the burst, no device in two claims, released claims freed).

To stop a gang *inside* its bind barrier on purpose, its last member carries a scheduling gate: the plan
covers it (devices set aside, node nominated), the other members pass PreBind and are held at bind, and
kube-scheduler does not look at the gated member until the test lifts the gate.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.gang_invariants import GangInvariants, default_gang_of
from tests.integration.test_extender_support import (
    SLICES,
    ExtenderProcess,
    Fleet,
    allocated_devices,
    claim_template,
    events,
    extender_scheduler,
    make_pod,
    pod_node,
    wait_bound,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.cluster import MERGE_PATCH
from topodra_cli.testing.objects import claim_pod, eight_by_eight

pytestmark = pytest.mark.cluster

GANG, SIZE, STATUS = "topodra.dev/gang", "topodra.dev/gang-size", "topodra.dev/gang-status"
PLANNED = "topodra.dev/planned-node"
TIMEOUT = "topodra.dev/gang-timeout-seconds"
GATE = "topodra.dev/test-hold"
QUAD_MATCH = "resource.kubernetes.io/numaNode"


# ---- helpers (test_gang_modes.py uses them too) ----------------------------------------------------
@pytest.fixture(scope="module")
def extender(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(cluster, tmp_path_factory.mktemp("gang-adv"), bind=True, percentage=0,
                            args=("--bind-hold-seconds=5",)) as ext:
        yield ext


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{name}"


def gang_pod(client: KubeClient, ns: str, name: str, gang: str, size: int, fleet: Fleet,
             templates: dict[str, str] | None = None, gated: bool = False, **annotations: str) -> None:
    """A member of annotation gang `gang`; `gated` keeps kube-scheduler away from it until `ungate`."""
    body = claim_pod(name, {"acc": "quad"} if templates is None else templates, node_selector=fleet.selector,
                     annotations={GANG: gang, SIZE: str(size), **annotations})
    if gated:
        body["spec"]["schedulingGates"] = [{"name": GATE}]
    client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)


def ungate(client: KubeClient, ns: str, name: str) -> None:
    client.request("PATCH", pod_path(ns, name), content_type=MERGE_PATCH, body={"spec": {"schedulingGates": []}})


def annotations(client: KubeClient, ns: str, name: str) -> dict[str, str]:
    try:
        return dict(client.get(pod_path(ns, name))["metadata"].get("annotations") or {})
    except ApiError:
        return {}


def planned(client: KubeClient, ns: str, name: str) -> str:
    """The member's planned-node annotation, `<node>@<plan time>` ("" when it has none)."""
    return annotations(client, ns, name).get(PLANNED, "")


def wait_planned(client: KubeClient, ns: str, name: str, timeout: float = 30) -> str:
    """The planned-node annotation once it has landed (it is written after the nomination, asynchronously)."""
    return str(wait_for(f"{name}'s planned-node annotation", lambda: planned(client, ns, name), timeout))


def gang_status(client: KubeClient, ns: str, name: str) -> dict[str, object]:
    raw = annotations(client, ns, name).get(STATUS)
    return dict(json.loads(raw)) if raw else {}


def bound(client: KubeClient, ns: str, names: list[str]) -> list[str]:
    return [n for n in names if pod_node(client, ns, n)]


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.3,
             explain: Callable[[], object] = lambda: "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} {explain()}")
        time.sleep(every)


def debug_gang(ext: ExtenderProcess, ns: str, gang: str) -> dict[str, object]:
    """The extender's own view of one gang (/debug/gangs), {} when it has none."""
    with contextlib.suppress(OSError):
        code, text = ext.get("/debug/gangs")
        if code == 200:
            for g in json.loads(text)["gangs"]:
                if g["gang"] == f"{ns}/{gang}":
                    return dict(g)
    return {}


def held_at_barrier(ext: ExtenderProcess, ns: str, gang: str, ready: int, timeout: float = 60) -> None:
    """Wait until `ready` members of `gang` passed PreBind and sit in the held bind."""
    wait_for(f"{ready} members of {gang} ready at the bind barrier",
             lambda: debug_gang(ext, ns, gang).get("ready", 0) >= ready, timeout)


def delete_pod(client: KubeClient, ns: str, name: str) -> None:
    with contextlib.suppress(ApiError):
        client.request("DELETE", pod_path(ns, name), query={"gracePeriodSeconds": "0"})


def allocated_claims(client: KubeClient, ns: str) -> dict[str, str]:
    """Allocated claim name -> the pod it was made for (its owner)."""
    out = {}
    for c in client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims").get("items") or []:
        if (c.get("status") or {}).get("allocation"):
            owners = c["metadata"].get("ownerReferences") or [{}]
            out[c["metadata"]["name"]] = str(owners[0].get("name", ""))
    return out


def quad_fleet(client: KubeClient, ns: str, fleet: Fleet, nodes: int, **labels: str) -> list[str]:
    claim_template(client, ns, "quad", gpus=4, nics=4, match=QUAD_MATCH)
    return [fleet.add(eight_by_eight(), **labels) for _ in range(nodes)]


# ---- the tests ---------------------------------------------------------------------------------------
def test_single_pods_keep_flowing_and_never_take_a_gangs_devices(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """16 GPUs; a gang of 3 x 4 GPUs is planned and held at its barrier; six 1-GPU pods arrive meanwhile:
    the four free GPUs go to single pods at once, the other two wait, and the gang binds whole where planned."""
    ns = namespace
    quad_fleet(client, ns, fleet, 2)
    claim_template(client, ns, "pair", match="resource.kubernetes.io/pcieRoot")
    members = ["m-0", "m-1", "m-2"]
    singles = [f"s-{i}" for i in range(6)]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "mixed", 3, fleet, gated=i == 2)
        held_at_barrier(extender, ns, "mixed", 2)
        plan = wait_planned(client, ns, "m-2")  # the gated member is part of the plan
        for s in singles:
            make_pod(client, ns, s, {"acc": "pair"}, fleet.selector)
            time.sleep(0.3)
        wait_for("4 single pods bound while the gang is held",
                 lambda: len(bound(client, ns, singles)) == 4, 60,
                 explain=lambda: ({n: pod_node(client, ns, n) for n in members + singles}, plan,
                                  allocated_devices(client, ns), debug_gang(extender, ns, "mixed")))
        time.sleep(3)  # the other two had time to take the gang's devices, and must not have
        assert len(bound(client, ns, singles)) == 4, bound(client, ns, singles)
        assert bound(client, ns, members) == []
        ungate(client, ns, "m-2")
        got = wait_bound(client, ns, members, timeout=60)
        assert got["m-2"] == plan.rpartition("@")[0], (got, plan)
        assert len(bound(client, ns, singles)) == 4
        # The gang goes: its devices now flow to the waiting single pods.
        for n in members:
            delete_pod(client, ns, n)
        wait_bound(client, ns, singles, timeout=90)
    assert inv.counters.gangs_fully_bound == 1


def test_node_deleted_mid_gang_is_replanned_elsewhere(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """Planned and half through the barrier, the node planned for the last member disappears (node and
    slice): the plan is released and the gang is placed again on the nodes left, none on the lost one."""
    ns = namespace
    quad_fleet(client, ns, fleet, 3)
    members = ["n-0", "n-1", "n-2"]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "lost", 3, fleet, gated=i == 2)
        held_at_barrier(extender, ns, "lost", 2)
        first = wait_planned(client, ns, "n-2")
        lost = first.rpartition("@")[0]
        assert lost in fleet.nodes, first
        cluster.delete_node(lost)
        with contextlib.suppress(ApiError):
            client.request("DELETE", f"{SLICES}/{lost}-topodra.dev")
        again = wait_for("a new plan for the gated member",
                         lambda: (p := planned(client, ns, "n-2")) and p != first and p, 60)
        assert str(again).rpartition("@")[0] != lost
        ungate(client, ns, "n-2")
        got = wait_bound(client, ns, members, timeout=90)
        assert lost not in got.values(), got
        assert any(e.startswith("GangReleased") and lost in e for e in events(client, ns, "n-0")), \
            events(client, ns, "n-0")
    assert inv.counters.gangs_fully_bound == 1


def test_extender_killed_in_the_bind_barrier_adopts_the_plan_and_binds(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """SIGKILL while two of three members are held at bind; the restarted extender adopts the plan from the
    members' annotations, nothing is booked twice, and the gang binds whole on the planned nodes."""
    ns = namespace
    quad_fleet(client, ns, fleet, 2)
    members = ["k-0", "k-1", "k-2"]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "crash", 3, fleet, gated=i == 2)
        held_at_barrier(extender, ns, "crash", 2)
        plan = {n: wait_planned(client, ns, n) for n in members}
        log_before = len(extender.log())
        extender.stop(signal.SIGKILL)
        time.sleep(2)  # kube-scheduler sees the held binds fail (connection reset) and retries them
        extender.start()
        wait_for("the plan adopted after the restart",
                 lambda: debug_gang(extender, ns, "crash").get("planned"), 30)
        assert "gang_plan_adopted" in extender.log()[log_before:]
        assert bound(client, ns, members) == []
        ungate(client, ns, "k-2")
        got = wait_bound(client, ns, members, timeout=90)
        assert got == {n: p.rpartition("@")[0] for n, p in plan.items()}, (got, plan)
    assert inv.counters.gangs_fully_bound == 1


def test_kube_scheduler_restarted_mid_gang(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """kube-scheduler restarts while two members are held at bind: the new one finds their claims still
    allocated, calls bind again, and the gang binds whole once the last member comes."""
    ns = namespace
    quad_fleet(client, ns, fleet, 2)
    members = ["r-0", "r-1", "r-2"]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "resched", 3, fleet, gated=i == 2)
        held_at_barrier(extender, ns, "resched", 2)
        cluster.set_scheduler_config(extenders=[extender.scheduler_entry(bind=True)],
                                     percentage_of_nodes_to_score=0)
        assert bound(client, ns, members) == []
        ungate(client, ns, "r-2")
        wait_bound(client, ns, members, timeout=90)
    assert inv.counters.gangs_fully_bound == 1


def test_gang_timeout_releases_everything_and_retries(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """One member never reaches kube-scheduler within the gang's 20 s: the held bind fails, the other
    member's claim is deallocated, the gang says why, and a later plan binds it once the member comes."""
    ns = namespace
    quad_fleet(client, ns, fleet, 1)
    members = ["t-0", "t-1"]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "slow", 2, fleet, gated=i == 1, **{TIMEOUT: "20"})
        held_at_barrier(extender, ns, "slow", 1)
        first = wait_planned(client, ns, "t-1")
        assert allocated_claims(client, ns), "t-0 passed PreBind: its claim is allocated"
        # The Event stays; the status annotation moves on (to waiting for the claim to be deallocated).
        wait_for("the gang released on timeout",
                 lambda: any(e.startswith("GangReleased") and "within 20 s" in e for e in events(client, ns, "t-0")),
                 45, explain=lambda: events(client, ns, "t-0"))
        inv.mark_released("slow", ns)
        wait_for("t-0's claim deallocated", lambda: not allocated_claims(client, ns), 20)
        assert bound(client, ns, members) == []
        wait_for("a new plan after the release",
                 lambda: (p := planned(client, ns, "t-1")) and p != first, 40)
        ungate(client, ns, "t-1")
        wait_bound(client, ns, members, timeout=60)
    assert inv.counters.gangs_fully_bound == 1
