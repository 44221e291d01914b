"""The first proof: the real scheduler allocates DRA devices from a hand-written slice and binds the pod."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
from kubernetes import client

from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import claim_template, request

pytestmark = pytest.mark.cluster

def _device_class(name: str, kind: str, driver: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression":
            f'device.driver == "{driver}" && device.attributes["{driver}"].type == "{kind}"'}}]},
    }


def _slice(node: str, gpus: int, driver: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{node}-{driver}"},
        "spec": {
            "driver": driver,
            "nodeName": node,
            "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {"name": f"gpu-{i}", "attributes": {"type": {"string": "gpu"}}} for i in range(gpus)
            ],
        },
    }


def _pod(name: str, template: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "gpus"}]}}],
            "resourceClaims": [{"name": "gpus", "resourceClaimTemplateName": template}],
        },
    }


def _wait(pred: Any, timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_api_serves_dra_resources(cluster: LocalCluster) -> None:
    out = subprocess.run(
        [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "api-resources",
         "--api-group=resource.k8s.io", "-o", "name"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    for kind in ("deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices"):
        assert f"{kind}.resource.k8s.io" in out


def test_scheduler_allocates_devices_and_binds(cluster: LocalCluster, namespace: str) -> None:
    api = cluster.api_client()
    res = client.ResourceV1Api(api)
    core = client.CoreV1Api(api)
    node = f"proof-{namespace}"
    # A driver and class of this test's own: slices other tests leave in the shared cluster cannot match.
    driver = f"{namespace}.proof.topodra.dev"
    cls = f"gpu.{driver}"
    cluster.add_fake_node(node)
    res.create_device_class(_device_class(cls, "gpu", driver))
    res.create_resource_slice(_slice(node, 2, driver))
    res.create_namespaced_resource_claim_template(namespace, claim_template("two-gpus", [request("gpu", cls, 2)]))
    res.create_namespaced_resource_claim_template(namespace, claim_template("three-gpus", [request("gpu", cls, 3)]))

    core.create_namespaced_pod(namespace, _pod("fits", "two-gpus"))
    pod = _wait(lambda: (p := core.read_namespaced_pod("fits", namespace)).spec.node_name and p,
                what="pod bound")
    assert pod.spec.node_name == node
    claim_name = pod.status.resource_claim_statuses[0].resource_claim_name
    claim = res.read_namespaced_resource_claim(claim_name, namespace)
    results = claim.status.allocation.devices.results
    assert sorted(r.device for r in results) == ["gpu-0", "gpu-1"]
    assert {(r.driver, r.pool) for r in results} == {(driver, node)}
    assert [r.name for r in claim.status.reserved_for] == ["fits"]

    # Negative: nothing left on this node, and no node has three GPUs at all.
    core.create_namespaced_pod(namespace, _pod("too-big", "three-gpus"))

    def unschedulable() -> str | None:
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
        msgs = [e.message for e in evs if e.reason == "FailedScheduling"]
        return msgs[0] if msgs else None

    msg = _wait(unschedulable, what="FailedScheduling event")
    assert "cannot allocate all claims" in msg or "resourceclaim" in msg.lower(), msg
    assert core.read_namespaced_pod("too-big", namespace).spec.node_name is None
    res.delete_resource_slice(f"{node}-{driver}")
    res.delete_device_class(cls)
    cluster.delete_node(node)
