"""One log format: every line the long-running processes write is a JSON object with an `event` key,
including what libraries log through the standard library (urllib3, aiohttp, grpc).

Each process runs against the real local control plane and is made to log through a library:
the driver at debug level (urllib3's connection records), the extender by a malformed HTTP request
(aiohttp's server error record, with a traceback), the kubelet plugin through a registration and a
prepare call by the kubelet-like client.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import ssl
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, api_matches, apply_device_classes, wait_for
from tests.fakes.kubeletsim import KubeletSim
from tests.integration.test_extender_support import ExtenderProcess
from topodra_cli.localcluster import LocalCluster

pytestmark = pytest.mark.cluster

TOPOLOGY = """
nodes:
- name: NODE
  gpus:
  - {pciBusID: "0000:01:00.0", pcieRoot: pci0000:00, uuid: GPU-aaaaaaaa-0000-4000-8000-00000000000a, minor: 0}
  nics:
  - {pciBusID: "0000:02:00.0", pcieRoot: pci0000:00, ifName: eth7, mac: "02:00:00:00:00:07"}
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line as a JSON object with an `event`; fails naming the first line that is not."""
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            ev = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} is not JSON: {line[:300]!r}\n--- log:\n{text[-3000:]}") from None
        assert isinstance(ev, dict) and isinstance(ev.get("event"), str) and ev["event"], f"line {n}: {line[:300]}"
        assert "level" in ev and "timestamp" in ev, f"line {n}: {line[:300]}"
        events.append(ev)
    assert events, "the process wrote nothing"
    return events


@pytest.fixture()
def node(cluster: LocalCluster) -> Iterator[tuple[str, Path]]:
    name = f"logs-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(name)
    base = Path(tempfile.mkdtemp(prefix="tlog-", dir="/tmp"))  # short: unix socket paths < 108 characters
    (base / "topo.yaml").write_text(TOPOLOGY.replace("NODE", name))
    try:
        yield name, base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        cluster.delete_node(name)


def test_driver_writes_only_json_lines(cluster: LocalCluster, node: tuple[str, Path]) -> None:
    name, base = node
    client = KubeClient.load(str(cluster.kubeconfig))
    apply_device_classes(client)
    from driver.discovery import discover_fleet

    (topo,) = discover_fleet(base / "topo.yaml")
    args = ["--node-name", name, "--backend", "file", "--topology", str(base / "topo.yaml"), "--no-kubelet-plugin",
            "--kubeconfig", str(cluster.kubeconfig), "--rediscover-interval", "0", "--log-level", "debug"]
    with DriverProcess(args, base / "driver.log") as proc:
        assert wait_for(lambda: api_matches(client, topo), 30), proc.log()[-3000:]
        proc.signal(signal.SIGHUP)  # a re-discovery: more of our own events
        time.sleep(0.5)
        assert proc.stop() == 0
    events = json_lines(proc.log())
    names = {e["event"] for e in events}
    assert {"driver_starting", "slices_published", "rediscover_requested", "publisher_stopped"} <= names, names
    stdlib = [e for e in events if str(e.get("logger", "")).startswith("urllib3")]
    assert stdlib, "urllib3's debug records did not come through"
    assert all(e["level"] == "debug" for e in stdlib)


def test_kubelet_plugin_writes_only_json_lines(cluster: LocalCluster, node: tuple[str, Path]) -> None:
    name, base = node
    root = base / "k"
    args = ["--node-name", name, "--backend", "file", "--topology", str(base / "topo.yaml"),
            "--kubeconfig", str(cluster.kubeconfig), "--kubelet-root-dir", str(root), "--cdi-dir", str(base / "cdi"),
            "--dev-root", str(base / "dev"), "--sysfs-root", str(base / "sys"), "--rediscover-interval", "0",
            "--log-level", "debug"]
    (base / "dev").mkdir()
    with DriverProcess(args, base / "plugin.log") as proc:
        sim = KubeletSim(root)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.proc.poll() is None, proc.log()[-3000:]
                if sim.registration_sockets():
                    try:
                        sim.register()
                        break
                    except grpc.RpcError:
                        pass
                assert time.monotonic() < deadline, f"plugin never registered:\n{proc.log()[-3000:]}"
                time.sleep(0.05)
            # A claim the API does not have: the plugin reads it (urllib3), fails it, answers per claim.
            res = sim.prepare([("default", str(uuid.uuid4()), "no-such-claim")])
            assert all(r.error for r in res.values())
        finally:
            sim.close()
        assert proc.stop() == 0
    events = json_lines(proc.log())
    names = {e["event"] for e in events}
    assert "kubelet_plugin_started" in names, names
    assert any(str(e.get("logger", "")).startswith("urllib3") for e in events)


def test_extender_writes_only_json_lines(cluster: LocalCluster, tmp_path: Path) -> None:
    ext = ExtenderProcess(cluster, tmp_path / "ext")
    ext.start()
    try:
        ctx = ssl.create_default_context(cafile=str(ext.ca.cert))
        with socket.create_connection(("127.0.0.1", ext.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            # A header line without a colon: aiohttp answers 400 and logs the parse error with its traceback.
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n")
            assert b" 400 " in s.recv(100)
        assert wait_for(lambda: "aiohttp.server" in ext.log(), 10), ext.log()[-3000:]
    finally:
        ext.stop()
    events = json_lines(ext.log())
    names = {e["event"] for e in events}
    assert {"serving", "listed", "stopping"} <= names, names
    (err,) = [e for e in events if e.get("logger") == "aiohttp.server"]
    assert err["level"] == "error" and "Traceback" in err["exception"], err
