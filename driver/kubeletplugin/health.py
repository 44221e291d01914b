"""Device health: a monitor that runs the probes over every device and keeps the current verdict.

Sources, combined per device (any unhealthy source wins): `healthy` of the topology model (the nvml
backend, the topology file), `link_up` of a NIC, and every probe of `driver.kubeletplugin.probes`.
Who listens: the app (it taints unhealthy devices in the slices) and the DRAResourceHealth stream
(`driver.kubeletplugin.health_service`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from driver.kubeletplugin.probes import Probe
from driver.model import Nic, NodeTopology

log = structlog.get_logger("topodra.kubeletplugin")

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
UNKNOWN = "Unknown"


@dataclass(frozen=True)
class DeviceHealth:
    pool: str
    device: str
    status: str
    message: str
    updated: int  # unix seconds


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
            try:
                p.poll_events()
            except Exception as e:  # a probe bug must not stop health reporting
                log.warning("health_probe_failed", probe=type(p).__name__, error=str(e))
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
