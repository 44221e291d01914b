"""The image's Python packages: a hash-pinned lock of wheels, and their installation into the image's root.

`lock` resolves pyproject's runtime dependencies (each pinned to the version this environment has, so the
image runs what the tests ran) with pip's resolver for CPython 3.11 on manylinux, once per architecture,
and writes `hack/image/requirements.lock` with every wheel's sha256. `install` runs
`pip install --only-binary=:all: --require-hashes --no-deps --target` with the same target tags, so the
host's own Python version does not matter.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

from topodra_cli.localcluster.processes import ClusterError

PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36  # Debian 12's glibc 2.36: the newest manylinux tag the image can load
MACHINES = {"amd64": "x86_64", "arm64": "aarch64"}
LOCK_HEADER = """\
# The Python packages of the topodra image (CPython {py}, manylinux, {arches}), with the sha256 of each wheel.
# Generated from pyproject.toml's runtime dependencies, each at the version installed in the environment that runs
#   .venv/bin/python -m topodra_cli.imagebuild lock-requirements
# The build installs them with `pip install --only-binary=:all: --require-hashes --no-deps --target ...`.
"""


def target_args(arch: str) -> list[str]:
    """pip's options selecting wheels for the image's Python, whatever Python runs pip."""
    machine = MACHINES[arch]
    platforms = [f"manylinux_2_{m}_{machine}" for m in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{machine}"]
    if machine == "x86_64":
        platforms += [f"manylinux_2_{m}_x86_64" for m in range(16, 4, -1)] + ["manylinux2010_x86_64",
                                                                            "manylinux1_x86_64"]
    args = ["--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp",
            "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for p in platforms:
        args += ["--platform", p]
    return args


def runtime_requirements(pyproject: Path) -> list[str]:
    """pyproject's runtime dependencies, each pinned to the installed version when there is one."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    out = []
    for dep in deps:
        name = re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]
        try:
            out.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(dep)
    return out


def _resolve(requirements: Sequence[str], arch: str) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256 of the chosen wheel), from `pip install --dry-run --report`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        argv = [sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
                "--report", str(report), *target_args(arch), *requirements]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if out.returncode != 0:
            raise ClusterError(f"pip could not resolve the image's requirements for {arch}: {out.stderr[-2000:]}")
        doc = json.loads(report.read_text())
    pins = {}
    for item in doc["install"]:
        hashes = item["download_info"].get("archive_info", {}).get("hashes", {})
        if "sha256" not in hashes:
            raise ClusterError(f"pip reported no sha256 for {item['metadata']['name']}")
        pins[_canonical(item["metadata"]["name"])] = (item["metadata"]["version"], hashes["sha256"])
    return pins


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock(pyproject: Path, out: Path, arches: Sequence[str] = ("amd64", "arm64")) -> None:
    """Write the lock: versions as resolved for the first architecture, hashes for every one."""
    reqs = runtime_requirements(pyproject)
    first = _resolve(reqs, arches[0])
    hashes: dict[str, set[str]] = {n: {h} for n, (_, h) in first.items()}
    for arch in arches[1:]:
        for name, (version, digest) in _resolve([f"{n}=={v}" for n, (v, _) in first.items()], arch).items():
            if first[name][0] != version:
                raise ClusterError(f"{name}: {arch} resolved {version}, {arches[0]} {first[name][0]}")
            hashes[name].add(digest)
    body = []
    for name in sorted(first):
        lines = [f"{name}=={first[name][0]}"] + [f"    --hash=sha256:{h}" for h in sorted(hashes[name])]
        body.append(" \\\n".join(lines) + "\n")
    out.write_text(LOCK_HEADER.format(py=PYTHON_VERSION, arches=", ".join(arches)) + "".join(body))


def install(lock_file: Path, site_packages: Path, arch: str) -> None:
    """Install the locked wheels into `site_packages` (a directory of the image's root being assembled)."""
    site_packages.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
            "--require-hashes", "--no-compile", "--no-warn-script-location", *target_args(arch),
            "--target", str(site_packages), "-r", str(lock_file)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        raise ClusterError(f"pip install of {lock_file} failed: {out.stderr[-3000:]}")
    # Console scripts pip wrote name the host's Python; the image has no use for them.
    shutil.rmtree(site_packages / "bin", ignore_errors=True)
