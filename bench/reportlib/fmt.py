"""Number and table formatting shared by the report's sections."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


def num(x: float | None, digits: int = 1) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:,.{digits}f}"


def runs(xs: Iterable[float], digits: int = 1) -> str:
    """`median [run, run, ...]`: the median in bold, every run after it."""
    xs = list(xs)
    if not xs:
        return "—"
    return f"**{num(statistics.median(xs), digits)}** [{', '.join(num(x, digits) for x in xs)}]"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    return num(a / b, digits) if a is not None and b else "—"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else "**met**" if ok else "**not met**"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table; `align` has one letter per column: l (default) or r."""
    marks = ["---:" if (align[i:i + 1] == "r") else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


@dataclass
class Rendered:
    """A section's Markdown body and its rows for the summary table: (target, figure, verdict)."""

    body: list[str]
    summary: list[tuple[str, str, str]] = field(default_factory=list)


def image(name: str, alt: str) -> list[str]:
    return [f"![{alt}](benchmarks/{name})", ""]
