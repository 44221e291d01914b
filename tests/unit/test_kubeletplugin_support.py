"""Shared pieces of the kubelet plugin unit tests: a fake claims API, a node, fake device nodes."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver.kubeletplugin.runner import KubeletPlugin, PluginConfig
from driver.model import Gpu, Nic, NodeTopology
from kubeaccess.errors import ApiError
from tests.fakes.kubeletsim import KubeletSim

NODE = "node-a"
DRIVER = "topodra.dev"


def gpu(i: int, bus: int) -> Gpu:
    return Gpu(
        pci_bus_id=f"0000:{bus:02x}:00.0",
        uuid=f"GPU-0000000{i}-1111-2222-3333-444444444444",
        index=i,
        minor=i,
        product_name="NVIDIA H100 80GB HBM3",
        brand="Nvidia",
        architecture="Hopper",
        cuda_compute_capability="9.0",
        driver_version="550.54.15",
        cuda_driver_version="12.4",
        memory_bytes=80 << 30,
        numa_node=0,
        pcie_root="pci0000:00",
    )


def nic(i: int, bus: int, rdma: str | None) -> Nic:
    return Nic(
        pci_bus_id=f"0000:{bus:02x}:00.0",
        if_name=f"ib{i}",
        mac=f"02:00:00:00:00:0{i}",
        vendor_id="0x15b3",
        device_id="0x101b",
        numa_node=0,
        pcie_root="pci0000:00",
        rdma_device=rdma,
    )


def topology(n_gpus: int = 2) -> NodeTopology:
    return NodeTopology(
        node_name=NODE,
        gpus=tuple(gpu(i, 0x10 + i) for i in range(n_gpus)),
        nics=(nic(0, 0x80, "mlx5_0"), nic(1, 0x81, None)),
    )


@dataclass
class FakeClaims:
    claims: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    gets: int = 0
    status_writes: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)
    fail_get: ApiError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self,
        results: Sequence[tuple[str, str]],
        ns: str = "ns",
        name: str | None = None,
        driver: str = DRIVER,
        pool: str = NODE,
        extra: Sequence[dict[str, Any]] = (),
        allocated: bool = True,
    ) -> tuple[str, str, str]:
        uid = str(uuid.uuid4())
        name = name or f"claim-{uid[:8]}"
        res = [{"request": r, "driver": driver, "pool": pool, "device": d} for r, d in results] + list(extra)
        status = {"allocation": {"devices": {"results": res}}} if allocated else {}
        self.claims[(ns, name)] = {"metadata": {"namespace": ns, "name": name, "uid": uid}, "status": status}
        return ns, uid, name

    def get_claim(self, namespace: str, name: str) -> dict[str, Any]:
        with self.lock:
            self.gets += 1
        if self.fail_get is not None:
            raise self.fail_get
        c = self.claims.get((namespace, name))
        if c is None:
            raise ApiError(404, f'resourceclaims.resource.k8s.io "{name}" not found')
        return c

    def node_event(self, node: str, reason: str, message: str) -> None:
        with self.lock:
            self.events.append((node, reason, message))

    def apply_device_status(
        self, namespace: str, name: str, devices: Sequence[dict[str, Any]], field_manager: str
    ) -> None:
        with self.lock:
            self.status_writes.append((namespace, name, list(devices)))


def make_dev_root(root: Path, gpus: int = 2) -> Path:
    dev = root / "dev"
    (dev / "infiniband").mkdir(parents=True)
    for name in [f"nvidia{i}" for i in range(gpus)] + ["nvidiactl", "nvidia-uvm", "infiniband/uverbs0"]:
        (dev / name).write_text("")
    (dev / "infiniband" / "rdma_cm").write_text("")
    return dev


def make_sysfs(root: Path) -> Path:
    sys = root / "sys"
    v = sys / "class" / "infiniband_verbs" / "uverbs0"
    v.mkdir(parents=True)
    (v / "ibdev").write_text("mlx5_0\n")
    return sys


@dataclass
class Env:
    tmp: Path
    cfg: PluginConfig
    claims: FakeClaims
    topo: list[NodeTopology]
    plugin: KubeletPlugin | None = None

    @property
    def root(self) -> Path:
        return self.cfg.kubelet_root_dir

    @property
    def cdi_dir(self) -> Path:
        return self.cfg.cdi_dir

    def start(self, **overrides: Any) -> KubeletPlugin:
        if overrides:
            from dataclasses import replace

            self.cfg = replace(self.cfg, **overrides)
        self.plugin = KubeletPlugin(self.cfg, lambda: self.topo[0], claims_api=self.claims)
        self.plugin.start()
        return self.plugin

    def stop(self) -> None:
        if self.plugin is not None:
            self.plugin.stop(1.0)
            self.plugin = None

    def sim(self) -> KubeletSim:
        s = KubeletSim(self.root)
        s.register()
        return s


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    # unix socket paths must stay under 107 characters: keep the kubelet root short
    short = Path(tempfile.mkdtemp(prefix="tk-", dir="/tmp"))
    boot = tmp_path / "boot_id"
    boot.write_text("boot-1\n")
    cfg = PluginConfig(
        driver_name=DRIVER,
        node_name=NODE,
        kubelet_root_dir=short / "kubelet",
        cdi_dir=tmp_path / "cdi",
        dev_root=make_dev_root(tmp_path),
        sysfs_root=make_sysfs(tmp_path),
        boot_id_file=boot,
        health_interval=0.2,
        health_resend=0.5,
        crash_at=None,
        cdi_netdevices=False,
    )
    e = Env(tmp_path, cfg, FakeClaims(), [topology()])
    try:
        yield e
    finally:
        e.stop()
        shutil.rmtree(short, ignore_errors=True)
