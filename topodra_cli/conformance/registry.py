"""Every check family, in the order a run takes them, and the requirement each gives evidence for."""

from __future__ import annotations

from topodra_cli.conformance import checks_access, checks_dra, checks_gang, checks_network, checks_topology
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.product import Coverage
from topodra_cli.conformance.selection import Selector

FAMILIES: tuple[Family, ...] = (
    checks_dra.FAMILY,
    checks_access.FAMILY,
    checks_gang.FAMILY,
    checks_network.FAMILY,
    checks_topology.FAMILY,
)


def selected(sel: Selector) -> list[tuple[Family, list[str]]]:
    """The families `sel` selects, each with its selected subtests (a family with none is left out)."""
    out = []
    for f in FAMILIES:
        if not sel.matches(f.name):
            continue
        subs = [s for s, _ in f.subtests if sel.matches(f"{f.name}/{s}")]
        if subs:
            out.append((f, subs))
    return out


def coverage() -> list[Coverage]:
    return [Coverage(f.requirement, f.name) for f in FAMILIES if f.requirement is not None]
