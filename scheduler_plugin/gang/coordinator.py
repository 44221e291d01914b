"""Gang life cycle: collect members, plan the whole gang, steer members, hold binds until all are ready.

    collecting ──(size members exist)──► planned ──(every member passed PreBind)──► bound
        ▲                                   │
        └──── released (timeout, member gone, planned node lost) ◄──┘

- A plan is reserved in the index (every other pod's filter sees those devices as taken) and written to
  the members as `status.nominatedNodeName` (kube-scheduler tries that node first and only) plus an
  annotation naming the node and the plan's time (the wake-up: a metadata change requeues a member parked as
  unschedulable; and the record a restarted extender adopts the plan from).
- The bind barrier: kube-scheduler calls bind after PreBind allocated the member's claims. The call is held
  until every member is ready, then all are bound at once. A held call that outlives `bind_hold_seconds`
  answers an error (kube-scheduler retries the pod on the same node); the member stays ready, and the burst
  binds it with the others.
- Competing gangs are planned one at a time in a fixed order (priority, then age) and a plan exists only
  when the whole gang fits, so no gang holds part of what it needs: no deadlock.

Synchronous state changes only; API writes are handed to the `Actions` sink and run on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from scheduler_plugin.claims import Unresolved, resolve
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.filter import PREFIX, FilterOutcome, claim_keys
from scheduler_plugin.gang.model import GangKey, GangObjects, GangSpec, Waiting
from scheduler_plugin.gang.planner import Assignment, GangPlan, Member, Shortfall, level_order, plan_gang
from scheduler_plugin.gang.sources import gang_of, merge_members
from scheduler_plugin.gang.status import GangStatus, Phase
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.model import Placement, Pod

PLAN_ANNOTATION = "topodra.dev/planned-node"  # "<node>@<unix time of the plan>"
STATUS_ANNOTATION = "topodra.dev/gang-status"  # JSON, see gang/status.py
RETRY_AFTER_RELEASE = 10.0  # a released gang waits this long before it is planned again (others go first)
PLANNED_NODE_MISSES = 2  # filter calls whose node list lacks the planned node before it is avoided
PARTIAL_REPORT_AFTER = 10.0
NUDGE_ANNOTATION = "topodra.dev/steered-at"  # rewritten with a nomination: the change requeues a parked member
RESTEER_EVERY = 2.0
REPLAN_EVERY = 2.0  # a gang that does not fit is planned again at most this often: a search can cost 100s of ms


class Actions(Protocol):
    """Where the coordinator sends its API writes (scheduler_plugin.steer runs them)."""

    def steer(self, pod: Pod, node: str, annotations: dict[str, str | None]) -> None: ...
    def annotate(self, pod: Pod, annotations: dict[str, str | None]) -> None: ...
    def release_claims(self, pod: Pod, claims: list[tuple[str, str]]) -> None: ...
    def event(self, spec: GangSpec, pods: Iterable[Pod], reason: str, message: str, warning: bool) -> None: ...
    async def bind(self, ns: str, name: str, uid: str, node: str) -> str: ...


@dataclass
class Gang:
    spec: GangSpec
    specs: dict[str, tuple[str, GangSpec]] = field(default_factory=dict)  # uid -> (pod name, spec) of members
    pending: dict[str, Pod] = field(default_factory=dict)
    bound: dict[str, str] = field(default_factory=dict)  # uid -> node
    plan: GangPlan | None = None
    planned_at: float = 0.0  # unix time
    shortfall: Shortfall | None = None
    ready: dict[str, str] = field(default_factory=dict)  # uid -> node: kube-scheduler called bind (PreBind done)
    waiters: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    not_before: float = 0.0
    misses: dict[str, int] = field(default_factory=dict)
    avoid: set[str] = field(default_factory=set)
    status: GangStatus | None = None
    partial_since: float | None = None
    tried_gen: int = -1
    resteered: dict[str, float] = field(default_factory=dict)  # uid -> when its nomination was last rewritten
    next_try: float = 0.0  # a gang that did not fit is tried again from then (or when a node is freed)
    dealloc_asked: set[str] = field(default_factory=set)  # members whose old allocation we asked to undo
    released_stamp: str = ""  # plan time of the last plan given up: its annotations may linger; never adopt it

    @property
    def count(self) -> int:
        return len(self.pending) + len(self.bound)


class Coordinator:
    def __init__(self, index: Index, cfg: ExtenderConfig, objects: GangObjects,
                 eligible: Callable[[Placement], Collection[str]], actions: Actions,
                 clock: Callable[[], float] = time.time, bind_hold_seconds: float = 20.0,
                 metrics: Metrics | None = None) -> None:
        self.index = index
        self.metrics = metrics
        self.cfg = cfg
        self.objects = objects
        self.eligible = eligible
        self.actions = actions
        self.clock = clock
        self.bind_hold_seconds = bind_hold_seconds
        self.gangs: dict[GangKey, Gang] = {}
        self.member_of: dict[str, GangKey] = {}
        self.log = structlog.get_logger("topodra.extender.gang")

    # ---- membership (from pod watch events) ---------------------------------------------------
    def observe(self, uid: str, pod: Pod | None) -> bool:
        """A pod appeared, changed or went away; True if it is (or was) a gang member."""
        old_key = self.member_of.get(uid)
        spec = None if pod is None else self.spec_of(pod)
        key = spec.key if isinstance(spec, GangSpec | Waiting) else None
        if old_key is not None and old_key != key:
            self._leave(old_key, uid)
        if pod is None or not isinstance(spec, GangSpec):
            return old_key is not None or isinstance(spec, Waiting)
        g = self.gangs.get(spec.key)
        if g is None:
            g = self.gangs[spec.key] = Gang(spec)
        self.member_of[uid] = spec.key
        g.specs[uid] = (pod.name, spec)
        if pod.node_name:
            g.pending.pop(uid, None)
            g.bound[uid] = pod.node_name
            g.ready.pop(uid, None)
        else:
            g.pending[uid] = pod
            if g.plan is None and uid not in g.ready:
                self._maybe_adopt(g, pod)
        g.spec = merge_members(sorted(g.specs.values(), key=lambda x: (x[1].created, x[0])))
        return True

    def spec_of(self, pod: Pod) -> GangSpec | Waiting | None:
        return gang_of(pod, self.objects, self.cfg.gang, self.cfg.levels)

    def _leave(self, key: GangKey, uid: str) -> None:
        self.member_of.pop(uid, None)
        g = self.gangs.get(key)
        if g is None:
            return
        g.specs.pop(uid, None)
        was_pending = g.pending.pop(uid, None) is not None
        g.bound.pop(uid, None)
        g.ready.pop(uid, None)
        w = g.waiters.pop(uid, None)
        if w is not None and not w.done():
            w.set_result(f"gang {key}: this member was deleted")
        if not g.specs:
            self._drop_plan(g)
            del self.gangs[key]
            return
        if was_pending and g.plan is not None and len(g.bound) < g.spec.size:
            self._release(g, f"member {uid[:8]} was deleted before the gang was bound", retry=False)

    # ---- planning ------------------------------------------------------------------------------
    def plan_all(self) -> None:
        """Plan complete gangs, most urgent first; re-check live plans against the cluster."""
        self.repair_reservations()
        now = self.clock()
        for g in sorted(self.gangs.values(), key=lambda g: (-g.spec.priority, g.spec.created, str(g.spec.key))):
            if g.plan is not None:
                self._check_plan(g, now)
                continue
            if len(g.bound) >= g.spec.size and not g.pending:
                continue
            self._try_plan(g, now)
            self._report_partial(g, now)

    def _try_plan(self, g: Gang, now: float) -> None:
        spec = g.spec
        if spec.problems:
            self._set_status(g, GangStatus(Phase.REFUSED, "; ".join(spec.problems), members=g.count, size=spec.size))
            return
        if g.count < spec.size:
            self._set_status(g, GangStatus(Phase.COLLECTING, f"{g.count} of {spec.size} members exist",
                                           members=g.count, size=spec.size))
            return
        if now < g.not_before or not g.pending:
            return
        # A member whose claims an earlier try left allocated is pinned by kube-scheduler to that node, which a
        # new plan may not use: wait until they are deallocated (our release, or kube-scheduler's PostFilter).
        held_pods = [p for p in g.pending.values() if self._holds_allocation(p)]
        for p in held_pods:
            if p.uid not in g.dealloc_asked:  # e.g. after a restart, or with GenericWorkload (no PostFilter)
                g.dealloc_asked.add(p.uid)
                self.actions.release_claims(p, claim_keys(p))
        held = sorted(p.name for p in held_pods)
        if held:
            self._set_status(g, GangStatus(Phase.WAITING, f"waiting for the claims of {', '.join(held[:3])}"
                                           f"{' and others' if len(held) > 3 else ''} to be deallocated (left by "
                                           "an earlier try)", members=g.count, size=spec.size))
            return
        if g.shortfall is not None and (g.tried_gen == self.index.generation or now < g.next_try):
            return  # nothing changed since the last attempt, or tried a moment ago
        self.index.refresh(time.monotonic())
        g.tried_gen = self.index.generation
        members = []
        for pod in sorted(g.pending.values(), key=lambda p: p.name):
            try:
                req = resolve(pod, self.index, self.cfg.alignment)
            except Unresolved as e:
                self._set_status(g, GangStatus(Phase.COLLECTING, f"member {pod.name}: {e}", members=g.count,
                                               size=spec.size))
                return
            members.append(Member(pod, req))
        t0 = time.perf_counter()
        out = plan_gang(self.index, members, spec.required, self.eligible, bound_nodes=set(g.bound.values()),
                        exclude=g.avoid, holder_of=self.holder_of)
        took = time.perf_counter() - t0
        if self.metrics is not None:
            self.metrics.plan_seconds.labels("gang").observe(took)
        if isinstance(out, Shortfall):
            g.shortfall = out
            g.next_try = now + REPLAN_EVERY
            level = out.level if spec.required else "cluster"
            phase = Phase.REFUSED if out.never else Phase.WAITING
            self._set_status(g, GangStatus(phase, out.message, level=level, members=g.count, size=spec.size))
            return
        g.shortfall = None
        self._adopt(g, out, now, annotate=False)
        self.log.info("gang_planned", gang=str(spec.key), topology_level=out.level, domain=out.domain,
                      members=len(out.members), plan_seconds=round(took, 4))
        stamp = f"@{now:.3f}"
        status = g.status.to_json() if g.status is not None else ""
        for uid, a in out.members.items():
            pod = g.pending[uid]
            g.resteered[uid] = now
            self.actions.steer(pod, a.node, {PLAN_ANNOTATION: a.node + stamp, STATUS_ANNOTATION: status or None})

    def _adopt(self, g: Gang, plan: GangPlan, planned_at: float, annotate: bool = True) -> None:
        g.plan = plan
        g.planned_at = planned_at
        g.dealloc_asked.clear()
        g.misses.clear()
        expires = time.monotonic() + g.spec.timeout_seconds + 5.0
        for uid, a in plan.members.items():
            pod = g.pending.get(uid)
            if pod is not None:
                self.index.reserve_keys(uid, a.node, a.keys, claim_keys(pod), expires)
        pref = ""
        if g.spec.preferred:
            met = "met" if _within(plan.level, g.spec.preferred, self) else "not met"
            pref = f" (preferred {g.spec.preferred}: {met})"
        self._set_status(g, GangStatus(Phase.PLANNED, f"placed in {plan.describe()}{pref}", level=plan.level,
                                       domain=plan.domain, members=g.count, size=g.spec.size), annotate=annotate)

    def _maybe_adopt(self, g: Gang, pod: Pod) -> None:
        """After an extender restart: members carry the plan's nodes; take the plan over if all agree."""
        if g.count < g.spec.size or any(PLAN_ANNOTATION not in dict(p.annotations) for p in g.pending.values()):
            return
        stamps = {(p.annotation(PLAN_ANNOTATION) or "").rpartition("@")[2] for p in g.pending.values()}
        if len(stamps) != 1 or g.released_stamp in stamps:
            return
        try:
            planned_at = float(stamps.pop())
        except ValueError:
            return
        self.index.refresh(time.monotonic())
        assignments: dict[str, Assignment] = {}
        for p in g.pending.values():
            node = (p.annotation(PLAN_ANNOTATION) or "").rpartition("@")[0]
            st = self.index.nodes.get(node)
            if st is None:
                return
            try:
                req = resolve(p, self.index, self.cfg.alignment)
            except Unresolved:
                return
            f = self.index.fit_exact(req, st)
            keys = tuple(st.free_keys[i] for i in f.witness if i < len(st.free_keys)) if f.ok else ()
            assignments[p.uid] = Assignment(node, keys)
            if keys:
                self.index.reserve_keys(p.uid, node, keys, claim_keys(p), time.monotonic() + g.spec.timeout_seconds)
                self.index.refresh(time.monotonic())
        self._adopt(g, GangPlan("adopted", "", assignments), planned_at)
        self.log.info("gang_plan_adopted", gang=str(g.spec.key), members=len(assignments))
        for p in g.pending.values():
            a = assignments[p.uid]
            if p.nominated_node != a.node:  # kube-scheduler clears nominations after failed tries
                self._resteer(g, p, a.node)

    def _check_plan(self, g: Gang, now: float) -> None:
        assert g.plan is not None
        if len(g.bound) >= g.spec.size and not g.pending:
            if g.status is None or g.status.phase != Phase.BOUND:
                self._set_status(g, GangStatus(Phase.BOUND, f"all {g.spec.size} members bound in "
                                               f"{g.plan.describe()}", level=g.plan.level, domain=g.plan.domain,
                                               members=g.count, size=g.spec.size))
            self._drop_plan(g)
            return
        if now - g.planned_at > g.spec.timeout_seconds:
            self._release(g, f"not every member was ready within {g.spec.timeout_seconds:.0f} s "
                             f"({len(g.ready) + len(g.bound)} of {g.spec.size})", retry=True)
            return
        for uid, a in g.plan.members.items():
            if uid in g.bound or uid in g.ready:
                continue
            st = self.index.nodes.get(a.node)
            if st is None or st.node is None:
                g.avoid.add(a.node)
                self._release(g, f"planned node {a.node} is gone", retry=False)
                return
            if st.node.unschedulable:
                g.avoid.add(a.node)
                self._release(g, f"planned node {a.node} was cordoned", retry=False)
                return
        for uid in g.pending:
            if uid not in g.plan.members:
                self._release(g, "a new member appeared after planning", retry=False)
                return

    def repair_reservations(self) -> None:
        """Re-choose a plan's devices on a node where kube-scheduler allocated some of them to another pod.

        kube-scheduler's DRA allocator picks devices by itself (first fit): one member may be given the devices
        set aside for its sibling, and a single pod sent to a node the plan shares may be given the gang's. The
        index then counts such a device once (allocated and reserved), so the node looks freer than it is and
        the next pod takes the gang's share. The cure is cheap: on that node, the members whose claims are not
        allocated yet get their devices chosen again from what is really free."""
        ix = self.index
        hit: dict[GangKey, set[str]] = {}
        for k, uid in ix.reserved.items():
            key = self.member_of.get(uid)
            r = ix.reservations.get(uid)
            if key is not None and r is not None and k in ix.allocated:
                hit.setdefault(key, set()).add(r.node)
        for key, nodes in hit.items():
            g = self.gangs.get(key)
            for node in sorted(nodes):
                if g is not None and g.plan is not None:
                    self._refit(g, g.plan, node)

    def _refit(self, g: Gang, plan: GangPlan, node: str) -> None:
        ix = self.index
        uids = sorted((u for u, a in plan.members.items() if a.node == node), key=lambda u: self._name(g, u))
        old = {u: ix.reservations[u] for u in uids if u in ix.reservations}
        need = []
        for uid in uids:
            ix.drop_reservation(uid)
            pod = g.pending.get(uid)
            if pod is not None and uid not in g.ready and not self._allocated(pod):
                need.append(pod)
        ix.refresh(time.monotonic())
        st = ix.nodes.get(node)
        for pod in need:
            r = old.get(pod.uid)
            expires = r.expires if r is not None else time.monotonic() + g.spec.timeout_seconds
            try:
                req = resolve(pod, ix, self.cfg.alignment)
            except Unresolved:
                req = None
            f = ix.fit_exact(req, st) if req is not None and st is not None else None
            if st is not None and f is not None and f.ok:
                keys = tuple(st.free_keys[i] for i in f.witness if i < len(st.free_keys))
            else:
                # Another pod took devices the plan counted on. Keep what is left; if the member no longer
                # fits, kube-scheduler refuses the planned node and the plan is given up then (filter()).
                keys = tuple(k for k in (r.devices if r is not None else ()) if k not in ix.allocated)
                self.log.info("gang_reservation_short", gang=str(g.spec.key), pod=pod.name, node=node)
            plan.members[pod.uid] = Assignment(node, keys)
            ix.reserve_keys(pod.uid, node, keys, claim_keys(pod), expires)
            ix.refresh(time.monotonic())

    def _allocated(self, pod: Pod) -> bool:
        """Every claim of the pod is allocated (PreBind ran): its devices count as allocated, not reserved."""
        keys = claim_keys(pod)
        if not keys or len(keys) < len(pod.claims):
            return False
        return all((c := self.index.claims.get(k)) is not None and c.is_allocated for k in keys)

    def _holds_allocation(self, pod: Pod) -> bool:
        return any((c := self.index.claims.get(k)) is not None and c.is_allocated for k in claim_keys(pod))

    @staticmethod
    def _name(g: Gang, uid: str) -> str:
        return g.specs.get(uid, (uid, None))[0]

    def _drop_plan(self, g: Gang) -> None:
        if g.plan is not None:
            for uid in g.plan.members:
                self.index.drop_reservation(uid)
        g.plan = None

    def _release(self, g: Gang, why: str, retry: bool) -> None:
        """Give back everything the gang holds: held binds fail, reservations and nominations go, and claims
        allocated for members that were never bound are deallocated (kube-scheduler leaves them)."""
        self.log.info("gang_released", gang=str(g.spec.key), reason=why)
        if g.plan is not None:
            g.released_stamp = f"{g.planned_at:.3f}"
        for w in list(g.waiters.values()):
            if not w.done():
                w.set_result(f"gang {g.spec.key} released: {why}")
        g.waiters.clear()
        self._drop_plan(g)
        for uid, pod in g.pending.items():
            self.actions.steer(pod, "", {PLAN_ANNOTATION: None})
            if uid in g.ready:
                g.dealloc_asked.add(uid)
                self.actions.release_claims(pod, claim_keys(pod))
        g.ready.clear()
        g.tried_gen = -1
        if retry:
            g.not_before = self.clock() + RETRY_AFTER_RELEASE
        self._set_status(g, GangStatus(Phase.RELEASED, why, members=g.count, size=g.spec.size), warning=True)

    def _report_partial(self, g: Gang, now: float) -> None:
        partial = 0 < len(g.bound) < g.spec.size and not g.ready
        if not partial:
            g.partial_since = None
            return
        if g.partial_since is None:
            g.partial_since = now
        elif now - g.partial_since > PARTIAL_REPORT_AFTER and (g.status is None or g.status.phase != Phase.PARTIAL):
            self._set_status(g, GangStatus(Phase.PARTIAL, f"{len(g.bound)} of {g.spec.size} members are bound and "
                                           "the rest are not (left by an interrupted bind); placing the rest "
                                           "next to them", members=g.count, size=g.spec.size), warning=True)

    def holder_of(self, uid: str) -> str:
        key = self.member_of.get(uid)
        return f"gang {key}" if key is not None else ""

    # ---- filter --------------------------------------------------------------------------------
    def filter(self, pod: Pod, names: tuple[str, ...]) -> FilterOutcome | None:
        """The verdict for a gang member (None: not a member, judge it as a single pod)."""
        key = self.member_of.get(pod.uid)
        if key is None:
            spec = self.spec_of(pod)
            if spec is None:
                return None
            if isinstance(spec, Waiting):
                return _refuse_all(names, f"gang {spec.key}: {spec.reason}")
            self.observe(pod.uid, pod)
            key = spec.key
        g = self.gangs.get(key)
        if g is None:
            return None
        if g.plan is None:
            self._try_plan(g, self.clock())
        if g.plan is None:
            text = g.status.message if g.status is not None else f"{g.count} of {g.spec.size} members exist"
            return _refuse_all(names, f"gang {key}: {text}")
        a = g.plan.members.get(pod.uid)
        if a is None:
            return _refuse_all(names, f"gang {key}: this member is not in the plan yet; replanning")
        out = FilterOutcome()
        where = f"gang {key} placed this member on {a.node} ({g.plan.describe()})"
        if a.node in names:
            g.misses.pop(pod.uid, None)
            out.passed = [a.node]
            out.unresolvable = {n: PREFIX + where for n in names if n != a.node}
            return out
        if names and pod.nominated_node == a.node:
            # kube-scheduler tried the nominated (planned) node first and its own filters refused it; this is the
            # full pass that follows.
            g.misses[pod.uid] = g.misses.get(pod.uid, 0) + 1
            if g.misses[pod.uid] >= PLANNED_NODE_MISSES:
                g.avoid.add(a.node)
                self._release(g, f"kube-scheduler refuses planned node {a.node} for {pod.name}", retry=False)
            out.unresolvable = {n: PREFIX + where + "; kube-scheduler's own filters refused it" for n in names}
            return out
        # The nomination is missing (not written yet, or cleared by kube-scheduler after a failed try), so this is
        # a pass over a sample of the cluster that need not contain the planned node: nominate it again.
        self._resteer(g, pod, a.node)
        out.unresolvable = {n: PREFIX + where + "; nominating it again" for n in names}
        return out

    def _resteer(self, g: Gang, pod: Pod, node: str) -> None:
        now = self.clock()
        if now - g.resteered.get(pod.uid, 0.0) < RESTEER_EVERY:
            return
        g.resteered[pod.uid] = now
        self.actions.steer(pod, node, {PLAN_ANNOTATION: f"{node}@{g.planned_at:.3f}", NUDGE_ANNOTATION: f"{now:.3f}"})

    # ---- bind barrier --------------------------------------------------------------------------
    async def bind(self, ns: str, name: str, uid: str, node: str) -> str:
        """"" when bound; else the error kube-scheduler should see."""
        key = self.member_of.get(uid)
        g = self.gangs.get(key) if key is not None else None
        if g is None:
            return await self.actions.bind(ns, name, uid, node)
        g.ready[uid] = node
        if len(g.ready) + len(g.bound) >= g.spec.size:
            return await self._burst(g, uid)
        self._set_status(g, GangStatus(Phase.BINDING, f"{len(g.ready) + len(g.bound)} of {g.spec.size} members "
                                       "ready to bind; held until all are", members=g.count, size=g.spec.size))
        fut = g.waiters.get(uid)
        if fut is None or fut.done():
            fut = g.waiters[uid] = asyncio.get_running_loop().create_future()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.bind_hold_seconds)
        except TimeoutError:
            if g.waiters.get(uid) is fut:
                del g.waiters[uid]
            return (f"topodra: gang {g.spec.key}: {len(g.ready) + len(g.bound)} of {g.spec.size} members ready; "
                    "this member stays ready and is bound with the others")

    async def _burst(self, g: Gang, caller: str) -> str:
        todo = dict(g.ready)
        g.ready.clear()
        results = await asyncio.gather(*(self._bind_one(g, uid, node) for uid, node in todo.items()))
        mine = ""
        failed = 0
        for (uid, node), err in zip(todo.items(), results, strict=True):
            if not err:
                g.bound[uid] = node
                g.pending.pop(uid, None)
            else:
                failed += 1
                g.ready[uid] = node  # try again with the next call
            w = g.waiters.pop(uid, None)
            if w is not None and not w.done():
                w.set_result(err)
            if uid == caller:
                mine = err
        self.log.info("gang_bound", gang=str(g.spec.key), bound=len(todo) - failed, failed=failed)
        if not failed and g.plan is not None:
            self._check_plan(g, self.clock())
        return mine

    async def _bind_one(self, g: Gang, uid: str, node: str) -> str:
        pod = g.pending.get(uid)
        if pod is None:
            return ""
        return await self.actions.bind(pod.namespace, pod.name, uid, node)

    # ---- status --------------------------------------------------------------------------------
    def _set_status(self, g: Gang, st: GangStatus, warning: bool = False, annotate: bool = True) -> None:
        if g.status is not None and g.status.same(st):
            g.status = st
            return
        g.status = st
        pods = list(g.pending.values())
        self.actions.event(g.spec, pods, st.reason, f"gang {g.spec.key}: {st.message}",
                           warning or st.phase in (Phase.REFUSED, Phase.WAITING, Phase.PARTIAL))
        if not annotate:
            return
        body = st.to_json()
        for p in pods:
            self.actions.annotate(p, {STATUS_ANNOTATION: body})

    def snapshot(self) -> list[dict[str, object]]:
        """For /debug/gangs and tests: one line per gang."""
        return [{"gang": str(k), "size": g.spec.size, "pending": len(g.pending), "bound": len(g.bound),
                 "ready": len(g.ready), "planned": g.plan is not None,
                 "phase": g.status.phase.value if g.status else "", "message": g.status.message if g.status else ""}
                for k, g in sorted(self.gangs.items(), key=lambda kv: str(kv[0]))]


def _within(level: str, preferred: str, c: Coordinator) -> bool:
    order = [name for name, _ in level_order(c.index)]
    return level in order and preferred in order and order.index(level) <= order.index(preferred)


def _refuse_all(names: tuple[str, ...], why: str) -> FilterOutcome:
    out = FilterOutcome()
    out.unresolvable = dict.fromkeys(names, PREFIX + why)
    return out

