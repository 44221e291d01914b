"""A real node for the local cluster: containerd 2.x + kubelet + (optionally) the topodra driver, as processes.

Everything lives under `<cluster dir>/nodes/<name>/`: containerd's root, state and socket, the kubelet's
root dir, certificates and pod logs, the CDI spec dir containerd reads, the driver's state, one log per
process. The node's pods get their own cgroup root (`/topodra-<id>` in every hierarchy) so that two
clusters on one machine never share `kubepods`. The host traps this works around are in docs/e2e.md.

The parts, one module each: `hostcheck` (can this machine run a node), `containerd`, `kubelet`
(configuration, kernel settings), `nodestate` (the record a crashed run leaves), `teardown` (which
`LocalCluster.down()` also calls) and `podspec` (pods for a real node). This module puts them in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from driver.model import DRIVER_NAME
from topodra_cli.localcluster import nodens, pki
from topodra_cli.localcluster.cluster import LocalCluster
from topodra_cli.localcluster.containerd import CONTAINERD_VERSION, Containerd, ensure_containerd
from topodra_cli.localcluster.gates import gates
from topodra_cli.localcluster.hostcheck import (
    default_node_name,
    host_problems,
    resolves_to_loopback,
    socket_path_problems,
)
from topodra_cli.localcluster.images import Image, build_images, import_images
from topodra_cli.localcluster.kubeconfig import write_kubeconfig
from topodra_cli.localcluster.kubelet import kubelet_argv, kubelet_config, record_kernel_tunables
from topodra_cli.localcluster.mounts import cgroup_mounts
from topodra_cli.localcluster.nodestate import STATE_FILE, RealNodeState, load_state, save_state
from topodra_cli.localcluster.processes import ClusterError, ProcessSpec, ProcessTable, free_port
from topodra_cli.localcluster.teardown import teardown_node


class RealNode:
    """One real node of a LocalCluster: containerd, kubelet and the topodra driver as processes."""

    def __init__(
        self,
        cluster: LocalCluster,
        name: str | None = None,
        *,
        topology: Path | None = None,
        driver_args: Sequence[str] = (),
        containerd_version: str = CONTAINERD_VERSION,
        isolated: bool = False,
        binds: Mapping[str, Path] | None = None,
    ) -> None:
        """`isolated`: a node of several on this machine, with a real node's host paths (see `nodens`)."""
        self.cluster = cluster
        self.isolated = isolated
        self.extra_binds = dict(binds or {})
        self.name = name or default_node_name()
        self.dir = cluster.dir / "nodes" / self.name
        self.topology = topology.resolve() if topology is not None else None
        self.driver_args = tuple(driver_args)
        self.containerd = Containerd(self.dir, containerd_version)
        self.procs = ProcessTable(self.dir)
        self.state: RealNodeState | None = load_state(self.dir)
        self._driver_log_offset = 0
        self._wrap: tuple[str, ...] = ()

    def host_binds(self) -> dict[str, Path]:
        """Host path as the node's pods see it -> this node's dir (isolated nodes only)."""
        return {
            "/var/lib/kubelet": self.kubelet_root,
            "/var/run/cdi": self.cdi_dir,
            "/etc/kubernetes/topodra": self.dir / "etc-topodra",
            "/var/run/topodra": self.dir / "run-topodra",
            **self.extra_binds,
        }

    # ---- paths ----------------------------------------------------------------------------------
    @property
    def containerd_socket(self) -> Path:
        return self.containerd.socket

    @property
    def kubelet_root_seen_by_node(self) -> Path:
        """The kubelet's --root-dir. An isolated node's kubelet uses the real node's path: the sockets it
        dials there (per-pod registration sockets with a UID in the name) must stay under the 107-byte
        limit of a unix socket path, which the node dir under /tmp would exceed."""
        return Path("/var/lib/kubelet") if self.isolated else self.kubelet_root

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cdi_dir(self) -> Path:
        """Where the driver writes CDI specs and containerd reads them."""
        return self.containerd.cdi_dir

    @property
    def pod_logs_dir(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def driver_state_dir(self) -> Path:
        return self.dir / "driver-state"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    def registration_socket(self) -> Path:
        return self.kubelet_root / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"

    def log_path(self, component: str) -> Path:
        return self.procs.log_path(component)

    def log_tail(self, component: str, lines: int = 50) -> str:
        return self.procs.tail(component, lines)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, *, build: bool = True, timeout: float = 120) -> RealNode:
        """Start containerd, import the local images, start the kubelet (and the driver); wait until Ready."""
        self._check_can_start()
        if self.dir.exists():
            if (self.dir / STATE_FILE).exists():
                print(f"realnode: cleaning previous node dir {self.dir}", file=sys.stderr)
            teardown_node(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
        ensure_containerd(self.containerd.version, build=build)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessTable(self.dir)
        cg_id = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self.state = RealNodeState(
            name=self.name,
            cgroup_root=f"/topodra-{cg_id}",
            kubelet_port=free_port(),
            kubelet_healthz_port=free_port(),
            containerd_version=self.containerd.version,
            driver=self.topology is not None,
            cgroup_mounts=[str(m) for m in cgroup_mounts()],
        )
        if self.isolated:
            self.state.node_ip = nodens.node_ip_for(self.dir)
            self.state.binds = {t: str(p) for t, p in self.host_binds().items()}
        save_state(self.dir, self.state)
        try:
            deadline = time.monotonic() + timeout
            self._make_dirs(self.state)
            if self.isolated:
                nodens.add_node_ip(self.state.node_ip)
                holder = nodens.start_mount_namespace(self.procs, self.host_binds())
                self._wrap = nodens.enter(holder)
            self.containerd.start(self.procs, deadline, wrap=self._wrap)
            import_images(self.containerd.bin_dir / "ctr", str(self.containerd.socket),
                          build_images(self.dir / "images"))
            self._start_kubelet(self.state)
            self.wait_ready(deadline - time.monotonic())
            if self.topology is not None:
                self._start_driver()
        except BaseException:
            self.stop(delete_node=True)
            raise
        return self

    def _check_can_start(self) -> None:
        problems = host_problems()
        if problems:
            raise ClusterError("this machine cannot run a real node: " + "; ".join(problems))
        if not resolves_to_loopback(self.name):
            raise ClusterError(
                f"node name {self.name!r} does not resolve to a loopback address; the apiserver reaches the "
                f"kubelet by that name. Use {default_node_name()!r} or add '127.0.0.1 {self.name}' to /etc/hosts"
            )
        too_long = socket_path_problems(Path(f"{self.containerd.socket}.ttrpc"),
                                        *(() if self.isolated else (self.registration_socket(),)))
        if too_long:
            raise ClusterError(too_long[0])
        if self.topology is not None:
            self._check_topology(self.topology)
        if self.cluster.state is None:
            raise ClusterError("the cluster is not running")
        kubelet_bin = self.cluster.bin_dir / "kubelet"
        if not os.access(kubelet_bin, os.X_OK):
            raise ClusterError(f"kubelet not found at {kubelet_bin}; run `make k8s` (hack/build-k8s.sh)")

    def _check_topology(self, path: Path) -> None:
        """The driver would run on but publish nothing: fail early when the file does not describe this node."""
        from driver.discovery.common import TopologyFileError
        from driver.discovery.filebackend import load_topology_file

        try:
            names = [n.node_name for n in load_topology_file(path)]
        except TopologyFileError as e:
            raise ClusterError(str(e)) from e
        if self.name not in names:
            raise ClusterError(f"topology file {path} describes no node named {self.name!r} (it has "
                               f"{', '.join(names[:5]) or 'none'}); the real node is named {self.name!r}")

    def stop(self, *, delete_node: bool = True) -> None:
        """Stop everything of this node and clean up mounts and cgroups; the logs stay."""
        if delete_node and self.cluster.state is not None and self.cluster.procs.running("kube-apiserver"):
            with contextlib.suppress(Exception):  # best effort: tearing down matters more than the Node object
                self.cluster.delete_node(self.name)
        teardown_node(self.dir)

    def __enter__(self) -> RealNode:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---- components -----------------------------------------------------------------------------
    def _make_dirs(self, st: RealNodeState) -> None:
        for d in (self.containerd.dir, self.kubelet_root, self.cdi_dir, self.pod_logs_dir, self.driver_state_dir,
                  self.containerd.cni_conf_dir, self.dir / "pki", self.dir / "images"):
            d.mkdir(parents=True, exist_ok=True)
        for root in st.cgroup_roots():
            root.mkdir(exist_ok=True)

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd in the CRI namespace."""
        return self.containerd.ctr(*args, check=check, timeout=timeout)

    def load_image(self, image: Image) -> None:
        """Import an OCI image tarball (e.g. from `topodra_cli.imagebuild`) into this node's containerd."""
        import_images(self.containerd.bin_dir / "ctr", str(self.containerd.socket), [image])

    def container_tasks(self) -> list[str]:
        return self.containerd.tasks()

    def _start_kubelet(self, st: RealNodeState) -> None:
        record_kernel_tunables()
        ca = pki.CertPair(self.cluster.pki_dir / "ca.crt", self.cluster.pki_dir / "ca.key")
        cert = pki.issue(ca, self.dir / "pki", "kubelet-client", f"system:node:{self.name}", org="system:nodes")
        write_kubeconfig(self.kubeconfig, self.cluster.server, ca.cert, cert, f"system:node:{self.name}")
        cfg = self.dir / "kubelet-config.yaml"
        assert self.cluster.state is not None
        # The control plane's gates: a kubelet with other gates would disagree with it about the same objects.
        feature_gates = gates(self.cluster.version, self.cluster.state.generic_workload)
        doc = kubelet_config(st, runtime_socket=self.containerd.socket, pod_logs_dir=self.pod_logs_dir,
                             client_ca=ca.cert, feature_gates=feature_gates)
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        argv = kubelet_argv(self.cluster.bin_dir / "kubelet", config=cfg, kubeconfig=self.kubeconfig,
                            root_dir=self.kubelet_root_seen_by_node, cert_dir=self.dir / "pki" / "kubelet-serving",
                            node_name=self.name, node_ip=st.node_ip)
        # The kubelet finds runc and the shim on PATH; containerd's bin dir first.
        path = f"{self.containerd.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.procs.start(ProcessSpec("kubelet", argv, env={"PATH": path}, wrap=self._wrap))

    def wait_ready(self, timeout: float = 90) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.cluster.api_client())
        deadline = time.monotonic() + max(timeout, 1)
        while time.monotonic() < deadline:
            code = self.procs.exited("kubelet")
            if code is not None:
                raise ClusterError(f"kubelet exited with code {code}; log {self.log_path('kubelet')}:\n"
                                   f"{self.log_tail('kubelet', 40)}")
            with contextlib.suppress(client.ApiException):
                node = core.read_node(self.name)
                ready = [c for c in (node.status.conditions or []) if c.type == "Ready"]
                if ready and ready[0].status == "True":
                    return
            time.sleep(0.3)
        raise ClusterError(f"node {self.name} not Ready after {timeout:.0f}s; kubelet log "
                           f"{self.log_path('kubelet')}:\n{self.log_tail('kubelet', 40)}")

    def driver_argv(self) -> tuple[str, ...]:
        assert self.topology is not None
        return (
            sys.executable, "-m", "topodra_cli.main", "driver",
            "--node-name", self.name,
            "--kubeconfig", str(self.cluster.kubeconfig),
            "--backend", "file", "--topology", str(self.topology),
            "--kubelet-root-dir", str(self.kubelet_root),
            "--cdi-dir", str(self.cdi_dir),
            "--state-dir", str(self.driver_state_dir),
            *self.driver_args,
        )

    def _start_driver(self) -> None:
        log = self.log_path("driver")
        self._driver_log_offset = log.stat().st_size if log.exists() else 0
        self.procs.start(ProcessSpec("driver", self.driver_argv()))

    def restart_driver(self) -> None:
        self.procs.stop("driver")
        self._start_driver()

    def wait_driver_registered(self, timeout: float = 60) -> None:
        """Until the driver logs that the kubelet accepted its registration."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.procs.exited("driver")
            if code is not None:
                raise ClusterError(f"driver exited with code {code}; log {self.log_path('driver')}:\n"
                                   f"{self.log_tail('driver', 40)}")
            with contextlib.suppress(OSError), self.log_path("driver").open("rb") as f:
                f.seek(self._driver_log_offset)
                if b'"plugin_registered"' in f.read():
                    return
            time.sleep(0.2)
        raise ClusterError(
            f"the kubelet did not register the driver within {timeout:.0f}s; driver log "
            f"{self.log_path('driver')}:\n{self.log_tail('driver', 30)}\nkubelet log:\n{self.log_tail('kubelet', 30)}"
        )


def add_real_node(
    cluster: LocalCluster,
    name: str | None = None,
    *,
    topology: Path | None = None,
    driver_args: Sequence[str] = (),
    build: bool = True,
    isolated: bool = False,
) -> RealNode:
    """Start a real node (containerd + kubelet, plus the driver when `topology` is given) and wait until Ready."""
    node = RealNode(cluster, name, topology=topology, driver_args=driver_args, isolated=isolated)
    node.start(build=build)
    if node.topology is not None:
        try:
            node.wait_driver_registered()
        except BaseException:
            node.stop()
            raise
    return node
