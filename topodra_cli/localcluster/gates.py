"""Feature gates per pinned Kubernetes version: one place, checked against the running apiserver."""

from __future__ import annotations

# Off by default in 1.37 and wanted by topodra's tests (docs/local-cluster.md). Every component gets the same list.
# Upstream workload-aware scheduling (GenericWorkload and the gates that depend on it) is explicitly off here:
# a 1.37 cluster has it off by default, and it changes how kube-scheduler queues pods (a new pending pod wakes
# the others only with it on), so the extender's gang handling is tested against the default behaviour.
# `WORKLOAD_GATES` turns it on (`local-cluster up --generic-workload`).
GATES: dict[str, dict[str, bool]] = {
    "v1.37.2": {
        "GenericWorkload": False,
        "DRAWorkloadResourceClaims": False,
        "TopologyAwareWorkloadScheduling": False,
        "CompositePodGroup": False,
        "PodGroupPreemptionPolicy": False,
        "WorkloadWithJob": False,
        "DRAListTypeAttributes": True,
        "DRAResourcePoolStatus": True,
        "DRANodeAllocatableResources": True,
    },
}

# GenericWorkload and every gate that 1.37.2 declares as depending on it (kube_features.go's dependency map):
# a dependent gate on while GenericWorkload is off makes the component refuse to start.
WORKLOAD_GATES: dict[str, tuple[str, ...]] = {
    "v1.37.2": (
        "GenericWorkload",
        "DRAWorkloadResourceClaims",
        "TopologyAwareWorkloadScheduling",
        "CompositePodGroup",
        "PodGroupPreemptionPolicy",
        "WorkloadWithJob",
    ),
}

# The Workload/PodGroup API group is beta and disabled by default; the gate alone registers no storage for it.
WORKLOAD_API = "scheduling.k8s.io/v1beta1"


def gates(version: str, generic_workload: bool = False) -> dict[str, bool]:
    """The gate set every component of a cluster gets."""
    out = dict(GATES[version])
    if generic_workload:
        out.update(dict.fromkeys(WORKLOAD_GATES[version], True))
    return out


def gate_flag(version: str, generic_workload: bool = False) -> str:
    return ",".join(f"{k}={'true' if v else 'false'}" for k, v in sorted(gates(version, generic_workload).items()))


def runtime_config(generic_workload: bool = False) -> str:
    """kube-apiserver `--runtime-config` value."""
    groups = ["api/all=true"]
    if generic_workload:
        # Already covered by api/all; named anyway so the switch keeps working if the base list narrows.
        groups.append(f"{WORKLOAD_API}=true")
    return ",".join(groups)


def check_gates(version: str, metrics_text: str, generic_workload: bool = False) -> list[str]:
    """Gates whose effective state (apiserver `kubernetes_feature_enabled`) differs from what we asked."""
    wrong = []
    for name, want in gates(version, generic_workload).items():
        needle = f'kubernetes_feature_enabled{{name="{name}",'
        line = next((ln for ln in metrics_text.splitlines() if ln.startswith(needle)), None)
        if line is None or (line.rsplit(" ", 1)[-1].strip() == "1") != want:
            wrong.append(name)
    return wrong
