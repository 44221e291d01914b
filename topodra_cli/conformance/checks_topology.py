"""TestTopodraTopology, topodra's own checks (no checklist item asks for topology): a GPU and a NIC on one
PCIe root for a claim that requires it, and a gang placed inside one domain of the level it requires."""

from __future__ import annotations

import time
from collections import defaultdict

from topodra_cli.conformance import probes
from topodra_cli.conformance.context import Context
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.inventory import GPU_CLASS, NIC_CLASS, STD_NUMA, STD_PCIE_ROOT, Inventory
from topodra_cli.conformance.kube import create, delete, describe_pod, get, wait_for
from topodra_cli.conformance.workloads import Container, PodShape, Request, claim_template

GANG = "packed"


def _aligned(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    nodes = sorted({g.node for g in inv.usable("gpu") for n in inv.usable("nic", g.node)
                    if g.attr(STD_PCIE_ROOT) and g.attr(STD_PCIE_ROOT) == n.attr(STD_PCIE_ROOT)})
    if not nodes:
        t.skip("no candidate node has a GPU and a NIC on one PCIe root (resource.kubernetes.io/pcieRoot)")
    ns = ctx.namespace("topo-pair")
    create(ctx.client, ns, "resourceclaimtemplates", claim_template(
        "aligned-pair", [Request("gpu", GPU_CLASS), Request("nic", NIC_CLASS)], match_attribute=STD_PCIE_ROOT))
    probes.start(ctx, ns, "pair", PodShape([Container("main", ("pair",))], {"pair": "aligned-pair"}),
                 ctx.placement(inv, nodes))
    p = probes.running(ctx, ns, "pair")
    claim = probes.claim_of(ctx, ns, p, "pair")
    got = {r["request"]: inv.device(r["pool"], r["device"]) for r in probes.results(claim)}
    gpu, nic = got.get("gpu"), got.get("nic")
    if gpu is None or nic is None:
        t.fail(f"claim of pod pair was allocated {sorted(got)}, want a published GPU and NIC")
    roots = (gpu.attr(STD_PCIE_ROOT), nic.attr(STD_PCIE_ROOT))
    if roots[0] != roots[1] or gpu.node != nic.node:
        t.fail(f"pod pair got {gpu.pool}/{gpu.name} on {roots[0]} and {nic.pool}/{nic.name} on {roots[1]}: not aligned")
    t.log(f"pod pair on {p['spec']['nodeName']}: {gpu.name} and {nic.name} on PCIe root {roots[0]} "
          f"(NUMA {gpu.attr(STD_NUMA)}/{nic.attr(STD_NUMA)})")
    delete(ctx.client, ns, "pods", "pair")


def _domains(inv: Inventory, label: str) -> dict[str, list[str]]:
    """Domain -> its GPUs' nodes (one entry per GPU), for the level named by node label `label` ("" = node)."""
    out: dict[str, list[str]] = defaultdict(list)
    for g in inv.usable("gpu"):
        dom = inv.nodes[g.node].labels.get(label, "") if label else g.node
        if dom:
            out[dom].append(g.node)
    return dict(out)


def _packed(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    level, label = ctx.opts.topology_level, ctx.opts.topology_label
    domains = _domains(inv, label)
    if not any(len(v) >= 2 for v in domains.values()):
        where = f"node label {label}" if label else "node"
        t.skip(f"no {level} domain ({where}) holds 2 GPUs on the candidate nodes: a gang of 2 could not be packed")
    ns = ctx.namespace("topo-gang")
    create(ctx.client, ns, "resourceclaimtemplates", claim_template("one-gpu", [Request("gpu", GPU_CLASS)]))
    ann = {"topodra.dev/gang": GANG, "topodra.dev/gang-size": "2", "topodra.dev/topology-required": level}
    names = ("packed-0", "packed-1")
    for n in names:
        probes.start(ctx, ns, n, PodShape([Container("main", ("gpu",), "trap 'exit 0' TERM; sleep 3600 & wait")],
                                          {"gpu": "one-gpu"}), ctx.placement(inv), annotations=ann)
    t0 = time.monotonic()
    pods = [probes.running(ctx, ns, n) for n in names]
    nodes = [p["spec"]["nodeName"] for p in pods]
    doms = [inv.nodes[n].labels.get(label, "") if label else n for n in nodes]
    if len(set(doms)) != 1 or not doms[0]:
        t.fail(f"gang {GANG} requires one {level} domain but its pods run on {', '.join(nodes)} "
               f"({level} {', '.join(d or '(none)' for d in doms)})")
    t.log(f"gang {GANG} (2 pods, topodra.dev/topology-required: {level}) running in {level} {doms[0]} "
          f"(nodes {', '.join(nodes)}) after {time.monotonic() - t0:.1f}s")
    for n in names:
        delete(ctx.client, ns, "pods", n)
    wait_for(lambda: all(get(ctx.client, ns, "pods", n) is None for n in names), ctx.opts.timeout,
             "the packed gang's pods to be deleted",
             lambda: "; ".join(describe_pod(ctx.client, ns, get(ctx.client, ns, "pods", n), n) for n in names))


def run(ctx: Context, t: T) -> None:
    t.run("AlignedGPUNICPair", lambda s: _aligned(ctx, s))
    t.run("GangPackedInDomain", lambda s: _packed(ctx, s))


FAMILY = Family(
    "TestTopodraTopology", None, "topodra's topology guarantees (no checklist item)",
    (("AlignedGPUNICPair", "a claim for a GPU and a NIC on one PCIe root gets an aligned pair"),
     ("GangPackedInDomain", "a gang that requires one domain of a level (--topology-level) runs inside one")),
    run,
)
