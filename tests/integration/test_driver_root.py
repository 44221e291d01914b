"""`topodra driver --driver-root` as a process against the real apiserver, with a kubelet-like client.

The fake libnvidia-ml.so.1 (built from C) sits where a host keeps it, under a directory standing for the
mounted host root; nothing is on LD_LIBRARY_PATH. With it, the GPUs are published and /readyz turns 200
once the kubelet registered the plugin. Without it, the driver keeps running, logs `no_gpus` once,
publishes the NICs and stays not ready with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from driver.discovery.filebackend import parse_topology
from driver.discovery.nvmllib import LIB_NAME
from kubeaccess.sync import KubeClient
from tests.fakes.kube import DriverProcess, node_slices, wait_for
from tests.fakes.kubeletsim import KubeletSim
from tests.fakes.nvml import CONFIG_ENV, build_fake_nvml, write_nvml_config
from tests.fakes.sysfs import build_sysfs
from topodra_cli.localcluster.processes import free_port

pytestmark = pytest.mark.cluster

TOPO = """
nodes:
- name: {name}
  pcieRoots: {{pci0000:00: {{numaNode: 0}}}}
  gpus:
  - {{pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00}}
  - {{pciBusID: "0000:0b:00.0", pcieRoot: pci0000:00}}
  nics:
  - {{pciBusID: "0000:0c:00.0", pcieRoot: pci0000:00, ifName: ib0, rdmaDevice: mlx5_0}}
"""


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _devices(client: KubeClient, node: str) -> list[str]:
    return sorted(d["name"] for s in node_slices(client, node) for d in s["spec"].get("devices") or ())


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def _start(cluster: Any, tmp_path: Path, driver_root: Path,
           cleanup: list[Path]) -> tuple[str, DriverProcess, int, KubeletSim, str]:
    node = f"root-{uuid.uuid4().hex[:8]}"
    cluster.add_fake_node(node)
    topo = parse_topology(TOPO.format(name=node))[0]
    sysfs = build_sysfs(tmp_path / "sys", topo)
    config = write_nvml_config(tmp_path / "nvml.conf", topo)
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env[CONFIG_ENV] = str(config)
    kroot = Path(tempfile.mkdtemp(prefix="tdr-", dir="/tmp"))  # socket paths must stay under 108 bytes
    port = free_port()
    args = ["--node-name", node, "--kubeconfig", str(cluster.kubeconfig), "--backend", "nvml,sysfs",
            "--sysfs-root", str(sysfs), "--driver-root", str(driver_root), "--kubelet-root-dir", str(kroot),
            "--cdi-dir", str(tmp_path / "cdi"), "--dev-root", str(tmp_path / "dev"), "--rediscover-interval", "0",
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    (tmp_path / "dev").mkdir()
    drv = DriverProcess(args, tmp_path / "driver.log", env)
    cleanup.append(kroot)
    return node, drv, port, KubeletSim(kroot), topo.gpus[0].uuid


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed for the fake NVML")
def test_gpus_from_the_library_under_the_driver_root_and_ready_once_registered(
        cluster: Any, tmp_path: Path, cleanup: list[Path]) -> None:
    host = tmp_path / "host"
    libdir = host / "usr/lib64"
    libdir.mkdir(parents=True)
    shutil.copy(build_fake_nvml(tmp_path / "build") / LIB_NAME, libdir / "libnvidia-ml.so.550.54.15")
    (libdir / LIB_NAME).symlink_to("libnvidia-ml.so.550.54.15")
    client = KubeClient.load(str(cluster.kubeconfig))
    node, drv, port, sim, gpu_uuid = _start(cluster, tmp_path, host, cleanup)
    with drv, sim:
        try:
            wait_for(lambda: _devices(client, node) == ["gpu-0", "gpu-1", "nic-0"], 30, what="slices")
            code, why = _get(port, "/readyz")
            assert (code, why) == (503, "not registered with the kubelet yet\n")
            assert _get(port, "/healthz") == (200, "ok\n")
            sim.register()
            wait_for(lambda: _get(port, "/readyz") == (200, "ok\n"), 10, what="ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\ndriver log:\n{drv.log()[-4000:]}") from None
        attrs = {d["name"]: d["attributes"] for s in node_slices(client, node) for d in s["spec"]["devices"]}
        assert attrs["gpu-0"]["uuid"] == {"string": gpu_uuid}
        code, text = _get(port, "/metrics")
        assert code == 200 and 'topodra_devices_published{type="gpu"} 2.0' in text
    assert '"no_gpus"' not in drv.log()


def test_no_library_no_exit_one_error_nics_published_not_ready(
        cluster: Any, tmp_path: Path, cleanup: list[Path]) -> None:
    empty = tmp_path / "host"
    empty.mkdir()
    client = KubeClient.load(str(cluster.kubeconfig))
    node, drv, port, sim, _ = _start(cluster, tmp_path, empty, cleanup)
    with drv, sim:
        try:
            wait_for(lambda: _devices(client, node) == ["nic-0"], 30, what="the NIC's slice")
            sim.register()
            for _ in range(3):  # re-discoveries do not repeat the error
                drv.signal(signal.SIGHUP)
                time.sleep(0.5)
            code, why = _get(port, "/readyz")
            assert code == 503 and why.startswith(f"no GPUs: no {LIB_NAME} under driver root {empty} (looked in"), why
            assert _get(port, "/healthz")[0] == 200
        except AssertionError as e:
            raise AssertionError(f"{e}\ndriver log:\n{drv.log()[-4000:]}") from None
        assert drv.proc.poll() is None, "the driver exited"
    lines = [ln for ln in drv.log().splitlines() if '"no_gpus"' in ln]
    assert len(lines) == 1, lines
    assert "usr/lib/x86_64-linux-gnu" in lines[0] and f"{empty}/run/nvidia/driver" in lines[0]
