"""Upstream workload-aware scheduling in the local cluster (`--generic-workload`), and its scheduler config file.

Plain kube-scheduler, no extender, fake nodes, pods without DRA: this is the upstream behaviour topodra's own
gang handling is compared with (scheduler-gang-1.37.md §4).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import Any

import pytest
from kubernetes import client

from tests.conftest import GW_SECOND_PROFILE
from tests.gang_invariants import GangInvariants, default_gang_of
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.crds import install_coscheduling_podgroup
from topodra_cli.localcluster.gates import WORKLOAD_API
from topodra_cli.localcluster.processes import pid_cmdline
from topodra_cli.testing.objects import claim_pod, claim_template, request

pytestmark = pytest.mark.cluster


def _served(cluster: LocalCluster, group_version: str) -> set[str]:
    try:
        return {r.name for r in client.CustomObjectsApi(cluster.api_client()).get_api_resources(
            *group_version.split("/")).resources}
    except client.ApiException as e:
        if e.status == 404:
            return set()
        raise


def _pod(name: str, group: str | None, scheduler: str = "default-scheduler") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "schedulerName": scheduler,
        "containers": [{"name": "c", "image": "busybox", "resources": {"requests": {"cpu": "100m"}}}],
        "tolerations": [{"operator": "Exists"}],
    }
    if group:
        spec["schedulingGroup"] = {"podGroupName": group}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _raw_pod(core: client.CoreV1Api, ns: str, name: str) -> dict[str, Any]:
    # Raw JSON: the generated model may not carry spec.schedulingGroup.
    return dict(json.loads(core.read_namespaced_pod(name, ns, _preload_content=False).data))


def _wait_bound(core: client.CoreV1Api, ns: str, names: list[str], cluster: LocalCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        nodes = {n: core.read_namespaced_pod(n, ns).spec.node_name for n in names}
        if all(nodes.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"pods not bound after {timeout:.0f}s: {nodes}\nkube-scheduler log:\n"
                        f"{cluster.log_tail('kube-scheduler', 30)}")
        time.sleep(0.2)


@pytest.fixture()
def gw_node(gw_cluster: LocalCluster) -> Any:
    name = f"gw-node-{uuid.uuid4().hex[:6]}"
    gw_cluster.add_fake_node(name)
    yield name
    gw_cluster.delete_node(name)


def test_default_cluster_keeps_workload_scheduling_off(cluster: LocalCluster) -> None:
    assert cluster.state is not None and not cluster.state.generic_workload
    assert "podgroups" not in _served(cluster, WORKLOAD_API)


def test_generic_workload_serves_the_podgroup_api(gw_cluster: LocalCluster) -> None:
    assert gw_cluster.state is not None and gw_cluster.state.generic_workload
    assert {"podgroups", "workloads", "podgroups/status"} <= _served(gw_cluster, WORKLOAD_API)


def test_gang_waits_for_min_count_then_binds_together(
    gw_cluster: LocalCluster, gw_namespace: str, gw_node: str
) -> None:
    api = gw_cluster.api_client()
    core = client.CoreV1Api(api)
    ns = gw_namespace
    client.SchedulingV1beta1Api(api).create_namespaced_pod_group(ns, {
        "apiVersion": WORKLOAD_API, "kind": "PodGroup", "metadata": {"name": "pg"},
        "spec": {"schedulingPolicy": {"gang": {"minCount": 2}}},
    })
    core.create_namespaced_pod(ns, _pod("solo", None))  # control: the node takes a pod at once
    _wait_bound(core, ns, ["solo"], gw_cluster, timeout=60)
    with GangInvariants(api, [ns], default_gang_of(pod_group_sizes={"pg": 2}), burst=2.0) as inv:
        core.create_namespaced_pod(ns, _pod("m0", "pg"))
        assert _raw_pod(core, ns, "m0")["spec"]["schedulingGroup"] == {"podGroupName": "pg"}  # not dropped
        time.sleep(4)  # the scheduler has a free node and nothing else to do: only the gang barrier holds m0
        assert not core.read_namespaced_pod("m0", ns).spec.node_name
        core.create_namespaced_pod(ns, _pod("m1", "pg"))
        t0 = time.monotonic()
        _wait_bound(core, ns, ["m0", "m1"], gw_cluster, timeout=60)
        bind_s = time.monotonic() - t0
    assert inv.counters.gangs_fully_bound == 1
    # The scheduler reports the group itself too (condition seen on 1.37.2 right after the bind).
    deadline = time.monotonic() + 10
    while True:
        group = json.loads(client.SchedulingV1beta1Api(api).read_namespaced_pod_group(
            "pg", ns, _preload_content=False).data)
        conds = {c["type"]: c["status"] for c in (group.get("status") or {}).get("conditions") or []}
        if conds.get("PodGroupInitiallyScheduled") == "True" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert conds.get("PodGroupInitiallyScheduled") == "True", group.get("status")
    assert {core.read_namespaced_pod(n, ns).spec.node_name for n in ("solo", "m0", "m1")} == {gw_node}
    print(f"gang of 2 bound {bind_s:.2f}s after its second member; max partial {inv.max_partial_seconds:.2f}s")


def test_scheduler_config_file_and_gates_survive_a_scheduler_restart(
    gw_cluster: LocalCluster, gw_namespace: str, gw_node: str
) -> None:
    core = client.CoreV1Api(gw_cluster.api_client())
    gw_cluster.set_scheduler_config(extenders=None)  # a restart, as tests adding an extender do
    argv = pid_cmdline(gw_cluster.procs.pid("kube-scheduler") or 0).split()
    assert any(a.startswith("--feature-gates=") and "GenericWorkload=true" in a for a in argv), argv
    # The second profile exists only in the file given to up(): a pod naming it is scheduled.
    core.create_namespaced_pod(gw_namespace, _pod("p2", None, scheduler=GW_SECOND_PROFILE))
    _wait_bound(core, gw_namespace, ["p2"], gw_cluster, timeout=60)


def test_coscheduling_podgroup_crd_installs_and_validates(cluster: LocalCluster, namespace: str) -> None:
    assert install_coscheduling_podgroup(cluster.api_client()) == "podgroups.scheduling.x-k8s.io"
    assert install_coscheduling_podgroup(cluster.api_client())  # again: an update, not an error
    objs = client.CustomObjectsApi(cluster.api_client())
    body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup", "metadata": {"name": "train"},
            "spec": {"minMember": 4, "scheduleTimeoutSeconds": 30, "minResources": {"cpu": "4"}}}
    objs.create_namespaced_custom_object("scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", body)
    objs.patch_namespaced_custom_object_status("scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", "train",
                                               {"status": {"phase": "Scheduling", "scheduled": 2}})
    got = objs.get_namespaced_custom_object("scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", "train")
    assert got["spec"]["minResources"] == {"cpu": "4"}  # unknown fields kept
    assert got["status"] == {"phase": "Scheduling", "scheduled": 2}
    bad = {**body, "metadata": {"name": "bad"}, "spec": {"minMember": 0}}
    with pytest.raises(client.ApiException) as err:
        objs.create_namespaced_custom_object("scheduling.x-k8s.io", "v1alpha1", namespace, "podgroups", bad)
    assert err.value.status == 422 and "minMember" in str(err.value.body)


# ---- GangInvariants against real DRA claims (default cluster, plain scheduler) ----------------------
@pytest.fixture()
def dra_node(cluster: LocalCluster, namespace: str) -> Any:
    """A fake node with 4 devices of a driver and class of this test's own (other tests' slices cannot match)."""
    res = client.ResourceV1Api(cluster.api_client())
    node, driver = f"inv-{namespace}", f"{namespace}.inv.topodra.dev"
    cls = f"gpu.{driver}"
    cluster.add_fake_node(node)
    res.create_device_class({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": cls},
                             "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{driver}"'}}]}})
    res.create_resource_slice({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": node},
        "spec": {"driver": driver, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                 "devices": [{"name": f"gpu-{i}"} for i in range(4)]}})
    res.create_namespaced_resource_claim_template(namespace, claim_template("one-gpu", [request("gpu", cls, 1)]))
    yield node, driver
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(cluster.api_client()).delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    res.delete_resource_slice(node)
    res.delete_device_class(cls)
    cluster.delete_node(node)


def _gang_pods(core: client.CoreV1Api, ns: str, gang: str, size: int) -> list[str]:
    names = [f"{gang}-{i}" for i in range(size)]
    for n in names:
        core.create_namespaced_pod(ns, claim_pod(n, {"gpu": "one-gpu"}, annotations={
            "topodra.dev/gang": gang, "topodra.dev/gang-size": str(size)}))
    return names


def test_invariants_follow_real_claims_through_a_gangs_life(
    cluster: LocalCluster, namespace: str, dra_node: tuple[str, str]
) -> None:
    core = client.CoreV1Api(cluster.api_client())
    with GangInvariants(cluster, [namespace], release_grace=20.0) as inv:  # through cluster.kube()
        names = _gang_pods(core, namespace, "g", 2)
        _wait_bound(core, namespace, names, cluster, timeout=60)
        inv.poll()  # binding can take less than one poll period: make sure the bound gang is seen
        core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)  # release: claims must follow
    c = inv.counters
    assert (c.gangs_seen, c.gangs_fully_bound, c.releases) == (1, 1, 1)
    assert c.claims_seen == 2 and c.allocated_claims_max == 2
    assert c.max_release_seconds < 20.0  # often 0: the claims are gone in the same poll as the pods
    assert c.max_poll_gap_seconds < 1.0, c  # polls kept up on a loaded 2-core machine
    print(f"max partial {inv.max_partial_seconds:.2f}s, claims gone {c.max_release_seconds:.2f}s after the "
          f"pods, {c.polls} polls, max gap {c.max_poll_gap_seconds:.2f}s")


def test_invariants_catch_real_claims_kept_after_a_release(
    cluster: LocalCluster, namespace: str, dra_node: tuple[str, str]
) -> None:
    core = client.CoreV1Api(cluster.api_client())
    with pytest.raises(AssertionError, match=r"\[claims-not-released\] gang .*/g") as err, \
            GangInvariants(cluster.kubeconfig, [namespace], release_grace=1.0) as inv:
        names = _gang_pods(core, namespace, "g", 2)
        _wait_bound(core, namespace, names, cluster, timeout=60)
        inv.mark_released("g")  # but the pods, and so their claims, stay
    assert str(err.value).count("claims-not-released") == 2


def test_invariants_catch_a_device_in_two_real_claims(
    cluster: LocalCluster, namespace: str, dra_node: tuple[str, str]
) -> None:
    node, driver = dra_node
    res = client.ResourceV1Api(cluster.api_client())
    core = client.CoreV1Api(cluster.api_client())
    with pytest.raises(AssertionError, match=r"\[double-allocation\] device .*/gpu-") as err, \
            GangInvariants(cluster.kube(), [namespace]):
        names = _gang_pods(core, namespace, "g", 1)
        _wait_bound(core, namespace, names, cluster, timeout=60)
        taken = core.read_namespaced_pod(names[0], namespace).status.resource_claim_statuses[0].resource_claim_name
        device = res.read_namespaced_resource_claim(taken, namespace).status.allocation.devices.results[0].device
        # A second claim whose status names the same device, written the way a broken allocator would.
        res.create_namespaced_resource_claim(namespace, {"metadata": {"name": "forged"}, "spec": {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": f"gpu.{driver}"}}]}}})
        res.patch_namespaced_resource_claim_status("forged", namespace, {"status": {"allocation": {
            "devices": {"results": [{"request": "gpu", "driver": driver, "pool": node, "device": device}]},
            "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}})
        time.sleep(0.6)
    assert f"{namespace}/forged" in str(err.value) and f"{namespace}/{taken}" in str(err.value)
