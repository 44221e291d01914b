"""kubeaccess against the real apiserver: both clients list (paginated), watch and map its errors the same way."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubeaccess.aio import AsyncKube
from kubeaccess.credentials import load_credentials
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED
from kubeaccess.sync import KubeClient
from tests.fakes.kube import wait_for
from topodra_cli.localcluster import LocalCluster

pytestmark = pytest.mark.cluster


def _cm(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "ünïcödé ✓"}}


def test_errors_carry_the_apiserver_status(cluster: LocalCluster, namespace: str) -> None:
    c = KubeClient.load(str(cluster.kubeconfig))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    c.request("POST", path, body=_cm("a"))
    with pytest.raises(ApiError) as e:
        c.request("POST", path, body=_cm("a"))
    assert e.value.status == 409 and e.value.body["reason"] == "AlreadyExists" and not e.value.transient
    with pytest.raises(ApiError) as e:
        c.get(f"{path}/missing")
    assert e.value.not_found and e.value.reason == 'configmaps "missing" not found'
    stale = c.get(f"{path}/a")
    c.request("PUT", f"{path}/a", body={**stale, "data": {"k": "v2"}})
    with pytest.raises(ApiError) as e:  # the old resourceVersion: someone wrote in between
        c.request("PUT", f"{path}/a", body={**stale, "data": {"k": "v3"}})
    assert e.value.conflict


def test_sync_and_async_clients_see_the_same_objects(cluster: LocalCluster, namespace: str) -> None:
    c = KubeClient.load(str(cluster.kubeconfig))
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    # The controller-manager adds kube-root-ca.crt to every namespace; let it land before we list.
    wait_for(lambda: c.get(f"{path}/kube-root-ca.crt"), 30, what="kube-root-ca.crt")
    for i in range(5):
        c.request("POST", path, body=_cm(f"cm-{i}"))
    listed = c.get(path)
    want = sorted(o["metadata"]["name"] for o in listed["items"])
    rv = listed["metadata"]["resourceVersion"]

    # The sync watch from the list's resourceVersion sees the next create, after its CONNECTED event.
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def watch() -> None:
        for ev in c.watch(path, {"resourceVersion": rv, "timeoutSeconds": 20}, timeout=30):
            name = (ev.get("object") or {}).get("metadata", {}).get("name", "")
            seen.append((str(ev["type"]), name))
            if name == "late":
                done.set()
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()

    async def run_async() -> tuple[list[str], str, list[tuple[str, str]]]:
        api = AsyncKube.from_credentials(load_credentials(str(cluster.kubeconfig)))
        try:
            names, list_rv = await api.list_all(path, {}, lambda o: str(o["metadata"]["name"]), page=2)
            events: list[tuple[str, str]] = []
            async with contextlib.aclosing(api.watch(path, {"resourceVersion": list_rv, "timeoutSeconds": "20"},
                                                     silence=30)) as stream:
                async for ev in stream:
                    name = (ev.get("object") or {}).get("metadata", {}).get("name", "")
                    events.append((str(ev["type"]), name))
                    if ev["type"] == CONNECTED:
                        # Written once both watches run: each must report it.
                        await asyncio.to_thread(c.request, "POST", path, body=_cm("late"))
                    if name == "late":
                        break
            return sorted(names), list_rv, events
        finally:
            await api.close()

    names, _, events = asyncio.run(run_async())
    assert done.wait(20), seen
    assert names == want  # 5 objects over 3 pages of 2 (+ kube-root-ca.crt)
    assert events == [(CONNECTED, ""), ("ADDED", "late")], events
    assert seen[0] == (CONNECTED, "") and seen[-1] == ("ADDED", "late")


def test_tls_server_name_is_what_gets_verified(cluster: LocalCluster, tmp_path: Path) -> None:
    doc = yaml.safe_load(cluster.kubeconfig.read_text())

    def with_name(name: str) -> str:
        doc["clusters"][0]["cluster"]["tls-server-name"] = name
        f = tmp_path / f"kc-{name}"
        f.write_text(yaml.safe_dump(doc))
        return str(f)

    good, bad = with_name("kubernetes.default.svc"), with_name("not-the-apiserver.example")
    assert KubeClient.load(good).get("/api/v1/namespaces/default")["metadata"]["name"] == "default"
    with pytest.raises(ApiError) as e:
        KubeClient.load(bad).get("/api/v1/namespaces/default")
    assert e.value.status == 0 and "not-the-apiserver.example" in e.value.reason

    async def list_with(kc: str) -> list[str]:
        api = AsyncKube.from_credentials(load_credentials(kc))
        try:
            names, _ = await api.list_all("/api/v1/namespaces", {}, lambda o: str(o["metadata"]["name"]))
            return names
        finally:
            await api.close()

    assert "default" in asyncio.run(list_with(good))
    with pytest.raises(ApiError) as e:
        asyncio.run(list_with(bad))
    assert e.value.status == 0 and "not-the-apiserver.example" in e.value.reason
