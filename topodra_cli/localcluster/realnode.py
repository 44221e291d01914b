"""A real node for the local cluster: containerd 2.x + kubelet + (optionally) the topodra driver, as processes.

Everything lives under `<cluster dir>/nodes/<name>/`: containerd's root, state and socket, the kubelet's
root dir, certificates and pod logs, the CDI spec dir containerd reads, the driver's state, one log per
process. The node's pods get their own cgroup root (`/topodra-<id>` in every hierarchy) so that two
clusters on one machine never share `kubepods`.

The traps this works around are in shared/contracts/real-cluster.md ("Real kubelet"): hybrid cgroup
v1 (`failCgroupV1: false`, `cgroupDriver: cgroupfs`), no CAP_SYS_RESOURCE (`restrict_oom_score_adj`),
no registry (local images, a pinned local sandbox image), no pod network (hostNetwork pods only), the
kubelet refusing a loopback node IP (the node name must resolve to loopback so that the apiserver,
which prefers the Hostname address, reaches the kubelet over loopback), and containerd ignoring the
config's gRPC address unless `--address` is given.

`stop()` (and `stop_real_nodes(cluster_dir)`, which `LocalCluster.down()` calls) stops the driver, the
kubelet, every container task and containerd, kills what is left in the node's cgroups, removes them,
unmounts everything under the node dir and deletes all but the logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from topodra_cli.localcluster import pki
from topodra_cli.localcluster.binaries import cache_root, ensure_built
from topodra_cli.localcluster.gates import GATES
from topodra_cli.localcluster.images import BUSYBOX_IMAGE, PAUSE_IMAGE, build_images, find_busybox, import_images
from topodra_cli.localcluster.kubeconfig import write_kubeconfig
from topodra_cli.localcluster.processes import (
    ClusterError,
    ProcessSpec,
    ProcessTable,
    free_port,
    pid_cmdline,
)

if TYPE_CHECKING:
    from topodra_cli.localcluster.cluster import LocalCluster

CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
DRIVER_NAME = "topodra.dev"
REAL_NODE_LABEL = "topodra.dev/real-node"
# Other tests share the cluster: only pods that tolerate this taint land on a real node.
REAL_NODE_TAINT = {"key": REAL_NODE_LABEL, "value": "true", "effect": "NoSchedule"}
STATE_FILE = "realnode.json"
STOP_ORDER = ("driver", "kubelet", "containerd")
KEEP_ON_STOP = ("logs", "pids", STATE_FILE)
BUSYBOX = BUSYBOX_IMAGE
PAUSE = PAUSE_IMAGE
# Kernel settings every kubelet sets at start (setupKernelTunables); recorded before the first of our
# kubelets starts and restored when the last one stops. /run is wiped by a reboot, like the settings.
KERNEL_TUNABLES = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
TUNABLES_RECORD = Path("/run/topodra/kernel-tunables-before-kubelet.json")


def containerd_bin_dir(version: str = CONTAINERD_VERSION) -> Path:
    return cache_root() / "containerd" / version / "bin"


def ensure_containerd(version: str = CONTAINERD_VERSION, build: bool = True) -> Path:
    """The bin dir of the pinned containerd; built with hack/build-containerd.sh when missing."""
    return ensure_built(f"containerd {version}", containerd_bin_dir(version), CONTAINERD_BINARIES,
                        "build-containerd.sh", {"TOPODRA_CONTAINERD_VERSION": version}, build)


# ---- host checks -------------------------------------------------------------------------------


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of every mount this process sees, innermost last."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5 or not right:
                continue
            out.append((_unescape(fields[4]), right.split()[0]))
    return out


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    return path.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def cgroup_mounts() -> list[Path]:
    """Mount points of every cgroup hierarchy (v1 controllers and the v2 unified one)."""
    return sorted({Path(mp) for mp, fs in _mountinfo() if fs in ("cgroup", "cgroup2")})


def machine_cannot() -> list[str]:
    """Why this machine can never run a real node (not root, cgroups not writable); empty when it can."""
    problems = []
    if os.geteuid() != 0:
        return ["not running as root (the kubelet and runc need root)"]
    mounts = cgroup_mounts()
    if not mounts:
        problems.append("no cgroup filesystem mounted")
    probe = f"topodra-probe-{os.getpid()}"
    for m in mounts:
        try:
            (m / probe).mkdir()
            (m / probe).rmdir()
        except OSError as e:
            problems.append(f"cannot create a cgroup in {m}: {e.strerror or e}")
            break
    return problems


def host_problems() -> list[str]:
    """Why this machine cannot run a real node now: machine_cannot() plus missing Debian packages."""
    problems = machine_cannot()
    if shutil.which("runc") is None:
        problems.append("runc not found on PATH (install Debian's runc: `make apt`)")
    try:
        find_busybox()
    except ClusterError as e:
        problems.append(str(e))
    if not any(Path(d, "loopback").exists() for d in CNI_BIN_DIRS):
        problems.append("CNI loopback plugin not found in /usr/lib/cni (install containernetworking-plugins)")
    return problems


def default_node_name() -> str:
    """This machine's hostname when it resolves to loopback, else `localhost`.

    The apiserver reaches kubelets by their Hostname address (the node name); with a name that resolves
    to loopback, logs and exec stay on 127.0.0.1.
    """
    h = socket.gethostname()
    return h if _resolves_to_loopback(h) else "localhost"


def _resolves_to_loopback(name: str) -> bool:
    try:
        return socket.gethostbyname(name).startswith("127.")
    except OSError:
        return False


# ---- the node ----------------------------------------------------------------------------------


@dataclass
class RealNodeState:
    name: str
    cgroup_root: str  # e.g. /topodra-1a2b3c4d
    kubelet_port: int
    kubelet_healthz_port: int
    containerd_version: str
    driver: bool
    cgroup_mounts: list[str] = field(default_factory=list)


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
    ) -> None:
        self.cluster = cluster
        self.name = name or default_node_name()
        self.dir = cluster.dir / "nodes" / self.name
        self.topology = topology.resolve() if topology is not None else None
        self.driver_args = tuple(driver_args)
        self.containerd_version = containerd_version
        self.procs = ProcessTable(self.dir)
        self.state: RealNodeState | None = _load_state(self.dir)
        self._driver_log_offset = 0

    # ---- paths ----------------------------------------------------------------------------------
    @property
    def containerd_dir(self) -> Path:
        return self.dir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cdi_dir(self) -> Path:
        """Where the driver writes CDI specs and containerd reads them."""
        return self.dir / "cdi"

    @property
    def pod_logs_dir(self) -> Path:
        return self.dir / "pod-logs"

    @property
    def driver_state_dir(self) -> Path:
        return self.dir / "driver-state"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    @property
    def bin_dir(self) -> Path:
        return containerd_bin_dir(self.containerd_version)

    def log_path(self, component: str) -> Path:
        return self.procs.log_path(component)

    def log_tail(self, component: str, lines: int = 50) -> str:
        return self.procs.tail(component, lines)

    # ---- lifecycle ------------------------------------------------------------------------------
    def start(self, *, build: bool = True, timeout: float = 120) -> RealNode:
        """Start containerd, import the local images, start the kubelet (and the driver); wait until Ready."""
        problems = host_problems()
        if problems:
            raise ClusterError("this machine cannot run a real node: " + "; ".join(problems))
        if not _resolves_to_loopback(self.name):
            raise ClusterError(
                f"node name {self.name!r} does not resolve to a loopback address; the apiserver reaches the "
                f"kubelet by that name. Use {default_node_name()!r} or add '127.0.0.1 {self.name}' to /etc/hosts"
            )
        longest = self.kubelet_root / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"
        for sock in (Path(f"{self.containerd_socket}.ttrpc"), longest):
            if len(str(sock)) > 107:  # AF_UNIX sun_path
                raise ClusterError(f"socket path {sock} is longer than 107 characters; use a shorter cluster dir")
        if self.topology is not None:
            self._check_topology(self.topology)
        if self.cluster.state is None:
            raise ClusterError("the cluster is not running")
        if self.dir.exists():
            if (self.dir / STATE_FILE).exists():
                print(f"realnode: cleaning previous node dir {self.dir}", file=sys.stderr)
            _teardown(self.dir)
            shutil.rmtree(self.dir, ignore_errors=True)
        kubelet_bin = self.cluster.bin_dir / "kubelet"
        if not os.access(kubelet_bin, os.X_OK):
            raise ClusterError(f"kubelet not found at {kubelet_bin}; run `make k8s` (hack/build-k8s.sh)")
        ensure_containerd(self.containerd_version, build=build)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessTable(self.dir)
        cg_id = hashlib.sha256(str(self.dir).encode()).hexdigest()[:10]
        self.state = RealNodeState(
            name=self.name,
            cgroup_root=f"/topodra-{cg_id}",
            kubelet_port=free_port(),
            kubelet_healthz_port=free_port(),
            containerd_version=self.containerd_version,
            driver=self.topology is not None,
            cgroup_mounts=[str(m) for m in cgroup_mounts()],
        )
        (self.dir / STATE_FILE).write_text(json.dumps(asdict(self.state), indent=2))
        try:
            deadline = time.monotonic() + timeout
            self._make_dirs()
            self._start_containerd(deadline)
            self._import_images()
            self._start_kubelet()
            self.wait_ready(deadline - time.monotonic())
            if self.topology is not None:
                self._start_driver()
        except BaseException:
            self.stop(delete_node=True)
            raise
        return self

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
            from kubernetes import client

            with contextlib.suppress(Exception):
                client.CoreV1Api(self.cluster.api_client()).delete_node(self.name)
        _teardown(self.dir)

    def __enter__(self) -> RealNode:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ---- components -----------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        for d in (self.containerd_dir, self.kubelet_root, self.cdi_dir, self.pod_logs_dir, self.driver_state_dir,
                  self.dir / "cni" / "net.d", self.dir / "pki", self.dir / "images"):
            d.mkdir(parents=True, exist_ok=True)
        st = self.state
        assert st is not None
        for m in st.cgroup_mounts:
            Path(m, st.cgroup_root.lstrip("/")).mkdir(exist_ok=True)

    def _containerd_config(self) -> str:
        d = self.containerd_dir
        cni_bin = [c for c in CNI_BIN_DIRS if Path(c, "loopback").exists()]
        q = json.dumps  # TOML basic strings are JSON strings for these paths
        return f"""version = 4
root = {q(str(d / "root"))}
state = {q(str(d / "state"))}

[plugins]
  # Version 4 keeps the server addresses in plugins; start with --address all the same (real-cluster.md).
  [plugins.'io.containerd.server.v1.grpc']
    address = {q(str(self.containerd_socket))}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = {q(str(self.containerd_socket) + ".ttrpc")}
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {q(PAUSE_IMAGE)}
  [plugins.'io.containerd.cri.v1.runtime']
    # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails in runc.
    restrict_oom_score_adj = true
    cdi_spec_dirs = [{q(str(self.cdi_dir))}]
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{", ".join(q(c) for c in cni_bin)}]
      conf_dir = {q(str(self.dir / "cni" / "net.d"))}
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = {q(str(d / "runc"))}
  [plugins.'io.containerd.internal.v1.opt']
    path = {q(str(d / "opt"))}
  [plugins.'io.containerd.nri.v1.nri']
    # NRI's socket is machine-global (/var/run/nri/nri.sock); a second containerd would clash.
    disable = true
"""

    def _start_containerd(self, deadline: float) -> None:
        (self.dir / "cni" / "net.d" / "10-loopback.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "topodra-loopback", "plugins": [{"type": "loopback"}],
        }, indent=2))
        cfg = self.containerd_dir / "config.toml"
        cfg.write_text(self._containerd_config())
        path = f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.procs.start(ProcessSpec("containerd", (
            str(self.bin_dir / "containerd"), "--config", str(cfg), "--address", str(self.containerd_socket),
        ), env={"PATH": path}))
        last = ""
        while time.monotonic() < deadline:
            code = self.procs.exited("containerd")
            if code is not None:
                raise ClusterError(f"containerd exited with code {code} during start; log "
                                   f"{self.log_path('containerd')}:\n{self.log_tail('containerd', 30)}")
            if self.containerd_socket.exists():
                out = self.ctr("version", check=False)
                if out.returncode == 0:
                    return
                last = out.stderr.strip()
            time.sleep(0.1)
        raise ClusterError(f"containerd not serving on {self.containerd_socket} ({last}); log "
                           f"{self.log_path('containerd')}:\n{self.log_tail('containerd', 30)}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd in the CRI namespace."""
        argv = [str(self.bin_dir / "ctr"), "--address", str(self.containerd_socket), "-n", "k8s.io", *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {out.stderr.strip()[-1500:]}")
        return out

    def _import_images(self) -> None:
        images = build_images(self.dir / "images")
        import_images(self.bin_dir / "ctr", str(self.containerd_socket), images)

    def _kubelet_config(self) -> dict[str, Any]:
        st = self.state
        assert st is not None
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": st.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": st.kubelet_healthz_port,
            # Hybrid cgroup v1 machines: 1.36+ refuses cgroup v1 unless told not to.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "cgroupRoot": st.cgroup_root,
            "failSwapOn": False,
            "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "podLogsDir": str(self.pod_logs_dir),
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.cluster.pki_dir / "ca.crt")}},
            "authorization": {"mode": "AlwaysAllow"},  # loopback-only test node
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%", "imagefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
            "registerWithTaints": [REAL_NODE_TAINT],
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "featureGates": dict(GATES[self.cluster.version]),
        }

    def _start_kubelet(self) -> None:
        st = self.state
        assert st is not None
        _record_kernel_tunables()
        ca = pki.CertPair(self.cluster.pki_dir / "ca.crt", self.cluster.pki_dir / "ca.key")
        cert = pki.issue(ca, self.dir / "pki", "kubelet-client", f"system:node:{self.name}", org="system:nodes")
        write_kubeconfig(self.kubeconfig, self.cluster.server, ca.cert, cert, f"system:node:{self.name}")
        cfg = self.dir / "kubelet-config.yaml"
        cfg.write_text(yaml.safe_dump(self._kubelet_config(), sort_keys=False))
        path = f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        self.procs.start(ProcessSpec("kubelet", (
            str(self.cluster.bin_dir / "kubelet"),
            f"--config={cfg}", f"--kubeconfig={self.kubeconfig}", f"--root-dir={self.kubelet_root}",
            f"--cert-dir={self.dir / 'pki' / 'kubelet-serving'}", f"--hostname-override={self.name}",
            f"--node-labels={REAL_NODE_LABEL}=true",
            "--v=2",
        ), env={"PATH": path}))

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

    def registration_socket(self) -> Path:
        return self.kubelet_root / "plugins_registry" / f"{DRIVER_NAME}-reg.sock"

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

    def container_tasks(self) -> list[str]:
        out = self.ctr("tasks", "ls", "-q", check=False)
        return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]


# ---- teardown (also for nodes of killed runs) --------------------------------------------------


def _load_state(node_dir: Path) -> RealNodeState | None:
    try:
        return RealNodeState(**json.loads((node_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def stop_real_nodes(cluster_dir: Path) -> None:
    """Tear down every real node under `<cluster_dir>/nodes` (LocalCluster.down and stale-dir cleanup)."""
    nodes = cluster_dir / "nodes"
    if not nodes.is_dir():
        return
    for d in sorted(nodes.iterdir()):
        if d.is_dir() and ((d / STATE_FILE).exists() or (d / "pids").is_dir()):
            _teardown(d)


def _teardown(node_dir: Path) -> None:
    if node_dir.parent.name != "nodes":  # never clean anything but <cluster>/nodes/<name>
        raise ValueError(f"{node_dir} is not a real node dir")
    st = _load_state(node_dir)
    procs = ProcessTable(node_dir)
    sock = node_dir / "containerd" / "containerd.sock"
    bin_dir = containerd_bin_dir(st.containerd_version if st else CONTAINERD_VERSION)
    for name in ("driver", "kubelet"):
        procs.stop(name)
    _restore_kernel_tunables()
    if procs.running("containerd"):
        _kill_tasks(bin_dir / "ctr", sock)
    for name in [n for n in procs.names() if n not in STOP_ORDER] + ["containerd"]:
        procs.stop(name)
    _kill_shims(sock)
    if st is not None:
        _remove_cgroups(st)
    _unmount_under(node_dir)
    _remove_container_log_links(node_dir / "pod-logs")
    leftover = [mp for mp, _ in _mountinfo() if mp == str(node_dir) or mp.startswith(f"{node_dir}/")]
    if leftover:
        print(f"realnode: warning: still mounted, keeping {node_dir}: {leftover[:5]}", file=sys.stderr)
        return
    for child in node_dir.iterdir() if node_dir.is_dir() else ():
        if child.name in KEEP_ON_STOP:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (node_dir / STATE_FILE).unlink(missing_ok=True)


def _record_kernel_tunables() -> None:
    if TUNABLES_RECORD.exists():
        return
    values = {}
    for t in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            values[t] = Path("/proc/sys", t).read_text().strip()
    with contextlib.suppress(OSError):
        TUNABLES_RECORD.parent.mkdir(parents=True, exist_ok=True)
        tmp = TUNABLES_RECORD.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(values))
        tmp.rename(TUNABLES_RECORD)


def _restore_kernel_tunables() -> None:
    """Once no real-node kubelet runs on the machine any more, put back what the first one changed."""
    if not TUNABLES_RECORD.exists() or any(_pids_by_cmdline("--hostname-override=")):
        return
    with contextlib.suppress(OSError, ValueError):
        for t, v in json.loads(TUNABLES_RECORD.read_text()).items():
            if t in KERNEL_TUNABLES:
                with contextlib.suppress(OSError):
                    Path("/proc/sys", t).write_text(f"{v}\n")
        TUNABLES_RECORD.unlink()


def _kill_tasks(ctr: Path, sock: Path) -> None:
    """Stopping containerd does not stop containers: kill and delete every task first."""
    if not ctr.exists():
        return

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ctr), "--address", str(sock), "-n", "k8s.io", *args],
                              capture_output=True, text=True, timeout=30, check=False)

    with contextlib.suppress(subprocess.TimeoutExpired):
        tasks = [t for t in run("tasks", "ls", "-q").stdout.split() if t]
        for t in tasks:
            run("tasks", "kill", "-s", "SIGKILL", t)
        deadline = time.monotonic() + 10
        for t in tasks:
            while run("tasks", "delete", t).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        for t in tasks:
            run("tasks", "delete", "--force", t)


def _pids_by_cmdline(needle: str) -> Iterator[int]:
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and needle in pid_cmdline(int(p.name)):
            yield int(p.name)


def _kill_shims(sock: Path) -> None:
    """Shims of this node's containerd (their command line names its socket) that outlived it."""
    for pid in _pids_by_cmdline(f"-address {sock} "):
        if "containerd-shim" in pid_cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cgroup_dirs(st: RealNodeState) -> list[Path]:
    roots = [Path(m, st.cgroup_root.lstrip("/")) for m in st.cgroup_mounts]
    out: list[Path] = []
    for r in roots:
        if r.is_dir():
            out.extend(Path(dp) for dp, _, _ in os.walk(r))
    return sorted(out, key=lambda p: len(p.parts), reverse=True)  # deepest first


def _remove_cgroups(st: RealNodeState) -> None:
    """Kill what still runs in the node's cgroups (its containers only), then remove them deepest first."""
    if not st.cgroup_root.strip("/"):
        return
    for attempt in range(50):
        dirs = _cgroup_dirs(st)
        if not dirs:
            return
        for d in dirs:
            with contextlib.suppress(OSError):
                for pid in (d / "cgroup.procs").read_text().split():
                    if int(pid) != os.getpid():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        for d in dirs:
            with contextlib.suppress(OSError):
                d.rmdir()
        if attempt:
            time.sleep(0.1)
    left = _cgroup_dirs(st)
    if left:
        print(f"realnode: warning: could not remove cgroups {[str(p) for p in left[:5]]}", file=sys.stderr)


def _unmount_under(node_dir: Path) -> None:
    """Unmount everything at or below node_dir, deepest first (the kubelet bind-mounts its root dir)."""
    prefix = str(node_dir)
    for _ in range(5):
        mps = [mp for mp, _ in _mountinfo() if mp == prefix or mp.startswith(prefix + "/")]
        if not mps:
            return
        for mp in sorted(set(mps), key=len, reverse=True):
            r = subprocess.run(["umount", mp], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True, text=True, check=False)


def _remove_container_log_links(pod_logs: Path) -> None:
    """The kubelet also links each container log into /var/log/containers; drop this node's links."""
    d = Path("/var/log/containers")
    if not d.is_dir():
        return
    for link in d.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(f"{pod_logs}/"):
                link.unlink()


def add_real_node(
    cluster: LocalCluster,
    name: str | None = None,
    *,
    topology: Path | None = None,
    driver_args: Sequence[str] = (),
    build: bool = True,
) -> RealNode:
    """Start a real node (containerd + kubelet, plus the driver when `topology` is given) and wait until Ready."""
    node = RealNode(cluster, name, topology=topology, driver_args=driver_args)
    node.start(build=build)
    if node.topology is not None:
        try:
            node.wait_driver_registered()
        except BaseException:
            node.stop()
            raise
    return node


def real_node_pod(
    name: str,
    command: str,
    *,
    node_name: str,
    claims: Sequence[tuple[str, str]] = (),
    image: str = BUSYBOX_IMAGE,
) -> dict[str, Any]:
    """A hostNetwork pod pinned to a real node: runs `sh -c command` once. `claims` = (name, template)."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": True,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "nodeSelector": {"kubernetes.io/hostname": node_name, REAL_NODE_LABEL: "true"},
            "tolerations": [{"key": REAL_NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", command],
            }],
        },
    }
    if claims:
        pod["spec"]["resourceClaims"] = [{"name": n, "resourceClaimTemplateName": t} for n, t in claims]
        pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": n} for n, _ in claims]}
    return pod
