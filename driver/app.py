"""The driver process: discovery + slice publishing (+ the kubelet plugin), as a testable object.

`DriverApp(cfg).run()` blocks until `stop()`; `rediscover()` is what SIGHUP calls. Tests run it in a
thread or as a `topodra driver ...` subprocess.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from driver.devicehealth import mark_unhealthy
from driver.discovery import BackendConfig, DiscoveryError, discover_fleet, discover_node
from driver.errors import StartupError
from driver.model import DRIVER_NAME, NodeTopology
from driver.publisher import PublisherMetrics, PublishLoop, SlicePublisher
from kubeaccess.backoff import Backoff
from kubeaccess.errors import CredentialsError
from kubeaccess.sync import KubeClient

if TYPE_CHECKING:
    from driver.kubeletplugin.runner import KubeletPlugin
    from driver.probeserver import ProbeServer

log = structlog.get_logger("topodra.driver")


@dataclass(frozen=True)
class DriverConfig:
    node_name: str = ""
    kubeconfig: str | None = None
    kube_context: str | None = None  # None: the kubeconfig's current-context
    backends: tuple[str, ...] = ("file",)
    topology_file: Path | None = None
    sysfs_root: Path = field(default_factory=lambda: Path("/sys"))
    include_virtual_nics: bool = False
    driver_name: str = DRIVER_NAME
    rediscover_interval: float = 60.0
    max_devices_per_slice: int | None = None
    # fleet mode
    fleet: bool = False
    create_nodes: bool = False
    label_nodes: bool = False
    once: bool = False
    workers: int = 16
    # kubelet plugin
    kubelet_plugin: bool = True
    kubelet_root_dir: Path = field(default_factory=lambda: Path("/var/lib/kubelet"))
    cdi_dir: Path = field(default_factory=lambda: Path("/var/run/cdi"))
    state_dir: Path | None = None  # default <kubelet root>/plugins/<driver>
    pod_uid: str | None = None
    health: bool = True
    dev_root: Path | None = None  # where device nodes are looked up (default /dev or $TOPODRA_DEV_ROOT)
    shutdown_grace: float = 5.0
    metrics_port: int = 0  # also serves /healthz and /readyz
    metrics_host: str = "0.0.0.0"
    driver_root: Path | None = None  # mounted host driver root: libnvidia-ml.so.1 is searched below it
    boot_id_file: Path | None = None  # default /proc/sys/kernel/random/boot_id (or $TOPODRA_BOOT_ID_FILE)

    def backend_config(self) -> BackendConfig:
        return BackendConfig(
            node_name=self.node_name,
            backends=self.backends,
            topology_file=self.topology_file,
            sysfs_root=self.sysfs_root,
            include_virtual_nics=self.include_virtual_nics,
            driver_root=self.driver_root,
        )

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir or self.kubelet_root_dir / "plugins" / self.driver_name


class DriverApp:
    def __init__(self, cfg: DriverConfig, client: KubeClient | None = None) -> None:
        if not cfg.fleet and not cfg.node_name:
            raise StartupError("--node-name (or $NODE_NAME) is required unless --fleet is given")
        if cfg.fleet and cfg.topology_file is None:
            raise StartupError("--fleet needs --topology FILE")
        self.cfg = cfg
        try:
            self.client = client or KubeClient.load(
                cfg.kubeconfig, pool_size=max(16, cfg.workers), context=cfg.kube_context, user_agent="topodra-driver"
            )
        except (CredentialsError, OSError) as e:
            raise StartupError(f"cannot load Kubernetes credentials: {e}") from e
        self.metrics = PublisherMetrics()
        self._stop = threading.Event()
        self._rediscover = threading.Event()
        self.loop: PublishLoop | None = None
        self.plugin: KubeletPlugin | None = None
        self._raw_topology: NodeTopology | None = None
        self.fleet_runs = 0
        self.fleet_ready = threading.Event()
        self.no_gpus: str | None = None  # why the nvml backend found no GPU (readiness says it)
        self._no_gpus_lock = threading.Lock()
        self.probes: ProbeServer | None = None

    # ---- control ----------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._rediscover.set()
        if self.loop is not None:
            self.loop.stop()

    def rediscover(self) -> None:
        log.info("rediscover_requested")
        self._rediscover.set()
        if self.loop is not None:
            self.loop.rediscover()

    # ---- run --------------------------------------------------------------------------------------
    def run(self) -> int:
        if self.cfg.metrics_port:
            from driver.probeserver import ProbeServer

            self.probes = ProbeServer(
                self.cfg.metrics_host, self.cfg.metrics_port, self.metrics.registry, self.liveness, self.readiness
            ).start()
        try:
            return self._run_fleet() if self.cfg.fleet else self._run_node()
        finally:
            if self.probes is not None:
                self.probes.stop()

    # ---- probes -----------------------------------------------------------------------------------
    def liveness(self) -> str | None:
        """/healthz: None while the process and its gRPC servers run."""
        if self.plugin is not None:
            return self.plugin.liveness_problem()
        return None

    def readiness(self) -> str | None:
        """/readyz: None once registered with the kubelet and the node's slices are published."""
        if self.cfg.fleet:
            return None if self.fleet_ready.is_set() else "fleet slices not published yet"
        if self.cfg.kubelet_plugin:
            if self.plugin is None:
                return "the kubelet plugin is not started yet"
            if not self.plugin.registered.is_set():
                return "not registered with the kubelet yet"
        if self.loop is None or not self.loop.synced.is_set():
            return "ResourceSlices not published yet"
        if self.no_gpus is not None:
            return f"no GPUs: {self.no_gpus}"
        return None

    def _run_node(self) -> int:
        cfg = self.cfg
        bcfg = cfg.backend_config()
        publisher = SlicePublisher(
            self.client, cfg.driver_name, cfg.node_name, metrics=self.metrics, max_devices=cfg.max_devices_per_slice
        )
        self.loop = PublishLoop(publisher, lambda: self._discover(bcfg), rediscover_interval=cfg.rediscover_interval)
        if self._stop.is_set():
            self.loop.stop()
        log.info(
            "driver_starting",
            node=cfg.node_name,
            driver=cfg.driver_name,
            backends=list(cfg.backends),
            kubelet_plugin=cfg.kubelet_plugin,
        )
        if cfg.kubelet_plugin:
            self.plugin = self._start_plugin(bcfg)
        try:
            self.loop.run()
        finally:
            if self.plugin is not None:
                self.plugin.stop(cfg.shutdown_grace)
        return 0

    def _discover(self, bcfg: BackendConfig) -> NodeTopology:
        """Discovery for publishing: devices the plugin's health checks find unhealthy are tainted too."""
        found = discover_node(bcfg)
        self._note_no_gpus(found.no_gpus)
        topo = found.topology
        self._raw_topology = topo
        bad = self.plugin.unhealthy_devices() if self.plugin is not None else {}
        if not bad:
            return topo
        return mark_unhealthy(topo, bad)

    def _note_no_gpus(self, why: str | None) -> None:
        """One error line when GPUs go missing (or the reason changes), one info line when they come back."""
        with self._no_gpus_lock:  # the publish loop and the plugin's first lookup may both discover at start
            if why == self.no_gpus:
                return
            previous, self.no_gpus = self.no_gpus, why
        if why is not None:
            log.error(
                "no_gpus",
                reason=why,
                driver_root=str(self.cfg.driver_root or ""),
                effect="publishing the node's other devices only; not ready",
            )
        else:
            log.info("gpus_found", previous_reason=previous)

    def _topology_for_plugin(self, bcfg: BackendConfig) -> NodeTopology:
        current = self._raw_topology
        if current is not None:
            return current
        found = discover_node(bcfg)
        self._note_no_gpus(found.no_gpus)
        return found.topology

    def _start_plugin(self, bcfg: BackendConfig) -> KubeletPlugin:
        # Here, not at the top: grpc and the plugin's modules are only needed when it is switched on,
        # and fleet mode never serves a kubelet.
        from driver.kubeletplugin.runner import KubeletPlugin, PluginConfig

        cfg = self.cfg
        pcfg = PluginConfig(
            driver_name=cfg.driver_name,
            node_name=cfg.node_name,
            kubelet_root_dir=cfg.kubelet_root_dir,
            cdi_dir=cfg.cdi_dir,
            state_dir=cfg.effective_state_dir,
            pod_uid=cfg.pod_uid,
            health_enabled=cfg.health,
            sysfs_root=cfg.sysfs_root,
            metrics_registry=self.metrics.registry,
        )
        if cfg.dev_root is not None:  # else the plugin's own default ($TOPODRA_DEV_ROOT or /dev)
            pcfg = replace(pcfg, dev_root=cfg.dev_root)
        if cfg.boot_id_file is not None:  # else $TOPODRA_BOOT_ID_FILE or the kernel's
            pcfg = replace(pcfg, boot_id_file=cfg.boot_id_file)
        # The light REST client, not the `kubernetes` package: what that import costs is measured in
        # docs/benchmarks-driver.md ("Resident memory of a one-node driver process").
        plugin = KubeletPlugin(pcfg, lambda: self._topology_for_plugin(bcfg), self.client)
        # health changes re-run discovery, which taints the unhealthy devices in the slices
        plugin.on_health_change = lambda _bad: self.loop.rediscover() if self.loop is not None else None
        plugin.start()
        log.info("kubelet_plugin_started", state_dir=str(cfg.effective_state_dir))
        return plugin

    def _run_fleet(self) -> int:
        from driver.fleet import publish_fleet

        cfg = self.cfg
        assert cfg.topology_file is not None
        backoff = Backoff()
        last: list[NodeTopology] | None = None
        while not self._stop.is_set():
            self._rediscover.clear()
            try:
                topos = discover_fleet(cfg.topology_file)
            except DiscoveryError as e:
                log.error("discovery_failed", reason=str(e), keeping_previous=last is not None)
                if last is None:
                    if cfg.once:
                        return 1
                    self._rediscover.wait(backoff.next())
                    continue
                topos = last
            last = topos
            res = publish_fleet(
                self.client,
                topos,
                cfg.driver_name,
                create_nodes=cfg.create_nodes,
                label_nodes=cfg.label_nodes,
                workers=cfg.workers,
                max_devices=cfg.max_devices_per_slice,
                metrics=self.metrics,
            )
            self.fleet_runs += 1
            if not res.errors:
                self.fleet_ready.set()
                backoff.reset()
            if cfg.once:
                return 0 if not res.errors else 1
            wait = backoff.next() if res.errors else (cfg.rediscover_interval or 3600.0)
            self._rediscover.wait(wait)
        return 0
