"""The few API calls the checks make, over kubeaccess's KubeClient, and a wait loop that explains itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubeaccess.errors import ApiError
from kubeaccess.sync import Json, KubeClient, path_escape
from topodra_cli.conformance.model import CheckFailed

T = TypeVar("T")
RESOURCE = "/apis/resource.k8s.io/v1"


# The checks' client: kubeaccess's, whose get_text reads container logs.
Client = KubeClient


def ns_path(ns: str, kind: str) -> str:
    """Collection path of a namespaced kind: pods, jobs, resourceclaims, resourceclaimtemplates, events."""
    group = {"pods": "/api/v1", "events": "/api/v1", "serviceaccounts": "/api/v1", "jobs": "/apis/batch/v1",
             "resourceclaims": RESOURCE, "resourceclaimtemplates": RESOURCE}[kind]
    return f"{group}/namespaces/{path_escape(ns)}/{kind}"


def create(c: KubeClient, ns: str, kind: str, body: Json) -> Json:
    return c.request("POST", ns_path(ns, kind), body=body)


def get(c: KubeClient, ns: str, kind: str, name: str) -> Json | None:
    try:
        return c.get(f"{ns_path(ns, kind)}/{path_escape(name)}")
    except ApiError as e:
        if e.not_found:
            return None
        raise


def items(c: KubeClient, ns: str, kind: str, **query: Any) -> list[Json]:
    return list(c.get(ns_path(ns, kind), **query).get("items") or [])


def delete(c: KubeClient, ns: str, kind: str, name: str) -> None:
    try:
        c.request("DELETE", f"{ns_path(ns, kind)}/{path_escape(name)}", body={"propagationPolicy": "Background"})
    except ApiError as e:
        if not e.not_found:
            raise


def pod_log(c: Client, ns: str, pod: str, container: str | None = None) -> str:
    try:
        return c.get_text(f"{ns_path(ns, 'pods')}/{path_escape(pod)}/log", container=container)
    except ApiError:
        return ""  # not started yet: the caller keeps waiting


def events_of(c: KubeClient, ns: str, name: str, last: int = 5) -> list[str]:
    evs = items(c, ns, "events", fieldSelector=f"involvedObject.name={name}")
    evs.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    return [f"{e.get('reason')}: {e.get('message', '').strip()}" for e in evs[-last:]]


def describe_pod(c: KubeClient, ns: str, pod: Json | None, name: str) -> str:
    """One line on where a pod stands: phase, node, why it waits, its last events."""
    if pod is None:
        return f"pod {name}: not found"
    st = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName") or "unbound"
    why = []
    for cond in st.get("conditions") or []:
        if cond.get("status") != "True" and cond.get("message"):
            why.append(f"{cond['type']}={cond.get('reason', '')}: {cond['message']}")
    for cs in st.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason"):
            why.append(f"container {cs['name']} {waiting['reason']}: {waiting.get('message', '')}".rstrip(": "))
    evs = events_of(c, ns, name, last=3)
    return (f"pod {name}: {st.get('phase', '?')} on {node}" + (f"; {'; '.join(why)}" if why else "")
            + (f"; events: {' | '.join(evs)}" if evs else ""))


def wait_for(pred: Callable[[], T | None], timeout: float, what: str, explain: Callable[[], str] | None = None,
             interval: float = 1.0) -> T:
    """Poll until `pred` returns something truthy; else CheckFailed naming `what` and what `explain` sees."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = pred()
        except ApiError as e:
            if not e.transient:
                raise
            got = None
        if got:
            return got
        if time.monotonic() >= deadline:
            seen = ""
            if explain is not None:
                try:
                    seen = explain()
                except ApiError as e:
                    seen = f"(could not look: {e})"
            raise CheckFailed(f"{what}: not within {timeout:.0f}s" + (f"; seen: {seen}" if seen else ""))
        time.sleep(interval)
