"""TestHighPerformanceNetworking (KAR-0010 through DRA): a NIC allocated to a pod, the claim's device status
naming its interface and hardware address, and the interface inside the pod where the driver moves it there."""

from __future__ import annotations

from dataclasses import dataclass, field

from kubeaccess.sync import Json
from topodra_cli.conformance import probes
from topodra_cli.conformance.context import Context
from topodra_cli.conformance.family import Family
from topodra_cli.conformance.harness import T
from topodra_cli.conformance.inventory import NIC_CLASS, Device, Inventory
from topodra_cli.conformance.kube import create, get, wait_for
from topodra_cli.conformance.model import CheckFailed
from topodra_cli.conformance.requirements import HIGH_PERFORMANCE_NETWORKING
from topodra_cli.conformance.workloads import Container, PodShape, Request, claim_template

POD = "nic-pod"


@dataclass
class _State:
    inv: Inventory
    ns: str = ""
    claim: Json = field(default_factory=dict)
    nic: Device | None = None
    error: str = ""  # why the NIC pod is not there, for the subtests after the first


def _nic_pod(ctx: Context, st: _State) -> Device:
    """The NIC pod, made by the first subtest that needs it."""
    if st.nic is not None:
        return st.nic
    if st.error:
        raise CheckFailed(f"no NIC pod: {st.error}")
    try:
        st.ns = ctx.namespace("net")
        create(ctx.client, st.ns, "resourceclaimtemplates", claim_template("one-nic", [Request("nic", NIC_CLASS)]))
        probes.start(ctx, st.ns, POD, PodShape([Container("main", ("nic",))], {"nic": "one-nic"}),
                     ctx.placement(st.inv, sorted(st.inv.by_node("nic"))))
        p = probes.running(ctx, st.ns, POD)
        st.claim = probes.claim_of(ctx, st.ns, p, "nic")
        got = probes.results(st.claim)
        dev = st.inv.device(got[0]["pool"], got[0]["device"]) if len(got) == 1 else None
        if dev is None or dev.kind != "nic":
            raise CheckFailed(f"claim {st.claim['metadata']['name']} was allocated {got}, want one published NIC")
        st.nic = dev
        return dev
    except CheckFailed as e:
        st.error = str(e)
        raise


def _allocated(ctx: Context, st: _State, t: T) -> None:
    nic = _nic_pod(ctx, st)
    t.log(f"pod {POD} runs with claim {st.claim['metadata']['name']}: {nic.pool}/{nic.name} "
          f"(ifName {nic.attr('ifName')}, pcieRoot {nic.attr('resource.kubernetes.io/pcieRoot')}, "
          f"NUMA {nic.attr('resource.kubernetes.io/numaNode')}, RDMA {nic.attr('rdmaDevice') or 'none'})")


def _status(ctx: Context, st: _State, t: T) -> None:
    nic = _nic_pod(ctx, st)
    name = st.claim["metadata"]["name"]

    def entry() -> Json | None:
        claim = get(ctx.client, st.ns, "resourceclaims", name) or {}
        for d in (claim.get("status") or {}).get("devices") or []:
            if d.get("pool") == nic.pool and d.get("device") == nic.name and (d.get("networkData") or {}):
                return dict(d)
        return None

    def seen() -> str:
        claim = get(ctx.client, st.ns, "resourceclaims", name) or {}
        return f"status.devices = {(claim.get('status') or {}).get('devices')}"

    d = wait_for(entry, min(ctx.opts.timeout, 30), f"claim {name}'s status.devices entry for {nic.name} with "
                 "networkData", seen)
    net = d["networkData"]
    problems = []
    if not net.get("interfaceName"):
        problems.append("no interfaceName")
    elif nic.attr("ifName") and net["interfaceName"] != nic.attr("ifName"):
        problems.append(f"interfaceName {net['interfaceName']}, the slice says ifName {nic.attr('ifName')}")
    if not net.get("hardwareAddress"):
        problems.append("no hardwareAddress")
    elif nic.attr("mac") and net["hardwareAddress"].lower() != str(nic.attr("mac")).lower():
        problems.append(f"hardwareAddress {net['hardwareAddress']}, the slice says mac {nic.attr('mac')}")
    if problems:
        t.fail(f"claim {name} device status for {nic.name}: {'; '.join(problems)} ({d})")
    t.log(f"claim {name} status.devices[{nic.name}]: interfaceName {net['interfaceName']}, hardwareAddress "
          f"{net['hardwareAddress']}" + (f", ips {net['ips']}" if net.get("ips") else ""))


def _in_pod(ctx: Context, st: _State, t: T) -> None:
    nic = _nic_pod(ctx, st)
    if ctx.opts.host_network:
        t.skip("probe pods run with --host-network: they share the node's network namespace, so what they "
               "see there says nothing about the claim")
    got = probes.result(ctx, st.ns, POD, "main")
    ifname = str(nic.attr("ifName") or "")
    seen = got.get("NET_INTERFACES", "").split()
    if ifname and ifname in seen:
        t.log(f"pod {POD} sees interface {ifname} (interfaces: {' '.join(seen)}; "
              f"TOPODRA_NET_INTERFACES={got.get('TOPODRA_NET_INTERFACES', '')})")
        return
    msg = (f"interface {ifname or '?'} is not in pod {POD}'s network namespace (it sees {' '.join(seen) or 'none'}; "
           f"TOPODRA_NET_INTERFACES={got.get('TOPODRA_NET_INTERFACES', '')!r})")
    if ctx.opts.expect_nic_in_pod:
        t.fail(msg)
    t.skip(msg + "; topodra moves a NIC into the pod only when its driver runs with "
           "TOPODRA_CDI_NETDEVICES=true (CDI netDevices, runc 1.3+); pass --expect-nic-in-pod to require it")


def run(ctx: Context, t: T) -> None:
    inv = ctx.inventory()
    if not inv.by_node("nic"):
        t.skip("no candidate node publishes a topodra NIC")
    st = _State(inv)
    t.run("NICAllocated", lambda s: _allocated(ctx, st, s))
    t.run("ClaimDeviceStatus", lambda s: _status(ctx, st, s))
    t.run("InterfaceInPod", lambda s: _in_pod(ctx, st, s))


FAMILY = Family(
    "TestHighPerformanceNetworking", HIGH_PERFORMANCE_NETWORKING, "NICs allocated through DRA",
    (("NICAllocated", "a pod with a one-NIC claim runs; the NIC's type, PCIe root, NUMA node, RDMA are published"),
     ("ClaimDeviceStatus", "the claim's status.devices names the NIC's interface and hardware address"),
     ("InterfaceInPod", "the interface is in the pod's network namespace (skipped where the mode cannot)")),
    run,
)
