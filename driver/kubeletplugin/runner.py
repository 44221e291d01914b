"""Kubelet plugin lifecycle: sockets, the two gRPC servers, checkpoint recovery, health.

Start order: recover the checkpoint, serve DRA (+ health) on the endpoint socket, then serve
registration in `plugins_registry/` (grpcio creates the socket file when the port is added, so the
kubelet can only see it once the endpoint answers). Stop order: registration socket first (the
kubelet unregisters us), then the DRA server with a grace period for in-flight calls; both sockets
are removed. Never touches sockets other than its own.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from prometheus_client import CollectorRegistry

from driver.cdi import CdiStore
from driver.cdispec import DeviceEnv
from driver.checkpoint import DEFAULT_BOOT_ID_FILE, Checkpoint, read_boot_id
from driver.claims import ClaimsApi, KubeClientClaimsApi
from driver.errors import StartupError
from driver.kubeletplugin import dra_service, health, health_service, probes, registration
from driver.kubeletplugin.paths import SocketPaths
from driver.model import NodeTopology
from driver.pluginmetrics import PluginMetrics
from driver.prepare import CRASH_POINTS, DeviceState, DeviceStateConfig
from kubeaccess.sync import KubeClient

log = structlog.get_logger("topodra.kubeletplugin")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _env_path(name: str, default: Path) -> Path:
    v = os.environ.get(name)
    return Path(v) if v else default


@dataclass(frozen=True)
class PluginConfig:
    driver_name: str
    node_name: str
    kubelet_root_dir: Path = Path("/var/lib/kubelet")
    cdi_dir: Path = Path("/var/run/cdi")
    state_dir: Path | None = None  # default: the plugin data dir <root>/plugins/<driver>
    pod_uid: str | None = None  # rolling update: per-pod socket names and the serialize.lock flock
    health_enabled: bool = True
    # Where device nodes are looked up (tests and simulated nodes point this at fake nodes).
    dev_root: Path = field(default_factory=lambda: _env_path("TOPODRA_DEV_ROOT", Path("/dev")))
    sysfs_root: Path = field(default_factory=lambda: _env_path("TOPODRA_SYSFS_ROOT", Path("/sys")))
    boot_id_file: Path = field(default_factory=lambda: _env_path("TOPODRA_BOOT_ID_FILE", DEFAULT_BOOT_ID_FILE))
    cdi_netdevices: bool = field(
        default_factory=lambda: (_env("TOPODRA_CDI_NETDEVICES", "") or "").lower() in ("1", "true", "yes")
    )
    write_nic_status: bool = True
    health_interval: float = 5.0
    health_resend: float = 10.0
    max_workers: int = 16
    registration_retry: float = 5.0  # re-create the registration socket this long after a refusal
    # TEST ONLY: SIGKILL the process at a named point (see driver.prepare.CRASH_POINTS).
    crash_at: str | None = field(default_factory=lambda: _env("TOPODRA_CRASH_AT"))
    metrics_registry: CollectorRegistry | None = None

    @property
    def paths(self) -> SocketPaths:
        return SocketPaths.build(self.kubelet_root_dir, self.driver_name, self.pod_uid)

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir or self.paths.plugin_dir


class PluginStartError(StartupError):
    """Bad plugin configuration; `topodra driver` prints it and exits 2."""


def _unlink(p: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        p.unlink()


class KubeletPlugin:
    def __init__(
        self,
        cfg: PluginConfig,
        topology_getter: Callable[[], NodeTopology],
        client: KubeClient | None = None,
        claims_api: ClaimsApi | None = None,
    ) -> None:
        self.cfg = cfg
        self.paths = cfg.paths
        problems = self.paths.check()
        if problems:
            raise PluginStartError("; ".join(problems))
        if cfg.crash_at and cfg.crash_at not in CRASH_POINTS:
            raise PluginStartError(f"TOPODRA_CRASH_AT={cfg.crash_at!r}: not one of {', '.join(CRASH_POINTS)}")
        if claims_api is None:
            if client is None:
                raise PluginStartError("the kubelet plugin needs a Kubernetes API client")
            claims_api = KubeClientClaimsApi(client)
        self.metrics = PluginMetrics(cfg.metrics_registry)
        self.boot_id = read_boot_id(cfg.boot_id_file)
        if not self.boot_id:
            log.warning("boot_id_unknown", path=str(cfg.boot_id_file), effect="reboots cannot be detected")
        self.checkpoint = Checkpoint(cfg.effective_state_dir / "checkpoint.json", self.boot_id)
        self.cdi = CdiStore(cfg.cdi_dir, cfg.driver_name)
        self.state = DeviceState(
            DeviceStateConfig(
                driver=cfg.driver_name,
                node_name=cfg.node_name,
                boot_id=self.boot_id,
                dev=DeviceEnv(dev_root=cfg.dev_root, sysfs_root=cfg.sysfs_root, netdevices=cfg.cdi_netdevices),
                serialize_lock=self.paths.serialize_lock if cfg.pod_uid else None,
                write_nic_status=cfg.write_nic_status,
                crash_at=cfg.crash_at,
            ),
            topology_getter,
            claims_api,
            self.cdi,
            self.checkpoint,
            self.metrics,
        )
        self.monitor: health.HealthMonitor | None = None
        if cfg.health_enabled:
            self.monitor = health.HealthMonitor(
                topology_getter,
                [probes.NicLinkProbe(cfg.sysfs_root), probes.NvmlProbe()],
                interval=cfg.health_interval,
                on_change=self._health_changed,
            )
        # Set by the app: called with {device name: reason} whenever the set of unhealthy devices changes.
        self.on_health_change: Callable[[Mapping[str, str]], None] | None = None
        self.registration = registration.RegistrationServicer(
            cfg.driver_name,
            str(self.paths.dra),
            registration.supported_versions(cfg.health_enabled),
            on_status=self._on_registration_status,
        )
        self._dra_server: grpc.Server | None = None
        self._reg_server: grpc.Server | None = None
        self._reg_lock = threading.Lock()
        self._stopping = threading.Event()
        self._retry_timer: threading.Timer | None = None
        self.started_at = 0.0
        self.registered_at: float | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        for d in (self.paths.plugin_dir, self.paths.registry_dir, self.cfg.cdi_dir, self.cfg.effective_state_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.state.recover()
        self._dra_server = self._serve(self.paths.dra, self._dra_handlers(), self.cfg.max_workers)
        self._start_registration()
        if self.monitor is not None:
            self.monitor.start()
        log.info(
            "kubelet_plugin_serving",
            registration_socket=str(self.paths.registration),
            dra_socket=str(self.paths.dra),
            supported_versions=list(self.registration.info.supported_versions),
            cdi_dir=str(self.cfg.cdi_dir),
            dev_root=str(self.cfg.dev_root),
            boot_id=self.boot_id,
        )

    def _dra_handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        hs = dra_service.handlers(self.state)
        if self.monitor is not None:
            hs += health_service.handlers(self.monitor, self.cfg.health_resend)
        return hs

    def _serve(self, sock: Path, handlers: list[grpc.GenericRpcHandler[Any, Any]], workers: int) -> grpc.Server:
        _unlink(sock)  # a stale socket of ours from a previous run
        server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"grpc-{sock.stem}"),
            handlers=handlers,
            options=[("grpc.so_reuseport", 0)],
        )
        if server.add_insecure_port(f"unix://{sock}") == 0:
            raise PluginStartError(f"cannot listen on {sock}")
        server.start()
        return server

    def _start_registration(self) -> None:
        with self._reg_lock:
            if self._stopping.is_set():
                return
            if self._reg_server is not None:
                # A grace, not 0: the kubelet's Notify that triggered this retry may still be in flight
                # (seen under load with a short retry), and it must get its answer, not CANCELLED.
                self._reg_server.stop(1.0)
            self._reg_server = self._serve(self.paths.registration, [self.registration.handler()], 2)

    def _on_registration_status(self, ok: bool, error: str) -> None:
        if ok:
            if self.registered_at is None:
                self.registered_at = time.monotonic()
                log.info("time_to_registered", seconds=round(self.registered_at - self.started_at, 3))
            return
        self.state.node_event("PluginRegistrationRefused", f"kubelet refused {self.cfg.driver_name}: {error}")
        # Kubelets before 1.36 never retry a refused plugin: offer a fresh socket after a while.
        if self._retry_timer is None or not self._retry_timer.is_alive():
            # back off: retry, 2x, 4x ... capped at 5 minutes
            delay = min(300.0, self.cfg.registration_retry * 2 ** min(self.registration.refusals - 1, 10))
            log.info("registration_retry_scheduled", seconds=delay)
            self._retry_timer = threading.Timer(delay, self._start_registration)
            self._retry_timer.daemon = True
            self._retry_timer.start()

    def _health_changed(self, unhealthy: Mapping[str, str]) -> None:
        if self.on_health_change is not None:
            self.on_health_change(unhealthy)

    def unhealthy_devices(self) -> dict[str, str]:
        return self.monitor.unhealthy() if self.monitor is not None else {}

    def liveness_problem(self) -> str | None:
        """None while both gRPC servers run and their sockets exist (a deleted socket is never served
        again: restarting the process is the cure), else why not."""
        if self._stopping.is_set():
            return "the kubelet plugin is stopping"
        if self._dra_server is None or not self.paths.dra.is_socket():
            return f"the DRA gRPC server is not serving {self.paths.dra}"
        with self._reg_lock:
            if self._reg_server is not None and not self.paths.registration.is_socket():
                return f"the registration socket {self.paths.registration} is gone"
        return None

    @property
    def registered(self) -> threading.Event:
        return self.registration.registered

    def stop(self, grace: float = 5.0) -> None:
        """Remove the registration socket, finish in-flight calls (up to `grace` s), remove the DRA socket."""
        self._stopping.set()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        with self._reg_lock:
            if self._reg_server is not None:
                _unlink(self.paths.registration)
                self._reg_server.stop(0).wait()
                _unlink(self.paths.registration)
                self._reg_server = None
        if self.monitor is not None:
            self.monitor.stop()
        if self._dra_server is not None:
            self._dra_server.stop(grace).wait()
            _unlink(self.paths.dra)
            self._dra_server = None
        self.state.close()
        log.info("kubelet_plugin_stopped")
