"""TestDRASupport: the DRA API is served, topodra publishes a complete pool on a Ready node, and a claim
gets allocated and a pod runs with it."""

from __future__ import annotations

from driver.model import DRIVER_NAME
from topodra_cli.conformance import probes
from topodra_cli.conformance.context import Context, describe_no_candidates
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.inventory import GPU_CLASS, NIC_CLASS
from topodra_cli.conformance.kube import create, delete
from topodra_cli.conformance.requirements import DRA_SUPPORT
from topodra_cli.conformance.workloads import Container, PodShape, Request, claim_template

NEEDED = ("deviceclasses", "resourceclaims", "resourceclaimtemplates", "resourceslices")


def _api_served(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    missing = [r for r in NEEDED if r not in inv.served]
    if missing:
        t.fail(f"resource.k8s.io/v1 does not serve {', '.join(missing)}"
               + (f" ({'; '.join(inv.problems)})" if inv.problems else ""))
    t.log(f"resource.k8s.io/v1 serves {', '.join(NEEDED)} (Kubernetes {inv.version})")


def _pool_published(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    for p in inv.pools:
        kinds = [d.kind for d in inv.devices if d.pool == p.name]
        t.log(f"pool {p.name}: node {p.node or '-'}, generation {p.generation}, {p.seen}/{p.expected} slices, "
              f"{kinds.count('gpu')} GPUs, {kinds.count('nic')} NICs")
    nodes = inv.candidates()
    if not nodes:
        t.fail(describe_no_candidates(inv))
    missing = [c for c in (GPU_CLASS, NIC_CLASS) if c not in inv.classes]
    if missing:
        t.fail(f"DeviceClass {', '.join(missing)} not found (deploy/deviceclasses.yaml installs them)")
    if not inv.usable("gpu") and not inv.usable("nic"):
        t.fail(f"the complete pools on {', '.join(nodes)} hold no untainted GPU or NIC")
    t.log(f"complete, current topodra pools on Ready nodes: {', '.join(nodes)}")


def _claim_pod(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    kind, cls = ("gpu", GPU_CLASS) if inv.usable("gpu") else ("nic", NIC_CLASS)
    placement = ctx.placement(inv)
    ns = ctx.namespace("dra")
    create(ctx.client, ns, "resourceclaimtemplates", claim_template("one-device", [Request(kind, cls)]))
    probes.start(ctx, ns, "dra-claim", PodShape([Container("main", ("dev",))], {"dev": "one-device"}), placement)
    pod = probes.running(ctx, ns, "dra-claim")
    claim = probes.claim_of(ctx, ns, pod, "dev")
    got = probes.results(claim)
    if [r["driver"] for r in got] != [DRIVER_NAME]:
        t.fail(f"claim {claim['metadata']['name']} was allocated {got}, want one {DRIVER_NAME} device")
    dev = inv.device(got[0]["pool"], got[0]["device"])
    if dev is None or dev.kind != kind:
        t.fail(f"claim {claim['metadata']['name']} got {got[0]['pool']}/{got[0]['device']}, "
               f"which is not a {kind} in the published slices")
    t.log(f"claim {claim['metadata']['name']} allocated {dev.pool}/{dev.name} ({kind}); "
          f"pod dra-claim {pod['status']['phase']} on {pod['spec']['nodeName']}")
    delete(ctx.client, ns, "pods", "dra-claim")


def run(ctx: Context, t: T) -> None:
    t.run("ResourceAPIServed", lambda s: _api_served(ctx, s))
    t.run("TopodraPoolPublished", lambda s: _pool_published(ctx, s))
    t.run("ClaimAllocatedPodRunning", lambda s: _claim_pod(ctx, s))


FAMILY = Family(
    "TestDRASupport", DRA_SUPPORT, "accelerators exposed through DRA by topodra",
    (("ResourceAPIServed", "resource.k8s.io/v1 serves DeviceClasses, ResourceClaims, templates and ResourceSlices"),
     ("TopodraPoolPublished", "a complete, current pool of topodra.dev slices on a Ready node; DeviceClasses exist"),
     ("ClaimAllocatedPodRunning", "a claim for one device is allocated from topodra's slices and its pod runs")),
    run,
)
