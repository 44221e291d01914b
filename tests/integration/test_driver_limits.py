"""The slice builder's idea of the API limits agrees with the real apiserver's validation, case by case:
what `validate_slice` accepts the apiserver accepts, and what it rejects the apiserver rejects."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from driver.model import Gpu, NodeTopology
from driver.publisher import SLICES
from driver.slices import desired_slices, slice_object, validate_slice
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient

pytestmark = pytest.mark.cluster

GPU = Gpu("0000:01:00.0", "GPU-1", 0, 0, "NVIDIA H100 80GB HBM3", "Nvidia", "Hopper", "9.0", "550.54.15", "12.4",
          80 * 2**30, 0, "pci0000:00")


def _slice(n: int, tainted: bool = False) -> dict[str, Any]:
    gpus = tuple(
        replace(GPU, pci_bus_id=f"0000:{i // 32 + 1:02x}:{i % 32:02x}.0", index=i, healthy=not (tainted and i == 0))
        for i in range(n)
    )
    ds = desired_slices(NodeTopology("limits-node", gpus), max_devices=1000)[0]  # one slice, no split
    obj = slice_object(ds, "topodra.dev", "limits-node", 0, 1)
    obj["metadata"]["name"] = f"limits-{uuid.uuid4().hex[:8]}"
    return obj


def _mutate(f: Callable[[dict[str, Any]], None], n: int = 1) -> dict[str, Any]:
    obj = _slice(n)
    f(obj["spec"]["devices"][0])
    return obj


def _fill_to(total: int) -> Callable[[dict[str, Any]], None]:
    """Add attributes until attributes + capacities == total."""

    def f(d: dict[str, Any]) -> None:
        for i in range(total - len(d["attributes"]) - len(d.get("capacity") or {})):
            d["attributes"][f"extra{i}"] = {"int": i}

    return f


CASES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("128 devices", lambda: _slice(128)),
    ("129 devices", lambda: _slice(129)),
    ("64 devices, one tainted", lambda: _slice(64, tainted=True)),
    ("65 devices, one tainted", lambda: _slice(65, tainted=True)),
    ("32 attributes + capacities", lambda: _mutate(_fill_to(32))),
    ("33 attributes + capacities", lambda: _mutate(_fill_to(33))),
    ("64-byte string", lambda: _mutate(lambda d: d["attributes"].update(uuid={"string": "x" * 64}))),
    ("65-byte string", lambda: _mutate(lambda d: d["attributes"].update(uuid={"string": "x" * 65}))),
    ("32-char attribute id", lambda: _mutate(lambda d: d["attributes"].update({"a" * 32: {"int": 1}}))),
    ("33-char attribute id", lambda: _mutate(lambda d: d["attributes"].update({"a" * 33: {"int": 1}}))),
    ("non-semver version", lambda: _mutate(lambda d: d["attributes"].update(driverVersion={"version": "12.4"}))),
    ("upper-case device name", lambda: _mutate(lambda d: d.update(name="GPU-0"))),
]


@pytest.mark.parametrize(("case", "make"), CASES, ids=[c[0] for c in CASES])
def test_validate_slice_agrees_with_the_apiserver(cluster: Any, case: str, make: Callable[[], dict[str, Any]]) -> None:
    client = KubeClient.load(str(cluster.kubeconfig))
    obj = make()
    ours = validate_slice(copy.deepcopy(obj))
    try:
        client.request("POST", SLICES, body=obj, query={"dryRun": "All"})
        server: str | None = None
    except ApiError as e:
        assert e.status == 422, e
        server = e.reason
    assert (not ours) == (server is None), f"{case}: ours={ours} apiserver={server}"
