"""`topodra driver`: flags and signals around `driver.app.DriverApp`.

SIGTERM/SIGINT stop the driver (slices stay), SIGHUP re-runs discovery (the file backend re-reads
its file).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driver.model import DRIVER_NAME

if TYPE_CHECKING:
    from driver.app import DriverConfig


def _env_bool(name: str) -> bool | None:
    v = os.environ.get(name)
    return None if v is None else v.strip().lower() in ("1", "true", "yes", "on")


def _env_path(name: str) -> Path | None:
    """A path from the environment; unset or empty means none."""
    v = os.environ.get(name)
    return Path(v) if v else None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "driver",
        help="run the DRA driver (discovery, ResourceSlices, kubelet plugin)",
        description="Discover GPUs and NICs and publish them as ResourceSlices; serve the kubelet plugin.",
    )
    env = os.environ.get
    p.add_argument("--node-name", default=env("NODE_NAME", ""), help="this node's name (env NODE_NAME)")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="kubeconfig file; default in-cluster")
    p.add_argument("--context", default=None, help="kubeconfig context (default: its current-context)")
    p.add_argument(
        "--backend",
        default=env("TOPODRA_BACKEND", "nvml,sysfs"),
        help="discovery backends: nvml, sysfs, file, or nvml,sysfs (default nvml,sysfs; env TOPODRA_BACKEND)",
    )
    p.add_argument("--topology", type=Path, default=env("TOPODRA_TOPOLOGY"), help="topology file (file backend)")
    p.add_argument("--sysfs-root", type=Path, default=Path(env("TOPODRA_SYSFS_ROOT", "/sys")), help="sysfs root")
    p.add_argument("--include-virtual-nics", action="store_true", help="also publish NICs without a PCI device")
    p.add_argument("--driver-name", default=env("TOPODRA_DRIVER_NAME", DRIVER_NAME), help="DRA driver name")
    p.add_argument(
        "--rediscover-interval",
        type=float,
        default=float(env("TOPODRA_REDISCOVER_INTERVAL", "60")),
        help="seconds between discoveries (0 = only at start and on SIGHUP)",
    )
    p.add_argument("--max-devices-per-slice", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("TOPODRA_METRICS_PORT", "0")),
        help="serve /metrics, /healthz and /readyz on this port (0 = off; env TOPODRA_METRICS_PORT)",
    )
    p.add_argument(
        "--metrics-host",
        default=env("TOPODRA_METRICS_HOST", "0.0.0.0"),
        help="address of the metrics and probe server (default 0.0.0.0; env TOPODRA_METRICS_HOST)",
    )
    p.add_argument(
        "--driver-root",
        type=Path,
        default=_env_path("TOPODRA_DRIVER_ROOT"),
        help="where the host's NVIDIA driver root is mounted; libnvidia-ml.so.1 is searched below it "
        "(default: the library path; env TOPODRA_DRIVER_ROOT)",
    )
    p.add_argument("--log-level", default=env("TOPODRA_LOG_LEVEL", "info"))
    g = p.add_argument_group("fleet mode (many simulated nodes from one topology file)")
    g.add_argument("--fleet", action="store_true", help="publish slices for every node of --topology")
    g.add_argument("--create-nodes", action="store_true", help="create missing Node objects (fleet mode)")
    g.add_argument("--label-nodes", action="store_true", help="merge the file's node labels into existing Nodes")
    g.add_argument("--once", action="store_true", help="publish once and exit (fleet mode)")
    g.add_argument("--workers", type=int, default=16, help="concurrent API requests (fleet mode)")
    k = p.add_argument_group("kubelet plugin")
    k.add_argument(
        "--kubelet-plugin",
        action=argparse.BooleanOptionalAction,
        default=_env_bool("TOPODRA_KUBELET_PLUGIN"),
        help="serve the kubelet plugin (default: on, off in fleet mode)",
    )
    k.add_argument("--kubelet-root-dir", type=Path, default=Path(env("TOPODRA_KUBELET_ROOT_DIR", "/var/lib/kubelet")))
    k.add_argument("--cdi-dir", type=Path, default=Path(env("TOPODRA_CDI_DIR", "/var/run/cdi")))
    k.add_argument("--state-dir", type=Path, default=None, help="default <kubelet-root-dir>/plugins/<driver-name>")
    k.add_argument("--pod-uid", default=env("POD_UID"), help="this pod's UID (env POD_UID), for rolling updates")
    k.add_argument("--health", action=argparse.BooleanOptionalAction, default=True, help="serve device health")
    k.add_argument(
        "--boot-id-file",
        type=Path,
        default=_env_path("TOPODRA_BOOT_ID_FILE"),
        help="file holding this boot's id; a change means the node rebooted "
        "(default /proc/sys/kernel/random/boot_id; env TOPODRA_BOOT_ID_FILE)",
    )
    k.add_argument(
        "--dev-root",
        type=Path,
        default=Path(env("TOPODRA_DEV_ROOT") or "/dev") if env("TOPODRA_DEV_ROOT") else None,
        help="where device nodes are looked up for CDI specs (default /dev; env TOPODRA_DEV_ROOT)",
    )
    p.set_defaults(handler=run)


def config_from_args(a: argparse.Namespace) -> DriverConfig:
    from driver.app import DriverConfig
    from driver.errors import StartupError

    backends = tuple(b.strip() for b in str(a.backend).split(",") if b.strip())
    if a.topology is not None and a.backend == "nvml,sysfs" and "TOPODRA_BACKEND" not in os.environ:
        backends = ("file",)  # --topology alone means the file backend
    if a.fleet:
        backends = ("file",)
    plugin = a.kubelet_plugin if a.kubelet_plugin is not None else not a.fleet
    if a.fleet and plugin:
        raise StartupError("the kubelet plugin serves one node; it cannot run in fleet mode")
    return DriverConfig(
        node_name=a.node_name,
        kubeconfig=a.kubeconfig,
        kube_context=a.context,
        backends=backends,
        topology_file=a.topology,
        sysfs_root=a.sysfs_root,
        include_virtual_nics=a.include_virtual_nics,
        driver_name=a.driver_name,
        rediscover_interval=a.rediscover_interval,
        max_devices_per_slice=a.max_devices_per_slice,
        fleet=a.fleet,
        create_nodes=a.create_nodes,
        label_nodes=a.label_nodes,
        once=a.once,
        workers=a.workers,
        kubelet_plugin=plugin,
        kubelet_root_dir=a.kubelet_root_dir,
        cdi_dir=a.cdi_dir,
        state_dir=a.state_dir,
        pod_uid=a.pod_uid,
        health=a.health,
        dev_root=a.dev_root,
        metrics_port=a.metrics_port,
        metrics_host=a.metrics_host,
        driver_root=a.driver_root,
        boot_id_file=a.boot_id_file,
    )


def run(a: argparse.Namespace) -> int:
    import structlog

    from driver.app import DriverApp
    from driver.discovery import DiscoveryError
    from driver.errors import StartupError
    from topodra_cli.logsetup import configure

    configure(a.log_level)
    log = structlog.get_logger("topodra.driver")
    try:
        app = DriverApp(config_from_args(a))
    except (StartupError, DiscoveryError) as e:
        log.error("startup_failed", reason=str(e))
        return 2
    done = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        app.stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: app.rediscover())
    try:
        return app.run()
    except (StartupError, DiscoveryError) as e:
        log.error("startup_failed", reason=str(e))
        return 2
    finally:
        done.set()
