"""The nvml backend through the real pynvml and a fake libnvidia-ml.so.1 built here with gcc."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from driver.discovery.filebackend import parse_topology
from driver.model import NodeTopology
from tests.fakes.nvml import build_fake_nvml, discover_in_child, write_nvml_config
from tests.fakes.sysfs import build_sysfs

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed for the fake NVML")

TOPO_TEXT = """
nodes:
- name: gpu-node
  pcieRoots: {pci0000:00: {numaNode: 0}, pci0000:80: {numaNode: 1}}
  gpus:
  - {pciBusID: "0000:0a:00.0", pcieRoot: pci0000:00, nvlinkPeers: ["0000:0b:00.0", "0000:8a:00.0"],
     clique: "5e1c0de0-0000-4000-8000-00000000d3e0.7"}
  - {pciBusID: "0000:0b:00.0", pcieRoot: pci0000:00, nvlinkPeers: ["0000:0a:00.0"],
     clique: "5e1c0de0-0000-4000-8000-00000000d3e0.7", productName: NVIDIA A100-SXM4-40GB,
     architecture: Ampere, cudaComputeCapability: "8.0", memory: 40Gi, brand: Tesla}
  - {pciBusID: "0000:8a:00.0", pcieRoot: pci0000:80, nvlinkPeers: ["0000:0a:00.0", "0000:ff:00.0"]}
"""


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_nvml(tmp_path_factory.mktemp("nvml"))


@pytest.fixture()
def topo() -> NodeTopology:
    return parse_topology(TOPO_TEXT)[0]


def test_every_field_through_pynvml(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    sysroot = build_sysfs(tmp_path / "sys", topo)
    cfg = write_nvml_config(tmp_path / "nvml.conf", topo)
    gpus, _ = discover_in_child(lib_dir, cfg, sysroot)
    assert len(gpus) == 3
    for got, want in zip(gpus, topo.gpus, strict=True):
        assert got["pci_bus_id"] == want.pci_bus_id  # normalised from NVML's 00000000:0A:00.0
        for f in ("uuid", "index", "minor", "product_name", "brand", "architecture", "cuda_compute_capability",
                  "memory_bytes", "numa_node", "pcie_root", "clique_id"):
            assert got[f] == getattr(want, f), f
        assert got["driver_version"] == "550.54.15" and got["cuda_driver_version"] == "12.4"
    # peers: only GPUs of this node (0000:ff:00.0 is, say, an NVSwitch), sorted
    assert gpus[0]["nvlink_peers"] == ["0000:0b:00.0", "0000:8a:00.0"]
    assert gpus[2]["nvlink_peers"] == ["0000:0a:00.0"]
    assert gpus[1]["architecture"] == "Ampere" and gpus[1]["brand"] == "Tesla"


def test_numa_falls_back_to_sysfs(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    sysroot = build_sysfs(tmp_path / "sys", topo)
    cfg = tmp_path / "nvml.conf"
    cfg.write_text(__import__("tests.fakes.nvml", fromlist=["x"]).nvml_config(topo.gpus, numa_from_nvml=False))
    gpus, _ = discover_in_child(lib_dir, cfg, sysroot)
    assert [g["numa_node"] for g in gpus] == [0, 0, 1]


def test_no_sysfs_entry_means_unknown_root(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    cfg = write_nvml_config(tmp_path / "nvml.conf", topo)
    gpus, _ = discover_in_child(lib_dir, cfg, tmp_path / "empty-sys")
    assert [g["pcie_root"] for g in gpus] == ["", "", ""]


def test_one_failing_device_is_skipped(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    sysroot = build_sysfs(tmp_path / "sys", topo)
    cfg = write_nvml_config(tmp_path / "nvml.conf", topo, fail={1: {"nvmlDeviceGetUUID": 15}})
    gpus, err = discover_in_child(lib_dir, cfg, sysroot)
    assert [g["pci_bus_id"] for g in gpus] == ["0000:0a:00.0", "0000:8a:00.0"]
    assert "nvml_device_skipped" in err and "GPU is lost" in err
    # the lost GPU is no NVLink peer any more either
    assert gpus[0]["nvlink_peers"] == ["0000:8a:00.0"]


def test_fabric_not_ready_means_no_clique(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    sysroot = build_sysfs(tmp_path / "sys", topo)
    cfg = write_nvml_config(tmp_path / "nvml.conf", topo)
    cfg.write_text(cfg.read_text() + "device.0.fabric_state=2\ndevice.1.fail.nvmlDeviceGetGpuFabricInfoV=3\n")
    gpus, _ = discover_in_child(lib_dir, cfg, sysroot)
    assert [g["clique_id"] for g in gpus] == [None, None, None]


def test_init_failure_is_a_clear_error(lib_dir: Path, tmp_path: Path, topo: NodeTopology) -> None:
    cfg = write_nvml_config(tmp_path / "nvml.conf", replace(topo, gpus=()), init_error=9)
    with pytest.raises(RuntimeError, match="NVML init failed: Driver Not Loaded"):
        discover_in_child(lib_dir, cfg, tmp_path)


def test_library_missing_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="NVML init failed"):
        discover_in_child(tmp_path / "no-lib", tmp_path / "none.conf", tmp_path)
