"""A kubelet-like client for the plugin's sockets, independent of the project's generated code.

It does what the kubelet does, with its deadlines: finds registration sockets in
`<root>/plugins_registry/` (names starting with "." are ignored), dials them (10 s), calls GetInfo
(1 s), validates type and versions like kubelet 1.34+ (first entry of the plugin's list that it
knows), dials the announced endpoint and calls NotifyRegistrationStatus (5 s); then
NodePrepareResources / NodeUnprepareResources (45 s) and NodeWatchResources, always by their full
method paths on a raw channel. Messages are encoded and decoded here by hand from the field numbers
of the contract, so a field-number drift in our .proto files fails the tests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

REG_GET_INFO = "/pluginregistration.Registration/GetInfo"
REG_NOTIFY = "/pluginregistration.Registration/NotifyRegistrationStatus"
DRA_SERVICES = {
    "v1.DRAPlugin": "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin",
    "v1beta1.DRAPlugin": "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
}
HEALTH_PATHS = {
    "v1alpha1": "/v1alpha1.DRAResourceHealth/NodeWatchResources",
    "v1": "/v1.DRAResourceHealth/NodeWatchResources",
}
KUBELET_KNOWN = ("v1.DRAPlugin", "v1beta1.DRAPlugin")  # what kubelet 1.34+ accepts
DIAL_TIMEOUT, GET_INFO_TIMEOUT, NOTIFY_TIMEOUT, DRA_TIMEOUT = 10.0, 1.0, 5.0, 45.0
HEALTH_STATUS = {0: "Unknown", 1: "Healthy", 2: "Unhealthy"}


# ---------------------------------------------------------------------------------------------------------
# protobuf wire format, by hand


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(num << 3 | 2) + _varint(len(data)) + data


def field_varint(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value)


def decode(data: bytes) -> dict[int, list[Any]]:
    """Field number -> values (int for varints, bytes for length-delimited). Raises on garbage."""
    out: dict[int, list[Any]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            if i >= len(data):
                raise ValueError("truncated varint")
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(data):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            v: Any = varint()
        elif wt == 2:
            n = varint()
            v = data[i : i + n]
            if len(v) != n:
                raise ValueError("truncated field")
            i += n
        else:
            raise ValueError(f"unexpected wire type {wt} for field {num}")
        out.setdefault(num, []).append(v)
    return out


def _s(fields: dict[int, list[Any]], num: int) -> str:
    v = fields.get(num)
    return v[-1].decode() if v else ""


def _ss(fields: dict[int, list[Any]], num: int) -> list[str]:
    return [b.decode() for b in fields.get(num, [])]


def claims_request(claims: list[tuple[str, str, str]]) -> bytes:
    """(namespace, uid, name) -> NodePrepare/UnprepareResourcesRequest bytes."""
    return b"".join(
        field_bytes(1, field_bytes(1, ns) + field_bytes(2, uid) + field_bytes(3, name)) for ns, uid, name in claims
    )


@dataclass
class Device:
    request_names: list[str]
    pool_name: str
    device_name: str
    cdi_device_ids: list[str]
    share_id: str | None = None


@dataclass
class ClaimResult:
    devices: list[Device] = field(default_factory=list)
    error: str = ""


def decode_prepare(data: bytes) -> dict[str, ClaimResult]:
    out: dict[str, ClaimResult] = {}
    for entry in decode(data).get(1, []):
        e = decode(entry)
        uid = _s(e, 1)
        val = decode(e[2][-1]) if 2 in e else {}
        devices = []
        for raw in val.get(1, []):
            d = decode(raw)
            devices.append(
                Device(
                    request_names=_ss(d, 1),
                    pool_name=_s(d, 2),
                    device_name=_s(d, 3),
                    cdi_device_ids=_ss(d, 4),
                    share_id=_s(d, 5) if 5 in d else None,
                )
            )
        out[uid] = ClaimResult(devices=devices, error=_s(val, 2))
    return out


def decode_unprepare(data: bytes) -> dict[str, str]:
    out = {}
    for entry in decode(data).get(1, []):
        e = decode(entry)
        val = decode(e[2][-1]) if 2 in e else {}
        out[_s(e, 1)] = _s(val, 1)
    return out


@dataclass
class HealthEntry:
    pool: str
    device: str
    health: str
    last_updated: int
    timeout_seconds: int
    message: str


def decode_health(data: bytes) -> list[HealthEntry]:
    out = []
    for raw in decode(data).get(1, []):
        d = decode(raw)
        ident = decode(d[1][-1]) if 1 in d else {}
        out.append(
            HealthEntry(
                pool=_s(ident, 1),
                device=_s(ident, 2),
                health=HEALTH_STATUS.get(d.get(2, [0])[-1], "?"),
                last_updated=d.get(3, [0])[-1],
                timeout_seconds=d.get(4, [0])[-1],
                message=_s(d, 5),
            )
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# the kubelet side


def _raw(x: bytes) -> bytes:
    return x


@dataclass
class PluginInfo:
    type: str
    name: str
    endpoint: str
    supported_versions: list[str]


class RegistrationRefused(Exception):
    pass


class KubeletSim:
    def __init__(self, root_dir: Path) -> None:
        self.root = root_dir
        self.registry = root_dir / "plugins_registry"
        self._channels: list[grpc.Channel] = []
        self.dra: grpc.Channel | None = None
        self.version: str | None = None
        self.info: PluginInfo | None = None

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self._channels.clear()

    def __enter__(self) -> KubeletSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dial(self, path: Path | str) -> grpc.Channel:
        ch = grpc.insecure_channel(f"unix://{path}")
        grpc.channel_ready_future(ch).result(timeout=DIAL_TIMEOUT)
        self._channels.append(ch)
        return ch

    def registration_sockets(self) -> list[Path]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(p for p in self.registry.iterdir() if not p.name.startswith(".") and p.is_socket())
        return []

    def get_info(self, sock: Path) -> PluginInfo:
        ch = self._dial(sock)
        raw = ch.unary_unary(REG_GET_INFO, request_serializer=_raw, response_deserializer=_raw)(
            b"", timeout=GET_INFO_TIMEOUT
        )
        f = decode(raw)
        return PluginInfo(type=_s(f, 1), name=_s(f, 2), endpoint=_s(f, 3), supported_versions=_ss(f, 4))

    def notify(self, sock: Path, registered: bool, error: str = "") -> None:
        ch = self._dial(sock)
        body = (field_varint(1, 1) if registered else b"") + (field_bytes(2, error) if error else b"")
        ch.unary_unary(REG_NOTIFY, request_serializer=_raw, response_deserializer=_raw)(body, timeout=NOTIFY_TIMEOUT)

    def register(self, sock: Path | None = None, driver: str = "topodra.dev") -> PluginInfo:
        """The kubelet's registration sequence; raises RegistrationRefused like the kubelet would refuse."""
        if sock is None:
            socks = self.registration_sockets()
            if not socks:
                raise RegistrationRefused(f"no registration socket in {self.registry}")
            sock = socks[0]
        info = self.get_info(sock)
        problem = ""
        if info.type != "DRAPlugin":
            problem = f"no handler registered for plugin type: {info.type}"
        elif info.name != driver:
            problem = f"unexpected driver name {info.name}"
        else:
            known = [v for v in info.supported_versions if v in KUBELET_KNOWN]
            if not known:
                problem = f"none of the versions {info.supported_versions} is supported"
            else:
                self.version = known[0]
        if problem:
            with contextlib.suppress(grpc.RpcError):
                self.notify(sock, False, problem)
            raise RegistrationRefused(problem)
        self.dra = self._dial(info.endpoint or sock)
        self.notify(sock, True)
        self.info = info
        return info

    def _call(self, method: str, body: bytes, version: str | None) -> bytes:
        assert self.dra is not None, "register first"
        service = DRA_SERVICES[version or self.version or "v1.DRAPlugin"]
        out: bytes = self.dra.unary_unary(
            f"/{service}/{method}", request_serializer=_raw, response_deserializer=_raw
        )(body, timeout=DRA_TIMEOUT)
        return out

    def prepare(self, claims: list[tuple[str, str, str]], version: str | None = None) -> dict[str, ClaimResult]:
        return decode_prepare(self._call("NodePrepareResources", claims_request(claims), version))

    def unprepare(self, claims: list[tuple[str, str, str]], version: str | None = None) -> dict[str, str]:
        return decode_unprepare(self._call("NodeUnprepareResources", claims_request(claims), version))

    def prepare_raw(self, body: bytes, version: str = "v1.DRAPlugin") -> bytes:
        return self._call("NodePrepareResources", body, version)

    def unprepare_raw(self, body: bytes, version: str = "v1.DRAPlugin") -> bytes:
        return self._call("NodeUnprepareResources", body, version)

    def watch_health(self, version: str = "v1alpha1", timeout: float = 60.0) -> Iterator[list[HealthEntry]]:
        assert self.dra is not None, "register first"
        stream: Any = self.dra.unary_stream(HEALTH_PATHS[version], request_serializer=_raw, response_deserializer=_raw)(
            b"", timeout=timeout
        )
        try:
            for raw in stream:
                yield decode_health(raw)
        finally:
            stream.cancel()
