"""TestGangScheduling, the program's two cases with GPU-claiming Jobs marked as gangs (docs/gang.md), and
that everything is given back afterwards.

The gang that cannot fit asks, per pod, for as many GPUs as the largest candidate node has, with one pod
more than there are GPU nodes: at most one pod fits per node, so a scheduler that binds pods one by one
binds some of them, and an all-or-nothing one binds none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kubeaccess.sync import Json
from topodra_cli.conformance.context import Context
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.inventory import GPU_CLASS, Inventory
from topodra_cli.conformance.kube import create, delete, describe_pod, get, items, wait_for
from topodra_cli.conformance.model import CheckFailed
from topodra_cli.conformance.requirements import GANG_SCHEDULING
from topodra_cli.conformance.workloads import Container, PodShape, Request, claim_template, job

GANG_STATUS = "topodra.dev/gang-status"


@dataclass
class _State:
    inv: Inventory
    ns: str
    jobs: list[str] = field(default_factory=list)


def job_pods(ctx: Context, ns: str, name: str) -> list[Json]:
    return items(ctx.client, ns, "pods", labelSelector=f"batch.kubernetes.io/job-name={name}")


def allocated_devices(ctx: Context, ns: str) -> dict[tuple[str, str], str]:
    """(pool, device) -> claim, for the allocated claims of namespace `ns` (other workloads' claims are theirs)."""
    out: dict[tuple[str, str], str] = {}
    for c in items(ctx.client, ns, "resourceclaims"):
        alloc = (c.get("status") or {}).get("allocation")
        for r in (alloc or {}).get("devices", {}).get("results") or []:
            out[(r["pool"], r["device"])] = c["metadata"]["name"]
    return out


def _complete(ctx: Context, ns: str, name: str) -> bool:
    j = get(ctx.client, ns, "jobs", name) or {}
    for cond in (j.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            raise CheckFailed(f"Job {name} failed: {cond.get('reason')}: {cond.get('message')}; "
                              + _pods_seen(ctx, ns, name))
        if cond.get("type") == "Complete" and cond.get("status") == "True":
            return True
    return False


def _pods_seen(ctx: Context, ns: str, name: str) -> str:
    pods = job_pods(ctx, ns, name)
    bound = sum(1 for p in pods if p["spec"].get("nodeName"))
    lines = [describe_pod(ctx.client, ns, p, p["metadata"]["name"]) for p in pods[:4]]
    status = next((p["metadata"].get("annotations", {}).get(GANG_STATUS) for p in pods
                   if p["metadata"].get("annotations", {}).get(GANG_STATUS)), None)
    return (f"{len(pods)} pods, {bound} bound; " + " || ".join(lines)
            + (f" || {GANG_STATUS}: {status}" if status else ""))


def _positive(ctx: Context, st: _State, t: T) -> None:
    gpus = sum(len(v) for v in st.inv.by_node("gpu").values())
    if gpus < 2:
        t.skip(f"a gang of 2 one-GPU pods needs 2 GPUs; the candidate nodes have {gpus}")
    labels = dict(ctx.opts.gang_job_labels)
    create(ctx.client, st.ns, "jobs", job("pos-job", 2, PodShape(
        [Container("main", ("gpu",), "sleep 2")], {"gpu": "one-gpu"}), ctx.placement(st.inv), ctx.opts, labels))
    st.jobs.append("pos-job")
    t0 = time.monotonic()
    wait_for(lambda: _complete(ctx, st.ns, "pos-job"), ctx.opts.timeout, "Job pos-job (a gang of 2) to complete",
             lambda: _pods_seen(ctx, st.ns, "pos-job"), interval=2)
    pods = job_pods(ctx, st.ns, "pos-job")
    if not pods:
        t.fail("Job pos-job completed but none of its pods exist (was it admitted by the gang scheduler?)")
    unbound = [p["metadata"]["name"] for p in pods if not p["spec"].get("nodeName")]
    if unbound:
        t.fail(f"Job pos-job completed but pods {', '.join(unbound)} have no node")
    j = get(ctx.client, st.ns, "jobs", "pos-job") or {}
    lost = {k: v for k, v in labels.items() if (j.get("metadata", {}).get("labels") or {}).get(k) != v}
    if lost:
        t.fail(f"Job pos-job lost its gang labels {lost}")
    t.log(f"gang Job pos-job (2 pods, 1 GPU each) Complete in {time.monotonic() - t0:.1f}s on "
          + ", ".join(sorted({p['spec']['nodeName'] for p in pods})))
    delete(ctx.client, st.ns, "jobs", "pos-job")


def _negative(ctx: Context, st: _State, t: T) -> None:
    per_node = st.inv.by_node("gpu")
    if not per_node:
        t.skip("no candidate node has a GPU")
    k = max(len(v) for v in per_node.values())
    size = len(per_node) + 1
    # The positive gang's pods may still hold their GPUs: this gang must start from free devices, or a
    # partly-binding scheduler could bind nothing and pass.
    def held() -> str:
        extra = allocated_devices(ctx, st.ns)
        pods = [p["metadata"]["name"] for p in job_pods(ctx, st.ns, "pos-job")]
        return "; ".join(filter(None, [", ".join(f"{p}/{d} held by claim {c}" for (p, d), c in sorted(extra.items())),
                                       f"pods {', '.join(pods)} left" if pods else ""]))

    delete(ctx.client, st.ns, "jobs", "pos-job")  # whatever became of it, its pods must not hold devices now
    wait_for(lambda: not held(), ctx.opts.timeout, "the devices of pos-job to be free", held)
    create(ctx.client, st.ns, "resourceclaimtemplates",
           claim_template("node-of-gpus", [Request("gpus", GPU_CLASS, k)]))
    create(ctx.client, st.ns, "jobs", job("neg-job", size, PodShape(
        [Container("main", ("gpus",), "sleep 2")], {"gpus": "node-of-gpus"}), ctx.placement(st.inv), ctx.opts,
        dict(ctx.opts.gang_job_labels)))
    st.jobs.append("neg-job")
    t.log(f"gang Job neg-job: {size} pods of {k} GPUs each; no candidate node has more than {k} GPUs, so at most "
          f"{len(per_node)} (one per GPU node) fit; watching {ctx.opts.gang_window:.0f}s")
    t0 = time.monotonic()
    pods: list[Json] = []
    while time.monotonic() - t0 < ctx.opts.gang_window:
        pods = job_pods(ctx, st.ns, "neg-job")
        bound = [p for p in pods if p["spec"].get("nodeName") or p.get("status", {}).get("phase") == "Running"]
        if bound:
            names = ", ".join(f"{p['metadata']['name']} on {p['spec'].get('nodeName') or '?'} "
                              f"({p.get('status', {}).get('phase')})" for p in bound)
            t.fail(f"VIOLATION: gang neg-job cannot fit ({size} pods, at most {len(per_node)} fit) but "
                   f"{len(bound)} of its {len(pods)} pods were bound after {time.monotonic() - t0:.0f}s: {names}")
        time.sleep(1)
    status = next((p["metadata"].get("annotations", {}).get(GANG_STATUS) for p in pods
                   if p["metadata"].get("annotations", {}).get(GANG_STATUS)), None)
    t.log(f"none of the {len(pods)} pods of neg-job was bound in {ctx.opts.gang_window:.0f}s"
          + (f"; {GANG_STATUS}: {status}" if status else ""))
    if len(pods) < size:
        t.log(f"note: the Job controller created {len(pods)} of {size} pods within the window")


def _released(ctx: Context, st: _State, t: T) -> None:
    for name in st.jobs:
        delete(ctx.client, st.ns, "jobs", name)

    def leftovers() -> str:
        pods = [p["metadata"]["name"] for n in st.jobs for p in job_pods(ctx, st.ns, n)]
        held = allocated_devices(ctx, st.ns)
        claims = [c["metadata"]["name"] for c in items(ctx.client, st.ns, "resourceclaims")
                  if c["metadata"]["name"] not in held.values()]
        bits = []
        if pods:
            bits.append(f"pods {', '.join(pods)}")
        if claims:
            bits.append(f"claims {', '.join(claims)}")
        if held:
            bits.append("devices " + ", ".join(f"{p}/{d} (claim {c})" for (p, d), c in sorted(held.items())))
        return "; ".join(bits)

    t0 = time.monotonic()
    wait_for(lambda: not leftovers(), ctx.opts.timeout, "the gangs' pods, claims and devices to be released",
             leftovers)
    t.log(f"Jobs {', '.join(st.jobs) or '-'} deleted; no pod, claim or device of theirs left after "
          f"{time.monotonic() - t0:.1f}s")


def run(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    if not inv.by_node("gpu"):
        t.fail("ENVIRONMENT ERROR: no allocatable topodra GPU on a candidate node; the gang checks use GPU claims")
    st = _State(inv, ctx.namespace("gang"))
    create(ctx.client, st.ns, "resourceclaimtemplates", claim_template("one-gpu", [Request("gpu", GPU_CLASS)]))
    t.run("PositiveGangScheduling", lambda s: _positive(ctx, st, s))
    t.run("NegativeGangScheduling", lambda s: _negative(ctx, st, s))
    t.run("ResourcesReleased", lambda s: _released(ctx, st, s))


FAMILY = Family(
    "TestGangScheduling", GANG_SCHEDULING, "all-or-nothing scheduling of GPU gangs (Jobs marked as gangs)",
    (("PositiveGangScheduling", "a gang Job of 2 one-GPU pods runs to completion, every pod bound"),
     ("NegativeGangScheduling", "a gang Job that cannot fit leaves no pod bound for the whole window"),
     ("ResourcesReleased", "after the Jobs are deleted no pod, claim or allocated device of theirs is left")),
    run,
)
