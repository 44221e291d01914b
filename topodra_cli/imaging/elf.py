"""What the image's ELF files need at run time, checked before the image is written.

A missing shared library would only show when a container imports the module that needs it; the
build reads every ELF file's DT_NEEDED entries (and RPATH/RUNPATH, for the libraries auditwheel
bundles next to a wheel's extensions) and resolves them inside the image's root, the way ld.so would.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
# ld.so's default search path on Debian (multiarch dirs first), as paths inside the image.
DEFAULT_LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu",
                    "usr/lib/aarch64-linux-gnu", "lib64", "usr/lib64", "lib", "usr/lib")


@dataclass(frozen=True)
class Dynamic:
    needed: tuple[str, ...]
    search: tuple[str, ...]  # RPATH and RUNPATH entries, `$ORIGIN` unexpanded


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def dynamic_section(path: Path) -> Dynamic | None:
    """DT_NEEDED and run paths of a 64-bit little-endian ELF; None for a static one (no PT_DYNAMIC)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dyn = (p_offset, p_filesz)
    if dyn is None:
        return None
    entries = []
    for off in range(dyn[0], dyn[0] + dyn[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == DT_STRTAB), None)
    if strtab is None:
        return Dynamic((), ())
    base = next((o + strtab - va for va, o, sz in loads if va <= strtab < va + sz), strtab)

    def string(at: int) -> str:
        end = data.index(b"\0", base + at)
        return data[base + at:end].decode()

    needed = tuple(string(v) for t, v in entries if t == DT_NEEDED)
    search = tuple(p for t, v in entries if t in (DT_RPATH, DT_RUNPATH) for p in string(v).split(":") if p)
    return Dynamic(needed, search)


def unresolved(roots: Sequence[Path]) -> dict[str, list[str]]:
    """For each ELF file of the layers `roots` that needs a library none of them has: the missing names."""
    missing: dict[str, list[str]] = {}
    for root in roots:
        for f in sorted(root.rglob("*")):
            if f.is_symlink() or not f.is_file() or not is_elf(f):
                continue
            dyn = dynamic_section(f)
            if dyn is None:
                continue
            in_image = "/" + str(f.relative_to(root))
            origin = os.path.dirname(in_image)
            dirs = [p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) for p in dyn.search]
            dirs += ["/" + d for d in DEFAULT_LIB_DIRS]
            lacking = [lib for lib in dyn.needed if not any(
                _exists(r, os.path.normpath(os.path.join(d, lib))) for d in dirs for r in roots)]
            if lacking:
                missing[in_image] = lacking
    return missing


def _exists(root: Path, in_image: str) -> bool:
    """Whether `in_image` exists inside `root`, following symlinks as the image would (absolute ones too)."""
    path = in_image.lstrip("/")
    for _ in range(40):
        p = root / path
        if p.is_symlink():
            target = os.readlink(p)
            path = (target.lstrip("/") if target.startswith("/")
                    else os.path.normpath(os.path.join(os.path.dirname(path), target)))
            continue
        if p.exists():
            return True
        # A parent dir may be a symlink (e.g. /lib64 -> usr/lib64 in a merged-/usr root).
        parts = Path(path).parts
        for i in range(1, len(parts)):
            parent = root.joinpath(*parts[:i])
            if parent.is_symlink():
                target = os.readlink(parent)
                head = (target.lstrip("/") if target.startswith("/")
                        else os.path.normpath(os.path.join(os.path.dirname(os.path.join(*parts[:i])), target)))
                path = os.path.join(head, *parts[i:])
                break
        else:
            return False
    return False
