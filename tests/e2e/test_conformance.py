"""`topodra conformance` against the local cluster with a real node, both ways.

With the driver on the node and the extender wired into kube-scheduler as binder, every check passes (the
in-pod interface check skips: the pods here need hostNetwork, there is no pod network). With a broken setup
the right checks fail and say what they saw: no driver -> DRA exposure; extender down -> the gang that fits;
kube-scheduler alone (binds pod by pod) -> the gang that cannot fit, naming the bound pod.
The command runs as users run it, a `topodra conformance` process, and must leave no namespace behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kubeaccess.sync import KubeClient
from tests.fakes.kube import apply_device_classes
from tests.integration.test_extender_support import extender_scheduler
from topodra_cli.conformance.context import RUN_LABEL
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot
from topodra_cli.localcluster.images import BUSYBOX_IMAGE
from topodra_cli.localcluster.kubelet import REAL_NODE_LABEL
from topodra_cli.localcluster.realnode import RealNode
from topodra_cli.testing.fakedevices import make_fake_devices

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

_CANNOT = machine_cannot()
if _CANNOT:
    pytestmark.append(pytest.mark.skip(reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))

TOPODRA = Path(sys.executable).with_name("topodra")


@dataclass
class Run:
    rc: int
    stdout: str
    stderr: str
    out: Path

    def cases(self) -> dict[str, ET.Element]:
        root = ET.parse(self.out / "junit.xml").getroot()
        return {c.get("name", ""): c for c in root.iter("testcase")}

    def failure(self, name: str) -> str:
        f = self.cases()[name].find("failure")
        assert f is not None, f"{name} did not fail:\n{self.stdout[-3000:]}"
        return f.get("message", "")


def base_args(cluster: LocalCluster, out: Path) -> list[str]:
    return [str(TOPODRA), "conformance", "--kubeconfig", str(cluster.kubeconfig), "--out", str(out),
            "--image", BUSYBOX_IMAGE, "--host-network", "--node-selector", f"{REAL_NODE_LABEL}=true",
            "--gang-window", "8"]


def conformance(cluster: LocalCluster, out: Path, *args: str, timeout: float = 200) -> Run:
    p = subprocess.run([*base_args(cluster, out), *args], capture_output=True, text=True, timeout=timeout,
                       check=False)
    print(p.stdout[-4000:])
    return Run(p.returncode, p.stdout, p.stderr, out)


def leftover_namespaces(cluster: LocalCluster) -> list[str]:
    items = KubeClient.load(str(cluster.kubeconfig)).get("/api/v1/namespaces", labelSelector=RUN_LABEL)["items"]
    return [n["metadata"]["name"] for n in items]


@pytest.fixture(scope="module")
def node(cluster: LocalCluster) -> Iterator[RealNode]:
    base = Path(tempfile.mkdtemp(prefix="tconf-", dir="/tmp"))
    name = default_node_name()
    fake = make_fake_devices(base, name)
    n = RealNode(cluster, name, topology=fake.topology, driver_args=fake.driver_args())
    try:
        n.start()
        n.wait_driver_registered(timeout=60)
        apply_device_classes(KubeClient.load(str(cluster.kubeconfig)))
        yield n
    finally:
        n.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_every_check_passes_with_driver_and_extender(cluster: LocalCluster, node: RealNode, tmp_path: Path) -> None:
    with extender_scheduler(cluster, tmp_path / "ext", bind=True, percentage=0):
        run = conformance(cluster, tmp_path / "out")
    assert run.rc == 0, run.stdout[-4000:] + run.stderr
    cases = run.cases()
    skipped = {n: c.find("skipped") for n, c in cases.items() if c.find("skipped") is not None}
    assert not [n for n, c in cases.items() if c.find("failure") is not None]
    # Only the in-pod interface check may skip here, and it says why.
    assert list(skipped) == ["TestHighPerformanceNetworking/InterfaceInPod"]
    assert "host-network" in (skipped["TestHighPerformanceNetworking/InterfaceInPod"].get("message") or "")
    for want in ("TestSecureAcceleratorAccess/PositiveAccessTest", "TestSecureAcceleratorAccess/NegativeIsolationTest",
                 "TestSecureAcceleratorAccess/MultiContainerIsolationTest", "TestGangScheduling/PositiveGangScheduling",
                 "TestGangScheduling/NegativeGangScheduling", "TestGangScheduling/ResourcesReleased",
                 "TestDRASupport/ClaimAllocatedPodRunning", "TestHighPerformanceNetworking/ClaimDeviceStatus",
                 "TestTopodraTopology/AlignedGPUNICPair", "TestTopodraTopology/GangPackedInDomain"):
        assert want in cases
    # What the checks saw, in the log: exactly the allocated GPU, none without a claim, the NIC's status.
    log = (run.out / "e2e.log").read_text()
    assert "ACCELERATOR_COUNT=1, device nodes [/dev/nvidia" in log
    assert "ACCELERATOR_COUNT=0, device nodes []" in log
    assert "interfaceName ib0, hardwareAddress 02:00:00:00:00:01" in log
    assert "gpu-1 and nic-0 on PCIe root pci0000:80" in log
    assert log.rstrip().splitlines()[-2:][0] == "PASS"
    events = [json.loads(line) for line in (run.out / "results.json").read_text().splitlines()]
    assert events[-1]["Action"] == "pass" and "Test" not in events[-1]
    product = yaml.safe_load((run.out / "PRODUCT.yaml").read_text())
    statuses = {e["id"]: e["status"] for entries in product["spec"].values() for e in entries}
    assert statuses == {"secure_accelerator_access": "Implemented", "gang_scheduling": "Implemented",
                        "high_performance_networking": "Implemented"}
    assert not leftover_namespaces(cluster)


def test_without_the_driver_dra_exposure_fails(cluster: LocalCluster, node: RealNode, tmp_path: Path) -> None:
    node.procs.stop("driver")  # its slices stay (the driver never deletes them on shutdown), the kubelet has no plugin
    try:
        run = conformance(cluster, tmp_path / "out", "--run", "TestDRASupport", "--timeout", "10")
    finally:
        node.restart_driver()
        node.wait_driver_registered(timeout=60)
    assert run.rc == 1, run.stdout[-3000:]
    msg = run.failure("TestDRASupport/ClaimAllocatedPodRunning")
    assert "dra-claim" in msg and "DRA driver topodra.dev is not registered" in msg, msg
    assert not leftover_namespaces(cluster)


def test_with_the_extender_down_the_gang_that_fits_fails(cluster: LocalCluster, node: RealNode,
                                                          tmp_path: Path) -> None:
    with extender_scheduler(cluster, tmp_path / "ext", bind=True, percentage=0) as ext:
        ext.stop()
        run = conformance(cluster, tmp_path / "out", "--run", "TestGangScheduling/(Positive|Resources)",
                          "--timeout", "10")
    assert run.rc == 1, run.stdout[-3000:]
    msg = run.failure("TestGangScheduling/PositiveGangScheduling")
    assert "Job pos-job (a gang of 2) to complete: not within 10s" in msg and "0 bound" in msg, msg
    assert "/v1/filter" in msg and "connection refused" in msg, msg
    assert run.cases()["TestGangScheduling/ResourcesReleased"].find("failure") is None
    assert not leftover_namespaces(cluster)


def test_a_scheduler_that_binds_pod_by_pod_fails_the_gang_that_cannot_fit(
    cluster: LocalCluster, node: RealNode, tmp_path: Path
) -> None:
    """kube-scheduler with no extender at all: one pod of the gang gets the node's two GPUs."""
    run = conformance(cluster, tmp_path / "out", "--run", "TestGangScheduling/NegativeGangScheduling")
    assert run.rc == 1, run.stdout[-3000:]
    msg = run.failure("TestGangScheduling/NegativeGangScheduling")
    assert msg.startswith("VIOLATION: gang neg-job cannot fit (2 pods, at most 1 fit) but 1 of its 2 pods"), msg
    assert f" on {node.name} " in msg and "neg-job-" in msg, msg
    assert not leftover_namespaces(cluster)


def test_sigterm_stops_the_run_and_deletes_what_it_made(cluster: LocalCluster, node: RealNode,
                                                        tmp_path: Path) -> None:
    proc = subprocess.Popen([*base_args(cluster, tmp_path / "out"), "--run", "TestGangScheduling/Positive"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kube = KubeClient.load(str(cluster.kubeconfig))
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # SIGTERM once the gang's pods exist
            nss = leftover_namespaces(cluster)
            if nss and kube.get(f"/api/v1/namespaces/{nss[0]}/pods")["items"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run made no namespace with pods within 60 s")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out[-3000:])
    assert proc.returncode == 1
    assert "interrupted" in out
    assert not leftover_namespaces(cluster)
    assert "interrupted" in (tmp_path / "out" / "e2e.log").read_text()
