"""Driver operations on a real node (kubelet + containerd + the driver as processes), issue 12 §5.

- the driver restarts while a pod holds a prepared claim: the pod keeps running (same container), and its
  claim is unprepared when it ends;
- a claim whose pod is deleted while the driver is down is unprepared (CDI spec and checkpoint entry gone)
  once the driver is back;
- a reboot (a new boot id, read from `--boot-id-file`) clears what the previous boot left: CDI specs,
  orphans included; claims still in use are unprepared when their pods end, new claims prepare as usual.

The node's setup (device nodes, sysfs, topology) is the one of test_real_node.py.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

from driver.model import DRIVER_NAME
from tests.e2e.test_real_node import device_classes, wait_pod, wait_until
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.hostcheck import default_node_name, machine_cannot
from topodra_cli.localcluster.podspec import real_node_pod
from topodra_cli.localcluster.realnode import RealNode
from topodra_cli.testing.fakedevices import make_fake_devices
from topodra_cli.testing.objects import gpu_nic_template

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]

_CANNOT = machine_cannot()
if _CANNOT:
    pytestmark.append(pytest.mark.skip(reason="this machine cannot run a real node: " + "; ".join(_CANNOT)))

WAIT_GO = "echo started; while [ ! -e /sync/go ]; do sleep 0.1; done"


@dataclass
class Node:
    node: RealNode
    base: Path
    boot_id: Path

    def sync_dir(self, pod: str) -> Path:
        d = self.base / "sync" / pod
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def checkpoint(self) -> Path:
        return self.node.driver_state_dir / "checkpoint.json"

    def checkpointed(self) -> dict[str, Any]:
        """The driver's checkpoint: {"bootID": ..., "claims": {uid: entry}}."""
        return dict(json.loads(self.checkpoint.read_text())) if self.checkpoint.is_file() else {}

    def spec(self, uid: str) -> Path:
        return self.node.cdi_dir / f"{DRIVER_NAME}-{uid}.json"

    def driver_log_since(self, offset: int) -> str:
        return self.node.log_path("driver").read_bytes()[offset:].decode(errors="replace")

    def driver_log_size(self) -> int:
        p = self.node.log_path("driver")
        return p.stat().st_size if p.exists() else 0


@pytest.fixture(scope="module")
def rn(cluster: LocalCluster) -> Iterator[Node]:
    base = Path(tempfile.mkdtemp(prefix="tdrec-", dir="/tmp"))
    name = default_node_name()
    fake = make_fake_devices(base, name)
    boot_id = base / "boot_id"
    boot_id.write_text(f"{uuid.uuid4()}\n")
    node = RealNode(cluster, name, topology=fake.topology,
                    driver_args=(*fake.driver_args(), "--boot-id-file", str(boot_id)))
    node.start()
    try:
        node.wait_driver_registered(timeout=60)
        device_classes(cluster)
        yield Node(node, base, boot_id)
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


def _apis(cluster: LocalCluster) -> tuple[Any, Any]:
    from kubernetes import client

    api = cluster.api_client()
    return client.CoreV1Api(api), client.ResourceV1Api(api)


def _start_claim_pod(cluster: LocalCluster, rn: Node, ns: str, pod_name: str) -> tuple[str, str]:
    """A running pod holding one GPU claim (waiting for its go file); (claim name, claim UID)."""
    core, res = _apis(cluster)
    with contextlib.suppress(ApiException):  # made by an earlier test of this namespace
        res.create_namespaced_resource_claim_template(ns, gpu_nic_template(None, "one-gpu", gpus=1, nics=0))
    sync = rn.sync_dir(f"{ns}-{pod_name}")
    pod = real_node_pod(pod_name, WAIT_GO, node_name=rn.node.name, claims=[("acc", "one-gpu")])
    pod["spec"]["volumes"] = [{"name": "sync", "hostPath": {"path": str(sync), "type": "Directory"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "sync", "mountPath": "/sync"}]
    core.create_namespaced_pod(ns, pod)
    running = wait_pod(cluster, rn.node, ns, pod_name, ("Running",), log_has="started")
    claim_name = running.status.resource_claim_statuses[0].resource_claim_name
    uid = res.read_namespaced_resource_claim(claim_name, ns).metadata.uid
    assert rn.spec(uid).is_file()
    assert uid in rn.checkpointed()["claims"]
    return claim_name, str(uid)


def _finish(rn: Node, ns: str, pod_name: str) -> None:
    (rn.sync_dir(f"{ns}-{pod_name}") / "go").touch()


def _gone(read: Any) -> bool:
    from kubernetes import client

    try:
        read()
        return False
    except client.ApiException as e:
        return e.status == 404


def _wait_unprepared(rn: Node, uid: str, timeout: float = 100) -> None:
    # NodeUnprepareResources: at the pod's end, or by the kubelet's periodic reconcile of gone pods.
    wait_until(lambda: not rn.spec(uid).exists() and uid not in rn.checkpointed().get("claims", {}), timeout,
               f"claim {uid} to be unprepared (CDI spec and checkpoint entry removed)", rn.node)


# ---- tests --------------------------------------------------------------------------------------
def test_driver_restart_keeps_the_pod_running_and_unprepares_at_its_end(
        cluster: LocalCluster, rn: Node, namespace: str) -> None:
    core, _ = _apis(cluster)
    _, uid = _start_claim_pod(cluster, rn, namespace, "held")
    before = core.read_namespaced_pod("held", namespace).status.container_statuses[0]
    rn.node.restart_driver()
    rn.node.wait_driver_registered(timeout=60)
    time.sleep(2)  # time for anything the restart would disturb to show
    now = core.read_namespaced_pod("held", namespace).status
    assert now.phase == "Running"
    st = now.container_statuses[0]
    assert st.container_id == before.container_id and st.restart_count == 0
    assert rn.spec(uid).is_file() and uid in rn.checkpointed()["claims"]
    _finish(rn, namespace, "held")
    wait_pod(cluster, rn.node, namespace, "held", ("Succeeded",))
    _wait_unprepared(rn, uid)


def test_claim_deleted_while_the_driver_is_down_is_cleaned_up_when_it_returns(
        cluster: LocalCluster, rn: Node, namespace: str) -> None:
    core, res = _apis(cluster)
    claim_name, uid = _start_claim_pod(cluster, rn, namespace, "orphaned")
    rn.node.procs.stop("driver")
    core.delete_namespaced_pod("orphaned", namespace, grace_period_seconds=0)
    wait_until(lambda: _gone(lambda: core.read_namespaced_pod("orphaned", namespace)), 60, "the pod to go", rn.node)
    wait_until(lambda: _gone(lambda: res.read_namespaced_resource_claim(claim_name, namespace)), 60,
               "its claim to be deleted", rn.node)
    # Nothing could unprepare it: the driver was down.
    assert rn.spec(uid).is_file() and uid in rn.checkpointed()["claims"]
    offset = rn.driver_log_size()
    rn.node.restart_driver()
    rn.node.wait_driver_registered(timeout=60)
    _wait_unprepared(rn, uid)
    # by the kubelet's NodeUnprepareResources, retried once the plugin is back
    log = rn.driver_log_since(offset)
    assert any('"claim_unprepared"' in ln and uid in ln for ln in log.splitlines()), log[-3000:]
    assert '"prepare_failed"' not in log


def test_reboot_clears_what_the_previous_boot_left(cluster: LocalCluster, rn: Node, namespace: str) -> None:
    _, uid = _start_claim_pod(cluster, rn, namespace, "survivor")
    rn.node.procs.stop("driver")
    # What a previous boot can leave: a spec of a claim nobody knows any more.
    orphan = str(uuid.uuid4())
    rn.spec(orphan).write_text(rn.spec(uid).read_text().replace(uid, orphan))
    new_boot = str(uuid.uuid4())
    rn.boot_id.write_text(new_boot + "\n")
    offset = rn.driver_log_size()
    rn.node.restart_driver()
    rn.node.wait_driver_registered(timeout=60)
    log = rn.driver_log_since(offset)
    assert '"reboot_detected"' in log, log[-3000:]
    assert not rn.spec(orphan).exists() and not rn.spec(uid).exists()
    ck = rn.checkpointed()
    assert ck["bootID"] == new_boot and orphan not in ck["claims"]
    # A new claim prepares on the new boot; the old one goes when its pod ends.
    _, uid2 = _start_claim_pod(cluster, rn, namespace, "newcomer")
    assert rn.checkpointed()["claims"][uid2]["bootID"] == new_boot
    for pod in ("survivor", "newcomer"):
        _finish(rn, namespace, pod)
        wait_pod(cluster, rn.node, namespace, pod, ("Succeeded",))
    _wait_unprepared(rn, uid)
    _wait_unprepared(rn, uid2)
