"""What is mounted where, as this process sees it (/proc/self/mountinfo)."""

from __future__ import annotations

from pathlib import Path


def mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount this process sees, innermost last."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            out.append((_unescape(fields[4]), right.split()[0]))
    return out


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return path.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or below `directory`."""
    prefix = str(directory)
    return [mp for mp, _ in mountinfo() if mp == prefix or mp.startswith(prefix + "/")]


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers and the v2 unified one)."""
    return sorted({Path(mp) for mp, fs in mountinfo() if fs in ("cgroup", "cgroup2")})
