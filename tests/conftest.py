"""Shared fixtures: one real local control plane per test session, one namespace per test."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.processes import pid_alive

TEST_ROOT = Path(os.environ.get("TOPODRA_TEST_ROOT", "/tmp/topodra"))
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "heartbeat")


def _sweep_stale(prefix: str) -> None:
    """Tear down clusters left by killed test runs (their owner pid is gone)."""
    for d in TEST_ROOT.glob(f"{prefix}*"):
        owner = d.name.removeprefix(prefix)
        if owner.isdigit() and not pid_alive(int(owner)):
            LocalCluster(d).down()


@contextlib.contextmanager
def _session_cluster(
    prefix: str, *, generic_workload: bool = False, scheduler_config: Path | None = None
) -> Iterator[LocalCluster]:
    """A control plane owned by this pytest process, in `<test root>/<prefix><pid>`."""
    _sweep_stale(prefix)
    c = LocalCluster(TEST_ROOT / f"{prefix}{os.getpid()}", generic_workload=generic_workload,
                     scheduler_config=scheduler_config)
    # SIGTERM (CI timeout, kill) must still tear the processes down.
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        c.up(owner_pid=os.getpid())
        yield c
    finally:
        c.down()
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _namespace(cluster: LocalCluster, prefix: str) -> Iterator[str]:
    """A fresh namespace, ready for pods; deleted afterwards with everything in it."""
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        # Right after an apiserver restart the controller-manager can lag (its RBAC reads are refused
        # until the new apiserver's caches fill); a pod created before the account exists is refused.
        cluster.wait_default_service_account(name)
        yield name
    finally:
        # Pods on fake nodes never confirm termination: force them out so the namespace can go.
        with contextlib.suppress(client.ApiException):
            core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    with _session_cluster("test-") as c:
        yield c


@pytest.fixture()
def namespace(cluster: LocalCluster) -> Iterator[str]:
    with _namespace(cluster, "t-") as name:
        yield name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        c = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
        if isinstance(c, LocalCluster):
            for comp in COMPONENTS:
                report.sections.append((f"{comp} log (tail)", c.log_tail(comp, 40)))


# ---- a second control plane with upstream workload-aware (gang) scheduling on ----------------------
# Started only when a test asks for it (pytest builds fixtures lazily), once per session, beside `cluster`.
# Its scheduler starts from a config file (`--scheduler-config`) with a second profile, so that path runs too.
GW_PREFIX = "gw-"
GW_SECOND_PROFILE = "topodra-second-profile"


@pytest.fixture(scope="session")
def gw_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    sched = tmp_path_factory.mktemp("gw") / "scheduler.yaml"
    sched.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n"
        f"- schedulerName: default-scheduler\n- schedulerName: {GW_SECOND_PROFILE}\n"
    )
    with _session_cluster(GW_PREFIX, generic_workload=True, scheduler_config=sched) as c:
        yield c


@pytest.fixture()
def gw_namespace(gw_cluster: LocalCluster) -> Iterator[str]:
    with _namespace(gw_cluster, "gw-") as name:
        yield name
