"""Helpers shared by the discovery backends: errors, PCI address forms, sysfs look-ups."""

from __future__ import annotations

import os
import re
from pathlib import Path

_BDF = re.compile(r"^(?:(?P<dom>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$")
_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")


class DiscoveryError(Exception):
    """Discovery could not produce a topology (bad config, unreadable file, library missing)."""


class TopologyFileError(DiscoveryError):
    """A topology file is malformed; the message names the node, device and field."""


def normalize_bdf(addr: str) -> str:
    """Any PCI address form (NVML's `00000000:3B:00.0`, `3b:00.0`) -> lower-case `dddd:bb:dd.f`."""
    m = _BDF.match(addr.strip())
    if m is None:
        raise ValueError(f"not a PCI address: {addr!r}")
    dom = int(m.group("dom") or "0", 16)
    if dom > 0xFFFF:
        raise ValueError(f"PCI domain out of range: {addr!r}")
    return f"{dom:04x}:{m.group('bus').lower()}:{m.group('dev').lower()}.{m.group('fn')}"


def is_bdf(name: str) -> bool:
    return _BDF.match(name) is not None and ":" in name and name.count(":") == 2


def is_pcie_root(name: str) -> bool:
    return _ROOT.match(name) is not None


def read_text(path: Path) -> str | None:
    """File content stripped, or None if it cannot be read (sysfs files vanish and some raise EINVAL)."""
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: Path, default: int) -> int:
    text = read_text(path)
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        return default


def pcie_root_from_resolved(sysfs_root: Path, resolved: Path) -> str:
    """First element under `<sysfs_root>/devices` of a resolved device path (`pci0000:00`), or ""."""
    devices = Path(os.path.realpath(sysfs_root / "devices"))
    try:
        rel = resolved.relative_to(devices)
    except ValueError:
        return ""
    first = rel.parts[0] if rel.parts else ""
    return first if first.startswith("pci") else ""


def pci_device_dir(sysfs_root: Path, bdf: str) -> Path | None:
    """Resolved sysfs directory of a PCI device, via `/sys/bus/pci/devices/<bdf>`."""
    link = sysfs_root / "bus" / "pci" / "devices" / bdf
    if not link.exists():
        return None
    return Path(os.path.realpath(link))


def pci_topology(sysfs_root: Path, bdf: str) -> tuple[str, int]:
    """(pcieRoot, numaNode) of a PCI device from sysfs; ("", -1) when unknown."""
    d = pci_device_dir(sysfs_root, bdf)
    if d is None:
        return "", -1
    return pcie_root_from_resolved(sysfs_root, d), read_int(d / "numa_node", -1)


_QTY = re.compile(r"^([+-]?[0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")
_SUFFIX: dict[str | None, int | None] = {
    None: 1,
    "m": None,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(value: object) -> int:
    """Kubernetes quantity (`80Gi`, `400G`, `1e3` not supported) or int -> integer; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a quantity: {value!r}")
    m = _QTY.match(value.strip())
    if m is None:
        raise ValueError(f"not a quantity: {value!r}")
    mult: int | None = _SUFFIX[m.group(2)]
    num = m.group(1)
    if mult is None:  # milli-units are never whole bytes or bits
        raise ValueError(f"not a whole quantity: {value!r}")
    if "." in num:
        whole, frac = num.split(".")
        scaled: int = int(whole + frac) * mult
        div: int = 10 ** len(frac)
        if scaled % div:
            raise ValueError(f"not a whole quantity: {value!r}")
        return scaled // div
    return int(num) * mult
