"""After deletion by others, topology changes and apiserver restarts, the API matches the hardware again."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from driver.app import DriverApp, DriverConfig
from driver.discovery.filebackend import parse_topology
from driver.publisher import SLICES
from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, api_matches, node_slices, wait_for

pytestmark = pytest.mark.cluster

V1 = """
nodes:
- name: NODE
  gpus: [{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00}, {pciBusID: "0000:8a:00.0", pcieRoot: pci0000:80}]
  nics: [{pciBusID: "0000:0c:00.0", pcieRoot: pci0000:00, ifName: ib0}]
"""
# a GPU more, the NIC unhealthy and faster
V2 = """
nodes:
- name: NODE
  gpus: [{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00}, {pciBusID: "0000:8a:00.0", pcieRoot: pci0000:80},
         {pciBusID: "0000:8b:00.0", pcieRoot: pci0000:80}]
  nics: [{pciBusID: "0000:0c:00.0", pcieRoot: pci0000:00, ifName: ib0, healthy: false, speedMbps: 200000}]
"""
# a different node size: more devices than one slice holds, so slices are added and later removed
V3 = "nodes:\n- name: NODE\n  gpus:\n" + "".join(
    f'  - {{pciBusID: "0000:{b:02x}:00.0", pcieRoot: pci0000:00}}\n' for b in range(1, 131)
)


def _setup(cluster: Any, tmp_path: Path) -> tuple[KubeClient, str, Path]:
    node = f"drv-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    f = tmp_path / "topology.yaml"
    f.write_text(V1.replace("NODE", node))
    return KubeClient.load(str(cluster.kubeconfig)), node, f


def _topo(text: str, node: str) -> Any:
    return parse_topology(text.replace("NODE", node))[0]


def _write(f: Path, text: str, node: str) -> None:
    tmp = f.with_suffix(".tmp")
    tmp.write_text(text.replace("NODE", node))
    tmp.replace(f)  # atomic, like a config management tool would


def _generation(client: KubeClient, node: str) -> int:
    return int(node_slices(client, node)[0]["spec"]["pool"]["generation"])


def _delete_and_wait_recreated(client: KubeClient, node: str, index: int, timeout: float = 15) -> float:
    """Delete our slice number `index` as someone else would; wait until the driver re-created it (new UID)."""
    old = node_slices(client, node)[index]["metadata"]
    t0 = time.monotonic()
    client.request("DELETE", f"{SLICES}/{old['name']}")

    def back() -> bool:
        return any(
            s["metadata"]["name"] == old["name"] and s["metadata"]["uid"] != old["uid"]
            for s in node_slices(client, node)
        )

    wait_for(back, timeout=timeout, interval=0.05, what=f"slice {old['name']} re-created")
    return time.monotonic() - t0


def test_subprocess_recovers_from_delete_change_and_apiserver_restart(cluster: Any, tmp_path: Path) -> None:
    client, node, f = _setup(cluster, tmp_path)
    args = [
        "--node-name",
        node,
        "--kubeconfig",
        str(cluster.kubeconfig),
        "--topology",
        str(f),
        "--no-kubelet-plugin",
        "--rediscover-interval",
        "0",
    ]
    with DriverProcess(args, tmp_path / "driver.log") as drv:
        try:
            wait_for(lambda: api_matches(client, _topo(V1, node)), timeout=30, what="first publish")
            gen1 = _generation(client, node)

            # 1. someone deletes our slice: re-created (the watch sees it; no 30 s wait)
            _delete_and_wait_recreated(client, node, 0)
            wait_for(lambda: api_matches(client, _topo(V1, node)), timeout=15, what="re-created slice")
            assert _generation(client, node) == gen1  # same devices: no new generation

            # 2. the topology file changes; SIGHUP re-reads it; the generation goes up
            _write(f, V2, node)
            drv.signal(signal.SIGHUP)
            wait_for(lambda: api_matches(client, _topo(V2, node)), timeout=15, what="changed topology")
            assert _generation(client, node) > gen1
            nic = next(d for d in node_slices(client, node)[0]["spec"]["devices"] if d["name"] == "nic-0")
            assert nic["taints"][0]["key"] == "topodra.dev/unhealthy"

            # 3. the apiserver restarts while the topology changes again (130 GPUs: two slices)
            restart = threading.Thread(target=cluster.restart_apiserver)
            restart.start()
            time.sleep(0.3)
            _write(f, V3, node)
            drv.signal(signal.SIGHUP)
            restart.join(120)
            wait_for(lambda: api_matches(client, _topo(V3, node)), timeout=60, what="after apiserver restart")
            assert len(node_slices(client, node)) == 2

            # 4. the watch is back too: a deleted slice is re-created after the restart
            _delete_and_wait_recreated(client, node, 1)
            wait_for(lambda: api_matches(client, _topo(V3, node)), timeout=20, what="re-created after restart")

            # 5. shrinking drops the obsolete slice
            _write(f, V1, node)
            drv.signal(signal.SIGHUP)
            wait_for(lambda: api_matches(client, _topo(V1, node)), timeout=15, what="shrunk pool")
        except AssertionError as e:
            raise AssertionError(f"{e}\ndriver log:\n{drv.log()[-5000:]}") from None
        rc = drv.stop()
    assert rc == 0
    # slices stay when the driver stops
    assert api_matches(client, _topo(V1, node))
    assert '"event":"slice_sync_failed"' in drv.log()  # it did see the outage, and recovered


def test_in_process_periodic_rediscovery(cluster: Any, tmp_path: Path) -> None:
    client, node, f = _setup(cluster, tmp_path)
    cfg = DriverConfig(
        node_name=node,
        kubeconfig=str(cluster.kubeconfig),
        backends=("file",),
        topology_file=f,
        rediscover_interval=0.5,
        kubelet_plugin=False,
    )
    app = DriverApp(cfg)
    t = threading.Thread(target=app.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: api_matches(client, _topo(V1, node)), timeout=30, what="first publish")
        _write(f, V2, node)  # no signal: the period picks it up
        wait_for(lambda: api_matches(client, _topo(V2, node)), timeout=15, what="periodic rediscovery")
        f.write_text("nodes: [{name: " + node + ", gpus: [{pciBusID: bad}]}]")  # broken file: keep what we had
        time.sleep(1.5)
        assert api_matches(client, _topo(V2, node))
        assert app.metrics.discovery_errors._value.get() >= 1
    finally:
        app.stop()
        t.join(10)
    assert not t.is_alive()
