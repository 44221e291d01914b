"""The real scheduler allocates aligned GPU-NIC pairs from our slices, also from split pools."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import pytest

from driver.discovery.filebackend import parse_topology
from driver.publisher import SlicePublisher
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.fakes.kube import apply_device_classes, node_slices, wait_for

pytestmark = pytest.mark.cluster

STD = "resource.kubernetes.io"


def _publish(cluster: Any, text: str) -> tuple[KubeClient, str]:
    node = f"drv-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    client = KubeClient.load(str(cluster.kubeconfig))
    apply_device_classes(client)
    topo = parse_topology(text.replace("NODE", node))[0]
    SlicePublisher(client, "topodra.dev", node).sync(topo)
    return client, node


def _claim_pod(
    client: KubeClient,
    ns: str,
    node: str,
    constraint: str,
    gpu_selector: str | None = None,
    wait_unschedulable: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    gpu: dict[str, Any] = {"deviceClassName": "gpu.topodra.dev"}
    if gpu_selector:
        gpu["selectors"] = [{"cel": {"expression": gpu_selector}}]
    tmpl = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "pair"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {"name": "gpu", "exactly": gpu},
                        {"name": "nic", "exactly": {"deviceClassName": "nic.topodra.dev"}},
                    ],
                    "constraints": [{"requests": ["gpu", "nic"], "matchAttribute": constraint}],
                }
            }
        },
    }
    client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates", body=tmpl)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "trainer"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "acc"}]}}],
            "resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "pair"}],
        },
    }
    client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=pod)

    def bound() -> dict[str, Any] | None:
        p = client.get(f"/api/v1/namespaces/{ns}/pods/trainer")
        if wait_unschedulable:
            for c in (p.get("status") or {}).get("conditions") or []:
                if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                    raise AssertionError(f"pod not scheduled: Unschedulable: {c.get('message')}")
        return p if p["spec"].get("nodeName") else None

    try:
        p = wait_for(bound, timeout=60, what="pod bound")
    except AssertionError:
        p = client.get(f"/api/v1/namespaces/{ns}/pods/trainer")
        raise AssertionError(f"pod not scheduled: {p.get('status')}") from None
    claim_name = p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{claim_name}")
    return p, claim


def _devices(client: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(client, node) for d in s["spec"]["devices"]}


# gpu-0 / nic-0 come first in PCI order but sit on roots without a partner; gpu-1 + nic-1 share pci0000:80.
PCIE = """
nodes:
- name: NODE
  pcieRoots: {pci0000:00: {numaNode: 0}, pci0000:20: {numaNode: 0}, pci0000:80: {numaNode: 1}}
  gpus:
  - {pciBusID: "0000:01:00.0", pcieRoot: pci0000:00}
  - {pciBusID: "0000:81:00.0", pcieRoot: pci0000:80}
  nics:
  - {pciBusID: "0000:21:00.0", pcieRoot: pci0000:20}
  - {pciBusID: "0000:82:00.0", pcieRoot: pci0000:80}
"""

# NUMA: gpu-0 is alone on NUMA 0; gpu-1 (NUMA 1) pairs with nic-0 (NUMA 1) across PCIe roots.
NUMA = """
nodes:
- name: NODE
  gpus:
  - {pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, numaNode: 0}
  - {pciBusID: "0000:c1:00.0", pcieRoot: pci0000:c0, numaNode: 1}
  nics:
  - {pciBusID: "0000:81:00.0", pcieRoot: pci0000:80, numaNode: 1}
"""


def test_pcie_root_alignment(cluster: Any, namespace: str) -> None:
    client, node = _publish(cluster, PCIE)
    pod, claim = _claim_pod(client, namespace, node, f"{STD}/pcieRoot")
    assert pod["spec"]["nodeName"] == node
    results = {r["request"]: r for r in claim["status"]["allocation"]["devices"]["results"]}
    assert {r["driver"] for r in results.values()} == {"topodra.dev"}
    assert {r["pool"] for r in results.values()} == {node}
    assert (results["gpu"]["device"], results["nic"]["device"]) == ("gpu-1", "nic-1")
    devs = _devices(client, node)
    roots = {devs[r["device"]]["attributes"][f"{STD}/pcieRoot"]["string"] for r in results.values()}
    assert roots == {"pci0000:80"}


def test_numa_alignment(cluster: Any, namespace: str) -> None:
    client, node = _publish(cluster, NUMA)
    pod, claim = _claim_pod(client, namespace, node, f"{STD}/numaNode")
    assert pod["spec"]["nodeName"] == node
    results = {r["request"]: r["device"] for r in claim["status"]["allocation"]["devices"]["results"]}
    assert results == {"gpu": "gpu-1", "nic": "nic-0"}


def _big(n_gpus: int, n_nics: int, unhealthy: int) -> str:
    lines = ["nodes:", "- name: NODE", "  gpus:"]
    for i in range(n_gpus):
        bus = i + 1
        healthy = "false" if i == unhealthy else "true"
        lines.append(
            f'  - {{pciBusID: "0000:{bus:02x}:00.0", pcieRoot: "pci0000:{bus & 0xF0:02x}", healthy: {healthy}}}'
        )
    lines.append("  nics:")
    for j in range(n_nics):
        lines.append(f'  - {{pciBusID: "0000:{0xA0 + j:02x}:00.0", pcieRoot: "pci0000:{(j * 16) % 0xA0:02x}"}}')
    return "\n".join(lines) + "\n"


def test_split_pool_is_valid_and_allocatable(cluster: Any, namespace: str) -> None:
    """170 devices, one tainted: 64 per slice, 3 slices, one generation, and the last slice allocates."""
    client, node = _publish(cluster, _big(150, 20, unhealthy=3))
    slices = node_slices(client, node)
    assert [len(s["spec"]["devices"]) for s in slices] == [64, 64, 42]
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {3}
    assert len({s["spec"]["pool"]["generation"] for s in slices}) == 1
    names = [d["name"] for s in slices for d in s["spec"]["devices"]]
    assert names == [f"gpu-{i}" for i in range(150)] + [f"nic-{j}" for j in range(20)]
    # gpu-149 (0000:96:00.0, root pci0000:90) lives in the last slice; its partner is nic-9 (also last).
    sel = f'device.attributes["{STD}"].pciBusID == "0000:96:00.0"'
    pod, claim = _claim_pod(client, namespace, node, f"{STD}/pcieRoot", gpu_selector=sel)
    results = {r["request"]: r["device"] for r in claim["status"]["allocation"]["devices"]["results"]}
    assert results == {"gpu": "gpu-149", "nic": "nic-9"}
    assert pod["spec"]["nodeName"] == node


def test_unhealthy_device_is_not_allocated(cluster: Any, namespace: str) -> None:
    """The only GPU aligned with a NIC is tainted NoSchedule: the pod must wait, nothing is allocated."""
    client, node = _publish(
        cluster, PCIE.replace("pcieRoot: pci0000:80}\n  nics", "pcieRoot: pci0000:80, healthy: false}\n  nics")
    )
    devs = _devices(client, node)
    assert devs["gpu-1"]["taints"][0]["key"] == "topodra.dev/unhealthy"
    with pytest.raises(AssertionError, match="Unschedulable"):
        _claim_pod(client, namespace, node, f"{STD}/pcieRoot", wait_unschedulable=True)
    claims = client.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims").get("items") or []
    assert claims and all(not (c.get("status") or {}).get("allocation") for c in claims)
    with contextlib.suppress(ApiError):
        client.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/trainer", body={"gracePeriodSeconds": 0})
