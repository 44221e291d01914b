"""Gang invariants watched from outside while a test runs against the real cluster.

    with GangInvariants(cluster, [namespace], default_gang_of()) as inv:
        ...  # create gangs, let the scheduler work, inv.mark_released("job-a") after a rollback
    assert inv.counters.gangs_fully_bound == 3

A background thread lists pods (per namespace) and ResourceClaims (cluster-wide, one consistent list) every
`period` seconds and feeds them to `GangChecker`, which holds all the logic and is what the unit tests drive
through `observe()` with synthetic lists. At exit every violation seen is raised as one AssertionError:

- partial bind: some but not all of a gang's `size` members have `spec.nodeName` for longer than `burst`
  (while it is being placed: members lost after a full bind, or after a release, are teardown);
- double allocation: one (driver, pool, device) in the allocation of two ResourceClaims at the same time;
- claims not released: a released gang (`mark_released`, or every member pod gone) still has an allocated
  claim `release_grace` seconds later.

Durations come from polls, so they are lower bounds off by at most one poll gap (`counters.max_poll_gap_seconds`).
A state that lasts less than one poll can be missed: call `poll()` when the test needs it seen (a gang bound
and deleted again within 0.2 s, say).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

Json = dict[str, Any]
GangOf = Callable[[Json], tuple[str, int] | None]
GangKey = tuple[str, str]  # (namespace, gang name)
DeviceKey = tuple[str, str, str]  # (driver, pool, device)
Fetch = Callable[[], tuple[list[Json], list[Json]]]  # -> (pods in scope, all ResourceClaims)

GANG_ANNOTATION = "topodra.dev/gang"
GANG_SIZE_ANNOTATION = "topodra.dev/gang-size"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


# ---- gang membership ------------------------------------------------------------------------------
def default_gang_of(
    job_sizes: Mapping[str, int] | None = None, pod_group_sizes: Mapping[str, int] | None = None
) -> GangOf:
    """Membership from, in this order: the topodra annotations `topodra.dev/gang` + `topodra.dev/gang-size`;
    upstream `spec.schedulingGroup.podGroupName` (size from `pod_group_sizes`, e.g. the PodGroup's minCount);
    the Job label `batch.kubernetes.io/job-name` (size from `job_sizes`). A group with no known size is no gang.
    """
    jobs = dict(job_sizes or {})
    groups = dict(pod_group_sizes or {})

    def gang_of(pod: Json) -> tuple[str, int] | None:
        meta = pod.get("metadata") or {}
        ann = meta.get("annotations") or {}
        name = ann.get(GANG_ANNOTATION)
        if name:
            try:
                return str(name), int(ann.get(GANG_SIZE_ANNOTATION, ""))
            except ValueError:
                return None
        group = ((pod.get("spec") or {}).get("schedulingGroup") or {}).get("podGroupName")
        if group and group in groups:
            return str(group), groups[group]
        job = (meta.get("labels") or {}).get(JOB_NAME_LABEL)
        if job and job in jobs:
            return str(job), jobs[job]
        return None

    return gang_of


# ---- the logic ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Violation:
    kind: str  # "partial-bind" | "double-allocation" | "claims-not-released" | "nothing-observed"
    subject: str
    at: float  # seconds since the checker started
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.subject} at +{self.at:.2f}s: {self.detail}"


@dataclass
class Counters:
    polls: int = 0
    poll_errors: int = 0
    last_error: str = ""
    pods_seen: int = 0  # distinct pod uids in scope
    gang_pods_seen: int = 0  # ... of which gang_of named a gang
    gangs_seen: int = 0
    gangs_fully_bound: int = 0  # gangs seen with every member bound (each counted once)
    claims_seen: int = 0  # distinct claim uids
    allocated_claims_max: int = 0  # most claims allocated in one poll
    releases: int = 0  # explicit and automatic (all pods gone)
    max_release_seconds: float = 0.0  # longest release -> claim deleted or deallocated, as polls saw it
    max_poll_gap_seconds: float = 0.0


@dataclass
class _Gang:
    key: GangKey
    size: int = 0
    pods: set[str] = field(default_factory=set)  # every member uid ever seen
    bound: int = 0
    live: int = 0
    partial_since: float | None = None  # first poll that saw the current partial episode
    partial_last: float | None = None  # latest poll that saw it
    partial_flagged: bool = False
    fully_bound: bool = False
    placed: bool = False  # fully bound once since it (re)appeared; members lost after that are teardown
    released: bool = False  # partial binds are expected while a gang is torn down


@dataclass
class _Release:
    gang: GangKey
    at: float
    pods: frozenset[str]
    claims: set[str]
    done: set[str] = field(default_factory=set)  # deleted, deallocated, or already reported


def _uid(obj: Json) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _allocated_devices(claim: Json) -> list[DeviceKey]:
    """Devices a claim holds exclusively (admin access and shared consumable-capacity slots do not count)."""
    alloc = (claim.get("status") or {}).get("allocation") or {}
    out = []
    for r in (alloc.get("devices") or {}).get("results") or []:
        if r.get("adminAccess") or r.get("shareID"):
            continue
        out.append((str(r.get("driver")), str(r.get("pool")), str(r.get("device"))))
    return out


def _is_allocated(claim: Json) -> bool:
    return bool((claim.get("status") or {}).get("allocation"))


class GangChecker:
    """All of the invariant logic, fed snapshots; thread-safe (the poller and the test both call it)."""

    def __init__(self, gang_of: GangOf, *, burst: float = 2.0, release_grace: float = 10.0,
                 start: float | None = None) -> None:
        self.gang_of = gang_of
        self.burst = burst
        self.release_grace = release_grace
        self.start = time.monotonic() if start is None else start
        self.counters = Counters()
        self.violations: list[Violation] = []
        self._max_partial = 0.0
        self._gangs: dict[GangKey, _Gang] = {}
        self._pod_gang: dict[str, GangKey] = {}
        self._claim_gang: dict[str, GangKey] = {}
        self._pods_seen: set[str] = set()
        self._claims_seen: set[str] = set()
        self._double_seen: set[tuple[DeviceKey, frozenset[str]]] = set()
        self._releases: list[_Release] = []
        self._last_poll: float | None = None
        self._lock = threading.Lock()

    # -- public --
    @property
    def max_partial_seconds(self) -> float:
        """Longest partial bind seen (closed or still open), as a lower bound."""
        with self._lock:
            open_ = [g.partial_last - g.partial_since for g in self._gangs.values()
                     if g.partial_since is not None and g.partial_last is not None]
            return max([self._max_partial, *open_])

    def poll_failed(self, now: float, error: str) -> None:
        with self._lock:
            self.counters.poll_errors += 1
            self.counters.last_error = error
            self._tick(now)

    def observe(self, now: float, pods: Sequence[Json], claims: Sequence[Json]) -> None:
        with self._lock:
            self._tick(now)
            self.counters.polls += 1
            self._observe_pods(now, pods)
            self._observe_claims(now, pods, claims)

    def mark_released(self, gang: str, now: float, namespace: str | None = None) -> None:
        """The test released `gang` (for example the extender rolled it back); its claims must go."""
        with self._lock:
            keys = [k for k in self._gangs if k[1] == gang and (namespace is None or k[0] == namespace)]
            if not keys:
                raise KeyError(f"gang {gang!r} was never observed" + (f" in {namespace}" if namespace else ""))
            for k in keys:
                self._release(self._gangs[k], now)

    def finish(self, now: float, *, require_pods: bool = True) -> list[Violation]:
        """Close open partial episodes and return every violation."""
        with self._lock:
            for g in self._gangs.values():
                self._check_partial(g, now, closing=True)
            if require_pods and self.counters.gang_pods_seen == 0:
                c = self.counters
                why = (f"{c.pods_seen} pod(s) seen, none in a gang (check gang_of)" if c.pods_seen
                       else f"no pod seen in {c.polls} poll(s), {c.poll_errors} failed"
                       + (f" (last: {c.last_error})" if c.last_error else ""))
                self.violations.append(Violation("nothing-observed", "checker", now - self.start, why))
            return list(self.violations)

    def settle_until(self) -> float | None:
        """The time up to which more polls could still turn up a violation already in progress (None: none)."""
        with self._lock:
            pending = [g.partial_since + self.burst for g in self._gangs.values()
                       if g.partial_since is not None and not g.partial_flagged]
            pending += [r.at + self.release_grace for r in self._releases if r.claims - r.done]
            return max(pending, default=None)

    # -- internals (lock held) --
    def _tick(self, now: float) -> None:
        if self._last_poll is not None:
            self.counters.max_poll_gap_seconds = max(self.counters.max_poll_gap_seconds, now - self._last_poll)
        self._last_poll = now

    def _observe_pods(self, now: float, pods: Iterable[Json]) -> None:
        current: dict[GangKey, list[Json]] = {}
        for pod in pods:
            uid = _uid(pod)
            if uid not in self._pods_seen:
                self._pods_seen.add(uid)
                self.counters.pods_seen += 1
            member = self.gang_of(pod)
            if member is None:
                continue
            name, size = member
            key = (str((pod.get("metadata") or {}).get("namespace") or ""), name)
            g = self._gangs.get(key)
            if g is None:
                g = self._gangs[key] = _Gang(key)
                self.counters.gangs_seen += 1
            if uid not in self._pod_gang:
                self._pod_gang[uid] = key
                self.counters.gang_pods_seen += 1
            g.size = max(g.size, size)
            if uid not in g.pods:
                g.pods.add(uid)
                if g.released and not any(uid in r.pods for r in self._releases if r.gang == key):
                    g.released = g.placed = False  # a new member after a release: the gang is back
            current.setdefault(key, []).append(pod)
        for key, g in self._gangs.items():
            live = [p for p in current.get(key, []) if not (p.get("metadata") or {}).get("deletionTimestamp")]
            had_live = g.live > 0
            g.live = len(live)
            g.bound = sum(1 for p in live if (p.get("spec") or {}).get("nodeName"))
            if g.size and g.bound >= g.size:
                g.placed = True
                if not g.fully_bound:
                    g.fully_bound = True
                    self.counters.gangs_fully_bound += 1
            if had_live and g.live == 0 and not g.released:
                self._release(g, now)  # every member deleted: the gang is gone, its claims must follow
            self._check_partial(g, now, closing=False)

    def _check_partial(self, g: _Gang, now: float, *, closing: bool) -> None:
        partial = not (g.released or g.placed or closing) and 0 < g.bound < g.size
        if partial:
            if g.partial_since is None:
                g.partial_since = now
            g.partial_last = now
        elif g.partial_since is None:
            return
        assert g.partial_since is not None and g.partial_last is not None
        seen = g.partial_last - g.partial_since
        if seen > self.burst and not g.partial_flagged:
            g.partial_flagged = True
            self.violations.append(Violation(
                "partial-bind", f"gang {g.key[0]}/{g.key[1]}", g.partial_since - self.start,
                f"{g.bound} of {g.size} members bound for at least {seen:.2f}s (burst {self.burst:.2f}s)"))
        if not partial:
            self._max_partial = max(self._max_partial, seen)
            g.partial_since = g.partial_last = None
            g.partial_flagged = False

    def _release(self, g: _Gang, now: float) -> None:
        g.released = True
        self.counters.releases += 1
        claims = {c for c, k in self._claim_gang.items() if k == g.key}
        self._releases.append(_Release(g.key, now, frozenset(g.pods), claims))

    def _observe_claims(self, now: float, pods: Sequence[Json], claims: Sequence[Json]) -> None:
        # Which claims belong to which gang: named by a member's spec or status, owned by or reserved for a member.
        by_name: dict[tuple[str, str], GangKey] = {}
        for pod in pods:
            key = self._pod_gang.get(_uid(pod))
            if key is None:
                continue
            ns = str((pod.get("metadata") or {}).get("namespace") or "")
            for ref in (pod.get("spec") or {}).get("resourceClaims") or []:
                if ref.get("resourceClaimName"):
                    by_name[(ns, str(ref["resourceClaimName"]))] = key
            for st in (pod.get("status") or {}).get("resourceClaimStatuses") or []:
                if st.get("resourceClaimName"):
                    by_name[(ns, str(st["resourceClaimName"]))] = key
        holders: dict[DeviceKey, set[str]] = {}
        names: dict[str, str] = {}
        allocated = 0
        for claim in claims:
            uid = _uid(claim)
            meta = claim.get("metadata") or {}
            names[uid] = f"{meta.get('namespace')}/{meta.get('name')}"
            if uid not in self._claims_seen:
                self._claims_seen.add(uid)
                self.counters.claims_seen += 1
            if uid not in self._claim_gang:
                key = by_name.get((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
                related = [o.get("uid") for o in meta.get("ownerReferences") or []]
                related += [r.get("uid") for r in (claim.get("status") or {}).get("reservedFor") or []]
                key = key or next((self._pod_gang[u] for u in related if u in self._pod_gang), None)
                if key is not None:
                    self._claim_gang[uid] = key
                    for r in self._releases:  # a claim first seen after its gang's release still counts
                        if r.gang == key and any(u in r.pods for u in related):
                            r.claims.add(uid)
            if _is_allocated(claim):
                allocated += 1
                for dev in _allocated_devices(claim):
                    holders.setdefault(dev, set()).add(uid)
        self.counters.allocated_claims_max = max(self.counters.allocated_claims_max, allocated)
        for dev, uids in holders.items():
            if len(uids) > 1 and (dev, frozenset(uids)) not in self._double_seen:
                self._double_seen.add((dev, frozenset(uids)))
                self.violations.append(Violation(
                    "double-allocation", "device " + "/".join(dev), now - self.start,
                    "allocated to " + ", ".join(sorted(names[u] for u in uids))))
        by_uid = {_uid(c): c for c in claims}
        for r in self._releases:
            for uid in sorted(r.claims - r.done):
                held = by_uid.get(uid)  # the list is complete: a claim not in it is deleted
                if held is None or not _is_allocated(held):
                    r.done.add(uid)
                    self.counters.max_release_seconds = max(self.counters.max_release_seconds, now - r.at)
                elif now - r.at > self.release_grace:
                    r.done.add(uid)
                    self.violations.append(Violation(
                        "claims-not-released", f"gang {r.gang[0]}/{r.gang[1]}", now - self.start,
                        f"claim {names[uid]} still allocated {now - r.at:.2f}s after the release "
                        f"(grace {self.release_grace:.2f}s)"))


# ---- the poller -----------------------------------------------------------------------------------
def _fetcher(source: Any, namespaces: Collection[str] | None) -> Fetch:
    """Lists through a kubeaccess KubeClient (anything with `.get(path, **query)`), a LocalCluster (its
    `kube()`), a kubernetes ApiClient, or a kubeconfig path."""
    scope = sorted(namespaces) if namespaces else None
    if callable(getattr(source, "kube", None)):
        source = source.kube()
    if callable(getattr(source, "get", None)) and callable(getattr(source, "request", None)):
        kube = source

        def fetch_raw() -> tuple[list[Json], list[Json]]:
            if scope is None:
                pods = list(kube.get("/api/v1/pods").get("items") or [])
            else:
                pods = [p for ns in scope for p in kube.get(f"/api/v1/namespaces/{ns}/pods").get("items") or []]
            # One cluster-wide list is one consistent snapshot: a device moving between claims is never seen twice.
            claims = list(kube.get("/apis/resource.k8s.io/v1/resourceclaims").get("items") or [])
            return pods, claims

        return fetch_raw

    from kubernetes import client, config

    if isinstance(source, str | Path):
        cfg = client.Configuration()
        config.load_kube_config(str(source), client_configuration=cfg)
        api = client.ApiClient(cfg)
    else:
        api = source
    core, resource = client.CoreV1Api(api), client.ResourceV1Api(api)

    def items(resp: Any) -> list[Json]:
        return list(json.loads(resp.data).get("items") or [])

    def fetch() -> tuple[list[Json], list[Json]]:
        # Raw JSON: the generated models drop fields they do not know (spec.schedulingGroup in older clients).
        if scope is None:
            pods = items(core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=5))
        else:
            pods = [p for ns in scope for p in items(core.list_namespaced_pod(ns, _preload_content=False,
                                                                               _request_timeout=5))]
        claims = items(resource.list_resource_claim_for_all_namespaces(_preload_content=False, _request_timeout=5))
        return pods, claims

    return fetch


class GangInvariants:
    """Context manager: polls in the background while the block runs, raises AssertionError at exit."""

    def __init__(
        self,
        api_client_or_kubeconfig: Any,
        namespaces: Collection[str] | None,
        gang_of: GangOf | None = None,
        burst: float = 2.0,
        period: float = 0.2,
        *,
        release_grace: float = 10.0,
        require_pods: bool = True,
        fetch: Fetch | None = None,
    ) -> None:
        if period > 0.2:
            raise ValueError("period must be at most 0.2 s: a partial bind is judged from consecutive polls")
        self.checker = GangChecker(gang_of or default_gang_of(), burst=burst, release_grace=release_grace)
        self.period = period
        self.require_pods = require_pods
        self._fetch = fetch or _fetcher(api_client_or_kubeconfig, namespaces)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()  # one poll at a time (the thread, or mark_released's own)

    @property
    def counters(self) -> Counters:
        return self.checker.counters

    @property
    def max_partial_seconds(self) -> float:
        return self.checker.max_partial_seconds

    @property
    def violations(self) -> list[Violation]:
        return list(self.checker.violations)

    def poll(self) -> None:
        with self._poll_lock:
            try:
                pods, claims = self._fetch()
            except Exception as e:  # an apiserver restart in the test must not kill the watcher
                self.checker.poll_failed(time.monotonic(), f"{type(e).__name__}: {e}")
                return
            self.checker.observe(time.monotonic(), pods, claims)

    def mark_released(self, gang: str, namespace: str | None = None) -> None:
        self.poll()  # see every member the test created before the release
        self.checker.mark_released(gang, time.monotonic(), namespace)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.poll()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - t0)))

    def __enter__(self) -> GangInvariants:
        pods, claims = self._fetch()  # fail fast on bad credentials or a missing API
        self.checker.observe(time.monotonic(), pods, claims)
        self._thread = threading.Thread(target=self._run, name="gang-invariants", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            # Let a partial bind or a release in progress run to its verdict (bounded by burst and grace).
            cap = time.monotonic() + max(self.checker.burst, self.checker.release_grace) + 1.0
            while (until := self.checker.settle_until()) is not None:
                if time.monotonic() >= min(cap, until + 2 * self.period):
                    break
                time.sleep(self.period)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.poll()
        found = self.checker.finish(time.monotonic(), require_pods=self.require_pods)
        if not found:
            return
        report = self.report(found)
        if exc is not None:
            exc.add_note(report)  # the block's own failure stays the one raised
            return
        raise AssertionError(report)

    def report(self, found: Sequence[Violation] | None = None) -> str:
        found = self.checker.violations if found is None else found
        c = self.counters
        return (f"{len(found)} gang invariant violation(s):\n" + "\n".join(f"  {v}" for v in found)
                + f"\n  (polls {c.polls}, errors {c.poll_errors}, max poll gap {c.max_poll_gap_seconds:.2f}s, "
                  f"pods {c.pods_seen}, gangs {c.gangs_seen}, fully bound {c.gangs_fully_bound}, "
                  f"claims {c.claims_seen}, max partial {self.max_partial_seconds:.2f}s)")
