"""ResourceSlice devices, ResourceClaimTemplates and pods with claims, as the API takes them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from topodra_cli.localcluster.binaries import repo_root

STD = "resource.kubernetes.io"
GPU_CLASS = "gpu.topodra.dev"
NIC_CLASS = "nic.topodra.dev"
Json = dict[str, Any]


def device_classes() -> list[Json]:
    """topodra's DeviceClasses as users install them (deploy/deviceclasses.yaml)."""
    docs = yaml.safe_load_all((repo_root() / "deploy" / "deviceclasses.yaml").read_text())
    return [d for d in docs if d]


def device(kind: str, i: int, root: str, numa: int) -> Json:
    """A slice device `<kind>-<i>` with the standard topology attributes (GPUs on bus 0x10+, NICs on 0x80+)."""
    bus = (0x10 if kind == "gpu" else 0x80) + i
    return {"name": f"{kind}-{i}", "attributes": {
        "type": {"string": kind}, f"{STD}/pcieRoot": {"string": root}, f"{STD}/numaNode": {"int": numa},
        f"{STD}/pciBusID": {"string": f"0000:{bus:02x}:00.0"}}}


def gpu(i: int, root: str, numa: int) -> Json:
    return device("gpu", i, root, numa)


def nic(i: int, root: str, numa: int) -> Json:
    return device("nic", i, root, numa)


def eight_by_eight() -> list[Json]:
    """8 GPUs + 8 NICs, 2 + 2 per PCIe root, 4 roots, 2 NUMA nodes."""
    roots = [(f"pci0000:{r * 0x40:02x}", r // 2) for r in range(4)]
    return [gpu(i, *roots[i // 2]) for i in range(8)] + [nic(i, *roots[i // 2]) for i in range(8)]


def request(name: str, device_class: str, count: int | None = None, selectors: Sequence[str] = ()) -> Json:
    """A claim request for exactly `count` devices of a class (the class's default of 1 when None)."""
    exactly: Json = {"deviceClassName": device_class}
    if count is not None:
        exactly["count"] = count
    if selectors:
        exactly["selectors"] = [{"cel": {"expression": s}} for s in selectors]
    return {"name": name, "exactly": exactly}


def claim_template(
    name: str, requests: Sequence[Json], constraints: Sequence[Json] = (), namespace: str | None = None
) -> Json:
    devices: Json = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = list(constraints)
    meta: Json = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": meta,
            "spec": {"spec": {"devices": devices}}}


def gpu_nic_template(
    namespace: str | None,
    name: str,
    gpus: int = 1,
    nics: int = 1,
    match: str | None = None,
    gpu_selectors: Sequence[str] = (),
) -> Json:
    """`gpus` GPUs (request `gpu`) and `nics` NICs (request `nic`); with `match`, all on the same value of it."""
    reqs = []
    if gpus:
        reqs.append(request("gpu", GPU_CLASS, gpus, gpu_selectors))
    if nics:
        reqs.append(request("nic", NIC_CLASS, nics))
    constraints = [{"requests": [r["name"] for r in reqs], "matchAttribute": match}] if match else []
    return claim_template(name, reqs, constraints, namespace)


def claim_pod(
    name: str,
    templates: Mapping[str, str],
    *,
    namespace: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    image: str = "busybox",
) -> Json:
    """A pod whose one container uses a claim per entry of `templates` (claim name -> template name)."""
    meta: Json = {"name": name, "labels": dict(labels or {}), "annotations": dict(annotations or {})}
    if namespace is not None:
        meta["namespace"] = namespace
    spec: Json = {"terminationGracePeriodSeconds": 0,
                  "containers": [{"name": "main", "image": image,
                                  "resources": {"claims": [{"name": k} for k in templates]}}],
                  "resourceClaims": [{"name": k, "resourceClaimTemplateName": v} for k, v in templates.items()]}
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
