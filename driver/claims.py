"""ResourceClaims in the API: read one claim, write the driver's device status.

The kubelet sends only namespace, name and UID; the driver reads the claim itself. `ClaimsApi` is
what the prepare logic needs; `KubeClientClaimsApi` implements it over the light REST client
(the `kubernetes` package's generated models are slow to import and we read a few fields).
Failures are `kubeaccess.errors.ApiError`, whichever implementation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from kubeaccess.sync import KubeClient

Json = dict[str, Any]
GROUP_PATH = "/apis/resource.k8s.io/v1"


class ClaimsApi(Protocol):
    def get_claim(self, namespace: str, name: str) -> Json: ...

    def apply_device_status(self, namespace: str, name: str, devices: Sequence[Json], field_manager: str) -> None: ...

    def node_event(self, node: str, reason: str, message: str) -> None: ...


def node_event_object(node: str, reason: str, message: str, component: str = "topodra.dev") -> Json:
    """A Warning Event about the Node (core/v1, namespace default), for problems an admin must see."""
    import time

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{node}.", "namespace": "default"},
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node},
        "type": "Warning",
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component, "host": node},
        "reportingComponent": component,
        "reportingInstance": node,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def claim_path(namespace: str, name: str) -> str:
    return f"{GROUP_PATH}/namespaces/{quote(namespace, safe='')}/resourceclaims/{quote(name, safe='')}"


@dataclass(frozen=True)
class Result:
    """One allocation result of a claim, as the plugin uses it."""

    request: str  # may be "<request>/<subrequest>"
    driver: str
    pool: str
    device: str
    admin_access: bool = False
    share_id: str | None = None

    @property
    def request_name(self) -> str:
        return self.request.split("/", 1)[0]


def allocation_results(claim: Mapping[str, Any]) -> list[Result] | None:
    """All results of `status.allocation.devices`, any driver; None when the claim is not allocated."""
    status = claim.get("status") or {}
    alloc = status.get("allocation") if isinstance(status, Mapping) else None
    if not isinstance(alloc, Mapping):
        return None
    devices = alloc.get("devices") or {}
    out = []
    for r in (devices.get("results") if isinstance(devices, Mapping) else None) or []:
        if not isinstance(r, Mapping):
            continue
        share = r.get("shareID")
        out.append(
            Result(
                request=str(r.get("request", "")),
                driver=str(r.get("driver", "")),
                pool=str(r.get("pool", "")),
                device=str(r.get("device", "")),
                admin_access=bool(r.get("adminAccess") or False),
                share_id=None if share in (None, "") else str(share),
            )
        )
    return out


def opaque_config(claim: Mapping[str, Any], driver: str) -> list[Json]:
    """`status.allocation.devices.config[]` entries for this driver: FromClass first, then FromClaim."""
    alloc = ((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}
    cfgs: list[Json] = [
        dict(c)
        for c in alloc.get("config") or []
        if isinstance(c, Mapping) and ((c.get("opaque") or {}).get("driver") == driver)
    ]
    return sorted(cfgs, key=lambda c: 0 if c.get("source") == "FromClass" else 1)


class KubeClientClaimsApi:
    """Claims over the light REST client (`kubeaccess.sync.KubeClient`): no `kubernetes` import."""

    def __init__(self, client: KubeClient, timeout: float = 10.0) -> None:
        self.client = client
        self.timeout = timeout

    def get_claim(self, namespace: str, name: str) -> Json:
        return self.client.request("GET", claim_path(namespace, name), timeout=self.timeout)

    def apply_device_status(self, namespace: str, name: str, devices: Sequence[Json], field_manager: str) -> None:
        body = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace},
            "status": {"devices": list(devices)},
        }
        self.client.request(
            "PATCH",
            claim_path(namespace, name) + "/status",
            body=body,
            query={"fieldManager": field_manager, "force": "true"},
            content_type="application/apply-patch+yaml",
            timeout=self.timeout,
        )

    def node_event(self, node: str, reason: str, message: str) -> None:
        self.client.request("POST", "/api/v1/namespaces/default/events", body=node_event_object(node, reason, message))
