"""A pod's device needs: its claims (named, or generated from templates) turned into flat variants.

A variant is one way to satisfy every unallocated claim of the pod: requests (each with its DeviceClass,
selectors and count) and the claims' constraints, with request names made unique across claims.
`firstAvailable` lists multiply into several variants (the first ones are preferred by the allocator).
Claims that are already allocated are skipped: their devices are chosen and counted as used.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from scheduler_plugin.config import STD_NUMA_NODE, STD_PCIE_ROOT, Alignment
from scheduler_plugin.model import Claim, ClaimSpec, ClaimTemplate, Pod, Request

MAX_VARIANTS = 16  # firstAvailable combinations judged; more are "cannot judge"


class ClaimSource(Protocol):
    def claim(self, namespace: str, name: str) -> Claim | None: ...

    def template(self, namespace: str, name: str) -> ClaimTemplate | None: ...

    def class_kind(self, class_name: str) -> str: ...


class Unresolved(Exception):
    """A claim the pod names is not (yet) in the cache; the attempt should be retried."""


@dataclass(frozen=True, slots=True)
class Need:
    """One request of one claim, as the solver sees it."""

    claim: int  # index of the claim within the pod
    name: str  # request name within its claim ("gpu", or "gpu/h100" for a firstAvailable alternative)
    class_name: str
    selectors: tuple[str, ...]
    all: bool
    count: int
    tolerates: bool
    kind: str  # "gpu", "nic" or "" (other)


@dataclass(frozen=True, slots=True)
class Rule:
    """A claim constraint: indices into the variant's needs."""

    needs: tuple[int, ...]
    match_attribute: str | None
    distinct_attribute: str | None


@dataclass(frozen=True, slots=True)
class Variant:
    needs: tuple[Need, ...]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Requirements:
    variants: tuple[Variant, ...]  # empty: the pod needs no new devices
    align: str  # "none", "preferred", or the attribute that GPU-NIC pairs must share (required)
    notes: tuple[str, ...]  # what the extender could not judge

    @property
    def empty(self) -> bool:
        return not self.variants or all(not v.needs for v in self.variants)


def claim_for(pod: Pod, ref_name: str, claim_name: str | None, template_name: str | None,
              src: ClaimSource) -> tuple[ClaimSpec | None, str]:
    """The spec to satisfy (None if already allocated) and a label for messages."""
    generated = dict(pod.claim_statuses).get(ref_name)
    name = claim_name or generated
    if name:
        c = src.claim(pod.namespace, name)
        if c is not None:
            return (None if c.is_allocated else c.spec), name
        if claim_name:
            raise Unresolved(f"ResourceClaim {pod.namespace}/{claim_name} is not in the extender's cache yet")
    if template_name:
        t = src.template(pod.namespace, template_name)
        if t is not None:
            return t.spec, f"{ref_name} (template {template_name})"
        raise Unresolved(f"ResourceClaimTemplate {pod.namespace}/{template_name} is not in the extender's cache yet")
    raise Unresolved(f"pod claim {ref_name!r} names neither a claim nor a template")


def alignment_mode(pod: Pod, cfg: Alignment) -> str:
    raw = (pod.annotation(cfg.annotation) or cfg.default).strip()
    low = raw.lower()
    if low in ("pcieroot", STD_PCIE_ROOT.lower(), "pcie"):
        return STD_PCIE_ROOT
    if low in ("numanode", STD_NUMA_NODE.lower(), "numa"):
        return STD_NUMA_NODE
    return "none" if low in ("none", "off", "false") else "preferred"


def resolve(pod: Pod, src: ClaimSource, cfg: Alignment) -> Requirements:
    specs: list[ClaimSpec] = []
    for ref in pod.claims:
        spec, _label = claim_for(pod, ref.name, ref.claim_name, ref.template_name, src)
        if spec is not None:
            specs.append(spec)
    variants, notes = expand(specs, src)
    return Requirements(variants, alignment_mode(pod, cfg), notes)


def expand(specs: Sequence[ClaimSpec], src: ClaimSource) -> tuple[tuple[Variant, ...], tuple[str, ...]]:
    notes: list[str] = []
    per_claim: list[list[tuple[Request, ...]]] = []
    for spec in specs:
        choices = [r.alternatives or (r,) for r in spec.requests]
        combos = list(itertools.islice(itertools.product(*choices), MAX_VARIANTS))
        per_claim.append(combos)
    out: list[Variant] = []
    for combo in itertools.islice(itertools.product(*per_claim), MAX_VARIANTS):
        needs: list[Need] = []
        rules: list[Rule] = []
        for ci, (spec, reqs) in enumerate(zip(specs, combo, strict=True)):
            first = len(needs)
            for r in reqs:
                needs.append(Need(ci, r.name, r.class_name, r.selectors, r.all, r.count, r.tolerates,
                                  src.class_kind(r.class_name)))
            names = [n.name for n in needs[first:]]
            for c in spec.constraints:
                if c.requests:
                    idx = tuple(first + i for i, n in enumerate(names)
                                if n in c.requests or n.split("/", 1)[0] in c.requests)
                else:
                    idx = tuple(range(first, len(needs)))
                rules.append(Rule(idx, c.match_attribute, c.distinct_attribute))
                if c.distinct_attribute:
                    notes.append(f"distinctAttribute {c.distinct_attribute} is not judged")
        out.append(Variant(tuple(needs), tuple(rules)))
    return tuple(out), tuple(dict.fromkeys(notes))
