"""Can a node's free devices serve a pod's claims, and how well can its GPU-NIC pairs be aligned?

Pure functions over a list of free devices. The extender never picks devices (the in-tree allocator
does); it only decides whether an allocation that honours counts, `matchAttribute` constraints and the
pod's required alignment exists, and how many GPU-NIC pairs could share a PCIe root or NUMA node.
Requests are matched to devices with a bipartite matching (devices are never shared between requests),
after choosing one value per `matchAttribute` constraint. Pair counts are an upper bound computed per
alignment group: enough to rank nodes, and exact for the usual "N GPUs + N NICs" claims.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from scheduler_plugin.claims import Need, Requirements, Rule, Variant
from scheduler_plugin.config import STD_NUMA_NODE, STD_PCIE_ROOT
from scheduler_plugin.model import AttrValue

MAX_COMBOS = 256  # matchAttribute value combinations tried per variant

ATTR_LABELS = {STD_PCIE_ROOT: "PCIe root", STD_NUMA_NODE: "NUMA node"}


@dataclass(frozen=True, slots=True, eq=False)
class Profile:
    """A device as the solver sees it; devices with equal attributes share one profile."""

    pid: int
    driver: str
    attrs: Mapping[str, AttrValue]  # qualified name -> value
    domains: Mapping[str, Mapping[str, AttrValue]]  # grouped for CEL
    tainted: bool
    kind: str  # "gpu", "nic" or ""


Matcher = Callable[[Need, Profile], bool | None]  # None: cannot judge


@dataclass(frozen=True, slots=True)
class Fit:
    ok: bool
    reason: str = ""
    pairs_needed: int = 0
    pairs_pcie: int = 0
    pairs_numa: int = 0
    witness: tuple[int, ...] = ()  # indices of devices one allocation would take
    unsure: tuple[str, ...] = field(default=())


NO_NEEDS = Fit(True)


def attr_label(attr: str) -> str:
    return ATTR_LABELS.get(attr, attr)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def need_label(need: Need, n: int, free: bool = True) -> str:
    """'3 free GPUs', 'a free NIC', '2 free devices of class foo'."""
    adj = "free " if free else ""
    if need.kind in ("gpu", "nic"):
        word = need.kind.upper()
        return f"a {adj}{word}" if n == 1 and free else f"{n} {adj}{word}s"
    if n == 1 and free:
        return f"a {adj}device of class {need.class_name}"
    return f"{n} {adj}devices of class {need.class_name}"


def fit_node(req: Requirements, devices: Sequence[Profile], match: Matcher) -> Fit:
    if req.empty:
        return NO_NEEDS
    best: Fit | None = None
    first_failure: Fit | None = None
    for variant in req.variants:
        f = _fit_variant(variant, req.align, devices, match)
        if f.ok:
            if best is None or (f.pairs_pcie, f.pairs_numa) > (best.pairs_pcie, best.pairs_numa):
                best = f
            if best.pairs_pcie >= best.pairs_needed:
                break
        elif first_failure is None:
            first_failure = f
    if best is not None:
        return best if not req.notes else Fit(True, "", best.pairs_needed, best.pairs_pcie, best.pairs_numa,
                                              best.witness, tuple(dict.fromkeys(best.unsure + req.notes)))
    assert first_failure is not None
    return first_failure


def _fit_variant(v: Variant, align: str, devices: Sequence[Profile], match: Matcher) -> Fit:
    unsure: list[str] = []
    cands: list[list[int]] = []
    for need in v.needs:
        c = []
        for i, d in enumerate(devices):
            if d.tainted and not need.tolerates:
                continue
            m = match(need, d)
            if m is None:
                unsure.append(f"selector of {need.class_name or need.name} not evaluated (unsupported CEL)")
            if m is not False:
                c.append(i)
        cands.append(c)
    demand = [len(c) if n.all else n.count for n, c in zip(v.needs, cands, strict=True)]
    # Counts first: the plainest reason a person can act on.
    groups: dict[tuple[str, tuple[str, ...], str], tuple[int, set[int], Need]] = {}
    for need, c, dem in zip(v.needs, cands, demand, strict=True):
        if need.all and not c:
            return Fit(False, f"no {need_label(need, 1)[2:]}; pod needs all of them (at least one)")
        key = (need.class_name, need.selectors, need.kind)
        total, union, _ = groups.get(key, (0, set(), need))
        groups[key] = (total + dem, union | set(c), need)
    for total, union, need in groups.values():
        if len(union) < total:
            return Fit(False, f"{need_label(need, len(union))}, pod needs {total}".replace("a free", "1 free"))
    gpu_needs = [i for i, n in enumerate(v.needs) if n.kind == "gpu"]
    nic_needs = [i for i, n in enumerate(v.needs) if n.kind == "nic"]
    k = min(sum(demand[i] for i in gpu_needs), sum(demand[i] for i in nic_needs))
    required = align if align not in ("none", "preferred") else None

    match_rules = [r for r in v.rules if r.match_attribute]
    value_sets: list[list[AttrValue]] = []
    for r in match_rules:
        assert r.match_attribute is not None
        vals = {devices[i].attrs.get(r.match_attribute) for n in r.needs for i in cands[n]}
        vals.discard(None)
        value_sets.append(sorted(vals, key=lambda x: (str(type(x)), x)))  # type: ignore[arg-type]
    best: Fit | None = None
    flow_ok_seen = False
    for combo in itertools.islice(itertools.product(*value_sets), MAX_COMBOS):
        restricted = [list(c) for c in cands]
        for r, val in zip(match_rules, combo, strict=True):
            assert r.match_attribute is not None
            for n in r.needs:
                restricted[n] = [i for i in restricted[n] if devices[i].attrs.get(r.match_attribute) == val]
        if any(v.needs[i].all and len(restricted[i]) < demand[i] for i in range(len(demand))):
            continue
        witness = _matching(restricted, demand)
        if witness is None:
            continue
        flow_ok_seen = True
        pp = _pairs(devices, restricted, gpu_needs, nic_needs, STD_PCIE_ROOT, k)
        pn = _pairs(devices, restricted, gpu_needs, nic_needs, STD_NUMA_NODE, k)
        if required is not None and (pp if required == STD_PCIE_ROOT else pn) < k:
            if best is None or (not best.ok and (pp, pn) > (best.pairs_pcie, best.pairs_numa)):
                best = Fit(False, "", k, pp, pn)
            continue
        f = Fit(True, "", k, pp, pn, tuple(witness), tuple(dict.fromkeys(unsure)))
        if best is None or not best.ok or (pp, pn) > (best.pairs_pcie, best.pairs_numa):
            best = f
        if pp >= k:
            break
    if best is not None and best.ok:
        return best
    if best is not None and required is not None:
        got = best.pairs_pcie if required == STD_PCIE_ROOT else best.pairs_numa
        if k <= 1 or got == 0:
            return Fit(False, f"no {attr_label(required)} with a free GPU and a free NIC", k, best.pairs_pcie,
                       best.pairs_numa)
        return Fit(False, f"only {got} of the pod's {k} GPU-NIC pairs can share a {attr_label(required)}", k,
                   best.pairs_pcie, best.pairs_numa)
    if not flow_ok_seen and match_rules:
        return Fit(False, _rule_reason(v, match_rules, demand))
    return Fit(False, "the free devices cannot serve all of the pod's requests at once")


def _rule_reason(v: Variant, rules: Sequence[Rule], demand: Sequence[int]) -> str:
    r = rules[0]
    assert r.match_attribute is not None
    parts: dict[tuple[str, str], tuple[int, Need]] = {}
    for n in r.needs:
        need = v.needs[n]
        key = (need.kind, need.class_name)
        total, _ = parts.get(key, (0, need))
        parts[key] = (total + demand[n], need)
    phrase = " and ".join(need_label(need, total) for total, need in parts.values())
    return f"no {attr_label(r.match_attribute)} with {phrase}"


def _matching(cands: Sequence[Sequence[int]], demand: Sequence[int]) -> list[int] | None:
    """Devices for every unit of demand, no device used twice (Kuhn's augmenting paths); None if impossible."""
    owner: dict[int, int] = {}

    def augment(need: int, seen: set[int]) -> bool:
        for dev in cands[need]:
            if dev in seen:
                continue
            seen.add(dev)
            if dev not in owner or augment(owner[dev], seen):
                owner[dev] = need
                return True
        return False

    for need, units in enumerate(demand):
        for _ in range(units):
            if not augment(need, set()):
                return None
    return sorted(owner)


def _pairs(devices: Sequence[Profile], cands: Sequence[Sequence[int]], gpu_needs: Sequence[int],
           nic_needs: Sequence[int], attr: str, k: int) -> int:
    if k == 0:
        return 0
    gpus: dict[AttrValue, int] = {}
    nics: dict[AttrValue, int] = {}
    for table, needs in ((gpus, gpu_needs), (nics, nic_needs)):
        seen: set[int] = set()
        for n in needs:
            for i in cands[n]:
                if i in seen:
                    continue
                seen.add(i)
                val = devices[i].attrs.get(attr)
                if val is not None:
                    table[val] = table.get(val, 0) + 1
    return min(k, sum(min(c, nics.get(g, 0)) for g, c in gpus.items()))
