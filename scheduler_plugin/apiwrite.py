"""The extender's writes to the API: nominations, plan annotations, bindings, claim releases, Events.

Every write is one small request with a short timeout; failures come back as `kubeaccess.errors.ApiError`
and the caller decides (a lost nomination only costs kube-scheduler a normal pass). The transport is the
shared `kubeaccess` layer; this module only knows paths and bodies.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol

Json = dict[str, Any]
MERGE = "application/merge-patch+json"


class Requester(Protocol):
    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      timeout: float = 10.0) -> Json: ...


def _pod(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{name}"


class ApiWriter:
    def __init__(self, api: Requester, component: str = "topodra-extender") -> None:
        self.api = api
        self.component = component

    async def nominate(self, ns: str, name: str, node: str) -> None:
        """status.nominatedNodeName: kube-scheduler tries this node first (and only, if it passes)."""
        await self.api.request("PATCH", _pod(ns, name) + "/status", {"status": {"nominatedNodeName": node or None}},
                               MERGE)

    async def annotate(self, ns: str, name: str, annotations: dict[str, str | None]) -> None:
        """A metadata change is also what wakes a pod kube-scheduler parked as unschedulable."""
        await self.api.request("PATCH", _pod(ns, name), {"metadata": {"annotations": annotations}}, MERGE)

    async def bind(self, ns: str, name: str, uid: str, node: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns, "uid": uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        await self.api.request("POST", _pod(ns, name) + "/binding", body)

    async def get_claim(self, ns: str, name: str) -> Json:
        return await self.api.request("GET", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}")

    async def deallocate_claim(self, claim: Json) -> None:
        """Clear an allocation no pod uses (what kube-scheduler's DRA PostFilter does), guarded by the
        resourceVersion read just before, so a claim that a pod reserved meanwhile is left alone."""
        meta = claim.get("metadata") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        body = dict(claim)
        body["status"] = {**(claim.get("status") or {}), "allocation": None, "reservedFor": None, "devices": None}
        await self.api.request("PUT", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}/status", body)

    async def event(self, involved: Json, reason: str, message: str, type_: str = "Normal") -> None:
        """A core/v1 Event on a pod, PodGroup or Job (`involved` is its ObjectReference)."""
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = involved.get("namespace") or "default"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{involved.get('name', 'x')}.", "namespace": ns},
            "involvedObject": involved, "reason": reason, "message": message[:1024], "type": type_,
            "source": {"component": self.component}, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "reportingComponent": self.component, "reportingInstance": self.component,
        }
        await self.api.request("POST", f"/api/v1/namespaces/{ns}/events", body)
