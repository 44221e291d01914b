"""Extender configuration: a YAML file read once at start, validated into frozen dataclasses.

Every mistake is reported with the path of the offending field, so a bad ConfigMap fails loudly at start
instead of silently scoring with defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STD_PCIE_ROOT = "resource.kubernetes.io/pcieRoot"
STD_NUMA_NODE = "resource.kubernetes.io/numaNode"


class ConfigError(ValueError):
    """The configuration file is unreadable or invalid; the message names the field."""


@dataclass(frozen=True)
class Level:
    """One topology level; a node's domain is the first of `labels` it carries, else a device attribute."""

    name: str
    labels: tuple[str, ...]
    weight: float
    attributes: tuple[str, ...] = ()  # device attributes (qualified) that name the domain, e.g. an NVLink clique


@dataclass(frozen=True)
class Weights:
    alignment: float = 2.0  # share of the score given to GPU-NIC alignment
    packing: float = 1.0  # share given to topology packing
    pcie: float = 2.0  # within alignment: pairs on one PCIe root ...
    numa: float = 1.0  # ... versus pairs on one NUMA node
    same_job: float = 1.0  # within packing: a domain already used by the job
    keep_whole: float = 0.5  # within packing: prefer fuller domains, keep big free ones whole


@dataclass(frozen=True)
class Alignment:
    """Which device classes count as GPUs and NICs, and what alignment a pod gets unless it says otherwise."""

    gpu_classes: tuple[str, ...] = ("gpu.topodra.dev", "gpu.nvidia.com")
    nic_classes: tuple[str, ...] = ("nic.topodra.dev",)
    gpu_type_values: tuple[str, ...] = ("gpu",)  # the `type` attribute value of GPUs (driver-agnostic fallback)
    nic_type_values: tuple[str, ...] = ("nic",)
    default: str = "preferred"  # preferred | pcieRoot | numaNode  (the two last: required)
    annotation: str = "topodra.dev/alignment"


@dataclass(frozen=True)
class GangConfig:
    """How pods ask for a gang (docs/gang.md): the Job marker label and our own annotation names."""

    job_label: str = "topodra.dev/gang"  # on a batch/v1 Job: its pods form one gang
    job_label_value: str = "true"
    default_timeout_seconds: float = 300.0  # how long a gang may wait for all members
    name_annotation: str = "topodra.dev/gang"
    size_annotation: str = "topodra.dev/gang-size"
    timeout_annotation: str = "topodra.dev/gang-timeout-seconds"
    required_annotation: str = "topodra.dev/topology-required"
    preferred_annotation: str = "topodra.dev/topology-preferred"


@dataclass(frozen=True)
class ExtenderConfig:
    levels: tuple[Level, ...]
    weights: Weights = field(default_factory=Weights)
    alignment: Alignment = field(default_factory=Alignment)
    job_labels: tuple[str, ...] = (
        "topodra.dev/job",
        "batch.kubernetes.io/job-name",
        "job-name",
        "scheduling.x-k8s.io/pod-group",
        "kueue.x-k8s.io/pod-group-name",
    )
    job_annotations: tuple[str, ...] = ("scheduling.k8s.io/group-name", "scheduling.volcano.sh/group-name")
    decision_ttl_seconds: float = 30.0  # how long our own unconfirmed decisions count
    stale_after_seconds: float = 2.0  # a watch down this long marks the cache stale
    gang: GangConfig = field(default_factory=GangConfig)


DEFAULT_LEVELS: tuple[Level, ...] = (
    Level("zone", ("topology.kubernetes.io/zone",), 1.0),
    Level("block", ("topodra.dev/block", "network.topology.kubernetes.io/block", "cloud.google.com/gce-topology-block",
                    "fabric.topograph.run/tier-1"), 2.0),
    Level("rack", ("topodra.dev/rack", "topology.kubernetes.io/rack", "fabric.topograph.run/tier-0"), 4.0),
    Level("clique", ("topodra.dev/clique", "nvidia.com/gpu.clique", "accelerator.topograph.run/domain",
                     "network.topology.kubernetes.io/accelerator"), 8.0, ("topodra.dev/clique",)),
)

ALIGN_MODES = ("preferred", "none", "pcieRoot", "numaNode")


def default_config() -> ExtenderConfig:
    return ExtenderConfig(levels=DEFAULT_LEVELS)


def load_config(path: Path | None) -> ExtenderConfig:
    if path is None:
        return default_config()
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not YAML: {e}") from e
    try:
        return parse_config(doc)
    except ConfigError as e:
        raise ConfigError(f"config {path}: {e}") from None


def parse_config(doc: Any) -> ExtenderConfig:
    if doc is None:
        doc = {}
    m = _mapping(doc, "(top level)")
    _known(m, "", {"levels", "weights", "alignment", "jobLabels", "jobAnnotations", "decisionTTLSeconds",
                   "staleAfterSeconds", "gang"})
    levels = DEFAULT_LEVELS if "levels" not in m else _levels(m["levels"])
    w = _mapping(m.get("weights") or {}, "weights")
    _known(w, "weights.", {"alignment", "packing", "pcie", "numa", "sameJob", "keepWhole"})
    d = Weights()
    weights = Weights(
        alignment=_num(w, "alignment", d.alignment, "weights."),
        packing=_num(w, "packing", d.packing, "weights."),
        pcie=_num(w, "pcie", d.pcie, "weights."),
        numa=_num(w, "numa", d.numa, "weights."),
        same_job=_num(w, "sameJob", d.same_job, "weights."),
        keep_whole=_num(w, "keepWhole", d.keep_whole, "weights."),
    )
    if weights.alignment + weights.packing <= 0:
        raise ConfigError("weights.alignment + weights.packing must be > 0")
    a = _mapping(m.get("alignment") or {}, "alignment")
    _known(a, "alignment.", {"gpuClasses", "nicClasses", "gpuTypes", "nicTypes", "default", "annotation"})
    da = Alignment()
    default = a.get("default", da.default)
    if default not in ALIGN_MODES:
        raise ConfigError(f"alignment.default: {default!r} is not one of {', '.join(ALIGN_MODES)}")
    alignment = Alignment(
        gpu_classes=_strs(a, "gpuClasses", da.gpu_classes, "alignment."),
        nic_classes=_strs(a, "nicClasses", da.nic_classes, "alignment."),
        gpu_type_values=_strs(a, "gpuTypes", da.gpu_type_values, "alignment."),
        nic_type_values=_strs(a, "nicTypes", da.nic_type_values, "alignment."),
        default=str(default),
        annotation=str(a.get("annotation", da.annotation)),
    )
    base = default_config()
    return ExtenderConfig(
        levels=levels,
        weights=weights,
        alignment=alignment,
        job_labels=_strs(m, "jobLabels", base.job_labels, ""),
        job_annotations=_strs(m, "jobAnnotations", base.job_annotations, ""),
        decision_ttl_seconds=_num(m, "decisionTTLSeconds", base.decision_ttl_seconds, ""),
        stale_after_seconds=_num(m, "staleAfterSeconds", base.stale_after_seconds, ""),
        gang=_gang(m.get("gang") or {}),
    )


_GANG_STRINGS = {  # YAML key -> GangConfig field
    "jobLabel": "job_label",
    "jobLabelValue": "job_label_value",
    "nameAnnotation": "name_annotation",
    "sizeAnnotation": "size_annotation",
    "timeoutAnnotation": "timeout_annotation",
    "requiredAnnotation": "required_annotation",
    "preferredAnnotation": "preferred_annotation",
}


def _gang(raw: Any) -> GangConfig:
    g = _mapping(raw, "gang")
    _known(g, "gang.", {*_GANG_STRINGS, "defaultTimeoutSeconds"})
    d = GangConfig()
    values: dict[str, Any] = {}
    for key, attr in _GANG_STRINGS.items():
        v = g.get(key, getattr(d, attr))
        # jobLabelValue may be "" (label present with an empty value); keys and annotation names may not.
        if key == "jobLabelValue" and not isinstance(v, str):
            raise ConfigError(f"gang.{key}: must be a string, got {v!r}")
        if key != "jobLabelValue" and (not isinstance(v, str) or not v):
            raise ConfigError(f"gang.{key}: must be a non-empty string, got {v!r}")
        values[attr] = v
    timeout = _num(g, "defaultTimeoutSeconds", d.default_timeout_seconds, "gang.")
    if timeout <= 0:
        raise ConfigError("gang.defaultTimeoutSeconds: must be > 0")
    return GangConfig(default_timeout_seconds=timeout, **values)


def _levels(raw: Any) -> tuple[Level, ...]:
    if not isinstance(raw, list):
        raise ConfigError("levels: must be a list, highest level (e.g. zone) first")
    out: list[Level] = []
    for i, item in enumerate(raw):
        where = f"levels[{i}]"
        lv = _mapping(item, where)
        _known(lv, where + ".", {"name", "label", "labels", "weight", "attributes"})
        name = lv.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: required, a non-empty string")
        labels = _strs(lv, "labels", (), where + ".")
        if "label" in lv:
            if not isinstance(lv["label"], str) or not lv["label"]:
                raise ConfigError(f"{where}.label: must be a non-empty string")
            labels = (lv["label"], *labels)
        attrs = _strs(lv, "attributes", (), where + ".")
        if not labels and not attrs:
            raise ConfigError(f"{where}: give `label`, `labels` or `attributes`")
        weight = _num(lv, "weight", 1.0, where + ".")
        out.append(Level(name, labels, weight, attrs))
    names = [lv.name for lv in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"levels: names must be unique, got {names}")
    return tuple(out)


def _mapping(v: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"{where}: must be a mapping, got {type(v).__name__}")
    return v


def _known(m: Mapping[str, Any], prefix: str, keys: set[str]) -> None:
    extra = sorted(str(k) for k in m if k not in keys)
    if extra:
        raise ConfigError(f"{prefix}{extra[0]}: unknown field (known: {', '.join(sorted(keys))})")


def _num(m: Mapping[str, Any], key: str, default: float, prefix: str) -> float:
    v = m.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise ConfigError(f"{prefix}{key}: must be a number >= 0, got {v!r}")
    return float(v)


def _strs(m: Mapping[str, Any], key: str, default: Sequence[str], prefix: str) -> tuple[str, ...]:
    v = m.get(key)
    if v is None:
        return tuple(default)
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise ConfigError(f"{prefix}{key}: must be a list of non-empty strings")
    return tuple(v)
