"""A directory tree as a reproducible layer tar: sorted names, mtime 0, root-owned, normalised modes.

What pip, dpkg-deb and the umask leave on disk (times, owners, group/world bits) must not reach the
digest: the same inputs give the same bytes on any machine.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path


def _info(name: str, kind: bytes, mode: int, uid: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.size = size
    ti.linkname = link
    ti.mtime = 0
    ti.uid = ti.gid = uid
    ti.uname = ti.gname = ""
    return ti


def _mode(st: os.stat_result) -> int:
    """Directories and executables 0755, other files 0644; a sticky directory is a shared /tmp: 1777."""
    if stat.S_ISDIR(st.st_mode):
        return 0o1777 if st.st_mode & stat.S_ISVTX else 0o755
    return 0o755 if st.st_mode & 0o111 else 0o644


def tar_tree(root: Path, owners: Mapping[str, int] | None = None) -> bytes:
    """An uncompressed tar of everything under `root` (paths relative to it); `owners` maps a path to a uid=gid."""
    owners = owners or {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            # os.walk lists symlinks to directories among dirnames: emit them as links, do not descend.
            entries = sorted(dirnames + filenames)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in entries:
                full = os.path.join(dirpath, name)
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                st = os.lstat(full)
                uid = owners.get(rel, 0)
                if stat.S_ISLNK(st.st_mode):
                    tar.addfile(_info(rel, tarfile.SYMTYPE, 0o777, uid, link=os.readlink(full)))
                elif stat.S_ISDIR(st.st_mode):
                    mode = 0o700 if rel in owners else _mode(st)
                    tar.addfile(_info(rel, tarfile.DIRTYPE, mode, uid))
                elif stat.S_ISREG(st.st_mode):
                    with open(full, "rb") as f:
                        tar.addfile(_info(rel, tarfile.REGTYPE, _mode(st), uid, st.st_size), f)
                else:
                    raise ValueError(f"{full}: only files, directories and symlinks can go into a layer")
    return buf.getvalue()
