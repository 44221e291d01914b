"""Plan pending pods as they appear and steer kube-scheduler to the chosen nodes.

The loop wakes on every pod change the watch delivers. A single pod with devices to allocate gets its best
node from `Planner` (devices set aside in the index) and a `status.nominatedNodeName`: kube-scheduler then
runs its filters, the DRA allocator included, on that one node instead of on a sample of the cluster.
Gang members go to the `Coordinator`, which plans whole gangs. A nomination that loses the race with
kube-scheduler (it took the pod before the write landed) costs nothing: the pod is scheduled the usual way,
and the filter still judges every node.

API writes run as tasks, at most `MAX_WRITES` at once; none blocks the loop or an HTTP handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import structlog

from kubeaccess.errors import ApiError
from scheduler_plugin.apiwrite import ApiWriter
from scheduler_plugin.claims import Unresolved, resolve
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.filter import claim_keys
from scheduler_plugin.gang.coordinator import Coordinator
from scheduler_plugin.gang.model import GangSpec
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.model import Pod
from scheduler_plugin.planner import Choice, Planner

MAX_WRITES = 32
RELEASE_DELAY = 3.0  # after failing a held bind: kube-scheduler's Unreserve clears reservedFor first
RELEASE_WAIT = 15.0  # how long a claim still reserved for its pod is watched for that Unreserve
EVENT_PODS = 5  # a gang's Event goes on its group object and on at most this many members
TICK = 1.0  # timeouts and replans are checked at least this often
STEERED_TTL = 600.0  # how long a nominated pod's devices stay set aside if nothing else ends it


class Steering:
    def __init__(self, index: Index, cfg: ExtenderConfig, planner: Planner, writer: ApiWriter | None,
                 metrics: Metrics, scheduler_names: tuple[str, ...] = ("default-scheduler",),
                 ready: Callable[[], bool] = lambda: True, steer_single: bool = True) -> None:
        self.index = index
        self.cfg = cfg
        self.planner = planner
        self.writer = writer
        self.metrics = metrics
        self.scheduler_names = frozenset(scheduler_names)
        self.ready = ready
        self.steer_single = steer_single
        self.coordinator: Coordinator | None = None
        self.wake = asyncio.Event()
        self.steered: dict[str, tuple[str, float]] = {}  # pod uid -> (node, when) of our nomination
        self._writes: set[asyncio.Task[None]] = set()
        self._last_write: dict[str, asyncio.Task[None]] = {}  # pod uid -> its newest write
        self._sem = asyncio.Semaphore(MAX_WRITES)
        self.log = structlog.get_logger("topodra.extender.steer")
        index.on_pending = self.wake.set

    # ---- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)
            self.wake.clear()
            if not self.ready():
                continue
            try:
                self.step()
            except Exception:  # the loop must survive a bad object; the pod is judged by kube-scheduler then
                self.log.exception("steer_step_failed")

    def step(self) -> None:
        ix = self.index
        changed, ix.pending_changed = ix.pending_changed, set()
        now = time.monotonic()
        ix.refresh(now)
        for uid in changed:
            pod = ix.pods.get(uid)
            if self.coordinator is not None and self.coordinator.observe(uid, pod):
                continue
            if pod is None or pod.node_name:
                self.steered.pop(uid, None)
                continue
            if self.steer_single:
                self._single(pod, now)
        if self.coordinator is not None:
            self.coordinator.plan_all()

    def _single(self, pod: Pod, now: float) -> None:
        if (pod.gated or pod.placement.opaque or not pod.claims or pod.scheduler_name not in self.scheduler_names
                or pod.nominated_node):
            return
        prev = self.steered.get(pod.uid)
        if prev is not None and now - prev[1] < self.cfg.decision_ttl_seconds:
            return
        try:
            req = resolve(pod, self.index, self.cfg.alignment)
        except Unresolved:
            return  # a claim not in the cache yet: its arrival changes the pod (claim status) and we retry
        if req.empty:
            return
        # The previous pod's reservation must be in the node states this pod is planned on (else both get the
        # same devices and the node is promised twice).
        self.index.refresh(now)
        t0 = time.perf_counter()
        choice = self.planner.best_node(pod, req)
        self.metrics.plan_seconds.labels("pod").observe(time.perf_counter() - t0)
        if not isinstance(choice, Choice):
            self.metrics.steered.labels("no_node").inc()
            return
        # Held until kube-scheduler gets to the pod (a long queue at 5,000 nodes takes minutes): its filter call
        # drops the reservation and takes it again only for the node it passes; binding or deletion ends it.
        self.index.reserve(pod, choice.node, choice.fit, claim_keys(pod), now, ttl=STEERED_TTL)
        self.index.hint(pod, choice.node, now)
        self.steered[pod.uid] = (choice.node, now)
        self.metrics.steered.labels("nominated").inc()
        if self.writer is not None:
            self._spawn(self.writer.nominate(pod.namespace, pod.name, choice.node), "nominate", pod)

    # ---- Actions (for the coordinator) ---------------------------------------------------------
    def steer(self, pod: Pod, node: str, annotations: dict[str, str | None]) -> None:
        if self.writer is None:
            return
        w = self.writer

        async def nominate_then_wake() -> None:
            # In this order: the annotation wakes a parked member, which must then find its nomination (else
            # kube-scheduler judges a sample of the cluster that need not hold the planned node).
            await w.nominate(pod.namespace, pod.name, node)
            await w.annotate(pod.namespace, pod.name, annotations)

        self._spawn(nominate_then_wake(), "steer", pod)

    def annotate(self, pod: Pod, annotations: dict[str, str | None]) -> None:
        if self.writer is not None:
            self._spawn(self.writer.annotate(pod.namespace, pod.name, annotations), "annotate", pod)

    def release_claims(self, pod: Pod, claims: list[tuple[str, str]]) -> None:
        if self.writer is not None and claims:
            self._spawn(self._release_claims(self.writer, claims), "release_claims", pod)

    async def _release_claims(self, w: ApiWriter, claims: list[tuple[str, str]]) -> None:
        await asyncio.sleep(RELEASE_DELAY)
        deadline = time.monotonic() + RELEASE_WAIT
        for ns, name in claims:
            conflicts = 0
            while conflicts < 3:
                try:
                    claim = await w.get_claim(ns, name)
                except ApiError as e:
                    if e.not_found:
                        break
                    raise
                st = claim.get("status") or {}
                if not st.get("allocation"):
                    break
                if st.get("reservedFor"):
                    # kube-scheduler's Unreserve (after the failed bind) may lag on a busy scheduler; with
                    # GenericWorkload on nothing else deallocates (no per-pod PostFilter in a group cycle).
                    # A claim still reserved when the wait ends is in use: not ours to take back.
                    if time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(1.0)
                    continue
                try:
                    await w.deallocate_claim(claim)
                    self.log.info("claim_deallocated", claim=f"{ns}/{name}")
                    break
                except ApiError as e:
                    if not e.conflict:
                        raise
                    conflicts += 1

    def event(self, spec: GangSpec, pods: Iterable[Pod], reason: str, message: str, warning: bool) -> None:
        if self.writer is None:
            return
        kind = "Warning" if warning else "Normal"
        targets: list[dict[str, Any]] = []
        if spec.owner is not None:
            o = spec.owner
            targets.append({"apiVersion": o.api_version, "kind": o.kind, "namespace": o.namespace,
                            "name": o.name, "uid": o.uid})
        for p in list(pods)[:EVENT_PODS]:
            targets.append({"apiVersion": "v1", "kind": "Pod", "namespace": p.namespace, "name": p.name,
                            "uid": p.uid})
        for t in targets:
            self._spawn(self.writer.event(t, reason, message, kind), "event", None)

    async def bind(self, ns: str, name: str, uid: str, node: str) -> str:
        if self.writer is None:
            return "topodra: the extender has no API access to bind with"
        try:
            await self.writer.bind(ns, name, uid, node)
            self.metrics.binds.labels("bound").inc()
            return ""
        except ApiError as e:
            if e.conflict:
                # Bound already (an earlier burst, or a retried call): fine if it is on this node.
                try:
                    pod = await self.writer.api.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
                    if (pod.get("spec") or {}).get("nodeName") == node:
                        return ""
                except ApiError:
                    pass
            self.metrics.binds.labels("error").inc()
            return f"topodra: binding {ns}/{name} to {node} failed: {e}"

    # ---- write tasks ---------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], what: str, pod: Pod | None) -> None:
        # Writes to one pod land in the order they were made: concurrent patches could otherwise let an
        # older gang status overwrite a newer one (seen: "1 of 3 members exist" after the refusal).
        key = pod.uid if pod is not None else ""
        before = self._last_write.get(key) if key else None

        async def guarded() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])
            async with self._sem:
                try:
                    await coro
                except ApiError as e:
                    if not e.not_found:  # a pod deleted meanwhile needs nothing more
                        self.log.warning("write_failed", what=what, error=str(e),
                                         pod=f"{pod.namespace}/{pod.name}" if pod else "")
                    self.metrics.errors.labels(f"write_{what}").inc()

        t = asyncio.get_running_loop().create_task(guarded())
        self._writes.add(t)
        t.add_done_callback(self._writes.discard)
        if key:
            self._last_write[key] = t
            t.add_done_callback(lambda done: self._last_write.pop(key, None)
                                if self._last_write.get(key) is done else None)

    def cancel_writes(self) -> None:
        """This replica stopped being the active one: what it has not written yet must not land."""
        for t in list(self._writes):
            t.cancel()

    async def drain(self, timeout: float = 5.0) -> None:
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=timeout)
