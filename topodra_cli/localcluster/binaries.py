"""Where the pinned Kubernetes binaries live, and building them when they are missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from topodra_cli.localcluster.processes import ClusterError

K8S_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl")


def cache_root() -> Path:
    base = os.environ.get("TOPODRA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "topodra"
    )
    return Path(base)


def bin_dir(version: str = K8S_VERSION) -> Path:
    return cache_root() / "k8s" / version / "bin"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def missing_in(directory: Path, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if not os.access(directory / n, os.X_OK)]


def missing(version: str = K8S_VERSION) -> list[str]:
    return missing_in(bin_dir(version), COMPONENTS)


def ensure_built(
    what: str, directory: Path, names: tuple[str, ...], script: str, env: dict[str, str], build: bool = True
) -> Path:
    """Return `directory` once it holds every program in `names`, running hack/`script` if not."""
    if not missing_in(directory, names):
        return directory
    path = repo_root() / "hack" / script
    target = script.removeprefix("build-").removesuffix(".sh")
    if not build or not path.exists():
        raise ClusterError(
            f"{what} binaries missing in {directory} ({', '.join(missing_in(directory, names))}); "
            f"run `make {target}` (hack/{script}) from a topodra checkout"
        )
    rc = subprocess.call(["bash", str(path)], env=dict(os.environ, **env), stdout=2)  # progress on stderr
    if rc != 0 or missing_in(directory, names):
        raise ClusterError(f"building {what} failed (exit {rc}); logs in {directory.parent}/logs")
    return directory


def ensure_binaries(version: str = K8S_VERSION, build: bool = True) -> Path:
    """Return the bin dir, building what is missing with hack/build-k8s.sh (progress on stderr)."""
    return ensure_built(f"Kubernetes {version}", bin_dir(version), COMPONENTS, "build-k8s.sh",
                        {"TOPODRA_K8S_VERSION": version}, build)
