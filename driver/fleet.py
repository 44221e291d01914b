"""Fleet mode: publish the pools of every node of a topology file from one process.

For scale tests, benchmarks and the demo. One LIST of nodes and one LIST of this driver's slices,
then each node's plan is applied on a thread pool (the API calls are I/O bound; the apiserver does
the rest). Optionally creates the Node objects first (Ready, with the file's labels; nothing renews
their heartbeat, so the node lifecycle controller marks them NotReady after ~50 s).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from driver.model import NodeTopology
from driver.publisher import NODES, SLICES, PublisherMetrics, apply_plan, field_selector
from driver.slices import desired_slices, node_owner, plan_pool
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient, path_escape

log = structlog.get_logger("topodra.fleet")

Json = dict[str, Any]


@dataclass
class FleetResult:
    nodes: int = 0
    nodes_created: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def node_object(topo: NodeTopology) -> Json:
    """A schedulable Node for a simulated host (capacity generous enough for test pods)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    labels = {"kubernetes.io/hostname": topo.node_name, "topodra.dev/simulated": "true", **topo.labels}
    capacity = {"cpu": "64", "memory": "512Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": topo.node_name, "labels": labels},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "TopodraFleet",
                    "message": "simulated node",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        },
    }


def _create_node(client: KubeClient, topo: NodeTopology) -> bool:
    try:
        client.request("POST", NODES, body=node_object(topo))
        return True
    except ApiError as e:
        if e.conflict:  # already there
            return False
        raise


def _label_node(client: KubeClient, topo: NodeTopology) -> None:
    if topo.labels:
        client.request(
            "PATCH",
            f"{NODES}/{path_escape(topo.node_name)}",
            body={"metadata": {"labels": topo.labels}},
            content_type="application/merge-patch+json",
        )


def publish_fleet(
    client: KubeClient,
    topologies: Sequence[NodeTopology],
    driver: str,
    *,
    create_nodes: bool = False,
    label_nodes: bool = False,
    workers: int = 16,
    max_devices: int | None = None,
    metrics: PublisherMetrics | None = None,
) -> FleetResult:
    """Make the API hold exactly the given pools (other nodes' slices of this driver are left alone)."""
    t0 = time.monotonic()
    res = FleetResult(nodes=len(topologies))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fleet") as pool:
        if create_nodes:
            res.nodes_created = sum(pool.map(lambda t: _create_node(client, t), topologies))
        elif label_nodes:
            list(pool.map(lambda t: _label_node(client, t), topologies))
        uids = {n["metadata"]["name"]: n["metadata"]["uid"] for n in client.get(NODES).get("items") or []}
        existing: dict[str, list[Json]] = defaultdict(list)
        for s in client.get(SLICES, fieldSelector=field_selector(driver)).get("items") or []:
            existing[(s.get("spec") or {}).get("nodeName", "")].append(s)

        def one(topo: NodeTopology) -> tuple[str, str | None, tuple[int, int, int]]:
            name = topo.node_name
            if name not in uids:
                return name, "node not found (use --create-nodes)", (0, 0, 0)
            desired = desired_slices(topo, driver, max_devices)
            current = existing.get(name, [])
            for _ in range(5):
                plan = plan_pool(desired, current, driver, name, node_owner(name, uids[name]))
                if plan.empty:
                    return name, None, (0, 0, 0)
                try:
                    r = apply_plan(client, plan, metrics)
                    return name, None, (r.created, r.updated, r.deleted)
                except ApiError as e:
                    if not (e.conflict or e.transient):
                        return name, str(e), (0, 0, 0)
                    time.sleep(0.2)
                    current = client.get(SLICES, fieldSelector=field_selector(driver, name)).get("items") or []
            return name, "did not converge after 5 attempts", (0, 0, 0)

        for name, err, (c, u, d) in pool.map(one, topologies):
            if err:
                res.errors[name] = err
            elif c == u == d == 0:
                res.unchanged += 1
            res.created += c
            res.updated += u
            res.deleted += d
    res.seconds = time.monotonic() - t0
    log.info(
        "fleet_published",
        nodes=res.nodes,
        nodes_created=res.nodes_created,
        created=res.created,
        updated=res.updated,
        deleted=res.deleted,
        unchanged=res.unchanged,
        errors=len(res.errors),
        seconds=round(res.seconds, 2),
    )
    for name, err in list(res.errors.items())[:10]:
        log.error("fleet_node_failed", node=name, reason=err)
    return res
