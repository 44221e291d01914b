"""Place a whole gang in one decision: every member on a node where its claims fit with the alignment
they require, all inside one domain of the required level, in the smallest domain that fits.

Pure over the index: it reads free devices (already net of allocations and of every other plan's
reservations) and returns a plan or a shortfall; the coordinator reserves what the plan names.

Search: levels from the tightest (one node) up to the required level (or the whole cluster); at each
level the domains with enough free GPUs, fullest first (best fit keeps big domains whole); inside a domain,
members with the most GPUs first, each on the first node (fullest first, then name) where it fits. Node
states are simulated as members are placed, and a node that failed a member shape is not tried again for
that shape, so a domain costs one pass over its nodes per distinct member shape.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from scheduler_plugin.claims import Requirements
from scheduler_plugin.fit import Fit, Profile, fit_node
from scheduler_plugin.index import Index
from scheduler_plugin.model import DeviceKey, Placement, Pod

NODE, CLUSTER = "node", "cluster"


@dataclass(frozen=True, slots=True)
class Member:
    pod: Pod
    req: Requirements  # empty: needs no devices (a launcher), still placed inside the domain

    @property
    def gpus(self) -> int:
        if not self.req.variants:
            return 0
        return sum(n.count for n in self.req.variants[0].needs if n.kind == "gpu")


@dataclass(frozen=True, slots=True)
class Assignment:
    node: str
    keys: tuple[DeviceKey, ...]  # devices one allocation would take (set aside while the plan lives)


@dataclass(frozen=True, slots=True)
class GangPlan:
    level: str  # NODE, a configured level name, or CLUSTER
    domain: str  # the domain's value at that level ("" for the cluster)
    members: dict[str, Assignment]  # pod uid -> where

    def describe(self) -> str:
        return "the cluster" if self.level == CLUSTER else f"{self.level} {self.domain}"


@dataclass(frozen=True, slots=True)
class Shortfall:
    level: str  # the widest level tried (the required one, or CLUSTER)
    message: str  # e.g. "rack r7: 12 of 16 members fit (GPUs free 12, needed 16; 4 held by gang ml/b)"
    never: bool = False  # larger than any allowed domain even with every device free: waiting cannot help


@dataclass
class _Sim:
    profiles: tuple[Profile, ...]
    keys: tuple[DeviceKey, ...]


def level_order(ix: Index) -> list[tuple[str, int | None]]:
    """(name, index into cfg.levels) from the tightest level up; NODE and CLUSTER have no index."""
    out: list[tuple[str, int | None]] = [(NODE, None)]
    out += [(lv.name, i) for i, lv in reversed(list(enumerate(ix.cfg.levels)))]
    out.append((CLUSTER, None))
    return out


def plan_gang(ix: Index, members: Sequence[Member], required: str | None,
              eligible: Callable[[Placement], Collection[str]], bound_nodes: Collection[str] = (),
              exclude: Collection[str] = (),
              holder_of: Callable[[str], str] = lambda uid: "") -> GangPlan | Shortfall:
    """`eligible(placement)`: nodes that accept a pod apart from devices. `bound_nodes`: where members that are
    already bound run (the domain must contain them). `holder_of(pod uid)`: who holds a reservation, for messages."""
    levels = level_order(ix)
    names = [n for n, _ in levels]
    top = names.index(required) if required in names else len(names) - 1
    demand = sum(m.gpus for m in members)
    # Members bound to aligned devices first: a member without constraints takes any free GPU, and placed
    # first it may take the one GPU on a node that has a NIC on its root.
    order = sorted(members, key=lambda m: (not _constrained(m.req), -m.gpus, m.pod.name, m.pod.uid))
    elig: dict[Placement, frozenset[str]] = {}

    def ok_for(m: Member) -> frozenset[str]:
        got = elig.get(m.pod.placement)
        if got is None:
            got = elig[m.pod.placement] = frozenset(eligible(m.pod.placement)) - frozenset(exclude)
        return got

    within = levels[top][1]  # the required level's index: every domain tried lies inside one of its domains
    # The failure to report: most members placed, then most GPUs free (the domain closest to fitting).
    best_fail: tuple[int, int, str, str, list[str]] = (-1, -1, CLUSTER, "", [])
    any_big_enough = False
    for li in range(top + 1):
        lname, lidx = levels[li]
        for dom, nodes, cap, free in _domains(ix, lname, lidx, bound_nodes, within):
            if cap < demand:
                continue
            any_big_enough = True
            placed = 0
            if free >= demand:
                nodes.sort(key=lambda n: (ix.nodes[n].free_gpus, n))  # fullest first; only where it is searched
                placed, plan = _assign(ix, order, nodes, ok_for)
                if plan is not None:
                    return GangPlan(lname, dom, plan)
            if (placed, free) > best_fail[:2]:
                best_fail = (placed, free, lname, dom, nodes)
    if not any_big_enough:
        where = "the cluster" if top == len(names) - 1 else f"any one {names[top]}"
        return Shortfall(names[top], f"the gang needs {demand} GPUs for {len(members)} members, more than {where} "
                                     "has even with every device free", never=True)
    placed, _, lname, dom, nodes = best_fail
    label = "the cluster" if lname == CLUSTER else f"{lname} {dom}"
    free = sum(ix.nodes[n].free_gpus for n in nodes)
    held: dict[str, int] = {}
    node_set = set(nodes)
    for r in ix.reservations.values():
        if r.node in node_set:
            who = holder_of(r.pod_uid) or "single pods"
            held[who] = held.get(who, 0) + sum(1 for k in r.devices if ix.kinds_of_key(k) == "gpu")
    held_txt = "".join(f"; {n} held by {who}" for who, n in sorted(held.items(), key=lambda kv: -kv[1]) if n)
    fit_txt = f"{placed} of {len(members)} members fit" if placed >= 0 else "no domain has the GPUs free"
    return Shortfall(names[top], f"{label}: {fit_txt}, {free} GPUs free with aligned NICs needed for "
                                 f"{demand}{held_txt}")


def _constrained(req: Requirements) -> bool:
    return req.align not in ("none", "preferred") or any(r.match_attribute for v in req.variants for r in v.rules)


def _domains(ix: Index, lname: str, lidx: int | None, bound_nodes: Collection[str],
             within: int | None = None) -> list[tuple[str, list[str], int, int]]:
    """The domains at one level that contain every bound member, with their GPUs (all, free), fullest first.

    With `within` (the required level's index) a node outside every domain of that level is left out, and a
    domain that spans several of them (a clique across racks) is split: a plan never leaves one required domain."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for name, st in ix.nodes.items():  # _group, inlined: this loop runs per node and level
        if st.node is None or not st.total:
            continue
        doms = st.domains
        outer = None
        if within is not None:
            outer = doms[within] if within < len(doms) else None
            if outer is None:
                continue
        if lidx is None:
            key = name if lname == NODE else ""
        else:
            got = doms[lidx] if lidx < len(doms) else None
            if got is None:
                continue
            key = got
        groups.setdefault((key, outer), []).append(name)
    if bound_nodes:
        # By the bound nodes' labels, not membership: a member without devices may run on a node that has none.
        pins = {_group(ix, n, lname, lidx, within) for n in bound_nodes}
        pin = pins.pop() if len(pins) == 1 else None
        kept = groups.get(pin) if pin is not None else None
        groups = {pin: kept} if pin is not None and kept is not None else {}
    nodes_of = ix.nodes
    out = [(key, nodes, sum(nodes_of[n].total_gpus for n in nodes), sum(nodes_of[n].free_gpus for n in nodes))
           for (key, _), nodes in groups.items()]
    out.sort(key=lambda d: (d[3], d[0]))
    return out


def _group(ix: Index, name: str, lname: str, lidx: int | None,
           within: int | None) -> tuple[str, str | None] | None:
    """(domain at this level, domain at the required level) of a node; None when it is outside either."""
    st = ix.nodes.get(name)
    if st is None:
        return None
    outer: str | None = None
    if within is not None:
        outer = st.domains[within] if within < len(st.domains) else None
        if outer is None:
            return None
    if lname == NODE:
        return (name, outer)
    if lname == CLUSTER:
        return ("", outer)
    assert lidx is not None
    key = st.domains[lidx] if lidx < len(st.domains) else None
    return None if key is None else (key, outer)


def _assign(ix: Index, order: Sequence[Member], nodes: list[str],
            ok_for: Callable[[Member], frozenset[str]]) -> tuple[int, dict[str, Assignment] | None]:
    sims: dict[str, _Sim] = {}
    start: dict[tuple[Requirements, Placement], int] = {}
    memo: dict[tuple[int, tuple[int, ...]], Fit] = {}
    plan: dict[str, Assignment] = {}
    for placed, m in enumerate(order):
        shape = (m.req, m.pod.placement)
        allowed = ok_for(m)
        i = start.get(shape, 0)
        table = ix.fits(m.req) if not m.req.empty else None
        rid = ix.req_ids.get(m.req, -1) if table is not None else -1
        while i < len(nodes):
            n = nodes[i]
            if n not in allowed:
                i += 1
                continue
            if table is None:
                plan[m.pod.uid] = Assignment(n, ())
                break
            sim = sims.get(n)
            if sim is None:
                st = ix.nodes[n]
                profiles = tuple(ix.exact_profiles(st)) if not table.shared else st.free
                sim = sims[n] = _Sim(profiles, st.free_keys)
            f: Fit | None = None
            if table.shared:
                mk = (rid, tuple(p.pid for p in sim.profiles))
                f = memo.get(mk)
                if f is None:
                    f = memo[mk] = fit_node(m.req, sim.profiles, ix.match)
            else:
                f = fit_node(m.req, sim.profiles, ix.match)
            if f.ok:
                taken = set(f.witness)
                plan[m.pod.uid] = Assignment(n, tuple(sim.keys[j] for j in sorted(taken)))
                sim.profiles = tuple(p for j, p in enumerate(sim.profiles) if j not in taken)
                sim.keys = tuple(k for j, k in enumerate(sim.keys) if j not in taken)
                break
            i += 1
        start[shape] = i
        if m.pod.uid not in plan:
            return placed, None
    return len(order), plan
