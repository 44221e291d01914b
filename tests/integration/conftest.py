"""Fixtures of the extender tests on the real local cluster (one copy; the modules only use them)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kubeaccess.sync import KubeClient
from tests.fakes.kube import apply_device_classes
from tests.integration.test_extender_support import Fleet
from topodra_cli.localcluster import LocalCluster


@pytest.fixture()
def client(cluster: LocalCluster) -> KubeClient:
    """An API client of the session cluster, with topodra's DeviceClasses in place."""
    c = KubeClient.load(str(cluster.kubeconfig))
    apply_device_classes(c)
    return c


@pytest.fixture()
def fleet(cluster: LocalCluster, client: KubeClient) -> Iterator[Fleet]:
    """This test's fake nodes (see Fleet); deleted with their slices afterwards."""
    f = Fleet(cluster, client)
    try:
        yield f
    finally:
        f.cleanup()
