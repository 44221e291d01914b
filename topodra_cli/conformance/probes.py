"""Running a probe pod and reading what it saw; reading the claims a pod got."""

from __future__ import annotations

from typing import Any

from kubeaccess.sync import Json
from topodra_cli.conformance.context import Context
from topodra_cli.conformance.kube import create, describe_pod, get, pod_log, wait_for
from topodra_cli.conformance.model import CheckFailed
from topodra_cli.conformance.workloads import END, PodShape, parse_probe, pod


def start(ctx: Context, ns: str, name: str, shape: PodShape, placement: Any, **meta: Any) -> None:
    create(ctx.client, ns, "pods", pod(name, shape, placement, ctx.opts, **meta))


def running(ctx: Context, ns: str, name: str) -> Json:
    """The pod once Running (or Succeeded); else CheckFailed with its phase, conditions and events."""
    def check() -> Json | None:
        p = get(ctx.client, ns, "pods", name)
        phase = (p or {}).get("status", {}).get("phase")
        if phase == "Failed":
            raise CheckFailed(f"pod {name} failed: {describe_pod(ctx.client, ns, p, name)}")
        return p if phase in ("Running", "Succeeded") else None

    return wait_for(check, ctx.opts.timeout, f"pod {ns}/{name} to run",
                    lambda: describe_pod(ctx.client, ns, get(ctx.client, ns, "pods", name), name))


def result(ctx: Context, ns: str, name: str, container: str) -> dict[str, str]:
    """The RESULT lines container `container` printed."""
    def done() -> str | None:
        log = pod_log(ctx.client, ns, name, container)
        return log if END in log else None

    log = wait_for(done, ctx.opts.timeout, f"the probe output of {name}/{container}",
                   lambda: pod_log(ctx.client, ns, name, container)[-500:])
    return parse_probe(log)


def claim_of(ctx: Context, ns: str, p: Json, pod_claim: str) -> Json:
    """The ResourceClaim behind the pod's claim `pod_claim` (generated from a template), allocated."""
    for st in (p.get("status") or {}).get("resourceClaimStatuses") or []:
        if st.get("name") == pod_claim and st.get("resourceClaimName"):
            claim = get(ctx.client, ns, "resourceclaims", st["resourceClaimName"])
            if claim and (claim.get("status") or {}).get("allocation"):
                return claim
            raise CheckFailed(f"claim {st['resourceClaimName']} of pod {p['metadata']['name']} is not allocated")
    raise CheckFailed(f"pod {p['metadata']['name']} has no ResourceClaim for {pod_claim!r} in its status")


def results(claim: Json) -> list[Json]:
    return list(claim["status"]["allocation"]["devices"]["results"])
