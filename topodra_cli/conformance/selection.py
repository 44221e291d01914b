"""`--run REGEX` as `go test -run` reads it: split on slashes outside brackets, one pattern per name level,
each searched (not anchored) in that level's name; levels without a pattern match everything."""

from __future__ import annotations

import re

from topodra_cli.conformance.model import UsageError


def split_levels(pattern: str) -> list[str]:
    out, cur, depth = [], [], 0
    escaped = False
    for ch in pattern:
        if escaped:
            cur.append(ch)
            escaped = False
            continue
        if ch == "\\":
            escaped = True
            cur.append(ch)
        elif ch in "[(":
            depth += 1
            cur.append(ch)
        elif ch in "])":
            depth = max(depth - 1, 0)
            cur.append(ch)
        elif ch == "/" and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


class Selector:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        try:
            self._levels = [re.compile(p) for p in split_levels(pattern)] if pattern else []
        except re.error as e:
            raise UsageError(f"--run {pattern!r}: not a regular expression: {e}") from e

    def matches(self, name: str) -> bool:
        """Whether the test `TestX` or subtest `TestX/Sub` runs."""
        return all(rx.search(part) for part, rx in zip(name.split("/"), self._levels, strict=False))
