"""Helpers for extender tests on the real local cluster: certificates, the extender process, objects."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from scheduler_plugin.schedconfig import SchedulerSettings, extender_entry
from topodra_cli.localcluster import LocalCluster, pki
from topodra_cli.localcluster.processes import free_port
from topodra_cli.testing.objects import Json, claim_pod, gpu_nic_template

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class ExtenderProcess:
    """`topodra extender` over HTTPS on loopback, with its own CA; restartable on the same port."""

    def __init__(self, cluster: LocalCluster, workdir: Path, config: str | None = None,
                 args: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.args = args
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = pki.make_ca(self.dir, "extender-ca")
        self.serving = pki.issue(self.ca, self.dir, "extender", "topodra-extender",
                                 server_hosts=("127.0.0.1", "localhost"), client=False)
        self.port = free_port()
        self.config = self.dir / "config.yaml"
        self.config.write_text(config or "{}\n")
        self.log_path = self.dir / "extender.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def scheduler_entry(self, weight: int = 10, http_timeout: str = "", bind: bool = False) -> Json:
        return extender_entry(SchedulerSettings(url=f"{self.url}/v1", ca_file=str(self.ca.cert), weight=weight,
                                                http_timeout=http_timeout, bind=bind))

    def start(self, wait_ready: bool = True) -> None:
        exe = Path(sys.executable).with_name("topodra")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "extender", "--listen=127.0.0.1", f"--port={self.port}", f"--tls-cert={self.serving.cert}",
             f"--tls-key={self.serving.key}", f"--config={self.config}", f"--kubeconfig={self.cluster.kubeconfig}",
             *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
        log.close()
        self.starts += 1
        if wait_ready:
            self.wait_ready()

    def _ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.cert))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, context=self._ctx(), timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"extender exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"extender not ready after {timeout}s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def extender_scheduler(cluster: LocalCluster, workdir: Path, config: str | None = None,
                       weight: int = 10, bind: bool = False, args: tuple[str, ...] = (),
                       percentage: int = 100) -> Iterator[ExtenderProcess]:
    """Extender running and kube-scheduler configured to call it; both restored afterwards."""
    ext = ExtenderProcess(cluster, workdir, config, args)
    ext.start()
    try:
        cluster.set_scheduler_config(extenders=[ext.scheduler_entry(weight=weight, bind=bind)],
                                     percentage_of_nodes_to_score=percentage)
        yield ext
    finally:
        with contextlib.suppress(Exception):
            cluster.set_scheduler_config(extenders=None)
        ext.stop()


def publish(client: KubeClient, node: str, devices: list[Json]) -> None:
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": f"{node}-topodra.dev"},
            "spec": {"driver": "topodra.dev", "nodeName": node,
                     "pool": {"name": node, "generation": 1, "resourceSliceCount": 1}, "devices": devices}}
    client.request("POST", SLICES, body=body)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def claim_template(client: KubeClient, ns: str, name: str, gpus: int = 1, nics: int = 1,
                   match: str | None = None) -> None:
    client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates",
                   body=gpu_nic_template(None, name, gpus, nics, match))


def make_pod(client: KubeClient, ns: str, name: str, templates: dict[str, str], selector: dict[str, str],
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> None:
    body = claim_pod(name, templates, node_selector=selector, labels=labels, annotations=annotations)
    client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)


def pod_node(client: KubeClient, ns: str, name: str) -> str:
    try:
        return str(client.get(f"/api/v1/namespaces/{ns}/pods/{name}")["spec"].get("nodeName") or "")
    except ApiError:
        return ""


def wait_bound(client: KubeClient, ns: str, names: list[str], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    got: dict[str, str] = {}
    while time.monotonic() < deadline:
        got = {n: pod_node(client, ns, n) for n in names}
        if all(got.values()):
            return got
        time.sleep(0.3)
    raise AssertionError(f"pods not bound after {timeout}s: {got}; events: {events(client, ns)[-10:]}")


def events(client: KubeClient, ns: str, pod: str | None = None) -> list[str]:
    q = {"fieldSelector": f"involvedObject.name={pod}"} if pod else {}
    items = client.get(f"/api/v1/namespaces/{ns}/events", **q).get("items") or []
    return [f"{e.get('reason')}: {e.get('message')}" for e in items]


def allocated_devices(client: KubeClient, ns: str) -> dict[str, list[tuple[str, str]]]:
    """Claim name -> [(pool, device)] of allocated claims."""
    out: dict[str, list[tuple[str, str]]] = {}
    for c in client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims").get("items") or []:
        alloc = (c.get("status") or {}).get("allocation")
        if alloc:
            out[c["metadata"]["name"]] = [(r["pool"], r["device"]) for r in alloc["devices"]["results"]]
    return out


def delete_slices(client: KubeClient, nodes: list[str]) -> None:
    for n in nodes:
        with contextlib.suppress(ApiError):
            client.request("DELETE", f"{SLICES}/{n}-topodra.dev")


class Fleet:
    """Fake nodes with a group label so that test pods only see this test's nodes."""

    def __init__(self, cluster: LocalCluster, client: KubeClient) -> None:
        self.cluster, self.client = cluster, client
        self.group = unique("g")
        self.nodes: list[str] = []

    @property
    def selector(self) -> dict[str, str]:
        return {"topodra.dev/test-group": self.group}

    def add(self, devices: list[Json], **labels: str) -> str:
        name = unique("ext")
        self.cluster.add_fake_node(name, {**self.selector, **labels})
        publish(self.client, name, devices)
        self.nodes.append(name)
        return name

    def cleanup(self) -> None:
        delete_slices(self.client, self.nodes)
        for n in self.nodes:
            self.cluster.delete_node(n)


def post(ext: ExtenderProcess, path: str, body: bytes, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(ext.url + path, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ext._ctx(), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
