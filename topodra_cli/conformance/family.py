"""A check family: one top-level test (`TestX`), the requirement it gives evidence for, its subtests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from topodra_cli.conformance.context import Context
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.requirements import Requirement


@dataclass(frozen=True)
class Family:
    name: str  # TestX
    requirement: Requirement | None  # None: topodra's own check, no checklist item
    summary: str
    subtests: tuple[tuple[str, str], ...]  # (name, what it checks)
    run: Callable[[Context, T], None]
