"""`--driver-root`: libnvidia-ml.so.1 is found under a mounted host root and handed to pynvml.

The search runs on fake directory trees laid out like the hosts the chart meets (Debian, RHEL, the GPU
operator, GKE); the loading runs in a child process (pynvml's library handle is process-wide) against
the fake NVML library built from C, with nothing on LD_LIBRARY_PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from driver.discovery.nvmllib import LIB_NAME, candidates, find_nvml, resolve_in_root
from driver.model import Gpu
from tests.fakes.nvml import CONFIG_ENV, build_fake_nvml, nvml_config


def _lib(root: Path, rel: str, target: str | None = None) -> Path:
    """A library file at `rel` under root, or a symlink there pointing at `target`."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if target is None:
        p.write_bytes(b"\x7fELF fake")
    else:
        p.symlink_to(target)
    return p


@pytest.mark.parametrize(
    "rel",
    [
        "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",  # Debian, Ubuntu
        "usr/lib64/libnvidia-ml.so.1",  # RHEL, Amazon Linux
        "usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",  # Arm hosts (Grace)
        "run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",  # GPU operator, root = host /
        "home/kubernetes/bin/nvidia/lib64/libnvidia-ml.so.1",  # GKE's driver installer
    ],
)
def test_found_in_each_usual_layout(tmp_path: Path, rel: str) -> None:
    lib = _lib(tmp_path, rel)
    s = find_nvml(tmp_path)
    assert s.found == lib
    assert str(lib) in s.searched


def test_operator_root_given_directly(tmp_path: Path) -> None:
    """driverRoot=/run/nvidia/driver (the operator's own root) works like any root."""
    root = tmp_path / "run" / "nvidia" / "driver"
    lib = _lib(root, "usr/lib64/libnvidia-ml.so.1")
    assert find_nvml(root).found == lib
    assert candidates(root)[0] == root / "usr/lib64" / LIB_NAME
    assert not [c for c in candidates(root) if "driver/run/nvidia" in str(c)]  # not searched below itself


def test_search_order_prefers_lib64_over_usr_lib(tmp_path: Path) -> None:
    _lib(tmp_path, "usr/lib/libnvidia-ml.so.1")
    first = _lib(tmp_path, "usr/lib64/libnvidia-ml.so.1")
    assert find_nvml(tmp_path).found == first


def test_absolute_symlink_resolves_inside_the_root(tmp_path: Path) -> None:
    """Host symlinks often point at absolute host paths; they must not escape into the container's /."""
    real = _lib(tmp_path, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15")
    _lib(tmp_path, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15")
    assert find_nvml(tmp_path).found == real


def test_relative_symlink_and_symlinked_dir(tmp_path: Path) -> None:
    real = _lib(tmp_path, "opt/nvidia/lib/libnvidia-ml.so.550")
    (tmp_path / "usr").mkdir()
    (tmp_path / "usr" / "lib64").symlink_to("/opt/nvidia/lib")  # absolute, re-rooted
    _lib(tmp_path, "opt/nvidia/lib/libnvidia-ml.so.1", "libnvidia-ml.so.550")
    assert find_nvml(tmp_path).found == real


def test_dangling_and_looping_links_are_not_found(tmp_path: Path) -> None:
    _lib(tmp_path, "usr/lib64/libnvidia-ml.so.1", "/nowhere/libnvidia-ml.so.550")
    _lib(tmp_path, "lib64/libnvidia-ml.so.1", "libnvidia-ml.so.1")  # points at itself
    s = find_nvml(tmp_path)
    assert s.found is None
    assert resolve_in_root(tmp_path, tmp_path / "lib64" / LIB_NAME) is None


def test_not_found_says_where_it_looked(tmp_path: Path) -> None:
    s = find_nvml(tmp_path)
    assert s.found is None
    text = s.describe()
    assert f"no {LIB_NAME} under driver root {tmp_path}" in text
    assert "usr/lib64, usr/lib/x86_64-linux-gnu, usr/lib/aarch64-linux-gnu" in text
    assert f"below {tmp_path} and {tmp_path / 'run/nvidia/driver'})" in text


_CHILD = """
import dataclasses, json, sys
from pathlib import Path
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
from driver.discovery import BackendConfig, discover_node
d = discover_node(BackendConfig(node_name="n", backends=("nvml",), sysfs_root=Path(sys.argv[1]),
                                driver_root=Path(sys.argv[2])))
print(json.dumps({"gpus": [g.uuid for g in d.topology.gpus], "no_gpus": d.no_gpus}))
"""


def _discover_child(sysfs: Path, root: Path, config: Path) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    env[CONFIG_ENV] = str(config)
    r = subprocess.run([sys.executable, "-c", _CHILD, str(sysfs), str(root)], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    out: dict[str, object] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc needed for the fake NVML")
def test_pynvml_loads_the_library_under_the_driver_root(tmp_path: Path) -> None:
    """The fake library placed as a host would have it (versioned file + absolute soname link), and
    nothing on LD_LIBRARY_PATH: the nvml backend finds the GPUs through it."""
    built = build_fake_nvml(tmp_path / "build") / LIB_NAME
    root = tmp_path / "host"
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    shutil.copy(built, libdir / "libnvidia-ml.so.550.54.15")
    (libdir / LIB_NAME).symlink_to("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15")
    gpu = Gpu(pci_bus_id="0000:0a:00.0", uuid="GPU-11111111-2222-4333-8444-555555555555", index=0, minor=0,
              product_name="NVIDIA H100 80GB HBM3", brand="Tesla", architecture="Hopper",
              cuda_compute_capability="9.0", driver_version="550.54.15", cuda_driver_version="12.4",
              memory_bytes=80 << 30, numa_node=0, pcie_root="pci0000:00")
    config = tmp_path / "nvml.conf"
    config.write_text(nvml_config([gpu]))
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    got = _discover_child(sysfs, root, config)
    assert got == {"gpus": [gpu.uuid], "no_gpus": None}


def test_no_library_is_no_gpus_not_an_error(tmp_path: Path) -> None:
    config = tmp_path / "nvml.conf"
    config.write_text("device_count=0\n")
    sysfs = tmp_path / "sys"
    sysfs.mkdir()
    got = _discover_child(sysfs, tmp_path / "empty-root", config)
    assert got["gpus"] == []
    assert isinstance(got["no_gpus"], str) and f"no {LIB_NAME} under driver root" in got["no_gpus"]
