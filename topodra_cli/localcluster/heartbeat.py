"""Acts as the kubelet of fake nodes: renews their Leases so the node-lifecycle controller keeps them Ready.

Runs as its own process (`python -m topodra_cli.localcluster.heartbeat`), recorded like every other
component, so a detached `local-cluster up` keeps fake nodes alive and `down` stops it. It talks to
the apiserver through `kubeaccess` (raw JSON): thousands of Leases every ten seconds, no models.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient, path_escape

FAKE_NODE_LABEL = "topodra.dev/fake-node"
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NS}/leases"

log = structlog.get_logger("topodra.heartbeat")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renew_lease(client: KubeClient, node_name: str, node_uid: str) -> None:
    spec = {"holderIdentity": node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()}
    path = f"{LEASES}/{path_escape(node_name)}"
    try:
        client.request("PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json")
        return
    except ApiError as e:
        if not e.not_found:
            raise
    try:
        client.request("POST", LEASES, body={
            "metadata": {
                "name": node_name,
                "namespace": LEASE_NS,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}],
            },
            "spec": spec,
        })
    except ApiError as e:
        # The heartbeat process and the node's creator can both find the Lease missing and race to
        # create it; whoever loses renews the one the other made.
        if not e.conflict:
            raise
        client.request("PATCH", path, body={"spec": spec}, content_type="application/merge-patch+json")


def beat_once(client: KubeClient, pool: ThreadPoolExecutor) -> int:
    nodes = client.get("/api/v1/nodes", labelSelector=f"{FAKE_NODE_LABEL}=true").get("items") or []
    futures = [pool.submit(renew_lease, client, n["metadata"]["name"], n["metadata"]["uid"]) for n in nodes]
    for f in futures:
        try:
            f.result()
        except ApiError as e:
            log.warning("lease_renewal_failed", status=e.status, reason=e.reason)
    return len(nodes)


def main(argv: list[str] | None = None) -> int:
    from topodra_cli.logsetup import configure

    ap = argparse.ArgumentParser(description="renew the Leases of fake nodes")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--interval", type=float, default=10.0)
    args = ap.parse_args(argv)
    configure("info")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = KubeClient.load(args.kubeconfig, pool_size=32, user_agent="topodra-heartbeat")
    with ThreadPoolExecutor(16) as pool:
        while not stop.is_set():
            start = time.monotonic()
            try:
                beat_once(client, pool)
            except Exception as e:  # an apiserver restart must not end the heartbeat
                log.warning("heartbeat_failed", error=f"{type(e).__name__}: {e}")
            stop.wait(max(0.5, args.interval - (time.monotonic() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
