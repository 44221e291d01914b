"""deploy/examples: the claim templates and DeviceClasses are accepted by the real apiserver, and the real
scheduler allocates each template on a node of the demo topology with its constraints met."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from driver.discovery import discover_fleet
from driver.publisher import SlicePublisher
from kubeaccess.sync import KubeClient
from tests.fakes.kube import DEVICE_CLASSES, apply_device_classes, node_slices, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CLAIMS = ROOT / "deploy" / "examples" / "claims"
DEMO = ROOT / "deploy" / "examples" / "topology-demo.yaml"
RCT = "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates"


def _templates() -> list[dict[str, Any]]:
    docs = []
    for f in sorted(CLAIMS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
    return docs


def test_examples_exist() -> None:
    names = {t["metadata"]["name"] for t in _templates()}
    assert {"single-gpu", "gpu-nic-pcie-aligned", "gpu-nic-numa-aligned", "eight-gpus-one-clique"} <= names
    assert all(t["kind"] == "ResourceClaimTemplate" and "namespace" not in t["metadata"] for t in _templates())


def test_device_classes_accepted(cluster: Any) -> None:
    client = KubeClient.load(str(cluster.kubeconfig))
    for doc in yaml.safe_load_all(DEVICE_CLASSES.read_text()):
        doc["metadata"]["name"] += "-dry-run"  # other tests may have created the real ones already
        stored = client.request(
            "POST", "/apis/resource.k8s.io/v1/deviceclasses", body=doc, query={"dryRun": "All"}
        )
        assert stored["spec"]["selectors"] == doc["spec"]["selectors"]


def test_claim_templates_accepted_and_stored_intact(cluster: Any, namespace: str) -> None:
    client = KubeClient.load(str(cluster.kubeconfig))
    for t in _templates():
        stored = client.request("POST", RCT.format(ns=namespace), body=t)
        sent_reqs = t["spec"]["spec"]["devices"]
        got = stored["spec"]["spec"]["devices"]
        # the server adds defaults (allocationMode, count); everything we wrote must be there unchanged
        assert [r["name"] for r in got["requests"]] == [r["name"] for r in sent_reqs["requests"]]
        assert got.get("constraints") == sent_reqs.get("constraints")
        for s, g in zip(sent_reqs["requests"], got["requests"], strict=True):
            for key in ("exactly", "firstAvailable"):
                if key in s:
                    assert key in g, f"{t['metadata']['name']}: {key} dropped"
                    if key == "exactly":
                        assert {k: g[key][k] for k in s[key]} == s[key]


def _attr(dev: dict[str, Any], name: str) -> Any:
    a = dev["attributes"][name.removeprefix("topodra.dev/")]
    return next(iter(a.values()))


@pytest.mark.parametrize(
    ("template", "expect"),
    [
        ("single-gpu", {"gpu": 1}),
        ("gpu-nic-pcie-aligned", {"gpu": 1, "nic/rdma": 1}),
        ("gpu-nic-numa-aligned", {"gpu": 1, "nic": 1}),
        ("eight-gpus-one-clique", {"gpus": 8}),
        ("four-gpus-two-nics-one-numa", {"gpus": 4, "nics": 2}),
    ],
)
def test_templates_allocate_on_demo_node(
    cluster: Any, namespace: str, template: str, expect: dict[str, int]
) -> None:
    client = KubeClient.load(str(cluster.kubeconfig))
    apply_device_classes(client)
    node = f"demo-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    topo = replace(discover_fleet(DEMO)[1], node_name=node)
    SlicePublisher(client, "topodra.dev", node).sync(topo)
    (t,) = [t for t in _templates() if t["metadata"]["name"] == template]
    client.request("POST", RCT.format(ns=namespace), body=t)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "job"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "acc"}]}}],
            "resourceClaims": [{"name": "acc", "resourceClaimTemplateName": template}],
        },
    }
    client.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)

    def bound() -> dict[str, Any] | None:
        p = client.get(f"/api/v1/namespaces/{namespace}/pods/job")
        return p if p["spec"].get("nodeName") else None

    try:
        p = wait_for(bound, timeout=60, what=f"pod with {template} bound")
    except AssertionError:
        status = client.get(f"/api/v1/namespaces/{namespace}/pods/job")["status"]
        raise AssertionError(f"not scheduled: {status}") from None
    claim_name = p["status"]["resourceClaimStatuses"][0]["resourceClaimName"]
    claim = client.get(f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{claim_name}")
    results = claim["status"]["allocation"]["devices"]["results"]
    counts: dict[str, int] = {}
    for r in results:
        counts[r["request"]] = counts.get(r["request"], 0) + 1
        assert (r["driver"], r["pool"]) == ("topodra.dev", node)
    assert counts == expect
    devs = {d["name"]: d for s in node_slices(client, node) for d in s["spec"]["devices"]}
    picked = [devs[r["device"]] for r in results]
    for c in t["spec"]["spec"]["devices"].get("constraints") or []:
        values = {_attr(d, c["matchAttribute"]) for d in picked}
        assert len(values) == 1, f"{template}: {c['matchAttribute']} differs: {values}"


def _doc_cel_expressions() -> list[str]:
    """The selector examples of docs/driver.md ("CEL selector examples", first code block)."""
    text = (ROOT / "docs" / "driver.md").read_text()
    block = text.split("## CEL selector examples", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_documented_cel_selectors_work(cluster: Any, namespace: str) -> None:
    """Every documented example compiles in the apiserver and matches a device of a demo node at run time."""
    client = KubeClient.load(str(cluster.kubeconfig))
    exprs = _doc_cel_expressions()
    assert len(exprs) >= 5
    for i, e in enumerate(exprs):
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "DeviceClass",
            "metadata": {"name": f"doc-cel-{i}"},
            "spec": {"selectors": [{"cel": {"expression": e}}]},
        }
        try:
            client.request("POST", "/apis/resource.k8s.io/v1/deviceclasses", body=body, query={"dryRun": "All"})
        except Exception as err:
            raise AssertionError(f"documented CEL rejected: {e}: {err}") from None
    # run time: one claim, one request per expression, on a demo node (8 GPUs, 4 RDMA NICs at 400G)
    apply_device_classes(client)
    node = f"cel-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    SlicePublisher(client, "topodra.dev", node).sync(replace(discover_fleet(DEMO)[0], node_name=node))
    requests = []
    for i, e in enumerate(exprs):
        cls = "nic.topodra.dev" if ("rdma" in e or "bandwidth" in e) else "gpu.topodra.dev"
        sel = [{"cel": {"expression": e}}]
        requests.append({"name": f"r{i}", "exactly": {"deviceClassName": cls, "selectors": sel}})
    tmpl = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "cel"},
            "spec": {"spec": {"devices": {"requests": requests}}}}
    client.request("POST", RCT.format(ns=namespace), body=tmpl)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cel"},
           "spec": {"nodeSelector": {"kubernetes.io/hostname": node}, "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "c", "image": "busybox", "resources": {"claims": [{"name": "a"}]}}],
                    "resourceClaims": [{"name": "a", "resourceClaimTemplateName": "cel"}]}}
    client.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)
    try:
        wait_for(lambda: client.get(f"/api/v1/namespaces/{namespace}/pods/cel")["spec"].get("nodeName"),
                 timeout=60, what="pod with every documented selector bound")
    except AssertionError:
        status = client.get(f"/api/v1/namespaces/{namespace}/pods/cel")["status"]
        raise AssertionError(f"documented selectors did not allocate: {status}") from None
