"""List+watch of the objects the extender needs, feeding parsed plain data into the index.

One asyncio task per kind: list (paginated) → replace that kind in the index → watch from the list's
resourceVersion with bookmarks. A 410 Gone (expired resourceVersion) relists at once; any other error
backs off exponentially with jitter. While a watch cannot reach the apiserver the cache reports itself
stale; the extender keeps answering from what it has. The HTTP side (sessions, pages, event streams,
errors) is `kubeaccess.aio`; this module decides what to list and what each event means.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from kubeaccess.aio import AsyncKube
from kubeaccess.backoff import Backoff
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED
from scheduler_plugin.gang.store import COSCHEDULING, JOBS, UPSTREAM, GroupStore
from scheduler_plugin.gang.store import PARSERS as GROUP_PARSERS
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.model import (
    parse_claim,
    parse_device_class,
    parse_node,
    parse_pod,
    parse_slice,
    parse_template,
)

RESOURCE = "/apis/resource.k8s.io/v1"
PAGE = 500
RECOMPUTE_SLICE = 500  # nodes recomputed between two chances for calls to run
# The apiserver sends a bookmark about once a minute on a healthy watch; this much silence means the
# connection is dead (network partition) even if no error came. Reconnecting resumes from the last
# resourceVersion, so a false alarm costs one request.
WATCH_SILENCE = 150.0


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    optional: bool = False  # the API may not be served (a feature gate, a CRD): then the kind is empty


# Group objects gangs are read from (scheduler_plugin.gang.store); only watched when gangs are on.
GANG_KINDS: tuple[Kind, ...] = (
    Kind(JOBS, "/apis/batch/v1/jobs"),
    Kind(UPSTREAM, "/apis/scheduling.k8s.io/v1beta1/podgroups", optional=True),
    Kind(COSCHEDULING, "/apis/scheduling.x-k8s.io/v1alpha1/podgroups", optional=True),
)
UNSERVED_RECHECK = 60.0  # an optional API that is not served is looked for again this often


KINDS: tuple[Kind, ...] = (
    Kind("deviceclasses", f"{RESOURCE}/deviceclasses"),
    Kind("nodes", "/api/v1/nodes"),
    Kind("resourceslices", f"{RESOURCE}/resourceslices"),
    Kind("resourceclaims", f"{RESOURCE}/resourceclaims"),
    Kind("resourceclaimtemplates", f"{RESOURCE}/resourceclaimtemplates"),
    # Bound pods place jobs; pending ones are planned and steered (scheduler_plugin.steer). Finished pods
    # hold nothing.
    Kind("pods", "/api/v1/pods", {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"}),
)

_PARSERS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "nodes": parse_node,
    "resourceslices": parse_slice,
    "resourceclaims": parse_claim,
    "resourceclaimtemplates": parse_template,
    "deviceclasses": parse_device_class,
    "pods": parse_pod,
}


def apply_event(index: Index, kind: str, etype: str, obj: Mapping[str, Any]) -> None:
    """One watch event into the index (pure data in, no I/O)."""
    meta = obj.get("metadata") or {}
    if etype == "DELETED":
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if kind == "nodes":
            index.delete_node(name)
        elif kind == "resourceslices":
            index.delete_slice(name)
        elif kind == "resourceclaims":
            index.delete_claim(ns, name)
        elif kind == "resourceclaimtemplates":
            index.delete_template(ns, name)
        elif kind == "deviceclasses":
            index.delete_class(name)
        elif kind == "pods":
            index.delete_pod(str(meta.get("uid") or ""))
        return
    parsed = _PARSERS[kind](obj)
    if kind == "nodes":
        index.upsert_node(parsed)
    elif kind == "resourceslices":
        index.upsert_slice(parsed)
    elif kind == "resourceclaims":
        index.upsert_claim(parsed)
    elif kind == "resourceclaimtemplates":
        index.upsert_template(parsed)
    elif kind == "deviceclasses":
        index.upsert_class(parsed)
    elif kind == "pods":
        index.upsert_pod(parsed)


@dataclass
class KindState:
    synced: bool = False
    connected: bool = False
    error_since: float | None = None
    last_error: str = ""
    resource_version: str = ""
    relists: int = 0


class Cache:
    def __init__(
        self,
        index: Index,
        server: str,
        metrics: Metrics,
        ssl_context: ssl.SSLContext | None = None,
        token: Callable[[], str | None] = lambda: None,
        kinds: tuple[Kind, ...] = KINDS,
        stale_after: float = 2.0,
        watch_timeout: int = 300,
        tls_server_name: str | None = None,
        groups: GroupStore | None = None,
    ) -> None:
        self.index = index
        self.groups = groups
        self.server = server.rstrip("/")
        self.metrics = metrics
        self.ssl_context = ssl_context
        self.token = token
        self.kinds = kinds
        self.stale_after = stale_after
        self.watch_timeout = watch_timeout
        self.tls_server_name = tls_server_name
        self.states: dict[str, KindState] = {k.name: KindState() for k in kinds}
        self.log = structlog.get_logger("topodra.extender.cache")
        self._api: AsyncKube | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()

    # ---- status --------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return all(s.synced for s in self.states.values())

    def stale_kinds(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [k for k, s in self.states.items()
                if s.error_since is not None and now - s.error_since >= self.stale_after]

    def update_gauges(self) -> None:
        self.metrics.cache_synced.set(1 if self.synced else 0)
        self.metrics.cache_stale.set(1 if self.stale_kinds() else 0)
        for k, n in self.index.sizes().items():
            self.metrics.cache_objects.labels(k).set(n)
        self.metrics.memo_entries.set(sum(len(t) for t in self.index.memo.values()))

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._api = AsyncKube(self.server, self.ssl_context, self.token, connections=len(self.kinds) * 2,
                              user_agent="topodra-extender", tls_server_name=self.tls_server_name)
        self._tasks = [asyncio.create_task(self._run(k), name=f"watch-{k.name}") for k in self.kinds]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._api is not None:
            await self._api.close()

    async def _run(self, kind: Kind) -> None:
        st = self.states[kind.name]
        backoff = Backoff(base=0.2, cap=10.0, jitter=0.5, rng=self._rng)
        while True:
            try:
                if not st.resource_version:
                    await self._list(kind, st)
                await self._watch(kind, st)
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.gone:
                    st.resource_version = ""
                    st.relists += 1
                    self.metrics.watch_restarts.labels(kind.name, "relist").inc()
                    self.log.info("watch_expired_relist", kind=kind.name)
                    continue
                await self._failed(kind, st, e, backoff)
            except Exception as e:  # a watch must never die: log, back off, retry
                self.log.exception("watch_unexpected_error", kind=kind.name)
                await self._failed(kind, st, e, backoff)

    async def _failed(self, kind: Kind, st: KindState, e: Exception, backoff: Backoff) -> None:
        st.connected = False
        if st.error_since is None:
            st.error_since = time.monotonic()
        st.last_error = f"{e.__class__.__name__}: {e}"
        self.metrics.watch_restarts.labels(kind.name, "error").inc()
        delay = backoff.next()
        self.log.warning("watch_error", kind=kind.name, error=st.last_error, retry_in=round(delay, 2))
        self.update_gauges()
        await asyncio.sleep(delay)

    def _contact(self, st: KindState) -> None:
        st.connected = True
        if st.error_since is not None:
            self.log.info("watch_recovered", down_seconds=round(time.monotonic() - st.error_since, 2))
        st.error_since = None
        st.last_error = ""

    async def _list(self, kind: Kind, st: KindState) -> None:
        assert self._api is not None
        if kind.name in GROUP_PARSERS:
            await self._list_groups(kind, st)
            return
        items, rv = await self._api.list_all(kind.path, kind.query, _PARSERS[kind.name], page=PAGE)
        self.index.replace(kind.name, items)
        # Absorb the changes now, in slices, so that no extender call pays for a whole relist.
        while self.index.recompute_some(RECOMPUTE_SLICE):
            await asyncio.sleep(0)
        st.resource_version = rv
        st.synced = True
        self._contact(st)
        self.log.info("listed", kind=kind.name, count=len(items), resource_version=rv)
        self.update_gauges()

    async def _list_groups(self, kind: Kind, st: KindState) -> None:
        assert self._api is not None and self.groups is not None
        while True:
            try:
                items, rv = await self._api.list_all(kind.path, kind.query, GROUP_PARSERS[kind.name], page=PAGE)
            except ApiError as e:
                if not (kind.optional and e.not_found):
                    raise
                # Not served here: nothing can be a member of such a group. Look again later (a CRD may come).
                self.groups.replace(kind.name, [], served=False)
                st.synced = True
                self._contact(st)
                await asyncio.sleep(UNSERVED_RECHECK)
                continue
            self.groups.replace(kind.name, items)
            st.resource_version = rv
            st.synced = True
            self._contact(st)
            self.log.info("listed", kind=kind.name, count=len(items), resource_version=rv)
            return

    async def _watch(self, kind: Kind, st: KindState) -> None:
        assert self._api is not None
        timeout = self.watch_timeout + self._rng.randint(0, self.watch_timeout // 5)
        q = {**kind.query, "allowWatchBookmarks": "true", "resourceVersion": st.resource_version,
             "timeoutSeconds": str(timeout)}
        async with contextlib.aclosing(self._api.watch(kind.path, q, silence=WATCH_SILENCE)) as events:
            async for ev in events:
                if ev.get("type") == CONNECTED:
                    self._contact(st)
                    self.update_gauges()
                else:
                    self._event(kind, st, ev)

    def _event(self, kind: Kind, st: KindState, ev: Mapping[str, Any]) -> None:
        etype = ev.get("type")
        obj = ev.get("object") or {}
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype == "BOOKMARK":
            if rv:
                st.resource_version = str(rv)
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            return
        if self.groups is not None and kind.name in GROUP_PARSERS:
            self.groups.apply(kind.name, str(etype), obj)
        else:
            apply_event(self.index, kind.name, etype, obj)
        self.metrics.watch_events.labels(kind.name).inc()
        if rv:
            st.resource_version = str(rv)
