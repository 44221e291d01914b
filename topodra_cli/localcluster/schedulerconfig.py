"""The local kube-scheduler's KubeSchedulerConfiguration: a user's base file plus what the harness needs."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from topodra_cli.localcluster.processes import ClusterError

API_VERSION = "kubescheduler.config.k8s.io/v1"
KIND = "KubeSchedulerConfiguration"


def load_base(path: Path) -> dict[str, Any]:
    """Read and check a user's KubeSchedulerConfiguration file; every problem is a ClusterError naming the file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ClusterError(f"scheduler config {path}: cannot read it ({e.strerror or e})") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise ClusterError(f"scheduler config {path}: not valid YAML: {e}") from e
    if len(docs) != 1:
        raise ClusterError(f"scheduler config {path}: want exactly one YAML document (a {KIND}), got {len(docs)}")
    if not isinstance(docs[0], dict):
        raise ClusterError(f"scheduler config {path}: want a YAML mapping (a {KIND}), got {type(docs[0]).__name__}")
    return check_base(docs[0], str(path))


def check_base(doc: Mapping[str, Any], source: str = "scheduler config") -> dict[str, Any]:
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind != KIND or api != API_VERSION:
        raise ClusterError(f"{source}: want apiVersion {API_VERSION} and kind {KIND}, got apiVersion {api!r} "
                           f"kind {kind!r}")
    for key in ("clientConnection", "leaderElection"):
        if key in doc and not isinstance(doc[key], dict):
            raise ClusterError(f"{source}: {key} must be a mapping")
    for key in ("profiles", "extenders"):
        if key in doc and not isinstance(doc[key], list):
            raise ClusterError(f"{source}: {key} must be a list")
    return copy.deepcopy(dict(doc))


def compose(
    base: Mapping[str, Any] | None,
    *,
    kubeconfig: Path,
    extenders: Sequence[Mapping[str, Any]],
    percentage_of_nodes_to_score: int,
    leader_elect: bool = False,
) -> dict[str, Any]:
    """The file kube-scheduler is started with.

    The harness always owns the credentials and leader election; the base file's other settings win over the
    harness defaults (QPS, percentageOfNodesToScore, profiles), and harness extenders are added after the
    base file's own.
    """
    doc: dict[str, Any] = copy.deepcopy(dict(base)) if base else {"apiVersion": API_VERSION, "kind": KIND}
    conn = doc.setdefault("clientConnection", {})
    # With --config the scheduler ignores --kubeconfig: the config must name it.
    conn["kubeconfig"] = str(kubeconfig)
    conn.setdefault("qps", 500)
    conn.setdefault("burst", 1000)
    # One scheduler per cluster: electing a leader only delays its start, unless something follows its
    # Lease (the extender's active replica does).
    doc.setdefault("leaderElection", {})["leaderElect"] = leader_elect
    doc.setdefault("percentageOfNodesToScore", percentage_of_nodes_to_score)
    doc.setdefault("profiles", [{"schedulerName": "default-scheduler"}])
    if extenders:
        doc["extenders"] = [*doc.get("extenders", []), *(dict(e) for e in extenders)]
    return doc
