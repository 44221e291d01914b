"""CDI spec files: one per prepared claim, written atomically, named by claim UID.

A spec is `<cdi dir>/<driver>-<claimUID>.json` with kind `<driver>/device` and one CDI device per
allocated device, named `<claimUID>-<device>` so names never clash between claims. `cdiVersion` is
the lowest version that can express the edits used (0.5.0 for device nodes with `hostPath` and names
that start with a digit, 1.1.0 once `netDevices` appear).

Nothing here knows about claims or the kubelet: callers pass the container edits.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

CDI_CLASS = "device"
BASE_VERSION = "0.5.0"
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
_UID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")

Json = dict[str, Any]


class CdiError(Exception):
    """A spec cannot be built or written."""


@dataclass(frozen=True)
class DeviceNode:
    path: str  # inside the container
    host_path: str | None = None  # on the host, when it differs

    def to_json(self) -> Json:
        out: Json = {"path": self.path}
        if self.host_path and self.host_path != self.path:
            out["hostPath"] = self.host_path
        return out


@dataclass(frozen=True)
class NetDevice:
    host_interface_name: str
    name: str

    def to_json(self) -> Json:
        return {"hostInterfaceName": self.host_interface_name, "name": self.name}


@dataclass(frozen=True)
class ContainerEdits:
    env: tuple[str, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    net_devices: tuple[NetDevice, ...] = ()

    def empty(self) -> bool:
        return not (self.env or self.device_nodes or self.net_devices)

    def to_json(self) -> Json:
        out: Json = {}
        if self.env:
            out["env"] = list(self.env)
        if self.device_nodes:
            out["deviceNodes"] = [d.to_json() for d in self.device_nodes]
        if self.net_devices:
            out["netDevices"] = [n.to_json() for n in self.net_devices]
        return out


@dataclass(frozen=True)
class CdiDevice:
    name: str  # unqualified, already scoped by claim UID
    edits: ContainerEdits


@dataclass(frozen=True)
class Spec:
    kind: str
    devices: tuple[CdiDevice, ...]
    edits: ContainerEdits = field(default_factory=ContainerEdits)

    def version(self) -> str:
        """The lowest cdiVersion that can express this spec."""
        all_edits = [self.edits, *(d.edits for d in self.devices)]
        if any(e.net_devices for e in all_edits):
            return "1.1.0"
        return BASE_VERSION

    def to_json(self) -> Json:
        out: Json = {
            "cdiVersion": self.version(),
            "kind": self.kind,
            "devices": [{"name": d.name, "containerEdits": d.edits.to_json()} for d in self.devices],
        }
        if not self.edits.empty():
            out["containerEdits"] = self.edits.to_json()
        return out

    def qualified(self, device_name: str) -> str:
        return f"{self.kind}={device_name}"


def kind_for(driver: str) -> str:
    return f"{driver}/{CDI_CLASS}"


def device_name(claim_uid: str, device: str) -> str:
    name = f"{claim_uid}-{device}"
    if not _NAME_RE.match(name):
        raise CdiError(f"invalid CDI device name {name!r}")
    return name


def qualified_id(driver: str, claim_uid: str, device: str) -> str:
    return f"{kind_for(driver)}={device_name(claim_uid, device)}"


def check_uid(uid: str) -> str:
    """Claim UIDs become file and device names: refuse anything that is not a plain UID."""
    if not _UID_RE.match(uid):
        raise CdiError(f"invalid claim UID {uid!r}")
    return uid


class CdiStore:
    """The driver's spec files in one CDI directory."""

    def __init__(self, directory: Path, driver: str) -> None:
        self.dir = directory
        self.driver = driver
        self.kind = kind_for(driver)

    def path(self, claim_uid: str) -> Path:
        return self.dir / f"{self.driver}-{check_uid(claim_uid)}.json"

    def _tmp(self, claim_uid: str) -> Path:
        return self.dir / f".{self.driver}-{check_uid(claim_uid)}.json.tmp"

    def write(self, claim_uid: str, spec: Spec) -> Path:
        """Write the claim's spec atomically: `.<driver>-<uid>.json.tmp`, fsync, rename, fsync the dir.

        A runtime never reads half a spec. (On the usual tmpfs /var/run/cdi the fsyncs cost nothing.)
        """
        if not spec.devices:
            raise CdiError("a CDI spec needs at least one device")
        for d in spec.devices:
            if d.edits.empty():
                raise CdiError(f"CDI device {d.name} has no container edits (runtimes refuse such specs)")
        data = orjson.dumps(spec.to_json(), option=orjson.OPT_INDENT_2) + b"\n"
        self.dir.mkdir(parents=True, exist_ok=True)
        return atomic_write(self.path(claim_uid), data, tmp=self._tmp(claim_uid))

    def read(self, claim_uid: str) -> Json | None:
        try:
            doc = orjson.loads(self.path(claim_uid).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def exists(self, claim_uid: str) -> bool:
        return self.path(claim_uid).exists()

    def remove(self, claim_uid: str) -> bool:
        removed = False
        for p in (self.path(claim_uid), self._tmp(claim_uid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed = True
        if removed:
            fsync_dir(self.dir)
        return removed

    def claim_uids(self) -> Iterator[str]:
        """UIDs of every spec file of this driver in the directory."""
        prefix, suffix = f"{self.driver}-", ".json"
        with contextlib.suppress(FileNotFoundError):
            for p in sorted(self.dir.iterdir()):
                n = p.name
                if n.startswith(prefix) and n.endswith(suffix):
                    uid = n[len(prefix) : -len(suffix)]
                    if _UID_RE.match(uid):
                        yield uid

    def remove_temp_files(self) -> list[Path]:
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in self.dir.glob(f".{self.driver}-*.json.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    out.append(p)
        return out


def atomic_write(path: Path, data: bytes, tmp: Path | None = None, mode: int = 0o644, durable: bool = True) -> Path:
    """Temp file in the same directory, then rename; with `durable`, fsync the file and the directory."""
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)
    return path


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spec_device_names(doc: Mapping[str, Any]) -> list[str]:
    devs = doc.get("devices")
    if not isinstance(devs, Sequence):
        return []
    return [str(d.get("name")) for d in devs if isinstance(d, Mapping) and d.get("name")]
