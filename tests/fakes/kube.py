"""Helpers for driver tests against the real local cluster (raw JSON through kubeaccess.sync)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from driver.model import NodeTopology
from driver.publisher import SLICES, field_selector
from driver.slices import desired_slices, devices_equal
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from topodra_cli.testing.objects import device_classes

ROOT = Path(__file__).resolve().parents[2]
DEVICE_CLASSES = ROOT / "deploy" / "deviceclasses.yaml"

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except ApiError as e:  # the apiserver may be restarting
            last = e
        if last and not isinstance(last, ApiError):
            return last  # type: ignore[no-any-return]
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def apply_device_classes(client: KubeClient) -> None:
    for doc in device_classes():
        try:
            client.request("POST", "/apis/resource.k8s.io/v1/deviceclasses", body=doc)
        except ApiError as e:
            if not e.conflict:
                raise


def node_slices(client: KubeClient, node: str, driver: str = "topodra.dev") -> list[dict[str, Any]]:
    items = client.get(SLICES, fieldSelector=field_selector(driver, node)).get("items") or []
    return sorted(items, key=lambda s: s["metadata"]["name"])


def api_matches(client: KubeClient, topo: NodeTopology, driver: str = "topodra.dev") -> bool:
    """The API holds exactly the pool the topology implies: same slices, devices, one generation."""
    want = desired_slices(topo, driver)
    have = node_slices(client, topo.node_name, driver)
    if [s["metadata"]["name"] for s in have] != [d.name for d in want]:
        return False
    gens = {s["spec"]["pool"]["generation"] for s in have}
    if len(gens) != 1:
        return False
    return all(
        s["spec"]["pool"]["resourceSliceCount"] == len(want) and devices_equal(s["spec"].get("devices"), d.devices)
        for s, d in zip(have, want, strict=True)
    )


class DriverProcess:
    """`topodra driver ...` as a child process; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.log_path = log_path
        self._log = log_path.open("wb")
        exe = Path(sys.executable).with_name("topodra")
        self.proc = subprocess.Popen(
            [str(exe), "driver", *args], stdout=self._log, stderr=subprocess.STDOUT, env=env or dict(os.environ)
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
