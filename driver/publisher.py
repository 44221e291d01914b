"""Publishing ResourceSlices: make the API match what discovery found, and keep it so.

`SlicePublisher.sync` is one reconcile pass for one node (list, plan, write). `PublishLoop` runs it
forever: on start, after every watch event that is not our own write (a slice deleted or edited by
someone else, e.g. the kubelet wiping node slices), on every re-discovery (period or SIGHUP), and with
backoff after API errors or outages. Slices are never deleted on shutdown.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from driver.discovery import DiscoveryError
from driver.model import NodeTopology
from driver.slices import Plan, desired_slices, device_diff, node_owner, plan_pool, validate_slice
from kubeaccess.backoff import Backoff
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED
from kubeaccess.sync import KubeClient, path_escape

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
NODES = "/api/v1/nodes"

Json = dict[str, Any]
log = structlog.get_logger("topodra.publisher")


class PublisherMetrics:
    """Prometheus metrics of slice publishing, registered on the given registry (no global state)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.syncs = Counter("topodra_slice_syncs", "Reconcile passes by result", ["result"], registry=r)
        self.writes = Counter("topodra_slice_writes", "ResourceSlice writes by verb", ["verb"], registry=r)
        self.dropped = Counter(
            "topodra_slice_fields_dropped", "Writes whose stored devices differ from the sent ones", registry=r
        )
        self.devices = Gauge("topodra_devices_published", "Devices in the published pool", ["type"], registry=r)
        self.generation = Gauge("topodra_pool_generation", "Published pool generation", registry=r)
        self.discovery_errors = Counter("topodra_discovery_errors", "Failed discoveries", registry=r)


def field_selector(driver: str, node: str | None = None) -> str:
    sel = f"spec.driver={driver}"
    return sel + (f",spec.nodeName={node}" if node else "")


@dataclass
class ApplyResult:
    deleted: int = 0
    updated: int = 0
    created: int = 0
    dropped: list[str] = field(default_factory=list)
    written: list[Json] = field(default_factory=list)  # stored objects as returned by the API


def apply_plan(client: KubeClient, plan: Plan, metrics: PublisherMetrics | None = None) -> ApplyResult:
    """Delete obsolete, update, create, in that order. Raises ApiError (409: re-plan; transient: back off)."""
    res = ApplyResult()
    for old in plan.deletes:
        meta = old.get("metadata") or {}
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
        }
        try:
            client.request("DELETE", f"{SLICES}/{path_escape(meta['name'])}", body=body)
        except ApiError as e:
            if not e.not_found:  # someone else deleted it first: fine
                raise
        res.deleted += 1
        if metrics:
            metrics.writes.labels("delete").inc()
    for verb, objs in (("update", plan.updates), ("create", plan.creates)):
        for obj in objs:
            problems = validate_slice(obj)
            if problems:  # a bug in the builder; never send what the API must reject
                raise ValueError(f"slice {obj['metadata']['name']} violates API limits: {problems}")
            if verb == "update":
                stored = client.request("PUT", f"{SLICES}/{path_escape(obj['metadata']['name'])}", body=obj)
                res.updated += 1
            else:
                stored = client.request("POST", SLICES, body=obj)
                res.created += 1
            if metrics:
                metrics.writes.labels(verb).inc()
            res.written.append(stored)
            # A disabled feature gate drops fields silently: say so instead of believing the write.
            diff = device_diff(obj["spec"]["devices"], (stored.get("spec") or {}).get("devices"))
            if diff:
                res.dropped.extend(f"{obj['metadata']['name']}: {d}" for d in diff)
                if metrics:
                    metrics.dropped.inc()
    return res


class SlicePublisher:
    """Publishes one node's pool (pool name = node name)."""

    def __init__(
        self,
        client: KubeClient,
        driver: str,
        node: str,
        *,
        metrics: PublisherMetrics | None = None,
        max_devices: int | None = None,
    ) -> None:
        self.client, self.driver, self.node = client, driver, node
        self.metrics = metrics or PublisherMetrics()
        self.max_devices = max_devices
        self._known_rvs: deque[str] = deque(maxlen=512)  # resourceVersions we wrote or verified
        self.generation = 0  # last pool generation written or seen; never goes backwards
        self._lock = threading.Lock()
        self.log = log.bind(node=node, driver=driver)

    def known(self, rv: str | None) -> bool:
        with self._lock:
            return rv is not None and rv in self._known_rvs

    def _remember(self, objs: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            for o in objs:
                rv = (o.get("metadata") or {}).get("resourceVersion")
                if rv and rv not in self._known_rvs:
                    self._known_rvs.append(rv)

    def owner(self) -> Json:
        node = self.client.get(f"{NODES}/{path_escape(self.node)}")
        return node_owner(self.node, node["metadata"]["uid"])

    def list_slices(self) -> list[Json]:
        items = self.client.get(SLICES, fieldSelector=field_selector(self.driver, self.node)).get("items") or []
        return list(items)

    def sync(self, topo: NodeTopology, max_conflicts: int = 5) -> Plan:
        """One reconcile pass; conflicts (someone wrote in between) re-plan at once, up to a limit."""
        desired = desired_slices(topo, self.driver, self.max_devices)
        for attempt in range(max_conflicts + 1):
            owner = self.owner()
            existing = self.list_slices()
            plan = plan_pool(desired, existing, self.driver, self.node, owner, min_generation=self.generation)
            if plan.empty:
                self.generation = max(self.generation, plan.generation)
                self._remember(existing)
                self.metrics.syncs.labels("unchanged").inc()
                return plan
            try:
                res = apply_plan(self.client, plan, self.metrics)
            except ApiError as e:
                if e.conflict and attempt < max_conflicts:
                    self.log.info("slice_conflict_replan", reason=e.reason, attempt=attempt + 1)
                    continue
                raise
            self.generation = max(self.generation, plan.generation)
            self._remember(res.written)
            self._remember(e for e in existing if e not in plan.deletes)
            self.metrics.syncs.labels("changed").inc()
            self.metrics.generation.set(plan.generation)
            for kind in ("gpu", "nic"):
                self.metrics.devices.labels(kind).set(len(topo.gpus if kind == "gpu" else topo.nics))
            self.log.info(
                "slices_published",
                generation=plan.generation,
                slices=len(desired),
                devices=len(topo.gpus) + len(topo.nics),
                deleted=res.deleted,
                updated=res.updated,
                created=res.created,
                reasons=list(plan.reasons)[:10],
            )
            if res.dropped:
                self.log.warning("slice_fields_dropped_by_api", differences=res.dropped[:20])
            return plan
        raise ApiError(409, "conflicts did not settle")  # pragma: no cover - loop always returns or raises


class PublishLoop:
    """Keeps one node's slices matching its hardware until stopped.

    `provider` is the discovery function; it runs at start, every `rediscover_interval` seconds (0 =
    never again) and whenever `rediscover()` is called (SIGHUP).
    """

    def __init__(
        self,
        publisher: SlicePublisher,
        provider: Callable[[], NodeTopology],
        *,
        rediscover_interval: float = 0.0,
        resync_interval: float = 300.0,
        watch: bool = True,
    ) -> None:
        self.publisher = publisher
        self.provider = provider
        self.rediscover_interval = rediscover_interval
        self.resync_interval = resync_interval
        self.watch_enabled = watch
        self.topology: NodeTopology | None = None
        self.synced = threading.Event()  # set after each successful sync
        self.syncs = 0
        self._kick = threading.Event()
        self._rediscover = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.log = publisher.log

    # ---- control, from other threads / signal handlers -------------------------------------------
    def kick(self) -> None:
        self._kick.set()

    def rediscover(self) -> None:
        self._rediscover.set()
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def current_topology(self) -> NodeTopology | None:
        with self._lock:
            return self.topology

    # ---- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        watcher = None
        if self.watch_enabled:
            watcher = threading.Thread(target=self._watch, name="slice-watch", daemon=True)
            watcher.start()
        backoff = Backoff()
        next_discovery = 0.0
        topo: NodeTopology | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if topo is None or self._rediscover.is_set() or now >= next_discovery:
                self._rediscover.clear()
                try:
                    new = self.provider()
                except DiscoveryError as e:
                    self.publisher.metrics.discovery_errors.inc()
                    self.log.error("discovery_failed", reason=str(e), keeping_previous=topo is not None)
                    if topo is None:
                        self._wait(backoff.next())
                        continue
                else:
                    if new != topo:
                        self.log.info("topology_discovered", gpus=len(new.gpus), nics=len(new.nics))
                    topo = new
                    with self._lock:
                        self.topology = new
                next_discovery = now + self.rediscover_interval if self.rediscover_interval > 0 else float("inf")
            self._kick.clear()
            try:
                self.publisher.sync(topo)
            except ApiError as e:
                delay = backoff.next()
                self.log.warning("slice_sync_failed", reason=str(e), status=e.status, retry_in=round(delay, 2))
                self.publisher.metrics.syncs.labels("error").inc()
                self._wait(delay)
                continue
            backoff.reset()
            self.syncs += 1
            self.synced.set()
            wait = min(self.resync_interval, max(0.0, next_discovery - time.monotonic()))
            self._wait(wait)
        self.log.info("publisher_stopped", note="slices are left in place")

    def _wait(self, seconds: float) -> None:
        self._kick.wait(timeout=seconds)

    def _watch(self) -> None:
        """Kick a sync when a slice of ours changes in a way we did not cause."""
        p = self.publisher
        backoff = Backoff(cap=10.0)
        query = {
            "fieldSelector": field_selector(p.driver, p.node),
            "allowWatchBookmarks": "true",
            "timeoutSeconds": 300,
        }
        failed = False
        while not self._stop.is_set():
            try:
                for ev in p.client.watch(SLICES, query, timeout=330):
                    kind = ev.get("type")
                    if kind == CONNECTED:
                        if failed:  # reconnected after an outage: we may have missed events
                            failed = False
                            backoff.reset()
                            self.kick()
                        continue
                    if kind == "BOOKMARK":
                        continue
                    rv = ((ev.get("object") or {}).get("metadata") or {}).get("resourceVersion")
                    if kind == "DELETED" or not p.known(rv):
                        self.log.debug("slice_event", type=kind, name=ev["object"]["metadata"].get("name"))
                        self.kick()
                    if self._stop.is_set():
                        return
            except ApiError as e:
                failed = True
                delay = backoff.next()
                self.log.debug("slice_watch_failed", reason=str(e), retry_in=round(delay, 2))
                self._stop.wait(delay)
