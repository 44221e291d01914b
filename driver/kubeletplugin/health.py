"""Device health: a monitor that checks every device, and the DRAResourceHealth stream serving it.

Sources, combined per device (any unhealthy source wins):
- discovery: `healthy` of the topology model (the nvml backend, the topology file);
- NIC link: `<sysfs>/class/net/<if>/operstate` is `down` (or discovery said `link_up=False`);
- NVML (when libnvidia-ml loads): a GPU that cannot be reached by UUID (lost, fallen off the bus) or
  that reported a critical XID event since the driver started.

The stream sends the full list of the node's devices when it opens, after every change, and at
least every `interval` seconds, so the kubelet (30 s staleness) never marks devices Unknown.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import grpc
import structlog

from driver.model import Gpu, Nic, NodeTopology
from driver.pb import dra_health_v1_pb2, dra_health_v1alpha1_pb2

log = structlog.get_logger("topodra.kubeletplugin")

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
UNKNOWN = "Unknown"
# XIDs after which a GPU needs a reset or is gone (NVIDIA's XID catalogue).
CRITICAL_XIDS = frozenset({48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})


@dataclass(frozen=True)
class DeviceHealth:
    pool: str
    device: str
    status: str
    message: str
    updated: int  # unix seconds


class Probe(Protocol):
    def check(self, name: str, device: Gpu | Nic) -> str | None:
        """None = fine; else why the device is unhealthy."""
        ...


class NicLinkProbe:
    def __init__(self, sysfs_root: Path) -> None:
        self.sysfs_root = sysfs_root

    def check(self, name: str, device: Gpu | Nic) -> str | None:
        if not isinstance(device, Nic) or not device.if_name:
            return None
        try:
            state = (self.sysfs_root / "class" / "net" / device.if_name / "operstate").read_text().strip()
        except OSError:
            return None
        return f"link of {device.if_name} is down" if state == "down" else None


class NvmlProbe:
    """GPU lost / critical XID. Disabled (a no-op) when NVML cannot be loaded."""

    def __init__(self, nvml: Any | None = None) -> None:
        self._nv = nvml
        self._ok = False
        self._disabled = False
        self._events: Any = None
        self._registered: set[str] = set()
        self._xid: dict[str, int] = {}
        self._lock = threading.Lock()

    def _init(self) -> bool:
        if self._ok:
            return True
        if self._disabled:
            return False
        try:
            if self._nv is None:
                import pynvml

                self._nv = pynvml
            self._nv.nvmlInit()
            self._ok = True
            try:
                self._events = self._nv.nvmlEventSetCreate()
            except Exception:  # no event support: lost-GPU checks only
                self._events = None
        except Exception as e:
            log.info("nvml_health_disabled", reason=f"{type(e).__name__}: {e}")
            self._disabled = True
            return False
        return True

    def poll_events(self) -> None:
        if not self._ok or self._events is None:
            return
        nv: Any = self._nv
        while True:
            try:
                ev = nv.nvmlEventSetWait_v2(self._events, 0)
            except Exception:  # timeout (no event) or not supported
                return
            xid = int(getattr(ev, "eventData", 0))
            try:
                uuid = nv.nvmlDeviceGetUUID(ev.device)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            except Exception:
                continue
            if xid in CRITICAL_XIDS:
                with self._lock:
                    self._xid[uuid] = xid
                log.warning("gpu_xid_event", uuid=uuid, xid=xid)

    def check(self, name: str, device: Gpu | Nic) -> str | None:
        if not isinstance(device, Gpu) or not device.uuid or not self._init():
            return None
        nv: Any = self._nv
        try:
            h = nv.nvmlDeviceGetHandleByUUID(device.uuid)
        except Exception as e:
            return f"GPU {device.uuid} unreachable through NVML: {e}"
        if self._events is not None and device.uuid not in self._registered:
            with contextlib.suppress(Exception):
                nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._events)
            self._registered.add(device.uuid)
        with self._lock:
            xid = self._xid.get(device.uuid)
        return f"GPU {device.uuid} reported critical XID {xid}" if xid is not None else None


def device_health(
    topo: NodeTopology, probes: Sequence[Probe], now: int | None = None
) -> list[DeviceHealth]:
    now = int(time.time()) if now is None else now
    out = []
    for name, d in topo.named_devices().items():
        reasons: list[str] = []
        if not d.healthy:
            reasons.append("discovery reports the device unhealthy")
        if isinstance(d, Nic) and not d.link_up:
            reasons.append(f"link of {d.if_name or name} is down")
        for p in probes:
            try:
                r = p.check(name, d)
            except Exception as e:  # a probe bug must not stop health reporting
                r = None
                log.warning("health_probe_failed", probe=type(p).__name__, error=str(e))
            if r and r not in reasons:
                reasons.append(r)
        status = UNHEALTHY if reasons else HEALTHY
        out.append(DeviceHealth(topo.node_name, name, status, "; ".join(reasons)[:1024], now))
    return out


class HealthMonitor:
    def __init__(
        self,
        topology: Callable[[], NodeTopology],
        probes: Sequence[Probe],
        interval: float = 5.0,
        on_change: Callable[[Mapping[str, str]], None] | None = None,
    ) -> None:
        self.topology = topology
        self.probes = list(probes)
        self.interval = interval
        self.on_change = on_change
        self._cond = threading.Condition()
        self._version = 0
        self._devices: list[DeviceHealth] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check_now(self) -> bool:
        """Run every check; True when a device's status or message changed."""
        for p in self.probes:
            poll = getattr(p, "poll_events", None)
            if poll is not None:
                poll()
        try:
            topo = self.topology()
        except Exception as e:
            log.warning("health_topology_failed", error=str(e))
            return False
        devs = device_health(topo, self.probes)
        key = [(d.device, d.status, d.message) for d in devs]
        with self._cond:
            changed = key != [(d.device, d.status, d.message) for d in self._devices] or self._version == 0
            self._devices = devs
            if changed:
                self._version += 1
                self._cond.notify_all()
        if changed:
            bad = {d.device: d.message for d in devs if d.status == UNHEALTHY}
            log.info("device_health_changed", unhealthy=bad, devices=len(devs))
            if self.on_change is not None:
                try:
                    self.on_change(bad)
                except Exception:
                    log.exception("health_on_change_failed")
        return changed

    def unhealthy(self) -> dict[str, str]:
        with self._cond:
            return {d.device: d.message for d in self._devices if d.status == UNHEALTHY}

    def snapshot(self) -> tuple[int, list[DeviceHealth]]:
        with self._cond:
            return self._version, list(self._devices)

    def wait(self, version: int, timeout: float) -> tuple[int, list[DeviceHealth]]:
        with self._cond:
            self._cond.wait_for(lambda: self._version != version or self._stop.is_set(), timeout=timeout)
            return self._version, list(self._devices)

    def start(self) -> None:
        """Check in a thread (the first check at once), so serving never waits for discovery or NVML."""
        self._thread = threading.Thread(target=self._run, name="topodra-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.check_now()
        while not self._stop.wait(self.interval):
            self.check_now()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()


_STATUS = {HEALTHY: 1, UNHEALTHY: 2, UNKNOWN: 0}


class HealthServicer:
    """NodeWatchResources for one wire version (v1alpha1 or v1: same messages, other package)."""

    def __init__(self, monitor: HealthMonitor, pb: ModuleType, resend_every: float = 10.0) -> None:
        self.monitor = monitor
        self.pb = pb
        self.resend_every = resend_every
        self.package = pb.DESCRIPTOR.package

    def _response(self, devices: Sequence[DeviceHealth]) -> Any:
        pb = self.pb
        return pb.NodeWatchResourcesResponse(
            devices=[
                pb.DeviceHealth(
                    device=pb.DeviceIdentifier(pool_name=d.pool, device_name=d.device),
                    health=_STATUS[d.status],
                    last_updated_time=d.updated,
                    health_check_timeout_seconds=int(max(30.0, 3 * self.resend_every)),
                    message=d.message,
                )
                for d in devices
            ]
        )

    def watch(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        log.info("health_stream_opened", api=self.package, peer=context.peer())
        version, devices = self.monitor.snapshot()
        if version == 0:  # first check still running
            version, devices = self.monitor.wait(0, self.resend_every)
        yield self._response(devices)
        while context.is_active() and not self.monitor.stopped:
            version, devices = self.monitor.wait(version, self.resend_every)
            if self.monitor.stopped:
                break
            now = int(time.time())
            yield self._response([DeviceHealth(d.pool, d.device, d.status, d.message, now) for d in devices])
        log.info("health_stream_closed", api=self.package)

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        pb = self.pb
        return grpc.method_handlers_generic_handler(
            f"{self.package}.DRAResourceHealth",
            {
                "NodeWatchResources": grpc.unary_stream_rpc_method_handler(
                    self.watch,
                    request_deserializer=pb.NodeWatchResourcesRequest.FromString,
                    response_serializer=pb.NodeWatchResourcesResponse.SerializeToString,
                )
            },
        )


def handlers(monitor: HealthMonitor, resend_every: float = 10.0) -> list[grpc.GenericRpcHandler[Any, Any]]:
    return [
        HealthServicer(monitor, dra_health_v1alpha1_pb2, resend_every).handler(),
        HealthServicer(monitor, dra_health_v1_pb2, resend_every).handler(),
    ]
