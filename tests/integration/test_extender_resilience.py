"""Extender restart and apiserver restart during a stream of pods: every pod still schedules correctly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import orjson
import pytest

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.integration.test_extender_support import (
    ExtenderProcess,
    Fleet,
    allocated_devices,
    claim_template,
    extender_scheduler,
    make_pod,
    post,
    wait_bound,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import STD, eight_by_eight

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFIG = "staleAfterSeconds: 0\n"


@pytest.fixture(scope="module")
def extender(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderProcess]:
    with extender_scheduler(cluster, tmp_path_factory.mktemp("extender-res"), config=CONFIG) as ext:
        yield ext


def _retry(fn: object, *args: object, timeout: float = 60, **kwargs: object) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fn(*args, **kwargs)  # type: ignore[operator]
            return
        except ApiError as e:
            if e.conflict:
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_restarts_during_a_stream_of_pods(cluster: LocalCluster, extender: ExtenderProcess, client: KubeClient,
                                          fleet: Fleet, namespace: str) -> None:
    for _ in range(3):
        fleet.add(eight_by_eight())
    claim_template(client, namespace, "pair", match=f"{STD}/pcieRoot")
    names = [f"s-{i}" for i in range(18)]
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            for n in names:
                # The apiserver may be restarting: retry creates until it answers.
                _retry(make_pod, client, namespace, n, {"acc": "pair"}, fleet.selector)
                time.sleep(0.3)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=stream)
    t.start()
    time.sleep(1.5)
    extender.stop()  # SIGTERM, then a fresh process with an empty cache on the same port
    time.sleep(1.0)
    extender.start(wait_ready=False)
    time.sleep(2.0)
    cluster.restart_apiserver()
    t.join(120)
    assert not errors, errors
    placed = wait_bound(client, namespace, names, timeout=150)
    assert set(placed.values()) <= set(fleet.nodes)
    allocs = allocated_devices(client, namespace)
    assert len(allocs) == len(names)
    used = [d for devs in allocs.values() for d in devs]
    assert len(used) == len(set(used)), "a device was allocated twice"
    # Every pod got a GPU and a NIC on one PCIe root: (pool, gpu-i) pairs with nic-j where i//2 == j//2.
    for devs in allocs.values():
        by = {d.split("-")[0]: (p, int(d.split("-")[1])) for p, d in devs}
        assert by["gpu"][0] == by["nic"][0] and by["gpu"][1] // 2 == by["nic"][1] // 2, devs
    log = extender.log()
    assert log.count('"event":"serving"') >= 2
    assert '"event":"watch_error"' in log


def test_apiserver_outage_cache_stale_extender_answers(cluster: LocalCluster, extender: ExtenderProcess,
                                                       fleet: Fleet) -> None:
    node = fleet.add(eight_by_eight())
    extender.wait_ready()
    pod = {"metadata": {"name": "x", "namespace": "default", "uid": "u-x"}, "spec": {"containers": []}}
    body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": [node]})
    restarting = threading.Thread(target=cluster.restart_apiserver)
    restarting.start()
    seen_stale = False
    answers: list[float] = []
    deadline = time.monotonic() + 60
    while restarting.is_alive() and time.monotonic() < deadline:
        _code, text = extender.get("/metrics")
        seen_stale = seen_stale or "topodra_extender_cache_stale 1.0" in text
        t0 = time.monotonic()
        status, reply = post(extender, "/v1/filter", body)
        answers.append(time.monotonic() - t0)
        assert status == 200 and orjson.loads(reply)["NodeNames"] == [node]
        time.sleep(0.05)
    restarting.join()
    assert seen_stale, "the cache never said it was stale while the apiserver was down"
    assert max(answers) < 1.0
    assert '"event":"answering_from_stale_cache"' in extender.log()
    deadline = time.monotonic() + 30
    while "topodra_extender_cache_stale 0.0" not in extender.get("/metrics")[1]:
        assert time.monotonic() < deadline, "cache still stale 30 s after the apiserver came back"
        time.sleep(0.2)
