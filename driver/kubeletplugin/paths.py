"""Socket names and paths of the plugin under the kubelet root directory."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

MAX_SOCKET_PATH = 107  # AF_UNIX sun_path is 108 bytes including the NUL


def _b64(data: bytes, n: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")[:n]


def registration_socket_name(driver: str, pod_uid: str | None, registry_dir: Path) -> str:
    """`<driver>-reg.sock`, or per pod for rolling updates, shortened like upstream when too long."""
    if not pod_uid:
        return f"{driver}-reg.sock"
    for name in (
        f"{driver}-{pod_uid}-reg.sock",
        f"{driver}-{_b64(pod_uid.encode(), 8)}-reg.sock",
    ):
        if len(str(registry_dir / name)) <= MAX_SOCKET_PATH:
            return name
    digest = _b64(driver.encode() + b"\x00" + pod_uid.encode(), 16)
    return f"dra-{digest}-reg.sock"


@dataclass(frozen=True)
class SocketPaths:
    registry_dir: Path
    plugin_dir: Path
    registration: Path
    dra: Path
    serialize_lock: Path

    @classmethod
    def build(cls, kubelet_root_dir: Path, driver: str, pod_uid: str | None) -> SocketPaths:
        root = kubelet_root_dir.absolute()
        registry = root / "plugins_registry"
        plugin = root / "plugins" / driver
        dra = plugin / (f"dra-{pod_uid}.sock" if pod_uid else "dra.sock")
        return cls(
            registry_dir=registry,
            plugin_dir=plugin,
            registration=registry / registration_socket_name(driver, pod_uid, registry),
            dra=dra,
            serialize_lock=plugin / "serialize.lock",
        )

    def check(self) -> list[str]:
        return [
            f"socket path {p} is {len(str(p))} characters, more than {MAX_SOCKET_PATH}"
            for p in (self.registration, self.dra)
            if len(str(p)) > MAX_SOCKET_PATH
        ]
