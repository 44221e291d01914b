"""`nvml` backend: real GPUs through pynvml (nvidia-ml-py), which loads `libnvidia-ml.so.1`.

NVML does not report the PCIe root; it comes from sysfs (`/sys/bus/pci/devices/<bdf>` resolved), and
sysfs also fills the NUMA node when NVML cannot. An NVML error on one device skips that device with a
logged reason; a library that cannot be loaded or initialised is a DiscoveryError.

pynvml resolves C symbols by name; the ones this backend calls are: nvmlInitWithFlags, nvmlShutdown,
nvmlErrorString, nvmlSystemGetDriverVersion, nvmlSystemGetCudaDriverVersion, nvmlDeviceGetCount_v2,
nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetIndex, nvmlDeviceGetMinorNumber, nvmlDeviceGetUUID,
nvmlDeviceGetName, nvmlDeviceGetBrand, nvmlDeviceGetArchitecture, nvmlDeviceGetCudaComputeCapability,
nvmlDeviceGetMemoryInfo, nvmlDeviceGetPciInfo_v3, nvmlDeviceGetNumaNodeId, nvmlDeviceGetNvLinkState,
nvmlDeviceGetNvLinkRemotePciInfo_v2, nvmlDeviceGetGpuFabricInfoV (the fake library serves exactly these).
"""

from __future__ import annotations

import ctypes
import threading
import uuid as uuidlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from driver.discovery.common import DiscoveryError, normalize_bdf, pci_topology
from driver.discovery.nvmllib import LIB_NAME, use_driver_root
from driver.model import Gpu

log = structlog.get_logger("topodra.discovery.nvml")

# Same strings as go-nvml's device library, which dra-driver-nvidia-gpu publishes.
ARCHITECTURES = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
    0xFFFFFFFF: "Unknown",
}
BRANDS = {
    0: "Unknown",
    1: "Quadro",
    2: "Tesla",
    3: "NVS",
    4: "Grid",
    5: "GeForce",
    6: "Titan",
    7: "NvidiaVApps",
    8: "NvidiaVPC",
    9: "NvidiaVCS",
    10: "NvidiaVWS",
    11: "NvidiaCloudGaming",
    12: "QuadroRTX",
    13: "NvidiaRTX",
    14: "Nvidia",
    15: "GeForceRTX",
    16: "TitanRTX",
}
FABRIC_STATE_COMPLETED = 3

# NVML init/shutdown are reference counted per process; serialise whole discoveries.
_lock = threading.Lock()


def _str(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _cuda_version(v: int) -> str:
    """NVML's 12040 -> "12.4" (major*1000 + minor*10)."""
    return f"{v // 1000}.{(v % 1000) // 10}"


def discover_gpus(sysfs_root: Path | str = "/sys", driver_root: Path | None = None) -> list[Gpu]:
    """GPUs through NVML; with `driver_root`, the library is the one found under that mounted host root."""
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise DiscoveryError("nvml backend needs the nvidia-ml-py package (module pynvml)") from e
    problem = use_driver_root(driver_root, pynvml)
    if problem is not None:
        raise DiscoveryError(problem)
    where = f"found under {driver_root}" if driver_root else f"is {LIB_NAME} on the library path?"
    with _lock:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise DiscoveryError(f"NVML init failed: {e} ({where})") from e
        try:
            return _discover(pynvml, Path(sysfs_root))
        finally:
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError as e:
                log.warning("nvml_shutdown_failed", reason=str(e))


def _discover(nv: Any, sysfs_root: Path) -> list[Gpu]:
    try:
        driver_version = _str(nv.nvmlSystemGetDriverVersion())
        cuda_version = _cuda_version(int(nv.nvmlSystemGetCudaDriverVersion()))
        count = int(nv.nvmlDeviceGetCount())
    except nv.NVMLError as e:
        raise DiscoveryError(f"NVML system query failed: {e}") from e
    gpus: list[Gpu] = []
    peers_raw: dict[str, list[str]] = {}
    for i in range(count):
        try:
            gpu, peers = _device(nv, i, driver_version, cuda_version, sysfs_root)
        except nv.NVMLError as e:
            log.warning("nvml_device_skipped", index=i, reason=str(e))
            continue
        gpus.append(gpu)
        peers_raw[gpu.pci_bus_id] = peers
    # NVLink peers: keep only GPUs this node publishes (NVSwitch ports report the switch's address).
    known = {g.pci_bus_id for g in gpus}
    return [replace(g, nvlink_peers=tuple(sorted(set(peers_raw[g.pci_bus_id]) & known))) for g in gpus]


def _device(nv: Any, i: int, driver_version: str, cuda_version: str, sysfs_root: Path) -> tuple[Gpu, list[str]]:
    h = nv.nvmlDeviceGetHandleByIndex(i)
    pci = nv.nvmlDeviceGetPciInfo(h)
    bdf = normalize_bdf(_str(pci.busId))
    major, minor_cc = nv.nvmlDeviceGetCudaComputeCapability(h)
    root, sys_numa = pci_topology(sysfs_root, bdf)
    try:
        numa = int(nv.nvmlDeviceGetNumaNodeId(h))
    except nv.NVMLError:
        numa = sys_numa
    gpu = Gpu(
        pci_bus_id=bdf,
        uuid=_str(nv.nvmlDeviceGetUUID(h)),
        index=int(nv.nvmlDeviceGetIndex(h)),
        minor=int(nv.nvmlDeviceGetMinorNumber(h)),
        product_name=_str(nv.nvmlDeviceGetName(h)),
        brand=BRANDS.get(int(nv.nvmlDeviceGetBrand(h)), "Unknown"),
        architecture=ARCHITECTURES.get(int(nv.nvmlDeviceGetArchitecture(h)), "Unknown"),
        cuda_compute_capability=f"{major}.{minor_cc}",
        driver_version=driver_version,
        cuda_driver_version=cuda_version,
        memory_bytes=int(nv.nvmlDeviceGetMemoryInfo(h).total),
        numa_node=numa if numa >= 0 else sys_numa,
        pcie_root=root,
        clique_id=_clique(nv, h),
    )
    return gpu, _nvlink_peers(nv, h)


def _nvlink_peers(nv: Any, h: Any) -> list[str]:
    peers = []
    for link in range(int(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if nv.nvmlDeviceGetNvLinkState(h, link) != nv.NVML_FEATURE_ENABLED:
                continue
            remote = nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link)
        except nv.NVMLError as e:
            if e.value in (nv.NVML_ERROR_INVALID_ARGUMENT, nv.NVML_ERROR_NOT_SUPPORTED):
                break  # past the last link, or no NVLink at all
            raise
        try:
            peers.append(normalize_bdf(_str(remote.busId)))
        except ValueError:
            continue
    return peers


def _clique(nv: Any, h: Any) -> str | None:
    """`<clusterUuid>.<cliqueId>` once the fabric manager finished registering the GPU, else None."""
    try:
        info = nv.c_nvmlGpuFabricInfo_v2_t()
        nv.nvmlDeviceGetGpuFabricInfoV(h, ctypes.byref(info))
    except (nv.NVMLError, AttributeError):
        return None  # no NVLink fabric on this system (or an NVML without the call)
    if info.state != FABRIC_STATE_COMPLETED or info.status != nv.NVML_SUCCESS:
        return None
    cluster = bytes(info.clusterUuid)
    if not any(cluster):
        return None
    return f"{uuidlib.UUID(bytes=cluster)}.{info.cliqueId}"
