"""Find `libnvidia-ml.so.1` under a mounted host driver root and make pynvml use it.

In a container the host's NVIDIA driver is not on the library path: the chart mounts the host's driver
root read-only (`--driver-root`, e.g. `/host` for `/`, or the GPU operator's `/run/nvidia/driver`) and
the library is looked up in the usual lib dirs below it. Symlinks are followed as the host would see
them: an absolute target is taken relative to the root, not to the container.

pynvml has no parameter for the library path: it dlopens the soname once and keeps the handle in its
module global `nvmlLib`, which it only fills while it is still None. Setting that global (under
pynvml's own load lock) before the first `nvmlInit` is the supported-by-construction way in; the
handle is process-wide, so the choice made here is process-wide too (discovery and health share it).
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIB_NAME = "libnvidia-ml.so.1"
# Relative to a driver root, most likely first: RHEL-like, Debian-like (x86 and Arm), plain lib dirs,
# GKE's driver installer (COS / Ubuntu nodes), then what some images set on LD_LIBRARY_PATH.
LIB_DIRS = (
    "usr/lib64",
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "lib64",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "usr/lib",
    "lib",
    "home/kubernetes/bin/nvidia/lib64",
    "usr/local/nvidia/lib64",
)
# The GPU operator's driver container installs the driver here on the host.
OPERATOR_ROOT = "run/nvidia/driver"
MAX_LINKS = 40

_lock = threading.Lock()
_loaded: dict[str, str] = {}  # driver root -> the library path installed into pynvml


@dataclass(frozen=True)
class NvmlSearch:
    root: Path
    found: Path | None  # the library file, resolved inside the root
    searched: tuple[str, ...]  # every candidate path, in order

    def describe(self) -> str:
        if self.found is not None:
            return f"{LIB_NAME} found at {self.found}"
        below = " and ".join(str(b) for b in bases(self.root))
        return f"no {LIB_NAME} under driver root {self.root} (looked in {', '.join(LIB_DIRS)} below {below})"


def bases(root: Path) -> list[Path]:
    """The root itself, then the GPU operator's driver root inside it (unless it is that already)."""
    op = root / OPERATOR_ROOT
    return [root] if str(root).rstrip("/").endswith(OPERATOR_ROOT) else [root, op]


def candidates(root: Path) -> list[Path]:
    """Where the library may be under `root`, in search order."""
    return [base / d / LIB_NAME for base in bases(root) for d in LIB_DIRS]


def resolve_in_root(root: Path, path: Path) -> Path | None:
    """`path` (inside `root`) with its symlinks followed as if `root` were `/`; None if it leads nowhere."""
    root = Path(os.path.abspath(root))
    rel = Path(os.path.abspath(path)).relative_to(root)
    parts = list(rel.parts)
    cur = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = Path(os.readlink(nxt))
            if target.is_absolute():
                cur = root
                parts = list(target.relative_to("/").parts) + parts
            else:
                parts = list(target.parts) + parts
            continue
        if not nxt.exists():
            return None
        cur = nxt
    return cur if cur.is_file() else None


def find_nvml(root: Path) -> NvmlSearch:
    searched: list[str] = []
    for c in candidates(root):
        searched.append(str(c))
        found = resolve_in_root(root, c)
        if found is not None:
            return NvmlSearch(root, found, tuple(searched))
    return NvmlSearch(root, None, tuple(searched))


def use_driver_root(root: Path | None, nv: Any | None = None) -> str | None:
    """Make pynvml load the library found under `root` (None: its own soname lookup). Returns None when
    pynvml will use it, else why not (no library found, or it cannot be loaded). A success is kept; a
    failure is searched again next time (the GPU operator may install the driver after we start)."""
    if root is None or str(root) == "":
        return None
    key = str(root)
    with _lock:
        if key in _loaded:
            return None
        search = find_nvml(root)
        if search.found is None:
            return search.describe()
        if nv is None:
            import pynvml

            nv = pynvml
        try:
            lib = ctypes.CDLL(str(search.found))
        except OSError as e:
            return f"cannot load {search.found}: {e}"
        with nv.libLoadLock:
            current = nv.nvmlLib
            if current is None:
                nv.nvmlLib = lib
        if current is not None and getattr(current, "_name", None) != str(search.found):
            return f"another NVML library ({getattr(current, '_name', '?')}) is already loaded"
        _loaded[key] = str(search.found)
        return None
