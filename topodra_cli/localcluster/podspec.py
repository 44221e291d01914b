"""Pods for a real node: hostNetwork (there is no pod network), a local image, the node's taint tolerated."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from topodra_cli.localcluster.images import BUSYBOX_IMAGE
from topodra_cli.localcluster.kubelet import REAL_NODE_LABEL


def real_node_pod(
    name: str,
    command: str,
    *,
    node_name: str,
    claims: Sequence[tuple[str, str]] = (),
    image: str = BUSYBOX_IMAGE,
) -> dict[str, Any]:
    """A hostNetwork pod pinned to a real node: runs `sh -c command` once. `claims` = (name, template)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": {"kubernetes.io/hostname": node_name, REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
            }],
        },
    }
    if claims:
        pod["spec"]["resourceClaims"] = [{"name": n, "resourceClaimTemplateName": t} for n, t in claims]
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": n} for n, _ in claims]}
    return pod
