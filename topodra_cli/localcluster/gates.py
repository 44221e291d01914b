"""Feature gates per pinned Kubernetes version: one place, checked against the running apiserver."""

from __future__ import annotations

# Off by default in 1.37 and wanted by topodra's tests (real-cluster.md). Every component gets the same list.
GATES: dict[str, dict[str, bool]] = {
    "v1.37.2": {
        "GenericWorkload": True,
        "DRAWorkloadResourceClaims": True,
        "TopologyAwareWorkloadScheduling": True,
        "CompositePodGroup": True,
        "PodGroupPreemptionPolicy": True,
        "WorkloadWithJob": True,
        "DRAListTypeAttributes": True,
        "DRAResourcePoolStatus": True,
        "DRANodeAllocatableResources": True,
    },
}


def gate_flag(version: str) -> str:
    gates = GATES[version]
    return ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates.items()))


def check_gates(version: str, metrics_text: str) -> list[str]:
    """Gates whose effective state (apiserver `kubernetes_feature_enabled`) differs from what we asked."""
    wrong = []
    for name, want in GATES[version].items():
        needle = f'kubernetes_feature_enabled{{name="{name}",'
        line = next((ln for ln in metrics_text.splitlines() if ln.startswith(needle)), None)
        if line is None or (line.rsplit(" ", 1)[-1].strip() == "1") != want:
            wrong.append(name)
    return wrong
