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


def missing(version: str = K8S_VERSION) -> list[str]:
    d = bin_dir(version)
    return [c for c in COMPONENTS if not os.access(d / c, os.X_OK)]


def ensure_binaries(version: str = K8S_VERSION, build: bool = True) -> Path:
    """Return the bin dir, building what is missing with hack/build-k8s.sh (progress on stderr)."""
    if not missing(version):
        return bin_dir(version)
    script = repo_root() / "hack" / "build-k8s.sh"
    if not build or not script.exists():
        raise ClusterError(
            f"Kubernetes {version} binaries missing in {bin_dir(version)} ({', '.join(missing(version))}); "
            "run `make k8s` (hack/build-k8s.sh) from a topodra checkout"
        )
    env = dict(os.environ, TOPODRA_K8S_VERSION=version)
    rc = subprocess.call(["bash", str(script)], env=env, stdout=2)
    if rc != 0 or missing(version):
        raise ClusterError(f"building Kubernetes {version} failed (exit {rc}); logs in {bin_dir(version).parent}/logs")
    return bin_dir(version)
