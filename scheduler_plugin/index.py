"""The extender's view of the cluster, kept up to date from watch events and read by filter and score.

Per node: the free devices (published by the newest generation of each pool, minus devices allocated
to claims, minus devices the extender itself set aside for pods it has just placed), as interned
*profiles* so that nodes of the same shape share one signature and feasibility is computed once per
(pod requirements, signature). Per topology level: free GPUs per domain. Per job: where its pods are,
counting bound pods and the extender's own recent, not yet visible decisions.

Single-threaded by design: the asyncio loop owns it (watch events and HTTP handlers run on the loop).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from scheduler_plugin.cel import CelCache, by_domain
from scheduler_plugin.claims import Need, Requirements
from scheduler_plugin.config import STD_NUMA_NODE, STD_PCIE_ROOT, ExtenderConfig
from scheduler_plugin.fit import Fit, Profile, fit_node
from scheduler_plugin.model import (
    AttrValue,
    Claim,
    ClaimTemplate,
    Device,
    DeviceClass,
    DeviceKey,
    Node,
    Pod,
    Slice,
)

# Attributes unique to one device; left out of profiles so that equal hardware shares a profile, unless
# a DeviceClass selector reads them (see Index.dropped).
IDENTITY_ATTRS = frozenset({"uuid", "pciBusID", "mac", "ifName", "index", "minor", "rdmaDevice", "serial",
                            "sriovPF", "serialNumber", "pciAddress"})

JobKey = tuple[str, str]  # (namespace, "source=value")
NO_DEVICES = -1  # signature id of nodes that publish no devices (or are unknown)
MAX_SIGNATURES = 200_000
CHANGE_LOG_LIMIT = 100_000  # recomputed node names kept for readers that patch per-node arrays


@dataclass(slots=True)
class NodeState:
    name: str
    node: Node | None = None
    slices: set[str] = field(default_factory=set)
    domains: tuple[str | None, ...] = ()
    free: tuple[Profile, ...] = ()  # sorted by profile id
    free_keys: tuple[DeviceKey, ...] = ()  # same order as `free`
    total: int = 0
    sig: int = -1
    free_gpus: int = 0
    total_gpus: int = 0  # published, free or not: what the node could hold with every device free


@dataclass(slots=True)
class Reservation:
    pod_uid: str
    node: str
    devices: tuple[DeviceKey, ...]
    claims: tuple[tuple[str, str], ...]
    expires: float


@dataclass(slots=True)
class Hint:
    job: JobKey
    node: str
    expires: float


class FitTable:
    """Feasibility results of one set of requirements, shared by nodes of the same signature or shape.

    A node's *shape* for a pod is what the solver can see: per free device, whether it matches each
    request, whether it is tainted, and its values of the alignment and constraint attributes.
    Nodes that differ only in attributes the pod does not look at share one result.
    """

    def __init__(self, req: Requirements, shared: bool) -> None:
        self.shared = shared
        self.notes: tuple[str, ...] = ()
        self.by_sig: dict[int, Fit] = {}
        # Per signature, derived once: the filter verdict (reason, shortfall?) and the alignment term.
        self.verdicts: dict[int | None, tuple[str, bool]] = {}
        self.ok_sigs: set[int | None] = set()
        self.reasons: dict[int | None, str] = {}
        self.short_sigs: set[int | None] = set()
        self.align: dict[int | None, tuple[float, float]] = {}
        self.by_shape: dict[tuple[int, ...], Fit] = {}
        self._proj: dict[int, int] = {}
        self._proj_ids: dict[tuple[object, ...], int] = {}
        self._needs = tuple(n for v in req.variants for n in v.needs)
        attrs = {STD_PCIE_ROOT, STD_NUMA_NODE}
        for v in req.variants:
            for r in v.rules:
                attrs.update(a for a in (r.match_attribute, r.distinct_attribute) if a)
        self._attrs = tuple(sorted(attrs))

    def project(self, p: Profile, match: Callable[[Need, Profile], bool | None]) -> int:
        pid = self._proj.get(p.pid)
        if pid is None:
            key = (p.tainted, tuple(match(n, p) for n in self._needs), tuple(p.attrs.get(a) for a in self._attrs))
            pid = self._proj_ids.setdefault(key, len(self._proj_ids))
            self._proj[p.pid] = pid
        return pid

    def by_signature(self, sig: int, free: tuple[Profile, ...], req: Requirements,
                     match: Callable[[Need, Profile], bool | None]) -> Fit:
        f = self.by_sig.get(sig)
        if f is None:
            # Another signature may look the same to this pod (same matches, same alignment values).
            shape = tuple(sorted(self.project(p, match) for p in free))
            f = self.by_shape.get(shape)
            if f is None:
                f = self.by_shape[shape] = fit_node(req, free, match)
            self.by_sig[sig] = f
        return f

    def __len__(self) -> int:
        return len(self.by_sig)


class Index:
    def __init__(self, cfg: ExtenderConfig) -> None:
        self.cfg = cfg
        self.cel = CelCache()
        self.nodes: dict[str, NodeState] = {}
        self.slices: dict[str, Slice] = {}
        self.pool_gen: dict[tuple[str, str], int] = {}
        self.pool_slices: dict[tuple[str, str], set[str]] = {}
        self.claims: dict[tuple[str, str], Claim] = {}
        self.templates: dict[tuple[str, str], ClaimTemplate] = {}
        self.classes: dict[str, DeviceClass] = {}
        self.allocated: dict[DeviceKey, tuple[str, str]] = {}
        self.reservations: dict[str, Reservation] = {}
        self.reserved: dict[DeviceKey, str] = {}
        self.bound: dict[str, tuple[JobKey | None, str]] = {}  # pod uid -> (job, node) of bound pods
        self.job_nodes: dict[JobKey, Counter[str]] = {}
        self.hints: dict[str, Hint] = {}  # pod uid -> our own unconfirmed placement
        self.pods: dict[str, Pod] = {}  # pod uid -> every pod not finished
        self._upserting = False  # delete_pod called from upsert_pod: the pod lives on
        self.pending: dict[str, Pod] = {}  # pod uid -> pod without a node (not terminal)
        self.pending_changed: set[str] = set()  # pods added, changed or gone since the planner last looked
        self.on_pending: Callable[[], None] | None = None  # called on every pending change (wakes the planner)
        self.node_gen = 0  # bumps when a Node object changes (labels, taints, cordon)
        self.profiles: dict[tuple[str, tuple[tuple[str, AttrValue], ...], bool], Profile] = {}
        self.sigs: dict[tuple[int, ...], int] = {}
        self.sig_free: list[tuple[Profile, ...]] = []  # by signature id: the free devices it stands for
        self.sig_of: dict[str, int] = {}  # node -> signature id (NO_DEVICES: publishes nothing)
        self.dom_ids: dict[tuple[str | None, ...], int] = {}
        self.dom_list: list[tuple[str | None, ...]] = []  # by domain-tuple id
        self.dom_of: dict[str, int] = {}  # node -> domain-tuple id
        # node -> id of its (signature, domain-tuple) pair: scoring works per distinct pair
        self.nk_ids: dict[tuple[int, int], int] = {}
        self.nk_list: list[tuple[int, int]] = []
        self.nk_of: dict[str, int] = {}
        self._dom_rank: list[float] = []  # by domain-tuple id: place in name order, 0 (first) .. <1
        self.req_ids: dict[Requirements, int] = {}
        self.memo: dict[int, FitTable] = {}
        self.class_match: dict[tuple[str, int], bool | None] = {}
        self.dropped = IDENTITY_ATTRS  # identity attributes profiles leave out: those no DeviceClass reads
        self.kinds: dict[str, str] = {}
        self.domain_free: list[Counter[str]] = [Counter() for _ in cfg.levels]
        self.dirty: set[str] = set()
        self.generation = 0  # bumps on every change; scores cache on it
        # Every recomputed node, in order, for readers that keep per-node arrays (scheduler_plugin.views):
        # entry i has sequence number change_base + i. `epoch` bumps when signature ids are reused.
        self.change_log: list[str] = []
        self.change_base = 0
        self.epoch = 0
        self._next_sweep = 0.0

    # ---- events ------------------------------------------------------------------------------
    def upsert_node(self, n: Node) -> None:
        st = self._node(n.name)
        if st.node != n:
            self.node_gen += 1
        st.node = n
        self.dirty.add(n.name)

    def delete_node(self, name: str) -> None:
        st = self.nodes.get(name)
        if st is None:
            return
        st.node = None
        self.node_gen += 1
        self.dirty.add(name)

    def upsert_slice(self, s: Slice) -> None:
        old = self.slices.get(s.name)
        if old is not None:
            self._unlink_slice(old)
        self.slices[s.name] = s
        pk = (s.driver, s.pool)
        self.pool_slices.setdefault(pk, set()).add(s.name)
        if s.generation > self.pool_gen.get(pk, -1):
            self.pool_gen[pk] = s.generation
            self._dirty_pool(pk)
        if s.node is not None:
            self._node(s.node).slices.add(s.name)
            self.dirty.add(s.node)

    def delete_slice(self, name: str) -> None:
        old = self.slices.pop(name, None)
        if old is not None:
            self._unlink_slice(old)

    def _unlink_slice(self, s: Slice) -> None:
        pk = (s.driver, s.pool)
        names = self.pool_slices.get(pk, set())
        names.discard(s.name)
        if s.node is not None and s.node in self.nodes:
            self.nodes[s.node].slices.discard(s.name)
            self.dirty.add(s.node)
        gens = [self.slices[n].generation for n in names if n in self.slices and self.slices[n] is not s]
        new_gen = max(gens) if gens else -1
        if new_gen != self.pool_gen.get(pk, -1):
            if new_gen < 0:
                self.pool_gen.pop(pk, None)
                self.pool_slices.pop(pk, None)
            else:
                self.pool_gen[pk] = new_gen
            self._dirty_pool(pk)

    def _dirty_pool(self, pk: tuple[str, str]) -> None:
        for n in self.pool_slices.get(pk, ()):
            sl = self.slices.get(n)
            if sl is not None and sl.node is not None:
                self.dirty.add(sl.node)

    def upsert_claim(self, c: Claim) -> None:
        key = (c.namespace, c.name)
        old = self.claims.get(key)
        if old is not None:
            self._release(old)
        self.claims[key] = c
        for dk in c.allocated:
            self.allocated[dk] = key
            self._dirty_device(dk)
        if c.is_allocated:
            owners = [r.pod_uid for r in self.reservations.values() if key in r.claims]
            spare = [k for uid in owners for k in self.reservations[uid].devices if k not in c.allocated]
            for dk in c.allocated:
                other = self.reserved.get(dk)
                if other is not None and other not in owners:
                    self._move_reservation(other, dk, spare)
            for uid in owners:
                self.drop_reservation(uid)

    def _move_reservation(self, uid: str, taken: DeviceKey, spare: list[DeviceKey]) -> None:
        """kube-scheduler's allocator picks devices first-fit, not the ones set aside here: a device reserved for
        one pod may be allocated to another. Left alone, the device would count once (allocated, and reserved)
        and the node would look one device freer than it is, so later pods would be steered to a node that
        cannot hold them. The reservation moves to an equal device: one the allocating pod had set aside (its
        own reservation is going away), else a free one of the same profile on the node."""
        r = self.reservations.get(uid)
        d = self._device(taken)
        if r is None or d is None:
            return
        want = self.profile(d)
        pick: DeviceKey | None = None
        for k in spare:
            o = self._device(k)
            if o is not None and self.profile(o) is want:
                pick = k
                break
        if pick is not None:
            spare.remove(pick)
        else:
            st = self.nodes.get(r.node)
            for k, p in zip(st.free_keys, st.free, strict=True) if st is not None else ():
                if p is want and k not in self.allocated and k not in self.reserved:
                    pick = k
                    break
        if pick is None:
            return
        r.devices = tuple(pick if k == taken else k for k in r.devices)
        if self.reserved.get(taken) == uid:
            del self.reserved[taken]
        self.reserved[pick] = uid
        self.dirty.add(r.node)

    def delete_claim(self, namespace: str, name: str) -> None:
        old = self.claims.pop((namespace, name), None)
        if old is not None:
            self._release(old)

    def _release(self, c: Claim) -> None:
        for dk in c.allocated:
            if self.allocated.get(dk) == (c.namespace, c.name):
                del self.allocated[dk]
                self._dirty_device(dk)

    def _dirty_device(self, dk: DeviceKey) -> None:
        # A device's node is its slice's node; pools are small, so no per-device map is kept.
        for sn in self.pool_slices.get((dk[0], dk[1]), ()):
            sl = self.slices.get(sn)
            if sl is not None and sl.node is not None:
                self.dirty.add(sl.node)

    def upsert_template(self, t: ClaimTemplate) -> None:
        self.templates[(t.namespace, t.name)] = t

    def delete_template(self, namespace: str, name: str) -> None:
        self.templates.pop((namespace, name), None)

    def upsert_class(self, dc: DeviceClass) -> None:
        if self.classes.get(dc.name) != dc:
            self.classes[dc.name] = dc
            self._classes_changed()

    def delete_class(self, name: str) -> None:
        if self.classes.pop(name, None) is not None:
            self._classes_changed()

    def _classes_changed(self) -> None:
        # A class serves many pods: the identity attributes its selectors read stay in the shared profiles
        # (judging it on each node's own devices would cost per-node work on every filter call).
        read = {a for dc in self.classes.values() for s in dc.selectors for a in self.cel.names(s)}
        dropped = IDENTITY_ATTRS - read
        if dropped != self.dropped:
            self.dropped = dropped
            self.dirty.update(self.nodes)
        self.class_match.clear()
        self.kinds.clear()
        self.memo.clear()
        self.req_ids.clear()
        self.generation += 1

    def upsert_pod(self, p: Pod) -> None:
        self._upserting = True
        try:
            self.delete_pod(p.uid)
        finally:
            self._upserting = False
        if not p.terminal:
            self.pods[p.uid] = p
        if not p.node_name and not p.terminal:
            # Waiting for a node: the planner may choose one for it (scheduler_plugin.steer).
            self.pending[p.uid] = p
        if p.node_name and not p.terminal:
            job = self.job_of(p)
            self.bound[p.uid] = (job, p.node_name)
            if job is not None:
                self.job_nodes.setdefault(job, Counter())[p.node_name] += 1
                self.generation += 1
            # The API now shows the placement; our own record of it is no longer needed.
            self.hints.pop(p.uid, None)
            self.drop_reservation(p.uid)

    def delete_pod(self, uid: str) -> None:
        self.pending.pop(uid, None)
        if self.pods.pop(uid, None) is not None and uid in self.reservations and not self._upserting:
            self.drop_reservation(uid)  # the pod is gone: nothing will use what was set aside for it
        self.pending_changed.add(uid)
        if self.on_pending is not None:
            self.on_pending()
        old = self.bound.pop(uid, None)
        if old is not None and old[0] is not None:
            c = self.job_nodes.get(old[0])
            if c is not None:
                c[old[1]] -= 1
                if c[old[1]] <= 0:
                    del c[old[1]]
                if not c:
                    del self.job_nodes[old[0]]
            self.generation += 1

    def replace(self, kind: str, objs: Iterable[object]) -> None:
        """A fresh list of one kind replaces everything known about it (relist after an outage)."""
        items = list(objs)
        if kind == "nodes":
            keep = {n.name for n in items if isinstance(n, Node)}
            for name in [n for n, st in self.nodes.items() if st.node is not None and n not in keep]:
                self.delete_node(name)
            for n in items:
                if isinstance(n, Node):
                    self.upsert_node(n)
        elif kind == "resourceslices":
            keep = {s.name for s in items if isinstance(s, Slice)}
            for name in [n for n in self.slices if n not in keep]:
                self.delete_slice(name)
            for s in items:
                if isinstance(s, Slice) and self.slices.get(s.name) != s:
                    self.upsert_slice(s)
        elif kind == "resourceclaims":
            keepc = {(c.namespace, c.name) for c in items if isinstance(c, Claim)}
            for key in [k for k in self.claims if k not in keepc]:
                self.delete_claim(*key)
            for c in items:
                if isinstance(c, Claim):
                    self.upsert_claim(c)
        elif kind == "resourceclaimtemplates":
            self.templates = {(t.namespace, t.name): t for t in items if isinstance(t, ClaimTemplate)}
        elif kind == "deviceclasses":
            self.classes = {d.name: d for d in items if isinstance(d, DeviceClass)}
            self._classes_changed()
        elif kind == "pods":
            keepp = {p.uid for p in items if isinstance(p, Pod)}
            for uid in [u for u in (*self.bound, *self.pending) if u not in keepp]:
                self.delete_pod(uid)
            for p in items:
                if isinstance(p, Pod):
                    self.upsert_pod(p)

    # ---- our own decisions --------------------------------------------------------------------
    def reserve(self, pod: Pod, node: str, fit: Fit, claims: Sequence[tuple[str, str]], now: float,
                ttl: float | None = None) -> tuple[DeviceKey, ...]:
        """Set aside the devices one allocation would take until the API shows the real one (or TTL)."""
        self.drop_reservation(pod.uid)
        st = self.nodes.get(node)
        if st is None or not fit.witness:
            return ()
        keys = tuple(st.free_keys[i] for i in fit.witness if i < len(st.free_keys))
        self.reserve_keys(pod.uid, node, keys, claims, now + (self.cfg.decision_ttl_seconds if ttl is None else ttl))
        return keys

    def reserve_keys(self, pod_uid: str, node: str, keys: tuple[DeviceKey, ...], claims: Sequence[tuple[str, str]],
                     expires: float) -> None:
        """Set aside these devices for a pod (a gang plan holds its members' devices this way)."""
        self.drop_reservation(pod_uid)
        self.reservations[pod_uid] = Reservation(pod_uid, node, keys, tuple(claims), expires)
        for k in keys:
            self.reserved[k] = pod_uid
        self.dirty.add(node)

    def drop_reservation(self, pod_uid: str) -> None:
        r = self.reservations.pop(pod_uid, None)
        if r is None:
            return
        for k in r.devices:
            if self.reserved.get(k) == pod_uid:
                del self.reserved[k]
        self.dirty.add(r.node)

    def hint(self, pod: Pod, node: str, now: float) -> None:
        job = self.job_of(pod)
        if job is not None and pod.uid not in self.bound:
            self.hints[pod.uid] = Hint(job, node, now + self.cfg.decision_ttl_seconds)
            self.generation += 1

    # ---- reading -----------------------------------------------------------------------------
    def refresh(self, now: float) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            for uid in [u for u, r in self.reservations.items() if r.expires <= now]:
                self.drop_reservation(uid)
            expired = [u for u, h in self.hints.items() if h.expires <= now]
            for uid in expired:
                del self.hints[uid]
            if expired:
                self.generation += 1
        if len(self.sigs) > MAX_SIGNATURES:
            # Churn leaves old signatures behind; start over rather than grow without bound.
            self.sigs.clear()
            self.sig_free.clear()
            self.nk_ids.clear()
            self.nk_list.clear()
            self.memo.clear()
            self.req_ids.clear()
            self.dirty.update(self.nodes)
            self.epoch += 1
        if self.dirty:
            for name in self.dirty:
                self._recompute(name)
            self.dirty.clear()
            self.generation += 1

    def recompute_some(self, limit: int) -> int:
        """Recompute up to `limit` changed nodes; how many remain. Lets a relist of thousands of
        objects be absorbed in slices between calls instead of inside one call."""
        for _ in range(min(limit, len(self.dirty))):
            self._recompute(self.dirty.pop())
        if limit:
            self.generation += 1
        return len(self.dirty)

    def _node(self, name: str) -> NodeState:
        st = self.nodes.get(name)
        if st is None:
            st = self.nodes[name] = NodeState(name)
        return st

    def _recompute(self, name: str) -> None:
        st = self.nodes.get(name)
        if st is None:
            return
        if len(self.change_log) >= CHANGE_LOG_LIMIT:
            self.change_base += len(self.change_log)
            self.change_log.clear()
        self.change_log.append(name)
        old_domains, old_gpus = st.domains, st.free_gpus
        devices: list[Device] = []
        for sn in st.slices:
            s = self.slices.get(sn)
            if s is not None and s.generation == self.pool_gen.get((s.driver, s.pool)):
                devices.extend(s.devices)
        free: list[tuple[int, str, Profile, DeviceKey]] = []
        for d in devices:
            k = d.key
            if k in self.allocated or k in self.reserved:
                continue
            p = self.profile(d)
            free.append((p.pid, d.name, p, k))
        free.sort(key=lambda t: (t[0], t[1]))
        st.free = tuple(t[2] for t in free)
        st.free_keys = tuple(t[3] for t in free)
        st.total = len(devices)
        sig = tuple(p.pid for p in st.free)
        sid = self.sigs.get(sig)
        if sid is None:
            sid = self.sigs[sig] = len(self.sig_free)
            self.sig_free.append(st.free)
        st.sig = sid
        self.sig_of[name] = sid if st.total else NO_DEVICES
        st.free_gpus = sum(1 for p in st.free if p.kind == "gpu")
        st.total_gpus = st.free_gpus + sum(1 for d in devices if (d.key in self.allocated or d.key in self.reserved)
                                           and self.profile(d).kind == "gpu")
        st.domains = self._domains(st, devices)
        did = self.dom_ids.get(st.domains)
        if did is None:
            did = self.dom_ids[st.domains] = len(self.dom_list)
            self.dom_list.append(st.domains)
        self.dom_of[name] = did
        pair = (self.sig_of[name], did)
        nk = self.nk_ids.get(pair)
        if nk is None:
            nk = self.nk_ids[pair] = len(self.nk_list)
            self.nk_list.append(pair)
        self.nk_of[name] = nk
        for i, (od, nd) in enumerate(zip(old_domains or (None,) * len(self.cfg.levels), st.domains, strict=True)):
            if od is not None:
                self.domain_free[i][od] -= old_gpus
                if self.domain_free[i][od] <= 0:
                    del self.domain_free[i][od]
            if nd is not None and st.free_gpus:
                self.domain_free[i][nd] += st.free_gpus
        if st.node is None and not st.slices:
            del self.nodes[name]
            self.sig_of.pop(name, None)
            self.dom_of.pop(name, None)
            self.nk_of.pop(name, None)

    def _domains(self, st: NodeState, devices: Sequence[Device]) -> tuple[str | None, ...]:
        out: list[str | None] = []
        for lv in self.cfg.levels:
            val: str | None = None
            if st.node is not None:
                for lab in lv.labels:
                    val = st.node.label(lab)
                    if val is not None:
                        break
            if val is None and lv.attributes:
                for d in devices:
                    got = dict(d.attrs)
                    for a in lv.attributes:
                        if a in got:
                            val = str(got[a])
                            break
                    if val is not None:
                        break
            out.append(val)
        return tuple(out)

    def dom_rank(self) -> list[float]:
        """Each domain tuple's place in name order (0 first); recomputed only when new tuples appear."""
        if len(self._dom_rank) != len(self.dom_list):
            order = sorted(range(len(self.dom_list)), key=lambda i: tuple(x or "" for x in self.dom_list[i]))
            rank = [0.0] * len(order)
            for pos, i in enumerate(order):
                rank[i] = pos / len(order)
            self._dom_rank = rank
        return self._dom_rank

    def profile(self, d: Device) -> Profile:
        reduced = tuple((q, v) for q, v in d.attrs if q.rpartition("/")[2] not in self.dropped)
        key = (d.driver, reduced, d.tainted)
        p = self.profiles.get(key)
        if p is None:
            attrs = dict(reduced)
            p = Profile(len(self.profiles), d.driver, attrs, by_domain(reduced), d.tainted, self._device_kind(attrs))
            self.profiles[key] = p
        return p

    def _device_kind(self, attrs: dict[str, AttrValue]) -> str:
        for q, v in attrs.items():
            if q.rpartition("/")[2] == "type" and isinstance(v, str):
                if v in self.cfg.alignment.gpu_type_values:
                    return "gpu"
                if v in self.cfg.alignment.nic_type_values:
                    return "nic"
        return ""

    # ---- ClaimSource ------------------------------------------------------------------------
    def claim(self, namespace: str, name: str) -> Claim | None:
        return self.claims.get((namespace, name))

    def template(self, namespace: str, name: str) -> ClaimTemplate | None:
        return self.templates.get((namespace, name))

    def class_kind(self, class_name: str) -> str:
        k = self.kinds.get(class_name)
        if k is None:
            a = self.cfg.alignment
            k = ""
            if class_name in a.gpu_classes:
                k = "gpu"
            elif class_name in a.nic_classes:
                k = "nic"
            else:
                dc = self.classes.get(class_name)
                text = " ".join(dc.selectors) if dc else ""
                if any(f'type == "{t}"' in text for t in a.gpu_type_values):
                    k = "gpu"
                elif any(f'type == "{t}"' in text for t in a.nic_type_values):
                    k = "nic"
            self.kinds[class_name] = k
        return k

    # ---- matching and fitting -------------------------------------------------------------------
    def match(self, need: Need, p: Profile) -> bool | None:
        key = (need.class_name, p.pid)
        if key in self.class_match:
            cm = self.class_match[key]
        else:
            dc = self.classes.get(need.class_name)
            cm = None if dc is None else self._all(dc.selectors, p)
            if p.pid >= 0:
                self.class_match[key] = cm
        if cm is False or not need.selectors:
            return cm
        own = self._all(need.selectors, p)
        if own is False:
            return False
        return None if (cm is None or own is None) else True

    def _all(self, selectors: Sequence[str], p: Profile) -> bool | None:
        result: bool | None = True
        for sel in selectors:
            r = self.cel.evaluate(sel, p.driver, p.domains)
            if r is False:
                return False
            if r is None:
                result = None
        return result

    def exact(self, req: Requirements) -> bool:
        """Request selectors that read identity attributes the profiles leave out cannot use shared profiles."""
        return any(self.cel.names(s) & self.dropped for v in req.variants for n in v.needs for s in n.selectors)

    def fits(self, req: Requirements) -> FitTable:
        """The memo for these requirements (results by node signature and by node shape)."""
        rid = self.req_ids.get(req)
        if rid is None:
            if len(self.req_ids) > 50_000:  # bound memory; requirements of old pods are rarely seen again
                self.req_ids.clear()
                self.memo.clear()
            rid = self.req_ids[req] = len(self.req_ids)
        table = self.memo.get(rid)
        if table is None:
            table = self.memo[rid] = FitTable(req, not self.exact(req))
            table.notes = self._unjudged(req)
        return table

    def _unjudged(self, req: Requirements) -> tuple[str, ...]:
        """Selectors outside the CEL subset: devices are assumed to match them (never filtered on)."""
        notes = []
        for v in req.variants:
            for n in v.needs:
                dc = self.classes.get(n.class_name)
                if dc is None and n.class_name:
                    notes.append(f"DeviceClass {n.class_name} not in the cache")
                for src in (*(dc.selectors if dc else ()), *n.selectors):
                    if self.cel.compile(src) is None:
                        notes.append(f"CEL not evaluated, assumed to match: {src[:120]}")
        return tuple(dict.fromkeys(notes))

    def fit(self, req: Requirements, st: NodeState, table: FitTable) -> Fit:
        if not table.shared:
            return fit_node(req, self._exact_profiles(st), self.match)
        return table.by_signature(st.sig, st.free, req, self.match)

    def fit_sig(self, req: Requirements, sig: int, table: FitTable) -> Fit:
        return table.by_signature(sig, self.sig_free[sig], req, self.match)

    def fit_exact(self, req: Requirements, st: NodeState) -> Fit:
        """Fit on this node's own device order (its witness names real devices)."""
        devices = st.free if not self.exact(req) else self._exact_profiles(st)
        return fit_node(req, devices, self.match)

    def _exact_profiles(self, st: NodeState) -> list[Profile]:
        out = []
        for k, p in zip(st.free_keys, st.free, strict=True):
            d = self._device(k)
            if d is None:
                out.append(p)
                continue
            attrs = dict(d.attrs)
            out.append(Profile(-1, d.driver, attrs, by_domain(d.attrs), d.tainted, p.kind))
        return out

    def exact_profiles(self, st: NodeState) -> list[Profile]:
        """The node's free devices as profiles that keep identity attributes (same order as `free_keys`)."""
        return self._exact_profiles(st)

    def kinds_of_key(self, k: DeviceKey) -> str:
        """"gpu", "nic" or "" for a published device (messages only: looks the device up in its pool)."""
        d = self._device(k)
        return "" if d is None else self.profile(d).kind

    def _device(self, k: DeviceKey) -> Device | None:
        for sn in self.pool_slices.get((k[0], k[1]), ()):
            s = self.slices.get(sn)
            if s is not None:
                for d in s.devices:
                    if d.name == k[2]:
                        return d
        return None

    # ---- jobs --------------------------------------------------------------------------------
    def job_of(self, pod: Pod) -> JobKey | None:
        if pod.group:
            return (pod.namespace, f"podGroup={pod.group}")
        for lab in self.cfg.job_labels:
            v = pod.label(lab)
            if v:
                return (pod.namespace, f"{lab}={v}")
        for ann in self.cfg.job_annotations:
            v = pod.annotation(ann)
            if v:
                return (pod.namespace, f"{ann}={v}")
        return None

    def job_domains(self, job: JobKey | None, exclude_uid: str = "") -> list[Counter[str]]:
        """Per level: how many of the job's pods (bound or just placed by us) each domain holds."""
        out: list[Counter[str]] = [Counter() for _ in self.cfg.levels]
        if job is None:
            return out
        nodes: Counter[str] = Counter(self.job_nodes.get(job, Counter()))
        for uid, h in self.hints.items():
            if h.job == job and uid != exclude_uid:
                nodes[h.node] += 1
        for node, n in nodes.items():
            st = self.nodes.get(node)
            if st is None:
                continue
            for i, d in enumerate(st.domains):
                if d is not None:
                    out[i][d] += n
        return out

    def sizes(self) -> dict[str, int]:
        return {
            "nodes": sum(1 for s in self.nodes.values() if s.node is not None),
            "resourceslices": len(self.slices),
            "resourceclaims": len(self.claims),
            "resourceclaimtemplates": len(self.templates),
            "deviceclasses": len(self.classes),
            "pods": len(self.bound),
            "devices": sum(st.total for st in self.nodes.values()),
            "allocated_devices": len(self.allocated),
            "reserved_devices": len(self.reserved),
            "profiles": len(self.profiles),
            "signatures": len(self.sigs),
            "hints": len(self.hints),
        }
