"""Gangs through the real kube-scheduler with topodra as filter, nominator and binder (bindVerb).

Every test runs under `GangInvariants`: a gang partly bound beyond the bind burst, a device allocated to
two claims, or a released gang's claims left allocated fail the test.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

import pytest

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.gang_invariants import GangInvariants, default_gang_of
from tests.integration.test_extender_support import (
    ExtenderProcess,
    Fleet,
    claim_template,
    events,
    extender_scheduler,
    make_pod,
    pod_node,
    wait_bound,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import eight_by_eight

pytestmark = pytest.mark.cluster

GANG, SIZE, STATUS = "topodra.dev/gang", "topodra.dev/gang-size", "topodra.dev/gang-status"


@pytest.fixture(scope="module")
def extender(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(cluster, tmp_path_factory.mktemp("gang-extender"), bind=True, percentage=0,
                            args=("--bind-hold-seconds=5",)) as ext:
        yield ext


def gang_pod(client: KubeClient, ns: str, name: str, gang: str, size: int, fleet: Fleet, template: str = "quad",
             **annotations: str) -> None:
    make_pod(client, ns, name, {"acc": template}, fleet.selector,
             annotations={GANG: gang, SIZE: str(size), **annotations})


def bound(client: KubeClient, ns: str, names: list[str]) -> list[str]:
    return [n for n in names if pod_node(client, ns, n)]


def status(client: KubeClient, ns: str, name: str) -> dict[str, object]:
    ann = client.get(f"/api/v1/namespaces/{ns}/pods/{name}")["metadata"].get("annotations") or {}
    return dict(json.loads(ann[STATUS])) if STATUS in ann else {}


def stays_unbound(client: KubeClient, ns: str, names: list[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert bound(client, ns, names) == [], f"bound too early: {bound(client, ns, names)}"
        time.sleep(0.5)


def test_gang_waits_for_its_last_member_then_binds_whole(extender: ExtenderProcess, client: KubeClient,
                                                          fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    nodes = [fleet.add(eight_by_eight(), **{"topodra.dev/rack": "r1"}) for _ in range(2)]
    claim_template(client, namespace, "quad", gpus=4, nics=4, match="resource.kubernetes.io/numaNode")
    with GangInvariants(cluster, [namespace], default_gang_of()) as inv:
        for i in range(2):
            gang_pod(client, namespace, f"w-{i}", "train", 3, fleet)
        stays_unbound(client, namespace, ["w-0", "w-1"], 6)
        assert status(client, namespace, "w-0").get("phase") == "Collecting"
        gang_pod(client, namespace, "w-2", "train", 3, fleet)
        got = wait_bound(client, namespace, ["w-0", "w-1", "w-2"], timeout=60)
    assert set(got.values()) <= set(nodes)
    assert inv.counters.gangs_fully_bound >= 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, text = extender.get("/metrics")
        if any(ln.startswith('topodra_extender_gangs{phase="Bound"}') and float(ln.split()[-1]) >= 1
               for ln in text.splitlines()):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the extender's gang gauge never showed a Bound gang")
    # 3 members x 4 GPUs on 2 nodes of 8: two share a node.
    assert sorted(list(got.values()).count(n) for n in nodes) == [1, 2]


def test_gang_larger_than_the_cluster_stays_unbound_and_says_why(extender: ExtenderProcess, client: KubeClient,
                                                                 fleet: Fleet, cluster: LocalCluster,
                                                                 namespace: str) -> None:
    fleet.add(eight_by_eight())
    claim_template(client, namespace, "quad", gpus=4, nics=4, match="resource.kubernetes.io/numaNode")
    names = [f"big-{i}" for i in range(3)]
    with GangInvariants(cluster, [namespace], default_gang_of()) as inv:
        for n in names:
            gang_pod(client, namespace, n, "big", 3, fleet)
        stays_unbound(client, namespace, names, 8)
        st = status(client, namespace, "big-0")
        assert st.get("phase") in ("Refused", "Waiting"), st
        msgs = events(client, namespace, "big-0")
        assert any("gang" in m and "GPUs" in m for m in msgs), msgs
        for n in names:
            _delete(client, namespace, n)
        inv.mark_released("big", namespace)
    assert inv.counters.pods_seen >= 3


def test_competing_gangs_never_deadlock(extender: ExtenderProcess, client: KubeClient, fleet: Fleet,
                                       cluster: LocalCluster, namespace: str) -> None:
    """Three gangs of 2 x 4 GPUs on 16 GPUs: two fit at once, each fits alone; the third runs when one goes."""
    for _ in range(2):
        fleet.add(eight_by_eight())
    claim_template(client, namespace, "quad", gpus=4, nics=4, match="resource.kubernetes.io/numaNode")
    gangs = {g: [f"{g}-{i}" for i in range(2)] for g in ("a", "b", "c")}
    with GangInvariants(cluster, [namespace], default_gang_of()) as inv:
        for g, names in gangs.items():
            for n in names:
                gang_pod(client, namespace, n, g, 2, fleet)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = [g for g, names in gangs.items() if len(bound(client, namespace, names)) == 2]
            if len(done) == 2:
                break
            time.sleep(0.5)
        assert len(done) == 2, {g: bound(client, namespace, n) for g, n in gangs.items()}
        (left,) = [g for g in gangs if g not in done]
        assert bound(client, namespace, gangs[left]) == []
        for n in gangs[done[0]]:
            _delete(client, namespace, n)
        inv.mark_released(done[0], namespace)
        wait_bound(client, namespace, gangs[left], timeout=90)
    assert inv.counters.gangs_fully_bound >= 3


def test_single_pods_are_nominated_and_bound(extender: ExtenderProcess, client: KubeClient, fleet: Fleet,
                                             namespace: str) -> None:
    fleet.add(eight_by_eight())
    claim_template(client, namespace, "pair", match="resource.kubernetes.io/pcieRoot")
    for i in range(3):
        make_pod(client, namespace, f"s-{i}", {"acc": "pair"}, fleet.selector)
    wait_bound(client, namespace, [f"s-{i}" for i in range(3)], timeout=60)
    _, text = extender.get("/metrics")
    nominated = [ln for ln in text.splitlines() if ln.startswith('topodra_extender_steered_total{outcome="nominated"}')]
    assert nominated and float(nominated[0].split()[-1]) >= 1, nominated
    binds = [ln for ln in text.splitlines() if ln.startswith('topodra_extender_binds_total{outcome="bound"}')]
    assert binds and float(binds[0].split()[-1]) >= 3, binds


def _delete(client: KubeClient, ns: str, name: str) -> None:
    with contextlib.suppress(ApiError):
        client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", query={"gracePeriodSeconds": "0"})
