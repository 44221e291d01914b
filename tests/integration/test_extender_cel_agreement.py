"""The extender's CEL verdicts against the real kube-scheduler's DRA allocator, node by node.

Every claim below gets its own three fake nodes (the same three device layouts each time), so that
whether a pod fits depends on selectors alone. For each (claim, node) a pod pinned to that node by a
hostname nodeSelector shows what the in-tree allocator does: bound (allocated) or refused, a CEL runtime
error included. The extender's filter runs in-process over an index filled from the same API objects;
its passed nodes must be exactly the allocator's, except where it says "cannot judge" (it then passes
every node and reports the selector), which must be a superset.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import run_filter
from scheduler_plugin.index import Index
from scheduler_plugin.model import parse_pod
from tests.integration.test_extender_support import SLICES, Fleet, events, pod_node
from topodra_cli.testing.objects import GPU_CLASS, Json, claim_pod, claim_template, device, request

pytestmark = pytest.mark.cluster

D = 'device.attributes["topodra.dev"]'
CLASSES = "/apis/resource.k8s.io/v1/deviceclasses"


def gpu(i: int, index: int, product: str, version: str) -> Json:
    d = device("gpu", i, "pci0000:00", 0)
    d["attributes"].update({"index": {"int": index}, "productName": {"string": product},
                            "driverVersion": {"version": version}})
    return d


# Three layouts: what each node of a claim's triple publishes.
LAYOUTS = (
    [gpu(0, 0, "Ä", "550.54.15"), gpu(1, 1, "B", "550.54.15")],
    [gpu(0, 4, "A", "535.0.0")],
    [gpu(0, 0, "Ä", "600.1.0-rc.1")],
)


@dataclass(frozen=True)
class Case:
    name: str
    device_class: str  # "" = gpu.topodra.dev; else a key of class_exprs
    selectors: tuple[str, ...]
    judged: bool = True  # False: outside the subset, the extender must pass every node


CASES = (
    Case("class-index", "first", ()),  # DeviceClass on an identity attribute (was: every node refused)
    Case("class-semver", "newdriver", ()),
    Case("non-ascii", "", (f'{D}.productName == "Ä"',)),
    Case("escaped", "", (f'{D}.productName == "\\u00c4"',)),
    Case("octal-is-code-point", "", (f'{D}.productName == "\\303\\204"',)),  # "Ã„", not the UTF-8 of Ä
    Case("version-eq-string", "", (f'{D}.driverVersion == "550.54.15"',)),  # runtime error everywhere
    Case("version-ne-string", "", (f'{D}.driverVersion != "550.54.15"',)),  # true everywhere
    Case("version-in-literals", "", (f'{D}.driverVersion in ["550.54.15"]',)),  # error everywhere
    Case("version-eq-semver", "", (f'{D}.driverVersion == semver("550.54.15")',)),
    Case("missing-domain", "", (f'!has(device.attributes["x.example"].a) && {D}.index >= 4',)),
    Case("unjudged", "", (f'{D}.productName.matches("^Ä$")',), judged=False),
)


def class_exprs() -> dict[str, str]:
    return {"first": f'{D}.type == "gpu" && {D}.index < 1',
            "newdriver": f'{D}.type == "gpu" && {D}.driverVersion.isGreaterThan(semver("540.0.0"))'}


@pytest.fixture()
def classes(client: KubeClient) -> Iterator[dict[str, str]]:
    """The test's DeviceClasses (cluster-scoped, so uniquely named and deleted afterwards)."""
    suffix = uuid.uuid4().hex[:6]
    names = {k: f"{k}-{suffix}.topodra.dev" for k in class_exprs()}
    for k, expr in class_exprs().items():
        client.request("POST", CLASSES, body={"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                                              "metadata": {"name": names[k]},
                                              "spec": {"selectors": [{"cel": {"expression": expr}}]}})
    try:
        yield names
    finally:
        for n in names.values():
            with contextlib.suppress(ApiError):
                client.request("DELETE", f"{CLASSES}/{n}")


def allocator_verdict(client: KubeClient, ns: str, pod: str) -> bool | None:
    """True: bound (devices allocated); False: the scheduler refused it (unschedulable or error)."""
    if pod_node(client, ns, pod):
        return True
    conds = client.get(f"/api/v1/namespaces/{ns}/pods/{pod}").get("status", {}).get("conditions") or []
    if any(c.get("type") == "PodScheduled" and c.get("status") == "False" for c in conds):
        return False
    return None


def extender_passes(client: KubeClient, ns: str, nodes: dict[str, list[str]], probes: dict[str, Json]
                    ) -> tuple[dict[str, set[str]], dict[str, tuple[str, ...]]]:
    """Per case: the nodes the extender's filter passes, and what it could not judge."""
    idx = Index(default_config())
    every = {n for triple in nodes.values() for n in triple}
    for dc in client.get(CLASSES).get("items") or []:
        apply_event(idx, "deviceclasses", "ADDED", dc)
    for s in client.get(SLICES).get("items") or []:
        if s["spec"].get("nodeName") in every:
            apply_event(idx, "resourceslices", "ADDED", s)
    for n in every:
        apply_event(idx, "nodes", "ADDED", client.get(f"/api/v1/nodes/{n}"))
    for t in client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates").get("items") or []:
        apply_event(idx, "resourceclaimtemplates", "ADDED", t)
    passed, notes = {}, {}
    for case, triple in nodes.items():
        out = run_filter(idx, idx.cfg, parse_pod(probes[case]), tuple(triple), time.monotonic())
        assert not out.error, out.error
        passed[case], notes[case] = set(out.passed), out.notes
    return passed, notes


def test_extender_agrees_with_the_in_tree_allocator(client: KubeClient, fleet: Fleet, namespace: str,
                                                    classes: dict[str, str]) -> None:
    nodes: dict[str, list[str]] = {}
    probes: dict[str, Json] = {}
    pods: dict[tuple[str, str], str] = {}
    for case in CASES:
        cls = classes[case.device_class] if case.device_class else GPU_CLASS
        client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaimtemplates",
                       body=claim_template(case.name, [request("gpu", cls, 1, case.selectors)]))
        nodes[case.name] = [fleet.add(layout) for layout in LAYOUTS]
        probes[case.name] = {**claim_pod(f"probe-{case.name}", {"acc": case.name}, namespace=namespace),
                             "metadata": {"name": f"probe-{case.name}", "namespace": namespace,
                                          "uid": f"uid-{case.name}"}}
        for i, node in enumerate(nodes[case.name]):
            name = pods[(case.name, node)] = f"{case.name}-{i}"
            client.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=claim_pod(
                name, {"acc": case.name}, node_selector={"kubernetes.io/hostname": node}))

    verdicts: dict[tuple[str, str], bool | None] = dict.fromkeys(pods)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and any(v is None for v in verdicts.values()):
        for key, pod in pods.items():
            if verdicts[key] is None:
                verdicts[key] = allocator_verdict(client, namespace, pod)
        time.sleep(0.5)
    pending = [pods[k] for k, v in verdicts.items() if v is None]
    assert not pending, f"no scheduling outcome for {pending}; events: {events(client, namespace)[-10:]}"

    passed, notes = extender_passes(client, namespace, nodes, probes)
    for case in CASES:
        allocated = {n for n in nodes[case.name] if verdicts[(case.name, n)]}
        got = passed[case.name]
        if case.judged:
            assert got == allocated, (case, {"extender": got, "allocator": allocated}, nodes[case.name])
            assert not any("CEL not evaluated" in n for n in notes[case.name]), notes[case.name]
        else:
            assert got == set(nodes[case.name]) and allocated < got, (case, got, allocated)
            assert any("CEL not evaluated" in n for n in notes[case.name]), notes[case.name]
    # The expected outcomes themselves (the allocator's; the extender matched them above).
    want = {"class-index": [0, 2], "class-semver": [0, 2], "non-ascii": [0, 2], "escaped": [0, 2],
            "octal-is-code-point": [], "version-eq-string": [], "version-ne-string": [0, 1, 2],
            "version-in-literals": [], "version-eq-semver": [0], "missing-domain": [1], "unjudged": [0, 2]}
    for case in CASES:
        allocated_idx = [i for i, n in enumerate(nodes[case.name]) if verdicts[(case.name, n)]]
        assert allocated_idx == want[case.name], (case.name, allocated_idx)
