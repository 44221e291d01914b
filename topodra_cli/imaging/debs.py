"""The image's Debian packages: a lock of exact versions and digests, a verified download cache, extraction.

`hack/image/debian.in` names the packages (no automatic dependency closure: every file in the image is
there on purpose); `hack/image/debian.lock` pins each to `name=version`, its architecture, sha256 and
pool path. A .deb is fetched from the Debian mirror by its pool path (or, failing that, with
`apt-get download name=version`, or from snapshot.debian.org once the mirrors have dropped that version),
checked against the lock's sha256 and unpacked with `dpkg-deb -x`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from topodra_cli.localcluster.processes import ClusterError

# Where `pool/...` paths resolve; security updates live in a separate archive with the same layout.
MIRRORS = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")
# The mirrors keep only current versions; snapshot.debian.org keeps every one, found by name and version.
SNAPSHOT = "https://snapshot.debian.org"
LOCK_HEADER = """\
# The Debian packages of the topodra image (Debian 12 bookworm), one per line:
#   name=version architecture sha256:<digest> <pool path>
# Generated from hack/image/debian.in by `python -m topodra_cli.imagebuild lock-debian` (needs `apt-get update`);
# the build downloads each file, checks its digest and unpacks it with `dpkg-deb -x`.
"""


@dataclass(frozen=True)
class DebPin:
    name: str
    version: str
    arch: str
    sha256: str
    filename: str  # pool path on the mirror

    @property
    def deb_name(self) -> str:
        return Path(self.filename).name

    def line(self) -> str:
        return f"{self.name}={self.version} {self.arch} sha256:{self.sha256} {self.filename}"


def read_names(path: Path) -> list[str]:
    """Package names of `debian.in`: one a line, `#` comments."""
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def read_lock(path: Path) -> list[DebPin]:
    pins = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 4 or "=" not in parts[0] or not parts[2].startswith("sha256:"):
            raise ClusterError(f"{path}:{n}: expected 'name=version arch sha256:<hex> pool/path', got {raw!r}")
        name, version = parts[0].split("=", 1)
        pins.append(DebPin(name, version, parts[1], parts[2].removeprefix("sha256:"), parts[3]))
    return pins


def write_lock(path: Path, pins: Iterable[DebPin]) -> None:
    path.write_text(LOCK_HEADER + "".join(p.line() + "\n" for p in sorted(pins, key=lambda p: p.name)))


def _show_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line[0].isspace() and ":" in line:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return fields


def lock_packages(names: Sequence[str]) -> list[DebPin]:
    """Pin each name to apt's candidate version (what `apt-get install` would take now)."""
    pins = []
    for name in names:
        out = subprocess.run(["apt-cache", "show", "--no-all-versions", name], capture_output=True, text=True,
                             timeout=60, check=False)
        f = _show_fields(out.stdout.split("\n\n", 1)[0])
        if out.returncode != 0 or not {"Version", "SHA256", "Filename", "Architecture"} <= f.keys():
            raise ClusterError(f"apt-cache show {name} failed (run `apt-get update`?): {out.stderr.strip()}")
        pins.append(DebPin(name, f["Version"], f["Architecture"], f["SHA256"], f["Filename"]))
    return pins


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _from_mirror(pin: DebPin, dest: Path) -> str:
    errors = []
    base = os.environ.get("TOPODRA_DEBIAN_MIRROR")
    for mirror in ((base,) if base else MIRRORS):
        url = f"{mirror.rstrip('/')}/{pin.filename}"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, dest.open("wb") as f:
                shutil.copyfileobj(r, f)
            return ""
        except (urllib.error.URLError, OSError) as e:
            errors.append(f"{url}: {e}")
    return "; ".join(errors)


def _from_snapshot(pin: DebPin, dest: Path) -> str:
    """A version that has left the mirrors: snapshot's machine-readable API gives the file's hash to fetch."""
    api = f"{SNAPSHOT}/mr/binary/{urllib.parse.quote(pin.name)}/{urllib.parse.quote(pin.version)}/binfiles"
    try:
        with urllib.request.urlopen(api, timeout=60) as r:
            files = json.load(r).get("result", [])
        hashes = [f["hash"] for f in files if f.get("architecture") == pin.arch]
        if not hashes:
            return f"{api}: no {pin.arch} file"
        with urllib.request.urlopen(f"{SNAPSHOT}/file/{hashes[0]}", timeout=120) as r, dest.open("wb") as f:
            shutil.copyfileobj(r, f)
        return ""
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        return f"{api}: {e}"


def _from_apt(pin: DebPin, dest: Path) -> str:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        out = subprocess.run(["apt-get", "download", f"{pin.name}={pin.version}"], cwd=tmp, capture_output=True,
                             text=True, timeout=300, check=False)
        got = list(Path(tmp).glob("*.deb"))
        if out.returncode != 0 or len(got) != 1:
            return f"apt-get download {pin.name}={pin.version}: {out.stderr.strip()[-300:]}"
        got[0].replace(dest)
    return ""


def fetch(pin: DebPin, cache: Path) -> Path:
    """The verified .deb of `pin` in `cache`, downloaded when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / pin.deb_name
    if path.is_file() and _sha256(path) == pin.sha256:
        return path
    part = path.with_name(path.name + ".part")
    problems = []
    # The pool path first (needs no apt lists); apt-get's configured sources (proxies, local mirrors) next;
    # snapshot.debian.org last, for a version a security update has superseded.
    attempts = [_from_mirror] + ([_from_apt] if shutil.which("apt-get") else []) + [_from_snapshot]
    for attempt in attempts:
        err = attempt(pin, part)
        if not err:
            digest = _sha256(part)
            if digest == pin.sha256:
                part.replace(path)
                return path
            err = f"sha256 {digest} does not match the lock's {pin.sha256}"
        problems.append(err)
    part.unlink(missing_ok=True)
    raise ClusterError(f"cannot fetch {pin.name}={pin.version} ({'; '.join(problems)}); a superseded version may "
                       "have left the mirrors: regenerate hack/image/debian.lock (docs/image.md)")


def extract(deb: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True, timeout=300,
                         check=False)
    if out.returncode != 0:
        raise ClusterError(f"dpkg-deb -x {deb} failed: {out.stderr.strip()}")
