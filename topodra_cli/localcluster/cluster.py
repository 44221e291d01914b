"""A real Kubernetes control plane (etcd, apiserver, controller-manager, scheduler) as loopback processes.

The same class backs `topodra local-cluster up/down`, the demo, the benchmarks and the pytest fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubeaccess.credentials import Credentials, load_credentials, ssl_context
from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient, path_escape
from topodra_cli.localcluster import pki, schedulerconfig
from topodra_cli.localcluster.binaries import K8S_VERSION, bin_dir, ensure_binaries
from topodra_cli.localcluster.gates import check_gates, gate_flag, runtime_config
from topodra_cli.localcluster.kubeconfig import write_kubeconfig
from topodra_cli.localcluster.processes import (
    ClusterError,
    ProcessSpec,
    ProcessTable,
    check_port_free,
    free_port,
    pid_alive,
)
from topodra_cli.localcluster.teardown import stop_real_nodes

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
MERGE_PATCH = "application/merge-patch+json"
# Stop order: clients first, etcd last (the apiserver can take long to exit once etcd is gone).
STOP_ORDER = ("heartbeat", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


def default_dir() -> Path:
    return Path(os.environ.get("TOPODRA_CLUSTER_DIR", "/tmp/topodra/cluster"))


@dataclass
class ClusterState:
    version: str
    apiserver_port: int
    etcd_port: int
    etcd_peer_port: int
    kcm_port: int
    scheduler_port: int
    owner_pid: int  # 0 = detached (CLI); else the process whose exit makes the cluster stale
    extenders: list[dict[str, Any]] = field(default_factory=list)
    percentage_of_nodes_to_score: int = 100
    generic_workload: bool = False  # upstream workload-aware (gang) scheduling: GenericWorkload + its API group
    scheduler_base: dict[str, Any] | None = None  # the user's KubeSchedulerConfiguration, before harness additions
    leader_elect: bool = False
    scheduler_wrap: list[str] = field(default_factory=list)


class LocalCluster:
    def __init__(
        self,
        directory: Path | None = None,
        version: str = K8S_VERSION,
        *,
        generic_workload: bool = False,
        scheduler_config: Path | Mapping[str, Any] | None = None,
    ) -> None:
        self.dir = (directory or default_dir()).resolve()
        self.version = version
        # Defaults for up(); a running cluster's actual settings are in self.state.
        self.generic_workload = generic_workload
        self.scheduler_config = scheduler_config
        self.procs = ProcessTable(self.dir)
        self.state: ClusterState | None = None
        self._api: Any = None
        self._kube: KubeClient | None = None

    # ---- paths --------------------------------------------------------------------------------
    @property
    def bin_dir(self) -> Path:
        return bin_dir(self.version)

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        assert self.state is not None
        return f"https://127.0.0.1:{self.state.apiserver_port}"

    def _state_file(self) -> Path:
        return self.dir / "state.json"

    def _save_state(self) -> None:
        assert self.state is not None
        self._state_file().write_text(json.dumps(asdict(self.state), indent=2))

    def _load_state(self) -> ClusterState | None:
        try:
            return ClusterState(**json.loads(self._state_file().read_text()))
        except (OSError, ValueError, TypeError):
            return None

    # ---- lifecycle ----------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self._load_state() is not None and self.procs.running("kube-apiserver")

    @classmethod
    def attach(cls, directory: Path | None = None) -> LocalCluster:
        c = cls(directory)
        st = c._load_state()
        if st is None or not c.procs.running("kube-apiserver"):
            raise ClusterError(f"no running cluster in {c.dir}; start one with `topodra local-cluster up`")
        c.state = st
        c.version = st.version
        c.generic_workload = st.generic_workload
        return c

    def up(
        self,
        *,
        apiserver_port: int | None = None,
        owner_pid: int = 0,
        build: bool = True,
        generic_workload: bool | None = None,
        scheduler_config: Path | Mapping[str, Any] | None = None,
    ) -> None:
        """Start everything and wait until the API serves; a stale dir from a killed run is cleaned first.

        `generic_workload` and `scheduler_config` (a KubeSchedulerConfiguration file or mapping) default to
        the constructor's; both are kept in the state, so scheduler restarts keep them.
        """
        gw = self.generic_workload if generic_workload is None else generic_workload
        base = _scheduler_base(scheduler_config if scheduler_config is not None else self.scheduler_config)
        old = self._load_state()
        if old is not None:
            owner_alive = old.owner_pid == 0 or pid_alive(old.owner_pid)
            if owner_alive and self.procs.running("kube-apiserver"):
                raise ClusterError(
                    f"a cluster is already running in {self.dir} (kubeconfig {self.kubeconfig}); "
                    f"run `topodra local-cluster down --dir {self.dir}` first"
                )
            print(f"local-cluster: cleaning stale cluster dir {self.dir}", file=sys.stderr)
            self._stop_all()
        self._wipe()
        ensure_binaries(self.version, build=build)
        if apiserver_port is not None:
            check_port_free(apiserver_port)
        self.state = ClusterState(
            version=self.version,
            apiserver_port=apiserver_port or free_port(),
            etcd_port=free_port(),
            etcd_peer_port=free_port(),
            kcm_port=free_port(),
            scheduler_port=free_port(),
            owner_pid=owner_pid,
            generic_workload=gw,
            scheduler_base=base,
        )
        self._save_state()
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._check_gates()
            self._start_kcm()
            self._start_scheduler()
            self._start_heartbeat()
            self.wait_default_service_account("default")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        self._stop_all()
        self._state_file().unlink(missing_ok=True)

    def _stop_all(self) -> None:
        stop_real_nodes(self.dir)  # kubelets, containers and containerd first; they unmount and free cgroups
        names = self.procs.names()
        for name in [n for n in names if n not in STOP_ORDER] + [n for n in STOP_ORDER if n in names]:
            self.procs.stop(name)

    def _wipe(self) -> None:
        stop_real_nodes(self.dir)  # never delete a dir that a real node still mounts into
        if self.dir.exists():
            for child in self.dir.iterdir():
                if child.name in ("pids", "logs"):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
            for log in (self.dir / "logs").glob("*.log"):
                log.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs = ProcessTable(self.dir)

    # ---- components ---------------------------------------------------------------------------
    def _make_pki(self) -> None:
        d = self.pki_dir
        d.mkdir(parents=True, exist_ok=True)
        ca = pki.make_ca(d, "ca")
        fp_ca = pki.make_ca(d, "front-proxy-ca")
        pki.issue(ca, d, "apiserver", "kube-apiserver", server_hosts=("127.0.0.1", "localhost", "10.0.0.1",
                                                                          "kubernetes.default.svc"), client=False)
        pki.issue(ca, d, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters")
        pki.issue(fp_ca, d, "front-proxy-client", "front-proxy-client")
        pki.make_sa_keys(d)
        admin = pki.issue(ca, d, "admin", "admin", org="system:masters")
        kcm = pki.issue(ca, d, "kcm", "system:kube-controller-manager")
        sched = pki.issue(ca, d, "scheduler", "system:kube-scheduler")
        server = self.server
        write_kubeconfig(self.kubeconfig, server, ca.cert, admin, "admin")
        write_kubeconfig(self.dir / "kcm.kubeconfig", server, ca.cert, kcm, "kcm")
        write_kubeconfig(self.dir / "scheduler.kubeconfig", server, ca.cert, sched, "scheduler")

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _start_etcd(self) -> None:
        st = self.state
        assert st is not None
        client_url = f"http://127.0.0.1:{st.etcd_port}"
        peer_url = f"http://127.0.0.1:{st.etcd_peer_port}"
        self.procs.start(ProcessSpec("etcd", (
            self._bin("etcd"), "--name", "default", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"default={peer_url}",
            # Test data only: skipping fsync makes every API write several times faster.
            "--unsafe-no-fsync",
        )))
        self._wait_http(f"{client_url}/health", "etcd", tls=False, timeout=30)

    def _apiserver_argv(self) -> tuple[str, ...]:
        st = self.state
        assert st is not None
        p = self.pki_dir
        return (
            self._bin("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{st.etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={st.apiserver_port}",
            # Endpoints validation rejects loopback IPs, so the default reconciler would fail forever.
            "--endpoint-reconciler-type=none",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            f"--runtime-config={runtime_config(st.generic_workload)}",
            f"--feature-gates={gate_flag(self.version, st.generic_workload)}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
        )

    def _start_apiserver(self) -> None:
        self.procs.start(ProcessSpec("kube-apiserver", self._apiserver_argv()))
        self._wait_http(f"{self.server}/readyz", "kube-apiserver", tls=True, timeout=90)

    def restart_apiserver(self) -> None:
        self.procs.stop("kube-apiserver")
        self._start_apiserver()

    def _check_gates(self) -> None:
        assert self.state is not None
        text = self._get(f"{self.server}/metrics")
        wrong = check_gates(self.version, text, self.state.generic_workload)
        if wrong:
            log = self.procs.log_path("kube-apiserver")
            raise ClusterError(f"kube-apiserver did not enable feature gates {wrong}; see {log}")

    def _start_kcm(self) -> None:
        st = self.state
        assert st is not None
        p = self.pki_dir
        kc = str(self.dir / "kcm.kubeconfig")
        self.procs.start(ProcessSpec("kube-controller-manager", (
            self._bin("kube-controller-manager"),
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={st.kcm_port}",
            f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={p / 'ca.crt'}", f"--cluster-signing-key-file={p / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*", "--leader-elect=false",
            f"--feature-gates={gate_flag(self.version, st.generic_workload)}",
        )))
        self._wait_http(f"https://127.0.0.1:{st.kcm_port}/healthz", "kube-controller-manager", tls=False, timeout=60)

    def scheduler_config_path(self) -> Path:
        return self.dir / "scheduler-config.yaml"

    def _write_scheduler_config(self) -> None:
        st = self.state
        assert st is not None
        doc = schedulerconfig.compose(
            st.scheduler_base,
            kubeconfig=self.dir / "scheduler.kubeconfig",
            extenders=st.extenders,
            percentage_of_nodes_to_score=st.percentage_of_nodes_to_score,
            leader_elect=st.leader_elect,
        )
        self.scheduler_config_path().write_text(yaml.safe_dump(doc, sort_keys=False))

    def _start_scheduler(self) -> None:
        st = self.state
        assert st is not None
        self._write_scheduler_config()
        kc = str(self.dir / "scheduler.kubeconfig")
        self.procs.start(ProcessSpec("kube-scheduler", (
            self._bin("kube-scheduler"),
            f"--config={self.scheduler_config_path()}",
            f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={st.scheduler_port}",
            f"--feature-gates={gate_flag(self.version, st.generic_workload)}",
        ), wrap=tuple(st.scheduler_wrap)))
        self._wait_http(f"https://127.0.0.1:{st.scheduler_port}/healthz", "kube-scheduler", tls=False, timeout=60)

    def set_scheduler_config(
        self, extenders: Sequence[Mapping[str, Any]] | None = None, percentage_of_nodes_to_score: int = 100
    ) -> None:
        """Restart kube-scheduler with these extenders (config camelCase dicts); None = no extender.

        The gates and the base config given to up() stay as they were.
        """
        assert self.state is not None
        self.state.extenders = [dict(e) for e in (extenders or [])]
        self.state.percentage_of_nodes_to_score = percentage_of_nodes_to_score
        self._save_state()
        self.procs.stop("kube-scheduler")
        self._start_scheduler()

    def set_scheduler_base(
        self, base: Path | Mapping[str, Any] | None, *, leader_elect: bool = False, wrap: Sequence[str] = ()
    ) -> None:
        """Restart kube-scheduler from another base configuration, e.g. one a Helm chart rendered.

        Only the credentials are the harness's; with `leader_elect` the scheduler holds its Lease
        (kube-system/kube-scheduler unless the base names another), as kubeadm's does. `wrap` runs it
        in a node's mount namespace (`nodens.enter`): a control-plane node's scheduler reads files that
        pods of that node wrote into its host paths.
        """
        assert self.state is not None
        self.state.scheduler_base = _scheduler_base(base)
        self.state.extenders = []
        self.state.leader_elect = leader_elect
        self.state.scheduler_wrap = list(wrap)
        self._save_state()
        self.procs.stop("kube-scheduler")
        self._start_scheduler()

    def _start_heartbeat(self) -> None:
        self.procs.start(ProcessSpec("heartbeat", (
            sys.executable, "-m", "topodra_cli.localcluster.heartbeat", "--kubeconfig", str(self.kubeconfig),
        )))

    def wait_default_service_account(self, namespace: str, timeout: float = 60) -> None:
        """Pods are refused until the controller-manager has made the namespace's `default` account."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.kube().get(f"/api/v1/namespaces/{path_escape(namespace)}/serviceaccounts/default")
                return
            except ApiError:
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"ServiceAccount {namespace}/default never appeared; see "
                        f"{self.procs.log_path('kube-controller-manager')}"
                    ) from None
                time.sleep(0.2)

    # ---- HTTP helpers -------------------------------------------------------------------------
    def _ssl_context(self, tls: bool) -> ssl.SSLContext:
        # tls: as the kubeconfig's admin; else a component's health port (self-signed), not verified.
        return ssl_context(load_credentials(str(self.kubeconfig)) if tls else Credentials(server="", insecure=True))

    def _get(self, url: str, tls: bool = True, timeout: float = 5) -> str:
        ctx = self._ssl_context(tls) if url.startswith("https") else None
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return str(r.read().decode())

    def _wait_http(self, url: str, component: str, tls: bool, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.procs.exited(component) is not None:
                raise ClusterError(
                    f"{component} exited with code {self.procs.exited(component)} during start; "
                    f"log {self.procs.log_path(component)}:\n{self.procs.tail(component, 30)}"
                )
            try:
                self._get(url, tls=tls, timeout=2)
                return
            except (urllib.error.URLError, OSError, ssl.SSLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise ClusterError(
            f"{component} not ready at {url} after {timeout:.0f}s ({last}); "
            f"log {self.procs.log_path(component)}:\n{self.procs.tail(component, 30)}"
        )

    # ---- API access ---------------------------------------------------------------------------
    def kube(self) -> KubeClient:
        """Raw JSON access as the admin (kubeaccess); `api_client()` is the official client, for typed models."""
        if self._kube is None:
            self._kube = KubeClient.load(str(self.kubeconfig), pool_size=64, user_agent="topodra-harness")
        return self._kube

    def api_client(self) -> Any:
        from kubernetes import client, config

        if self._api is None:
            cfg = client.Configuration()
            config.load_kube_config(str(self.kubeconfig), client_configuration=cfg)
            cfg.connection_pool_maxsize = 64
            self._api = client.ApiClient(cfg)
        return self._api

    def log_tail(self, component: str, lines: int = 50) -> str:
        return self.procs.tail(component, lines)

    # ---- fake nodes ---------------------------------------------------------------------------
    def add_fake_node(
        self, name: str, labels: Mapping[str, str] | None = None, capacity: Mapping[str, str] | None = None
    ) -> None:
        self.add_fake_nodes([(name, labels or {}, capacity or {})])

    def add_fake_nodes(self, nodes: Iterable[tuple[str, Mapping[str, str], Mapping[str, str]]]) -> None:
        """Create Ready nodes with no kubelet; the heartbeat process keeps their Leases fresh."""
        # Here, not at the top: the heartbeat runs as `python -m` of its module, which must not be
        # imported already by its package (runpy warns on stderr then).
        from topodra_cli.localcluster.heartbeat import FAKE_NODE_LABEL, renew_lease

        kube = self.kube()

        def one(item: tuple[str, Mapping[str, str], Mapping[str, str]]) -> None:
            name, labels, cap = item
            resources = {"cpu": "64", "memory": "512Gi", "pods": "110", **cap}
            node = kube.request("POST", "/api/v1/nodes", body={
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                      FAKE_NODE_LABEL: "true", **labels}},
            })
            path = f"/api/v1/nodes/{path_escape(name)}"
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            kube.request("PATCH", f"{path}/status", content_type=MERGE_PATCH, body={"status": {
                "capacity": resources, "allocatable": resources,
                "conditions": [{"type": "Ready", "status": "True", "reason": "FakeNode",
                                "message": "topodra fake node", "lastHeartbeatTime": now,
                                "lastTransitionTime": now}],
                "nodeInfo": {"kubeletVersion": self.version, "architecture": "amd64", "operatingSystem": "linux"},
            }})
            renew_lease(kube, name, node["metadata"]["uid"])
            # Admission taints every new node not-ready; the lifecycle controller lifts it only on its
            # next pass (seconds). The node is Ready, so lift it now.
            for _ in range(50):
                n = kube.get(path)
                old = (n.get("spec") or {}).get("taints") or []
                taints = [t for t in old if t.get("key") != "node.kubernetes.io/not-ready"]
                if len(taints) == len(old):
                    return
                try:
                    kube.request("PATCH", path, content_type=MERGE_PATCH, body={
                        "metadata": {"resourceVersion": n["metadata"]["resourceVersion"]},
                        "spec": {"taints": taints}})
                    return
                except ApiError as e:
                    if not e.conflict:
                        raise

        items = list(nodes)
        with ThreadPoolExecutor(min(16, max(1, len(items)))) as pool:
            list(pool.map(one, items))

    def label_node(self, name: str, labels: Mapping[str, str]) -> None:
        self.kube().request("PATCH", f"/api/v1/nodes/{path_escape(name)}", content_type=MERGE_PATCH,
                            body={"metadata": {"labels": dict(labels)}})

    def delete_node(self, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.kube().request("DELETE", f"/api/v1/nodes/{path_escape(name)}")


def _scheduler_base(given: Path | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check a user's scheduler config before anything starts (a bad file must not cost a control plane)."""
    if given is None:
        return None
    if isinstance(given, Mapping):
        return schedulerconfig.check_base(given)
    return schedulerconfig.load_base(Path(given))
