"""Install topodra's own CustomResourceDefinitions (deploy/crds/) into a local cluster and wait until served."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from topodra_cli.localcluster.processes import ClusterError

# A source checkout's deploy/crds; the CRDs are test and install material, not part of the Python package.
CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"
COSCHEDULING_PODGROUP = CRD_DIR / "coscheduling-podgroup.yaml"


def install_crd(api_client: Any, path: Path, timeout: float = 30.0) -> str:
    """Create (or update) the CRD in `path`; return its name once the apiserver reports it Established."""
    from kubernetes import client

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"CRD {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
        raise ClusterError(f"CRD {path}: not a CustomResourceDefinition")
    name = str(doc["metadata"]["name"])
    ext = client.ApiextensionsV1Api(api_client)
    try:
        ext.create_custom_resource_definition(doc)
    except client.ApiException as e:
        if e.status != 409:
            raise
        current = ext.read_custom_resource_definition(name)
        doc["metadata"]["resourceVersion"] = current.metadata.resource_version
        ext.replace_custom_resource_definition(name, doc)
    deadline = time.monotonic() + timeout
    while True:
        crd = ext.read_custom_resource_definition(name)
        conds = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
        if conds.get("Established") == "True":
            return name
        if time.monotonic() > deadline:
            raise ClusterError(f"CRD {name} not Established after {timeout:.0f}s (conditions {conds})")
        time.sleep(0.1)


def install_coscheduling_podgroup(api_client: Any) -> str:
    """The minimal scheduler-plugins Coscheduling PodGroup (scheduling.x-k8s.io/v1alpha1)."""
    return install_crd(api_client, COSCHEDULING_PODGROUP)
