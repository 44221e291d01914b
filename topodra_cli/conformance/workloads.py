"""The objects the checks create: claim templates, probe pods and gang Jobs, as the API takes them.

A probe container prints what it can see and then waits to be deleted: the count of GPU device nodes
(`/dev/nvidia<N>`, what topodra's CDI specs and NVIDIA's drivers create), the GPU and NIC environment the
driver injects, and its network interfaces, as `RESULT: KEY=value` lines (the program's secure-access test
prints `RESULT: ACCELERATOR_COUNT=<n>` the same way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kubeaccess.sync import Json
from topodra_cli.conformance.model import Options

HOSTNAME = "kubernetes.io/hostname"
# Backticks, not $(...): the kubelet expands $(NAME) in commands. `sleep & wait` so SIGTERM ends it at once.
PROBE = (
    "echo RESULT: ACCELERATOR_COUNT=`ls /dev 2>/dev/null | grep -c '^nvidia[0-9][0-9]*$'`; "
    "echo RESULT: DEVICE_NODES=`ls /dev 2>/dev/null | grep '^nvidia[0-9][0-9]*$' | sed 's|^|/dev/|' | tr '\\n' ' '`; "
    "echo RESULT: NVIDIA_VISIBLE_DEVICES=${NVIDIA_VISIBLE_DEVICES:-}; "
    "echo RESULT: TOPODRA_NET_INTERFACES=${TOPODRA_NET_INTERFACES:-}; "
    "echo RESULT: NET_INTERFACES=`ls /sys/class/net 2>/dev/null | tr '\\n' ' '`; "
    "echo RESULT: END; "
    "trap 'exit 0' TERM INT; sleep 3600 & wait"
)
END = "RESULT: END"


def parse_probe(log: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in log.splitlines():
        if line.startswith("RESULT: ") and "=" in line:
            k, _, v = line[len("RESULT: "):].partition("=")
            out[k] = v.strip()
    return out


@dataclass(frozen=True)
class Placement:
    """Where pods may go: one of the nodes labelled with `hostnames` through the scheduler, or straight onto
    `node_name`."""

    hostnames: Sequence[str]
    tolerations: Sequence[Json] = ()
    node_name: str = ""

    def apply(self, spec: Json) -> None:
        if self.node_name:
            spec["nodeName"] = self.node_name
        elif self.hostnames:
            # By hostname label, not matchFields on metadata.name: topodra's extender does not plan pods
            # with matchFields (it leaves them to kube-scheduler), so a gang of them would never be placed.
            spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": HOSTNAME, "operator": "In", "values": sorted(self.hostnames)}]}]}}}
        if self.tolerations:
            spec["tolerations"] = [dict(t) for t in self.tolerations]


@dataclass(frozen=True)
class Request:
    name: str
    device_class: str
    count: int = 1


def claim_template(name: str, requests: Sequence[Request], match_attribute: str = "") -> Json:
    devices: Json = {"requests": [{"name": r.name, "exactly": {"deviceClassName": r.device_class, "count": r.count}}
                                  for r in requests]}
    if match_attribute:
        devices["constraints"] = [{"requests": [r.name for r in requests], "matchAttribute": match_attribute}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": devices}}}


@dataclass(frozen=True)
class Container:
    name: str
    claims: Sequence[str] = ()  # pod-level claim names this container uses
    command: str = PROBE


@dataclass(frozen=True)
class PodShape:
    containers: Sequence[Container]
    claims: Mapping[str, str] = field(default_factory=dict)  # pod claim name -> template name
    restart: str = "Never"


def pod_spec(shape: PodShape, placement: Placement, opts: Options) -> Json:
    spec: Json = {
        "restartPolicy": shape.restart,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": c.name,
            "image": opts.image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", c.command],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                          **({"claims": [{"name": n} for n in c.claims]} if c.claims else {})},
        } for c in shape.containers],
    }
    if shape.claims:
        spec["resourceClaims"] = [{"name": n, "resourceClaimTemplateName": t} for n, t in shape.claims.items()]
    if opts.host_network:
        spec["hostNetwork"] = True
    if opts.scheduler_name:
        spec["schedulerName"] = opts.scheduler_name
    placement.apply(spec)
    return spec


def pod(name: str, shape: PodShape, placement: Placement, opts: Options,
        labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> Json:
    meta: Json = {"name": name, "labels": {"app.kubernetes.io/managed-by": "topodra-conformance", **(labels or {})}}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pod_spec(shape, placement, opts)}


def job(name: str, size: int, shape: PodShape, placement: Placement, opts: Options,
        labels: Mapping[str, str]) -> Json:
    """A Job of `size` pods that all run at once (parallelism = completions), the gang marker on the Job."""
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"parallelism": size, "completions": size, "backoffLimit": 0,
                     "template": {"metadata": {"labels": {"app.kubernetes.io/managed-by": "topodra-conformance"}},
                                  "spec": pod_spec(shape, placement, opts)}}}
