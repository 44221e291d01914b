"""Gang shapes and sources through the real kube-scheduler: required rack and clique, a launcher with workers,
a marked Job, and an upstream PodGroup with `GenericWorkload` on. Every test runs under `GangInvariants`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.fakes.kube import apply_device_classes
from tests.gang_invariants import GangInvariants, default_gang_of
from tests.integration.test_extender_support import (
    ExtenderProcess,
    Fleet,
    events,
    extender_scheduler,
    wait_bound,
)
from tests.integration.test_gang_adversarial import (
    bound,
    gang_pod,
    gang_status,
    planned,
    quad_fleet,
    wait_for,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import claim_pod, eight_by_eight

pytestmark = pytest.mark.cluster

RACK, CLIQUE = "topodra.dev/rack", "topodra.dev/clique"
REQUIRED = "topodra.dev/topology-required"
JOB_NAME = "batch.kubernetes.io/job-name"


@pytest.fixture(scope="module")
def extender(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(cluster, tmp_path_factory.mktemp("gang-modes"), bind=True, percentage=0,
                            args=("--bind-hold-seconds=5",)) as ext:
        yield ext


def node_labels(client: KubeClient, node: str) -> dict[str, str]:
    return dict(client.get(f"/api/v1/nodes/{node}")["metadata"].get("labels") or {})


# ---- topology ------------------------------------------------------------------------------------------
def test_required_rack_waits_explained_then_runs_when_the_rack_grows(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """3 x 4 GPUs with `topology-required: rack` on two racks of one 8-GPU node each (16 GPUs in all): it
    waits and says so, then binds inside rack r1 once a second node joins r1."""
    ns = namespace
    quad_fleet(client, ns, fleet, 1, **{RACK: "r1"})
    fleet.add(eight_by_eight(), **{RACK: "r2"})
    names = [f"rk-{i}" for i in range(3)]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for n in names:
            gang_pod(client, ns, n, "racked", 3, fleet, **{REQUIRED: "rack"})
        st = wait_for("an explanation on the pods",
                      lambda: (s := gang_status(client, ns, "rk-0")).get("phase") in ("Waiting", "Refused") and s,
                      60, explain=lambda: (f"status {gang_status(client, ns, 'rk-0')}, bound {bound(client, ns, names)}"
                                           f", events {events(client, ns, 'rk-0')}"))
        assert isinstance(st, dict) and st.get("level") == "rack" and "GPUs" in str(st.get("message")), st
        msgs = events(client, ns, "rk-0")
        assert any(m.startswith(("GangWaiting", "GangRefused")) and "rack" in m for m in msgs), msgs
        time.sleep(3)
        assert bound(client, ns, names) == []
        grown = fleet.add(eight_by_eight(), **{RACK: "r1"})
        got = wait_bound(client, ns, names, timeout=60)
    assert {node_labels(client, n)[RACK] for n in got.values()} == {"r1"}, got
    assert grown in got.values()
    assert inv.counters.gangs_fully_bound == 1


def test_required_clique_stays_inside_one_clique(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """Cliques c1 = {A}, c2 = {B, C}, c3 = {D}: a gang of 3 x 4 GPUs that requires one clique can only use
    B and C, though A + D (or any two nodes) would hold it too."""
    ns = namespace
    quad_fleet(client, ns, fleet, 1, **{CLIQUE: "c1"})
    c2 = [fleet.add(eight_by_eight(), **{CLIQUE: "c2"}) for _ in range(2)]
    fleet.add(eight_by_eight(), **{CLIQUE: "c3"})
    names = [f"cq-{i}" for i in range(3)]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for n in names:
            gang_pod(client, ns, n, "nvl", 3, fleet, **{REQUIRED: "clique"})
        got = wait_bound(client, ns, names, timeout=60)
    assert set(got.values()) == set(c2), got
    assert inv.counters.gangs_fully_bound == 1


def test_heterogeneous_gang_launcher_and_workers(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """A launcher without claims and two 4-GPU workers: nothing binds before the last worker exists, then
    all three bind together (the launcher on one of the gang's nodes)."""
    ns = namespace
    nodes = quad_fleet(client, ns, fleet, 2)
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        gang_pod(client, ns, "launcher", "mpi", 3, fleet, templates={})
        gang_pod(client, ns, "worker-0", "mpi", 3, fleet)
        time.sleep(4)
        assert bound(client, ns, ["launcher", "worker-0"]) == []
        gang_pod(client, ns, "worker-1", "mpi", 3, fleet)
        got = wait_bound(client, ns, ["launcher", "worker-0", "worker-1"], timeout=60)
    assert set(got.values()) <= set(nodes), got
    assert inv.counters.gangs_fully_bound == 1


# ---- a marked Job --------------------------------------------------------------------------------------
def make_job(client: KubeClient, ns: str, name: str, parallelism: int, fleet: Fleet) -> None:
    pod = claim_pod("x", {"acc": "quad"}, node_selector=fleet.selector)
    spec = dict(pod["spec"], restartPolicy="Never")
    client.request("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", body={
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "labels": {"topodra.dev/gang": "true"}},
        "spec": {"parallelism": parallelism, "completions": parallelism, "backoffLimit": 0,
                 "template": {"metadata": {}, "spec": spec}}})


def job_pods(client: KubeClient, ns: str, job: str) -> list[dict[str, Any]]:
    items = client.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"{JOB_NAME}={job}").get("items") or []
    return list(items)


def delete_job(client: KubeClient, ns: str, job: str) -> None:
    with contextlib.suppress(ApiError):
        client.request("DELETE", f"/apis/batch/v1/namespaces/{ns}/jobs/{job}",
                       body={"propagationPolicy": "Background"})
    # Pods on fake nodes never confirm termination: force them out as a kubelet would.
    for p in job_pods(client, ns, job):
        with contextlib.suppress(ApiError):
            client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{p['metadata']['name']}",
                           query={"gracePeriodSeconds": "0"})


def claims_left(client: KubeClient, ns: str) -> list[str]:
    items = client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims").get("items") or []
    return [c["metadata"]["name"] for c in items if (c.get("status") or {}).get("allocation")]


def test_marked_job_binds_both_pods_together(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    ns = namespace
    quad_fleet(client, ns, fleet, 1)
    with GangInvariants(cluster, [ns], default_gang_of(job_sizes={"train": 2})) as inv:
        make_job(client, ns, "train", 2, fleet)
        wait_for("both Job pods bound", lambda: len(pods := job_pods(client, ns, "train")) == 2
                 and all(p["spec"].get("nodeName") for p in pods), 60)
        inv.poll()  # seen whole before it goes
        delete_job(client, ns, "train")
        wait_for("the Job's claims freed", lambda: not claims_left(client, ns), 30)
    assert inv.counters.gangs_fully_bound == 1


@pytest.mark.slow
def test_marked_job_larger_than_the_cluster_stays_unbound_and_says_why(
        extender: ExtenderProcess, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """3 x 4 GPUs on one 8-GPU node: for 25 s (several of kube-scheduler's retries, its backoff tops out at 10 s)
    no pod binds, the Job and its pods say why; deleting the Job frees everything."""
    ns = namespace
    quad_fleet(client, ns, fleet, 1)
    with GangInvariants(cluster, [ns], default_gang_of(job_sizes={"big": 3})) as inv:
        make_job(client, ns, "big", 3, fleet)
        wait_for("3 Job pods", lambda: len(job_pods(client, ns, "big")) == 3, 30)
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            assert not any(p["spec"].get("nodeName") for p in job_pods(client, ns, "big"))
            assert not claims_left(client, ns)
            time.sleep(1)
        pod = job_pods(client, ns, "big")[0]["metadata"]["name"]
        st = gang_status(client, ns, pod)
        assert st.get("phase") in ("Refused", "Waiting") and "GPUs" in str(st.get("message")), st
        msgs = events(client, ns, "big")
        assert any(m.startswith(("GangRefused", "GangWaiting")) and "GPUs" in m for m in msgs), msgs
        delete_job(client, ns, "big")
        wait_for("the Job's pods gone", lambda: not job_pods(client, ns, "big"), 30)
        assert not claims_left(client, ns)
    assert inv.counters.gangs_fully_bound == 0


# ---- upstream PodGroup with GenericWorkload on ---------------------------------------------------------
@pytest.fixture(scope="module")
def gw_client(gw_cluster: LocalCluster) -> KubeClient:
    c = KubeClient.load(str(gw_cluster.kubeconfig))
    apply_device_classes(c)
    return c


@pytest.fixture(scope="module")
def gw_extender(gw_cluster: LocalCluster, gw_client: KubeClient,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(gw_cluster, tmp_path_factory.mktemp("gang-gw"), bind=True, percentage=0,
                            args=("--bind-hold-seconds=5",)) as ext:
        yield ext


@pytest.fixture()
def gw_fleet(gw_cluster: LocalCluster, gw_client: KubeClient) -> Iterator[Fleet]:
    f = Fleet(gw_cluster, gw_client)
    try:
        yield f
    finally:
        f.cleanup()


def test_upstream_podgroup_with_generic_workload_waits_then_binds_whole(
        gw_extender: ExtenderProcess, gw_client: KubeClient, gw_fleet: Fleet, gw_cluster: LocalCluster,
        gw_namespace: str) -> None:
    """PodGroup minCount 3 (scheduling.k8s.io/v1beta1): two members wait, the third comes, all bind at once,
    inside topodra's plan."""
    client, ns = gw_client, gw_namespace
    nodes = quad_fleet(client, ns, gw_fleet, 2)
    client.request("POST", f"/apis/scheduling.k8s.io/v1beta1/namespaces/{ns}/podgroups", body={
        "apiVersion": "scheduling.k8s.io/v1beta1", "kind": "PodGroup", "metadata": {"name": "pg"},
        "spec": {"schedulingPolicy": {"gang": {"minCount": 3}}}})

    def member(name: str) -> None:
        body = claim_pod(name, {"acc": "quad"}, node_selector=gw_fleet.selector)
        body["spec"]["schedulingGroup"] = {"podGroupName": "pg"}
        client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)

    names = [f"pg-{i}" for i in range(3)]
    with GangInvariants(gw_cluster, [ns], default_gang_of(pod_group_sizes={"pg": 3})) as inv:
        member(names[0])
        member(names[1])
        time.sleep(5)
        assert bound(client, ns, names[:2]) == []
        member(names[2])
        got = wait_bound(client, ns, names, timeout=90)
    assert set(got.values()) <= set(nodes)
    assert sorted(list(got.values()).count(n) for n in nodes) == [1, 2], got
    # Each member went where topodra's plan put it (the upstream group cycle filtered through the extender).
    assert {n: planned(client, ns, n).rpartition("@")[0] for n in names} == got
    assert inv.counters.gangs_fully_bound == 1
