"""Which nodes the conformance checks use, the tolerations they give pods, and what a probe container prints."""

from __future__ import annotations

import os
import subprocess

from topodra_cli.conformance.context import describe_no_candidates
from topodra_cli.conformance.inventory import Device, Inventory, Node, Pool
from topodra_cli.conformance.workloads import END, PROBE, Placement, parse_probe


def inv(selector: tuple[tuple[str, str], ...] = ()) -> Inventory:
    nodes = {
        "ok": Node("ok", True, True, {"kubernetes.io/hostname": "ok", "pool": "a"},
                   ({"key": "gpu", "value": "true", "effect": "NoSchedule"},
                    {"key": "dedicated", "effect": "NoExecute"},
                    {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},
                    {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"})),
        "notready": Node("notready", False, True, {"pool": "a"}, ()),
        "cordoned": Node("cordoned", True, False, {"pool": "a"}, ()),
        "partial": Node("partial", True, True, {"pool": "a"}, ()),
        "other": Node("other", True, True, {"pool": "b"}, ()),
    }
    pools = [Pool("ok", "ok", 3, 2, 2), Pool("notready", "notready", 1, 1, 1), Pool("cordoned", "cordoned", 1, 1, 1),
             Pool("partial", "partial", 2, 2, 1), Pool("other", "other", 1, 1, 1)]
    devices = [Device("ok", "ok", "gpu-0", "gpu", {"minor": 0}, False),
               Device("ok", "ok", "gpu-1", "gpu", {}, True),
               Device("ok", "ok", "nic-0", "nic", {}, False),
               Device("other", "other", "gpu-0", "gpu", {}, False)]
    return Inventory("v1.37.2", set(), set(), nodes, pools, devices, selector,
                     ["pool partial: 1 of 2 slices at generation 2"])


def test_candidates_are_ready_schedulable_selected_nodes_with_complete_pools() -> None:
    assert inv().candidates() == ["ok", "other"]
    assert inv((("pool", "a"),)).candidates() == ["ok"]
    assert inv((("pool", "c"),)).candidates() == []


def test_tainted_devices_and_other_nodes_are_not_usable() -> None:
    i = inv((("pool", "a"),))
    assert [d.name for d in i.usable("gpu")] == ["gpu-0"]
    assert i.by_node("nic") == {"ok": [i.devices[2]]}
    assert i.devices[0].attr("minor") == 0 and i.devices[0].attr("topodra.dev/minor") is None


def test_pods_tolerate_the_scheduling_taints_of_the_chosen_nodes_only() -> None:
    assert inv().tolerations(["ok"]) == [
        {"key": "gpu", "effect": "NoSchedule", "operator": "Equal", "value": "true"},
        {"key": "dedicated", "effect": "NoExecute", "operator": "Exists"},
    ]
    assert inv().tolerations(["other"]) == []


def test_no_candidates_says_why() -> None:
    msg = describe_no_candidates(inv((("pool", "c"),)))
    assert "matching pool=c" in msg and "pool partial: 1 of 2 slices at generation 2" in msg


def test_placement_by_hostname_or_pinned() -> None:
    spec: dict[str, object] = {}
    Placement(["b", "a"], [{"key": "k", "operator": "Exists"}]).apply(spec)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]  # type: ignore[index]
    assert terms["nodeSelectorTerms"] == [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["a", "b"]}]}]
    pinned: dict[str, object] = {}
    Placement([], (), node_name="n1").apply(pinned)
    assert pinned == {"nodeName": "n1"}


def test_probe_script_prints_what_the_checks_parse() -> None:
    script = PROBE.replace("sleep 3600 & wait", "true")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NVIDIA_VISIBLE_DEVICES": "GPU-1",
           "TOPODRA_NET_INTERFACES": "ib0"}
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=10, check=True).stdout
    got = parse_probe(out)
    assert END in out
    assert got["NVIDIA_VISIBLE_DEVICES"] == "GPU-1" and got["TOPODRA_NET_INTERFACES"] == "ib0"
    assert got["ACCELERATOR_COUNT"].isdigit()
    assert int(got["ACCELERATOR_COUNT"]) == len(got["DEVICE_NODES"].split())
    assert "lo" in got["NET_INTERFACES"].split()
    assert "$(" not in PROBE  # the kubelet would expand $(NAME) in a command


def test_pod_spec_carries_image_network_scheduler_and_claims() -> None:
    from topodra_cli.conformance.model import Options
    from topodra_cli.conformance.workloads import Container, PodShape, pod_spec

    opts = Options(image="topodra.local/busybox:1", host_network=True, scheduler_name="topodra-scheduler")
    shape = PodShape([Container("a", ("gpu",)), Container("b")], {"gpu": "one-gpu"})
    spec = pod_spec(shape, Placement(["n1"]), opts)
    assert spec["hostNetwork"] is True and spec["schedulerName"] == "topodra-scheduler"
    assert spec["resourceClaims"] == [{"name": "gpu", "resourceClaimTemplateName": "one-gpu"}]
    a, b = spec["containers"]
    assert a["image"] == "topodra.local/busybox:1" and a["imagePullPolicy"] == "IfNotPresent"
    assert a["resources"]["claims"] == [{"name": "gpu"}] and "claims" not in b["resources"]
    plain = pod_spec(shape, Placement(["n1"]), Options())
    assert "hostNetwork" not in plain and "schedulerName" not in plain
