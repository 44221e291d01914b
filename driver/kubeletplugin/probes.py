"""Health probes: each looks at one device and says why it is unhealthy, or nothing.

- NIC link: `<sysfs>/class/net/<if>/operstate` is `down`;
- NVML (when libnvidia-ml loads): a GPU that cannot be reached by UUID (lost, fallen off the bus) or
  that reported a critical XID event since the driver started.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, Protocol

import structlog

from driver.model import Gpu, Nic

log = structlog.get_logger("topodra.kubeletplugin")

# XIDs after which a GPU needs a reset or is gone (NVIDIA's XID catalogue).
CRITICAL_XIDS = frozenset({48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})


class Probe(Protocol):
    def poll_events(self) -> None:
        """Collect what happened since the last round (before the round's checks)."""
        ...

    def check(self, name: str, device: Gpu | Nic) -> str | None:
        """None = fine; else why the device is unhealthy."""
        ...


class NicLinkProbe:
    def __init__(self, sysfs_root: Path) -> None:
        self.sysfs_root = sysfs_root

    def poll_events(self) -> None:
        """Link state is read at each check; there are no events to collect."""

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
