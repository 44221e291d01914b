"""Which extender replica is active: the one beside kube-scheduler's leader.

kube-scheduler calls the extender at a URL in its own configuration, in practice its local replica
(127.0.0.1 on the same host, or a sidecar in the same pod). So the extender does not run an election of
its own (its leader could be a replica that no scheduler calls, while the one that is called stays
passive); it follows the Lease that the kube-scheduler it serves holds. The replica is active while the
Lease's `holderIdentity` is its `--identity`, or that followed by `_` (kube-scheduler holds its lease as
`<hostname>_<uuid>`).

Only the active replica writes (nominations, gang plans, held binds, claim releases); a standby keeps
its watch cache warm and answers the verbs with an error, so a scheduler that calls it by mistake
retries instead of acting on a view no one maintains. `LeaseFollower` watches the Lease and calls
`on_change(active)` on every change; what a change does to the extender is in `scheduler_plugin.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from kubeaccess.aio import AsyncKube
from kubeaccess.backoff import Backoff
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED

if TYPE_CHECKING:
    from scheduler_plugin.gang.coordinator import Coordinator
    from scheduler_plugin.index import Index
    from scheduler_plugin.metrics import Metrics
    from scheduler_plugin.server import Extender
    from scheduler_plugin.steer import Steering

WATCH_SILENCE = 90.0  # bookmarks come about every minute; longer silence is a dead stream
WATCH_TIMEOUT = 300


def holds(holder: str, identity: str) -> bool:
    """True when a Lease held by `holder` makes the replica `identity` active."""
    return bool(identity) and (holder == identity or holder.startswith(identity + "_"))


@dataclass(frozen=True)
class LeaseRef:
    namespace: str
    name: str

    @classmethod
    def parse(cls, text: str) -> LeaseRef:
        ns, sep, name = text.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise ValueError(f"--follow-lease wants NAMESPACE/NAME, got {text!r}")
        return cls(ns, name)

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class LeaseFollower:
    """Watches one Lease; `active` follows its holder. Before the first answer the replica is standby."""

    def __init__(self, api: AsyncKube, lease: LeaseRef, identity: str,
                 on_change: Callable[[bool], Awaitable[None]]) -> None:
        self.api = api
        self.lease = lease
        self.identity = identity
        self.on_change = on_change
        self.holder = ""
        self.active = False
        self.observed = False  # the Lease (or its absence) has been read at least once
        self.log = structlog.get_logger("topodra.extender.leadership")

    def standby_reason(self) -> str | None:
        """None while active; else a one-line reason for /readyz and the verbs' errors."""
        if self.active:
            return None
        if not self.observed:
            return f"lease {self.lease} not read yet"
        who = f"held by {self.holder!r}" if self.holder else "held by no one"
        return f"standby: lease {self.lease} is {who}, not by {self.identity!r}"

    async def run(self) -> None:
        backoff = Backoff(base=0.2, cap=5.0)
        q = {"fieldSelector": f"metadata.name={self.lease.name}"}
        while True:
            try:
                items, rv = await self.api.list_all(self.lease.path, q, lambda o: o, timeout=10.0)
                await self._seen(items[0] if items else None)
                wq = {**q, "resourceVersion": rv, "allowWatchBookmarks": "true",
                      "timeoutSeconds": str(WATCH_TIMEOUT)}
                async with contextlib.aclosing(self.api.watch(self.lease.path, wq, WATCH_SILENCE)) as events:
                    async for ev in events:
                        t = ev.get("type")
                        if t == CONNECTED:
                            backoff.reset()
                        elif t in ("ADDED", "MODIFIED"):
                            await self._seen(ev.get("object"))
                        elif t == "DELETED":
                            await self._seen(None)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                # The last known state stands: the scheduler cannot renew its lease either while the
                # apiserver is unreachable, and it stops scheduling on its own when its lease runs out.
                delay = backoff.next()
                if not e.gone:
                    self.log.warning("lease_watch_error", lease=str(self.lease), error=str(e),
                                     retry_in=round(delay, 2))
                await asyncio.sleep(0 if e.gone else delay)

    async def _seen(self, lease: Mapping[str, Any] | None) -> None:
        holder = str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")
        first = not self.observed
        self.observed = True
        changed = holder != self.holder
        self.holder = holder
        active = holds(holder, self.identity)
        if active == self.active and not first:
            if changed:
                self.log.info("lease_holder_changed", lease=str(self.lease), holder=holder, active=active)
            return
        self.active = active
        self.log.info("leadership_changed", lease=str(self.lease), holder=holder, identity=self.identity,
                      active=active)
        try:
            await self.on_change(active)
        except Exception:  # the watch must go on: the next change gets its own try
            self.log.exception("leadership_change_failed", active=active)


class ActiveWork:
    """What only the active replica runs: the steering loop and the gang coordinator, with their writes.

    Built fresh on every activation, from the watch cache and the API (gang plans are adopted from the
    members' annotations, as after a restart), never carried over from an earlier term: while standby,
    the active replica may have planned, bound and released anything."""

    def __init__(self, build: Callable[[], tuple[Steering, Coordinator | None]], index: Index, ext: Extender,
                 metrics: Metrics) -> None:
        self.build = build
        self.index = index
        self.ext = ext
        self.metrics = metrics
        self.steering: Steering | None = None
        self.coordinator: Coordinator | None = None
        self._task: asyncio.Task[None] | None = None
        self.log = structlog.get_logger("topodra.extender.leadership")
        self._idle()

    def _idle(self) -> None:
        """While no steering loop runs, nothing reads the pods that changed: do not collect them (a standby
        replica may wait for weeks). Activation looks at every pod anyway."""
        index = self.index
        index.pending_changed.clear()
        index.on_pending = lambda: index.pending_changed.clear()

    async def set_active(self, active: bool) -> None:
        self.metrics.active.set(1 if active else 0)
        if active:
            await self.start()
        else:
            await self.stop("this replica is no longer the active one")

    async def start(self) -> None:
        if self._task is not None:
            return
        forget_own_decisions(self.index)
        steering, coordinator = self.build()
        self.steering, self.coordinator = steering, coordinator
        self.ext.coordinator = coordinator
        self.ext.binder = steering.bind
        # Every pod the cache holds is new to this term's steering and coordinator (bound gang members too).
        self.index.pending_changed.update(self.index.pods)
        steering.wake.set()
        self._task = asyncio.create_task(steering.run(), name="steer")
        self.log.info("active_work_started", pods=len(self.index.pods))

    async def stop(self, why: str, drain: bool = False) -> None:
        task, steering, coordinator = self._task, self.steering, self.coordinator
        self._task = self.steering = self.coordinator = None
        self.ext.coordinator = None
        self.ext.binder = None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if coordinator is not None:
            held = 0
            for g in coordinator.gangs.values():
                for w in g.waiters.values():
                    if not w.done():
                        w.set_result(f"topodra: gang {g.spec.key}: {why}; not bound")
                        held += 1
            if held:
                self.log.info("held_binds_failed", count=held, reason=why)
        if steering is not None:
            if drain:  # shutting down as the active replica: let the last writes land
                await steering.drain()
            else:
                steering.cancel_writes()
        forget_own_decisions(self.index)
        self._idle()


def forget_own_decisions(index: Index) -> None:
    """Drop the devices this replica set aside and its unconfirmed placements; the API shows the rest."""
    for uid in list(index.reservations):
        index.drop_reservation(uid)
    if index.hints:
        index.hints.clear()
        index.generation += 1
