"""Acts as the kubelet of fake nodes: renews their Leases so the node-lifecycle controller keeps them Ready.

Runs as its own process (`python -m topodra_cli.localcluster.heartbeat`), recorded like every other
component, so a detached `local-cluster up` keeps fake nodes alive and `down` stops it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

FAKE_NODE_LABEL = "topodra.dev/fake-node"
LEASE_NS = "kube-node-lease"
LEASE_SECONDS = 40


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def renew_lease(coord: Any, node_name: str, node_uid: str) -> None:
    body = {
        "metadata": {
            "name": node_name,
            "namespace": LEASE_NS,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}],
        },
        "spec": {"holderIdentity": node_name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now_micro()},
    }
    try:
        coord.patch_namespaced_lease(node_name, LEASE_NS, {"spec": body["spec"]})
    except ApiException as e:
        if e.status != 404:
            raise
        coord.create_namespaced_lease(LEASE_NS, body)


def beat_once(api: client.ApiClient, pool: ThreadPoolExecutor) -> int:
    core = client.CoreV1Api(api)
    coord = client.CoordinationV1Api(api)
    nodes = core.list_node(label_selector=f"{FAKE_NODE_LABEL}=true").items
    futures = [pool.submit(renew_lease, coord, n.metadata.name, n.metadata.uid) for n in nodes]
    for f in futures:
        try:
            f.result()
        except ApiException as e:
            print(f"heartbeat: lease renewal failed: {e.status} {e.reason}", file=sys.stderr)
    return len(nodes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="renew the Leases of fake nodes")
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--interval", type=float, default=10.0)
    args = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cfg = client.Configuration()
    config.load_kube_config(args.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 32
    api = client.ApiClient(cfg)
    with ThreadPoolExecutor(16) as pool:
        while not stop.is_set():
            start = time.monotonic()
            try:
                beat_once(api, pool)
            except Exception as e:  # an apiserver restart must not end the heartbeat
                print(f"heartbeat: {type(e).__name__}: {e}", file=sys.stderr)
            stop.wait(max(0.5, args.interval - (time.monotonic() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
