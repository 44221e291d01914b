"""The publisher against an in-memory API: conflicts re-plan, outages back off, generations never go back."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from driver.model import Gpu, NodeTopology
from driver.publisher import SLICES, PublishLoop, SlicePublisher
from kubeaccess.backoff import Backoff
from kubeaccess.errors import ApiError

GPU = Gpu("0000:0a:00.0", "GPU-1", 0, 0, "NVIDIA H100 80GB HBM3", "Nvidia", "Hopper", "9.0", "550.54.15", "12.4",
          80 * 2**30, 0, "pci0000:00")


def _topo(n: int) -> NodeTopology:
    return NodeTopology("n1", tuple(replace(GPU, pci_bus_id=f"0000:{i + 1:02x}:00.0", index=i) for i in range(n)))


class FakeApi:
    """Just enough of the apiserver for one node's slices: resourceVersions, preconditions, 409s."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.rv = itertools.count(1)
        self.calls: list[str] = []
        self.fail_next: list[ApiError] = []  # raised by the next calls, in order
        self.before_write: Any = None  # hook run before each write (to simulate a racing writer)
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append(f"GET {path}")
            self._maybe_fail()
            if path.startswith("/api/v1/nodes/"):
                return {"metadata": {"name": path.rsplit("/", 1)[1], "uid": "node-uid"}}
            items = sorted(self.slices.values(), key=lambda s: s["metadata"]["name"])
            return {"items": [copy.deepcopy(s) for s in items]}

    def request(self, method: str, path: str, *, body: Any = None, query: Mapping[str, Any] | None = None,
                **_: Any) -> dict[str, Any]:
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            hook(self)
        with self.lock:
            self.calls.append(f"{method} {path}")
            self._maybe_fail()
            name = path.rsplit("/", 1)[1] if path != SLICES else body["metadata"]["name"]
            cur = self.slices.get(name)
            if method == "DELETE":
                if cur is None:
                    raise ApiError(404, "not found")
                pre = (body or {}).get("preconditions") or {}
                if pre.get("resourceVersion") and pre["resourceVersion"] != cur["metadata"]["resourceVersion"]:
                    raise ApiError(409, "precondition failed")
                del self.slices[name]
                return {}
            if method == "POST":
                if cur is not None:
                    raise ApiError(409, "already exists")
                obj = copy.deepcopy(body)
                obj["metadata"]["uid"] = f"uid-{next(self.rv)}"
            else:  # PUT
                if cur is None:
                    raise ApiError(404, "not found")
                if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                    raise ApiError(409, "the object has been modified")
                obj = copy.deepcopy(body)
                obj["metadata"]["uid"] = cur["metadata"]["uid"]
            obj["metadata"]["resourceVersion"] = str(next(self.rv))
            self.slices[name] = obj
            return copy.deepcopy(obj)

    def watch(self, path: str, query: Mapping[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
        time.sleep(0.05)
        return iter(())


def _gens(api: FakeApi) -> set[int]:
    return {s["spec"]["pool"]["generation"] for s in api.slices.values()}


def test_sync_creates_then_is_idempotent() -> None:
    api = FakeApi()
    pub = SlicePublisher(api, "topodra.dev", "n1")  # type: ignore[arg-type]
    plan = pub.sync(_topo(130))
    assert len(plan.creates) == 2 and len(api.slices) == 2 and _gens(api) == {0}
    writes = len([c for c in api.calls if not c.startswith("GET")])
    assert pub.sync(_topo(130)).empty
    assert len([c for c in api.calls if not c.startswith("GET")]) == writes  # no write when nothing changed


def test_conflict_replans_with_fresh_state() -> None:
    api = FakeApi()
    pub = SlicePublisher(api, "topodra.dev", "n1")  # type: ignore[arg-type]
    pub.sync(_topo(2))

    def racing_writer(a: FakeApi) -> None:  # someone edits the slice between our LIST and our PUT
        s = next(iter(a.slices.values()))
        s["metadata"]["labels"] = {"x": "y"}
        s["metadata"]["resourceVersion"] = str(next(a.rv))

    api.before_write = racing_writer
    plan = pub.sync(_topo(3))
    assert plan.generation == 1 and _gens(api) == {1}
    assert sum(1 for c in api.calls if c.startswith("PUT")) == 2  # first PUT got 409, the re-plan's succeeded
    assert len(next(iter(api.slices.values()))["spec"]["devices"]) == 3
    assert pub.metrics.syncs.labels("changed")._value.get() == 2


def test_generation_never_goes_backwards_after_wipe() -> None:
    api = FakeApi()
    pub = SlicePublisher(api, "topodra.dev", "n1")  # type: ignore[arg-type]
    pub.sync(_topo(1))
    pub.sync(_topo(2))
    pub.sync(_topo(3))
    assert _gens(api) == {2}
    api.slices.clear()  # the kubelet wipes node slices at its start
    pub.sync(_topo(3))
    assert _gens(api) == {2}
    api.slices.clear()
    pub.sync(_topo(4))
    assert _gens(api) == {2} and pub.generation == 2  # fresh pool at the floor; no older generation exists


def test_loop_backs_off_through_an_outage_and_recovers() -> None:
    api = FakeApi()
    api.fail_next = [ApiError(0, "connection refused"), ApiError(503, "unavailable"), ApiError(429, "slow down")]
    pub = SlicePublisher(api, "topodra.dev", "n1")  # type: ignore[arg-type]
    loop = PublishLoop(pub, lambda: _topo(1), watch=False)
    t = threading.Thread(target=loop.run, daemon=True)
    t0 = time.monotonic()
    t.start()
    try:
        assert loop.synced.wait(15)
        waited = time.monotonic() - t0
    finally:
        loop.stop()
        t.join(5)
    assert not t.is_alive()
    assert len(api.slices) == 1
    assert pub.metrics.syncs.labels("error")._value.get() == 3
    assert waited >= 0.4 + 0.8 + 1.6  # 0.5 s, 1 s, 2 s with +-20 % jitter


def test_backoff_grows_to_a_cap_and_resets() -> None:
    b = Backoff(base=0.5, cap=4.0)
    delays = [b.next() for _ in range(8)]
    for d, nominal in zip(delays, [0.5, 1, 2, 4, 4, 4, 4, 4], strict=True):
        assert 0.8 * nominal <= d <= 1.2 * nominal
    b.reset()
    assert b.next() <= 0.6


def test_rediscover_and_stop_are_prompt() -> None:
    api = FakeApi()
    pub = SlicePublisher(api, "topodra.dev", "n1")  # type: ignore[arg-type]
    sizes = iter([1, 2, 2, 2])
    loop = PublishLoop(pub, lambda: _topo(next(sizes)), watch=False, rediscover_interval=0, resync_interval=300)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()
    try:
        assert loop.synced.wait(5)
        loop.synced.clear()
        loop.rediscover()  # what SIGHUP does
        assert loop.synced.wait(5)
        deadline = time.monotonic() + 5
        while len(next(iter(api.slices.values()))["spec"]["devices"]) != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(next(iter(api.slices.values()))["spec"]["devices"]) == 2
    finally:
        t0 = time.monotonic()
        loop.stop()
        t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 1.0


def test_lean_entry_point_loads_no_heavy_clients() -> None:
    """`python -m driver` must stay lean: publishing never needs the kubernetes client, gRPC or cryptography
    (docs/benchmarks-driver.md: 34.6 MiB RSS this way, 44 MiB through `topodra`)."""
    import subprocess
    import sys

    code = (
        "import sys, driver.__main__, driver.app, driver.publisher, driver.fleet, driver.discovery.filebackend;"
        "print(sorted(m for m in ('kubernetes', 'grpc', 'cryptography') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
    usage = subprocess.run([sys.executable, "-m", "driver", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "--topology" in usage.stdout and "--fleet" in usage.stdout
