"""Fleet mode: one process publishes the pools of many simulated nodes, follows file changes on SIGHUP,
and the slices go away with their Node (owner references, garbage collector)."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from driver.discovery import discover_fleet
from driver.publisher import SLICES, field_selector
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, api_matches, node_slices, wait_for

pytestmark = pytest.mark.cluster

FLEET = """
defaults:
  nic: {{speedMbps: 400000}}
nodeSets:
- namePattern: "{prefix}-{{i:03d}}"
  count: {count}
  rackSize: 4
  labels:
    topology.kubernetes.io/zone: zone-a
    topology.kubernetes.io/rack: "rack-{{rack}}"
    nvidia.com/gpu.clique: "5e1c0de0-0000-4000-8000-00000000d3e0.{{rack}}"
  template:
    pcieRoots: {{pci0000:00: {{numaNode: 0}}, pci0000:80: {{numaNode: 1}}}}
    gpus:
    - {{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00, clique: "5e1c0de0-0000-4000-8000-00000000d3e0.{{rack}}"}}
    - {{pciBusID: "0000:8a:00.0", pcieRoot: pci0000:80, clique: "5e1c0de0-0000-4000-8000-00000000d3e0.{{rack}}"}}
    nics:
    - {{pciBusID: "0000:0c:00.0", pcieRoot: pci0000:00, ifName: ib0, rdmaDevice: mlx5_0}}
{extra}
"""


def _extra_node(prefix: str) -> str:
    """One node with more devices than a slice holds (140 GPUs: 128 + 12)."""
    gpus = "".join(f'  - {{pciBusID: "0000:{b:02x}:00.0", pcieRoot: pci0000:00}}\n' for b in range(1, 141))
    return f"nodes:\n- name: {prefix}-big\n  gpus:\n{gpus}"


def _all_match(client: KubeClient, f: Path) -> bool:
    return all(api_matches(client, t) for t in discover_fleet(f))


def test_fleet_publish_change_and_node_deletion(cluster: Any, tmp_path: Path) -> None:
    client = KubeClient.load(str(cluster.kubeconfig))
    prefix = f"fl-{uuid.uuid4().hex[:6]}"
    f = tmp_path / "fleet.yaml"
    f.write_text(FLEET.format(prefix=prefix, count=12, extra=""))
    args = ["--fleet", "--topology", str(f), "--kubeconfig", str(cluster.kubeconfig), "--create-nodes",
            "--rediscover-interval", "0", "--workers", "8"]
    with DriverProcess(args, tmp_path / "fleet.log") as drv:
        try:
            wait_for(lambda: _all_match(client, f), timeout=60, what="fleet published")
            n0 = client.get(f"/api/v1/nodes/{prefix}-005")
            assert n0["metadata"]["labels"]["topology.kubernetes.io/rack"] == "rack-1"
            assert n0["metadata"]["labels"]["nvidia.com/gpu.clique"].endswith(".1")
            gen = node_slices(client, f"{prefix}-000")[0]["spec"]["pool"]["generation"]

            # the file grows (more nodes, one of them split over two slices); SIGHUP re-reads it
            f.write_text(FLEET.format(prefix=prefix, count=14, extra=_extra_node(prefix)))
            drv.signal(signal.SIGHUP)
            wait_for(lambda: _all_match(client, f), timeout=60, what="fleet after change")
            assert len(node_slices(client, f"{prefix}-big")) == 2
            assert node_slices(client, f"{prefix}-000")[0]["spec"]["pool"]["generation"] == gen  # untouched
        except AssertionError as e:
            raise AssertionError(f"{e}\nfleet log:\n{drv.log()[-4000:]}") from None
    # slices stay after the fleet process stops; they go with their Node (garbage collector)
    assert _all_match(client, f)
    for t in discover_fleet(f):
        try:
            client.request("DELETE", f"/api/v1/nodes/{t.node_name}")
        except ApiError as e:
            if not e.not_found:
                raise

    def gone() -> bool:
        items = client.get(SLICES, fieldSelector=field_selector("topodra.dev")).get("items") or []
        return not any(s["spec"]["nodeName"].startswith(prefix) for s in items)

    wait_for(gone, timeout=60, what="slices garbage-collected with their nodes")


def test_fleet_once_reports_missing_nodes(cluster: Any, tmp_path: Path) -> None:
    prefix = f"fm-{uuid.uuid4().hex[:6]}"
    f = tmp_path / "fleet.yaml"
    f.write_text(FLEET.format(prefix=prefix, count=2, extra=""))
    args = ["--fleet", "--once", "--topology", str(f), "--kubeconfig", str(cluster.kubeconfig)]
    with DriverProcess(args, tmp_path / "fleet.log") as drv:
        assert drv.proc.wait(60) == 1
        assert "node not found (use --create-nodes)" in drv.log()
