"""The steering loop plans a batch of pending pods without promising any node more than it holds."""

from __future__ import annotations

import asyncio
from collections import Counter

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.planner import Planner
from scheduler_plugin.steer import Steering
from tests.unit.test_extender_support import add_node, make_index, pod
from topodra_cli.testing.objects import STD, eight_by_eight, gpu_nic_template

CFG = default_config()


def test_a_batch_of_pods_is_spread_no_further_than_each_node_holds() -> None:
    idx = make_index()
    for n in ("n0", "n1"):
        add_node(idx, n, eight_by_eight())
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "pair", match=f"{STD}/pcieRoot"))
    idx.refresh(0.0)

    async def run() -> Steering:
        s = Steering(idx, CFG, Planner(idx, CFG), None, Metrics())
        for i in range(12):  # all arrive before the loop runs: one step plans them all
            obj = pod(f"p{i}", templates={"acc": "pair"})
            obj["spec"]["schedulerName"] = "default-scheduler"
            apply_event(idx, "pods", "ADDED", obj)
        s.step()
        return s

    s = asyncio.run(run())
    per_node = Counter(node for node, _ in s.steered.values())
    assert sum(per_node.values()) == 12
    assert per_node["n0"] == 8 and per_node["n1"] == 4  # the fullest node that fits first, never more than 8
    keys = [k for r in idx.reservations.values() for k in r.devices]
    assert len(keys) == len(set(keys)) == 24  # a GPU and a NIC each, none promised twice


def test_writes_to_one_pod_land_in_the_order_they_were_made() -> None:
    """A slow first patch must not land after a quicker second one (a stale gang status was seen to win)."""
    from typing import Any

    from scheduler_plugin.model import parse_pod

    landed: list[str] = []

    class SlowFirstWriter:
        async def annotate(self, ns: str, name: str, annotations: dict[str, str | None]) -> None:
            value = str(annotations["topodra.dev/gang-status"])
            if value == "old":
                await asyncio.sleep(0.2)
            landed.append(f"{name}={value}")

    async def run() -> None:
        idx = make_index()
        writer: Any = SlowFirstWriter()
        s = Steering(idx, CFG, Planner(idx, CFG), writer, Metrics())
        a, b = parse_pod(pod("a")), parse_pod(pod("b"))
        s.annotate(a, {"topodra.dev/gang-status": "old"})
        s.annotate(a, {"topodra.dev/gang-status": "new"})
        s.annotate(b, {"topodra.dev/gang-status": "other"})  # another pod is not held back
        await s.drain()

    asyncio.run(run())
    assert landed.index("a=old") < landed.index("a=new")
    assert landed.index("b=other") < landed.index("a=old")
