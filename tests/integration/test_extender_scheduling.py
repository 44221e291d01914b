"""The real kube-scheduler calls the extender over HTTPS: alignment, refusal reasons, job packing."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubeaccess.sync import KubeClient
from tests.integration.test_extender_support import (
    ExtenderProcess,
    Fleet,
    claim_template,
    events,
    extender_scheduler,
    make_pod,
    pod_node,
    wait_bound,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import STD, eight_by_eight, gpu, nic

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def extender(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(cluster, tmp_path_factory.mktemp("extender")) as ext:
        yield ext


ALIGNED = [gpu(0, "pci0000:80", 1), nic(0, "pci0000:80", 1)]
UNALIGNED = [gpu(0, "pci0000:00", 0), nic(0, "pci0000:40", 1)]


def test_pods_land_where_gpu_and_nic_align(extender: ExtenderProcess, client: KubeClient, fleet: Fleet,
                                           namespace: str) -> None:
    """Every node has a GPU and a NIC; only one can align them; no claim constraint asks for it."""
    aligned = fleet.add(ALIGNED)
    for _ in range(3):
        fleet.add(UNALIGNED)
    claim_template(client, namespace, "pair")
    make_pod(client, namespace, "p", {"acc": "pair"}, fleet.selector)
    assert wait_bound(client, namespace, ["p"])["p"] == aligned


def test_required_alignment_filters_with_our_reason(extender: ExtenderProcess, client: KubeClient, fleet: Fleet,
                                                    namespace: str) -> None:
    """GPU and NIC in separate claims (DRA cannot align them); the pod requires PCIe alignment."""
    for _ in range(2):
        fleet.add(UNALIGNED)
    claim_template(client, namespace, "g", gpus=1, nics=0)
    claim_template(client, namespace, "n", gpus=0, nics=1)
    make_pod(client, namespace, "p", {"gpu": "g", "nic": "n"}, fleet.selector,
             annotations={"topodra.dev/alignment": "pcieRoot"})
    reason = "topodra: no PCIe root with a free GPU and a free NIC"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msgs = [m for m in events(client, namespace, "p") if m.startswith("FailedScheduling")]
        if any(reason in m for m in msgs):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"no FailedScheduling event with our reason; events: {events(client, namespace, 'p')}")
    assert pod_node(client, namespace, "p") == ""
    # An aligned node appears: the pod goes there.
    aligned = fleet.add(ALIGNED)
    assert wait_bound(client, namespace, ["p"], timeout=60)["p"] == aligned


def test_job_packs_into_one_rack_and_spreads_only_when_full(extender: ExtenderProcess, client: KubeClient,
                                                            fleet: Fleet, namespace: str) -> None:
    """2 racks x 2 nodes x 8 GPU+8 NIC; 6 pods of 4+4: 4 fill one rack, the other 2 must go to the other."""
    racks = {}
    for rack in ("ra", "rb"):
        for _ in range(2):
            racks[fleet.add(eight_by_eight(), **{"topodra.dev/rack": rack, "topodra.dev/block": "b0"})] = rack
    claim_template(client, namespace, "quad", gpus=4, nics=4, match=f"{STD}/numaNode")
    names = [f"w-{i}" for i in range(6)]
    for n in names[:4]:
        make_pod(client, namespace, n, {"acc": "quad"}, fleet.selector, labels={"topodra.dev/job": "w"})
    placed = wait_bound(client, namespace, names[:4])
    first = Counter(racks[n] for n in placed.values())
    assert len(first) == 1, f"first 4 pods of the job were spread: {placed}"
    for n in names[4:]:
        make_pod(client, namespace, n, {"acc": "quad"}, fleet.selector, labels={"topodra.dev/job": "w"})
    placed.update(wait_bound(client, namespace, names[4:]))
    assert sorted(Counter(racks[n] for n in placed.values()).values()) == [2, 4], placed


def test_extender_reports_ready_and_metrics(extender: ExtenderProcess) -> None:
    code, text = extender.get("/metrics")
    assert code == 200
    assert 'topodra_extender_requests_total{code="200",verb="filter"}' in text
    assert "topodra_extender_cache_synced 1.0" in text
    assert extender.get("/readyz")[0] == 200


def test_printed_scheduler_config_is_valid_for_kube_scheduler(cluster: LocalCluster, tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from topodra_cli.localcluster import pki

    ca = pki.make_ca(tmp_path, "ca")
    exe = Path(sys.executable).with_name("topodra")
    printed = subprocess.run([str(exe), "extender", "print-scheduler-config", "--url", "https://127.0.0.1:8443/v1",
                              "--ca-file", str(ca.cert), "--kubeconfig", str(cluster.dir / "scheduler.kubeconfig")],
                             capture_output=True, text=True, check=True).stdout
    path = tmp_path / "sched.yaml"
    path.write_text(printed)
    # --write-config-to loads, defaults and validates the configuration, writes it and exits.
    r = subprocess.run([str(cluster.bin_dir / "kube-scheduler"), "--config", str(path),
                        "--write-config-to", str(tmp_path / "out.yaml")], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    ext = yaml.safe_load((tmp_path / "out.yaml").read_text())["extenders"][0]
    assert ext["nodeCacheCapable"] is True and ext["enableHTTPS"] is True and ext["weight"] == 5
    assert ext["tlsConfig"]["caFile"] == str(ca.cert) and ext["urlPrefix"] == "https://127.0.0.1:8443/v1"
