"""Build the fake NVML library and write its config from a NodeTopology.

pynvml loads `libnvidia-ml.so.1` with dlopen, which reads LD_LIBRARY_PATH once at process start, so
code under test must run in a child process started with `nvml_env(...)`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path

from driver.discovery.nvml import ARCHITECTURES, BRANDS
from driver.model import Gpu, NodeTopology

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIB_NAME = "libnvidia-ml.so.1"
CONFIG_ENV = "TOPODRA_FAKE_NVML_CONFIG"

_ARCH_CODE = {v: k for k, v in ARCHITECTURES.items()}
_BRAND_CODE = {v: k for k, v in BRANDS.items()}


def build_fake_nvml(out_dir: Path) -> Path:
    """Compile fake_nvml.c into `<out_dir>/libnvidia-ml.so.1`; returns the directory (for LD_LIBRARY_PATH)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the fake NVML library")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIB_NAME
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o", str(lib), str(SOURCE)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out_dir


def nvml_bus_id(bdf: str) -> str:
    """`0000:0a:00.0` -> NVML's form `00000000:0A:00.0`."""
    dom, rest = bdf.split(":", 1)
    return f"{int(dom, 16):08X}:{rest.upper()}"


def nvml_config(
    gpus: list[Gpu] | tuple[Gpu, ...],
    *,
    driver_version: str = "550.54.15",
    cuda_driver_version: int = 12040,
    fail: Mapping[int, Mapping[str, int]] | None = None,
    init_error: int = 0,
    numa_from_nvml: bool = True,
) -> str:
    """Config text serving `gpus` in the given order (NVML index = position)."""
    lines = [f"driver_version={driver_version}", f"cuda_driver_version={cuda_driver_version}"]
    if init_error:
        lines.append(f"init_error={init_error}")
    lines.append(f"device_count={len(gpus)}")
    for i, g in enumerate(gpus):
        p = f"device.{i}."
        major, minor = g.cuda_compute_capability.split(".")[:2]
        lines += [
            f"{p}uuid={g.uuid}",
            f"{p}name={g.product_name}",
            f"{p}bus_id={nvml_bus_id(g.pci_bus_id)}",
            f"{p}index={g.index}",
            f"{p}minor={g.minor}",
            f"{p}brand={_BRAND_CODE.get(g.brand, 0)}",
            f"{p}arch={_ARCH_CODE.get(g.architecture, 0xFFFFFFFF)}",
            f"{p}cc_major={major}",
            f"{p}cc_minor={minor}",
            f"{p}memory_total={g.memory_bytes}",
            f"{p}pci_device_id=0x233010DE",
        ]
        if numa_from_nvml and g.numa_node >= 0:
            lines.append(f"{p}numa={g.numa_node}")
        for link, peer in enumerate(g.nvlink_peers):
            lines.append(f"{p}nvlink.{link}={nvml_bus_id(peer)}")
        if g.clique_id:
            cluster, clique = g.clique_id.rsplit(".", 1)
            lines += [f"{p}fabric_cluster={uuid.UUID(cluster).hex}", f"{p}fabric_clique={int(clique)}"]
        for fn, code in (fail or {}).get(i, {}).items():
            lines.append(f"{p}fail.{fn}={code}")
    return "\n".join(lines) + "\n"


def write_nvml_config(path: Path, topo: NodeTopology, **kw: object) -> Path:
    path.write_text(nvml_config(sorted(topo.gpus, key=lambda g: g.index), **kw))  # type: ignore[arg-type]
    return path


def nvml_env(lib_dir: Path, config: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["LD_LIBRARY_PATH"] = f"{lib_dir}:{env['LD_LIBRARY_PATH']}" if env.get("LD_LIBRARY_PATH") else str(lib_dir)
    env[CONFIG_ENV] = str(config)
    return env


_CHILD = """
import dataclasses, json, sys
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
from driver.discovery.nvml import discover_gpus
print(json.dumps([dataclasses.asdict(g) for g in discover_gpus(sys.argv[1])]))
"""


def discover_in_child(lib_dir: Path, config: Path, sysfs_root: Path) -> tuple[list[dict[str, object]], str]:
    """Run the nvml backend in a child process against the fake library; (GPUs as dicts, stderr)."""
    import json
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(sysfs_root)],
        env=nvml_env(lib_dir, config),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeError(f"nvml discovery failed (rc {r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr
