"""TestSecureAcceleratorAccess, the program's three cases with topodra's GPUs: a pod with a claim sees exactly
its GPU, a pod without a claim on the same node sees none, and of two containers only the one that names
the claim sees it. Device nodes and the GPU environment are counted inside the containers."""

from __future__ import annotations

from dataclasses import dataclass

from topodra_cli.conformance import probes
from topodra_cli.conformance.context import Context, describe_no_candidates
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.inventory import GPU_CLASS, Device, Inventory
from topodra_cli.conformance.kube import create, delete
from topodra_cli.conformance.requirements import SECURE_ACCELERATOR_ACCESS
from topodra_cli.conformance.workloads import Container, PodShape, Request, claim_template

TEMPLATE = "accelerator-claim-template"
SHAPE = PodShape([Container("main", ("accelerator",))], {"accelerator": TEMPLATE})


@dataclass
class _State:
    inv: Inventory
    ns: str
    node: str = ""  # where the positive pod ran


def _sees(got: dict[str, str]) -> str:
    return (f"ACCELERATOR_COUNT={got.get('ACCELERATOR_COUNT', '?')}, device nodes [{got.get('DEVICE_NODES', '')}], "
            f"NVIDIA_VISIBLE_DEVICES={got.get('NVIDIA_VISIBLE_DEVICES', '')!r}")


def expect_exactly(t: T, what: str, got: dict[str, str], dev: Device) -> None:
    """The container sees one GPU: the allocated one's device node and UUID, nothing else."""
    problems = []
    if got.get("ACCELERATOR_COUNT") != "1":
        problems.append("want ACCELERATOR_COUNT=1")
    minor = dev.attr("minor")
    if minor is not None and got.get("DEVICE_NODES", "").split() != [f"/dev/nvidia{minor}"]:
        problems.append(f"want only /dev/nvidia{minor} (the allocated {dev.name})")
    uuid = dev.attr("uuid")
    if uuid is not None and got.get("NVIDIA_VISIBLE_DEVICES") != uuid:
        problems.append(f"want NVIDIA_VISIBLE_DEVICES={uuid}")
    if problems:
        t.fail(f"FAIL: {what} sees {_sees(got)}; {'; '.join(problems)}")
    t.log(f"{what} sees {_sees(got)}: exactly its {dev.pool}/{dev.name}")


def expect_none(t: T, what: str, got: dict[str, str]) -> None:
    if got.get("ACCELERATOR_COUNT") != "0" or got.get("DEVICE_NODES") or got.get("NVIDIA_VISIBLE_DEVICES"):
        t.fail(f"VIOLATION: {what} sees {_sees(got)}; want no GPU device node and no NVIDIA_VISIBLE_DEVICES")
    t.log(f"{what} sees {_sees(got)}: no GPU")


def _allocated(ctx: Context, st: _State, t: T, pod: str, claim: str) -> Device:
    p = probes.running(ctx, st.ns, pod)
    got = probes.results(probes.claim_of(ctx, st.ns, p, claim))
    dev = st.inv.device(got[0]["pool"], got[0]["device"]) if len(got) == 1 else None
    if dev is None:
        t.fail(f"pod {pod}'s claim was allocated {got}, want one published GPU")
    return dev


def _positive(ctx: Context, st: _State, t: T) -> None:
    probes.start(ctx, st.ns, "positive-access", SHAPE, ctx.placement(st.inv, [n for n in st.inv.by_node("gpu")]))
    dev = _allocated(ctx, st, t, "positive-access", "accelerator")
    st.node = dev.node
    expect_exactly(t, f"pod positive-access (one GPU claim, on {dev.node})",
                   probes.result(ctx, st.ns, "positive-access", "main"), dev)
    delete(ctx.client, st.ns, "pods", "positive-access")


def _negative(ctx: Context, st: _State, t: T) -> None:
    node = st.node or sorted(st.inv.by_node("gpu"))[0]
    probes.start(ctx, st.ns, "negative-isolation", PodShape([Container("main")]),
                 ctx.placement(st.inv, [], node_name=node))
    probes.running(ctx, st.ns, "negative-isolation")
    expect_none(t, f"pod negative-isolation (no claim, pinned to {node})",
                probes.result(ctx, st.ns, "negative-isolation", "main"))
    delete(ctx.client, st.ns, "pods", "negative-isolation")


def _multi(ctx: Context, st: _State, t: T) -> None:
    shape = PodShape([Container("with-claim", ("accelerator",)), Container("without-claim")],
                     {"accelerator": TEMPLATE})
    probes.start(ctx, st.ns, "multi-container", shape, ctx.placement(st.inv, list(st.inv.by_node("gpu"))))
    dev = _allocated(ctx, st, t, "multi-container", "accelerator")
    expect_exactly(t, "container with-claim", probes.result(ctx, st.ns, "multi-container", "with-claim"), dev)
    expect_none(t, "container without-claim (same pod)",
                probes.result(ctx, st.ns, "multi-container", "without-claim"))
    delete(ctx.client, st.ns, "pods", "multi-container")


def run(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    if not inv.by_node("gpu"):
        t.fail("ENVIRONMENT ERROR: no allocatable topodra GPU: "
               + (describe_no_candidates(inv) if not inv.candidates() else "the candidate nodes publish no GPU"))
    st = _State(inv, ctx.namespace("access"))
    create(ctx.client, st.ns, "resourceclaimtemplates",
           claim_template(TEMPLATE, [Request("single-accelerator", GPU_CLASS)]))
    t.run("PositiveAccessTest", lambda s: _positive(ctx, st, s))
    t.run("NegativeIsolationTest", lambda s: _negative(ctx, st, s))
    t.run("MultiContainerIsolationTest", lambda s: _multi(ctx, st, s))


FAMILY = Family(
    "TestSecureAcceleratorAccess", SECURE_ACCELERATOR_ACCESS, "GPU access isolated per pod and per container",
    (("PositiveAccessTest", "a pod with a one-GPU claim sees exactly that GPU (device node and UUID)"),
     ("NegativeIsolationTest", "a pod without a claim, pinned to the same node, sees no GPU"),
     ("MultiContainerIsolationTest", "in a two-container pod only the container naming the claim sees the GPU")),
    run,
)
