"""The AI-conformance requirements these checks give evidence for: ids, checklist wording and levels.

Descriptions are the checklists' own text (the validator compares id, description and level verbatim);
levels per checklist version are from cncf/k8s-ai-conformance `docs/AIConformance-1.3x.yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass

CHECKLIST_VERSIONS = ("1.35", "1.36", "1.37")


@dataclass(frozen=True)
class Requirement:
    category: str  # spec.<category> of PRODUCT.yaml
    id: str
    description: str
    levels: dict[str, str]  # checklist version -> MUST | SHOULD; absent = not in that checklist

    @property
    def key(self) -> str:
        return f"{self.category}/{self.id}"


DRA_SUPPORT = Requirement(
    "accelerators", "dra_support",
    "Support Dynamic Resource Allocation (DRA) APIs to enable more flexible and fine-grained resource requests "
    "beyond simple counts.",
    {"1.35": "MUST"},
)
SECURE_ACCELERATOR_ACCESS = Requirement(
    "security", "secure_accelerator_access",
    "Ensure that access to accelerators from within containers is properly isolated and mediated by the Kubernetes "
    "resource management framework (device plugin or DRA) and container runtime, preventing unauthorized access or "
    "interference between workloads.",
    {"1.35": "MUST", "1.36": "MUST", "1.37": "MUST"},
)
GANG_SCHEDULING = Requirement(
    "schedulingOrchestration", "gang_scheduling",
    "The platform must allow for the installation and successful operation of at least one gang scheduling "
    "solution that ensures all-or-nothing scheduling for distributed AI workloads (e.g. Kueue, Volcano, etc.) To "
    "be conformant, the vendor must demonstrate that their platform can successfully run at least one such "
    "solution.",
    {"1.35": "MUST", "1.36": "MUST", "1.37": "MUST"},
)
HIGH_PERFORMANCE_NETWORKING = Requirement(
    "networking", "high_performance_networking",
    "If high performance pod-to-pod communication is needed, then provide well-defined mechanisms for these "
    "specialized network resources to be managed and exposed such that their characteristics should be "
    "discoverable to enable informed scheduling or workload configuration and to enable pods to attach to "
    "multiple network interfaces. Platforms should use DRA as the mechanism to manage and expose these "
    "specialized network resources (e.g., DRANET).",
    {"1.36": "SHOULD", "1.37": "SHOULD"},
)


def checklist_version(kubernetes_version: str) -> str:
    """The checklist for a cluster version ("v1.37.2" -> "1.37"), the nearest one outside the known range."""
    parts = kubernetes_version.lstrip("v").split(".")
    try:
        minor = int("".join(ch for ch in parts[1] if ch.isdigit()))
        major = int(parts[0])
    except (IndexError, ValueError):
        return CHECKLIST_VERSIONS[-1]
    want = f"{major}.{minor}"
    if want in CHECKLIST_VERSIONS:
        return want
    first = int(CHECKLIST_VERSIONS[0].split(".")[1])
    return CHECKLIST_VERSIONS[0] if major == 1 and minor < first else CHECKLIST_VERSIONS[-1]
