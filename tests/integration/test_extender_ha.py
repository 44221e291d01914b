"""Extender HA: two replicas follow kube-scheduler's Lease; only the one beside the leader acts.

kube-scheduler calls the extender beside it (127.0.0.1 or a sidecar), so when its leader moves, the
calls move with it. Here that is played by a small forwarding proxy: kube-scheduler calls the proxy,
and the proxy forwards to the replica the test names, moved together with the Lease's holder (the
test rewrites the Lease the way a new leader takes it). The last test runs two real kube-schedulers
with leader election, each in its own UTS namespace (its own host name, hence its own lease identity)
and each calling its own replica, and kills the leader.

Everything ends with every pod bound and every gang whole (GangInvariants: no partial binding, no
device in two claims).
"""

from __future__ import annotations

import contextlib
import datetime
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
import yaml

from kubeaccess.errors import ApiError
from kubeaccess.sync import KubeClient
from tests.gang_invariants import GangInvariants, default_gang_of
from tests.integration.test_extender_support import (
    ExtenderProcess,
    Fleet,
    allocated_devices,
    claim_template,
    make_pod,
    post,
    wait_bound,
)
from tests.integration.test_gang_adversarial import (
    debug_gang,
    gang_pod,
    held_at_barrier,
    quad_fleet,
    ungate,
    wait_for,
    wait_planned,
)
from topodra_cli.localcluster import LocalCluster
from topodra_cli.localcluster.cluster import MERGE_PATCH
from topodra_cli.localcluster.gates import gate_flag
from topodra_cli.localcluster.processes import free_port
from topodra_cli.testing.objects import claim_pod, gpu

pytestmark = pytest.mark.cluster

LEASES = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"


# ---- helpers --------------------------------------------------------------------------------------
def metric(ext: ExtenderProcess, name: str, labels: str = "") -> float:
    """One sample of the replica's /metrics (0 when absent)."""
    code, text = ext.get("/metrics")
    assert code == 200, text
    pat = re.compile(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", re.M)
    m = pat.search(text)
    return float(m.group(1)) if m else 0.0


def ready(ext: ExtenderProcess) -> int:
    """The replica's /readyz code (0 while it does not answer yet)."""
    try:
        return ext.get("/readyz")[0]
    except OSError:
        return 0


def binds(ext: ExtenderProcess) -> float:
    return metric(ext, "topodra_extender_binds_total", 'outcome="bound"')


class Lease:
    """A Lease the test holds on behalf of a simulated kube-scheduler leader."""

    def __init__(self, client: KubeClient, ns: str, name: str) -> None:
        self.client, self.ns, self.name = client, ns, name
        self.path = LEASES.format(ns=ns)

    def hold(self, identity: str) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        spec = {"holderIdentity": identity, "leaseDurationSeconds": 15, "acquireTime": now, "renewTime": now}
        try:
            self.client.request("PATCH", f"{self.path}/{self.name}", content_type=MERGE_PATCH, body={"spec": spec})
        except ApiError as e:
            if not e.not_found:
                raise
            self.client.request("POST", self.path, body={"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                         "metadata": {"name": self.name}, "spec": spec})


class Proxy:
    """Plain HTTP in front of the replicas: forwards each call to `target` (the leader's local replica)."""

    def __init__(self, replicas: dict[str, ExtenderProcess], target: str) -> None:
        self.replicas = replicas
        self.target = target
        self.calls: dict[str, int] = {k: 0 for k in replicas}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                name = proxy.target
                ext = proxy.replicas[name]
                proxy.calls[name] += 1
                req = urllib.request.Request(ext.url + self.path, data=body,
                                             headers={"Content-Type": "application/json"})
                ctx = ssl.create_default_context(cafile=str(ext.ca.cert))
                try:
                    with urllib.request.urlopen(req, context=ctx, timeout=40) as r:
                        code, out = r.status, r.read()
                except urllib.error.HTTPError as e:
                    code, out = e.code, e.read()
                except OSError as e:
                    code, out = 502, orjson.dumps({"Error": f"proxy: {e}"})
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def entry(self) -> dict[str, object]:
        port = self.httpd.server_address[1]
        return {"urlPrefix": f"http://127.0.0.1:{port}/v1", "filterVerb": "filter", "prioritizeVerb": "prioritize",
                "bindVerb": "bind", "weight": 10, "enableHTTPS": False, "httpTimeout": "30s",
                "nodeCacheCapable": True, "managedResources": [], "ignorable": False}

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Pair:
    def __init__(self, a: ExtenderProcess, b: ExtenderProcess, lease: Lease, proxy: Proxy) -> None:
        self.ext = {"a": a, "b": b}
        self.lease, self.proxy = lease, proxy

    def move_to(self, name: str) -> None:
        """The leader moves: the new one takes the Lease, then its scheduler calls its own replica."""
        self.lease.hold(f"host-{name}_{uuid.uuid4()}")
        self.proxy.target = name

    def wait_active(self, name: str, timeout: float = 15) -> None:
        other = self.ext["b" if name == "a" else "a"]
        wait_for(f"replica {name} ready and the other on standby",
                 lambda: ready(self.ext[name]) == 200 and ready(other) == 503, timeout)


@pytest.fixture(scope="module")
def pair(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    client = KubeClient.load(str(cluster.kubeconfig))
    lease_ns = f"ha-{uuid.uuid4().hex[:6]}"
    client.request("POST", "/api/v1/namespaces", body={"metadata": {"name": lease_ns}})
    lease = Lease(client, lease_ns, "sched")
    lease.hold(f"host-a_{uuid.uuid4()}")
    base = tmp_path_factory.mktemp("ha")
    exts = {n: ExtenderProcess(cluster, base / n, args=(f"--follow-lease={lease_ns}/sched", f"--identity=host-{n}",
                                                        "--bind-hold-seconds=5")) for n in ("a", "b")}
    exts["a"].start()
    exts["b"].start(wait_ready=False)
    proxy = Proxy(exts, "a")
    p = Pair(exts["a"], exts["b"], lease, proxy)
    try:
        p.wait_active("a")
        cluster.set_scheduler_config(extenders=[proxy.entry], percentage_of_nodes_to_score=0)
        yield p
    finally:
        with contextlib.suppress(Exception):
            cluster.set_scheduler_config(extenders=None)
        proxy.close()
        for e in exts.values():
            e.stop()
        with contextlib.suppress(ApiError):
            client.request("DELETE", f"/api/v1/namespaces/{lease_ns}")


# ---- the tests ----------------------------------------------------------------------------------------
def test_standby_answers_with_errors_and_is_not_ready(pair: Pair) -> None:
    a, b = pair.ext["a"], pair.ext["b"]
    pair.move_to("a")
    pair.wait_active("a")
    code, why = b.get("/readyz")
    assert code == 503 and "standby" in why and "host-b" in why, why
    assert b.get("/healthz")[0] == 200
    assert metric(a, "topodra_extender_active") == 1 and metric(b, "topodra_extender_active") == 0
    pod = orjson.dumps({"Pod": claim_pod("p", {}) | {"metadata": {"name": "p", "namespace": "d", "uid": "u1"}},
                        "NodeNames": ["n1"]})
    code, out = post(b, "/v1/filter", pod)
    assert code == 200 and "not active" in orjson.loads(out)["Error"], out
    code, out = post(b, "/v1/bind", orjson.dumps({"PodName": "p", "PodNamespace": "d", "PodUID": "u1",
                                                   "Node": "n1"}))
    assert code == 200 and "not active" in orjson.loads(out)["Error"], out
    assert post(b, "/v1/prioritize", pod)[0] == 503
    code, out = post(a, "/v1/filter", pod)
    assert code == 200 and not orjson.loads(out).get("Error"), out


def test_lease_moves_during_a_stream_of_single_pods(
        pair: Pair, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """16 one-GPU pods, one every 0.3 s; the leader moves a->b after 5 and b->a after 11: all bound on
    distinct devices, each replica bound some, the standby one steered nothing while standby."""
    ns = namespace
    pair.move_to("a")
    pair.wait_active("a")
    for _ in range(3):
        fleet.add([gpu(i, "pci0000:00", 0) for i in range(8)])
    claim_template(client, ns, "one", gpus=1, nics=0)
    names = [f"s-{i:02d}" for i in range(16)]
    before = {k: binds(e) for k, e in pair.ext.items()}
    nominated = 'outcome="nominated"'
    steered_a = 0.0
    for i, n in enumerate(names):
        if i == 5:
            pair.move_to("b")
            pair.wait_active("b")
            steered_a = metric(pair.ext["a"], "topodra_extender_steered_total", nominated)
        if i == 11:
            # a, on standby since the first move, planned nothing
            assert metric(pair.ext["a"], "topodra_extender_steered_total", nominated) == steered_a
            pair.move_to("a")
        make_pod(client, ns, n, {"acc": "one"}, fleet.selector)
        time.sleep(0.3)
    got = wait_bound(client, ns, names, timeout=120)
    assert len(got) == 16
    devices = [d for ds in allocated_devices(client, ns).values() for d in ds]
    assert len(devices) == 16 and len(set(devices)) == 16, devices  # no device promised twice
    after = {k: binds(e) for k, e in pair.ext.items()}
    assert after["a"] > before["a"] and after["b"] > before["b"], (before, after)
    assert after["a"] - before["a"] + after["b"] - before["b"] >= 16


def test_lease_moves_inside_a_gangs_bind_barrier(
        pair: Pair, client: KubeClient, fleet: Fleet, cluster: LocalCluster, namespace: str) -> None:
    """Two of three members held at a's barrier when the leader moves to b: a's held binds fail, b adopts
    the plan from the API, and the gang binds whole on the planned nodes, through b."""
    ns = namespace
    pair.move_to("a")
    pair.wait_active("a")
    a, b = pair.ext["a"], pair.ext["b"]
    quad_fleet(client, ns, fleet, 2)
    members = ["g-0", "g-1", "g-2"]
    with GangInvariants(cluster, [ns], default_gang_of()) as inv:
        for i, n in enumerate(members):
            gang_pod(client, ns, n, "moved", 3, fleet, gated=i == 2)
        held_at_barrier(a, ns, "moved", 2)
        plan = {n: wait_planned(client, ns, n) for n in members}
        b_binds = binds(b)
        pair.move_to("b")
        pair.wait_active("b")
        assert debug_gang(a, ns, "moved") == {}  # a let go of everything
        wait_for("b to adopt the plan", lambda: debug_gang(b, ns, "moved").get("planned"), 30)
        assert "gang_plan_adopted" in b.log()
        ungate(client, ns, "g-2")
        got = wait_bound(client, ns, members, timeout=90)
        assert got == {n: p.rpartition("@")[0] for n, p in plan.items()}, (got, plan)
    assert inv.counters.gangs_fully_bound == 1
    assert binds(b) - b_binds == 3


# ---- kube-scheduler's own leader election ---------------------------------------------------------
def _can_unshare() -> bool:
    exe = shutil.which("unshare")
    return exe is not None and subprocess.run([exe, "--uts", "true"], capture_output=True, check=False).returncode == 0


class Scheduler:
    """A kube-scheduler with leader election on kube-system/kube-scheduler, in its own UTS namespace with
    host name `host` (its lease identity is `<host>_<uuid>`), calling `ext` only."""

    def __init__(self, cluster: LocalCluster, workdir: Path, host: str, ext: ExtenderProcess, profile: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(cluster.dir / "scheduler.kubeconfig")},
            "leaderElection": {"leaderElect": True, "leaseDuration": "4s", "renewDeadline": "3s",
                               "retryPeriod": "500ms", "resourceLock": "leases", "resourceName": "kube-scheduler",
                               "resourceNamespace": "kube-system"},
            "percentageOfNodesToScore": 0,
            "profiles": [{"schedulerName": profile}],
            "extenders": [ext.scheduler_entry(bind=True)],
        }
        self.config = workdir / "config.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        kc = cluster.dir / "scheduler.kubeconfig"
        st = cluster.state
        assert st is not None
        argv = [str(cluster.bin_dir / "kube-scheduler"), f"--config={self.config}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                f"--feature-gates={gate_flag(cluster.version, st.generic_workload)}"]
        self.log_path = workdir / "kube-scheduler.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(["unshare", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh",
                                          *argv], stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _holder(client: KubeClient) -> str:
    try:
        lease = client.get(f"{LEASES.format(ns='kube-system')}/kube-scheduler")
    except ApiError:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


@pytest.mark.skipif(not _can_unshare(), reason="needs `unshare --uts` (root) for two scheduler host names")
def test_follows_kube_schedulers_own_lease_when_the_leader_dies(
        cluster: LocalCluster, client: KubeClient, fleet: Fleet, namespace: str, tmp_path: Path) -> None:
    ns = namespace
    profile = f"ha-{uuid.uuid4().hex[:5]}"
    hosts = {"a": f"sched-a-{profile}", "b": f"sched-b-{profile}"}
    for _ in range(2):
        fleet.add([gpu(i, "pci0000:00", 0) for i in range(8)])
    claim_template(client, ns, "one", gpus=1, nics=0)
    exts = {n: ExtenderProcess(cluster, tmp_path / f"ext-{n}",
                               args=("--follow-lease=kube-system/kube-scheduler", f"--identity={hosts[n]}",
                                     f"--scheduler-name={profile}", "--bind-hold-seconds=5"))
            for n in ("a", "b")}
    scheds: dict[str, Scheduler] = {}

    def pods(prefix: str, n: int) -> list[str]:
        names = [f"{prefix}-{i}" for i in range(n)]
        for name in names:
            body = claim_pod(name, {"acc": "one"}, node_selector=fleet.selector)
            body["spec"]["schedulerName"] = profile
            client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)
        return names

    try:
        for e in exts.values():
            e.start(wait_ready=False)
        for n in ("a", "b"):
            scheds[n] = Scheduler(cluster, tmp_path / f"sched-{n}", hosts[n], exts[n], profile)
        leader = str(wait_for("a scheduler leader", lambda: next(
            (n for n, h in hosts.items() if _holder(client).startswith(h + "_")), ""), 30))
        other = "b" if leader == "a" else "a"
        wait_for("the leader's replica active", lambda: ready(exts[leader]) == 200, 30)
        wait_for("the other replica on standby", lambda: ready(exts[other]) == 503, 30)
        first = pods("before", 4)
        wait_bound(client, ns, first, timeout=60)
        assert binds(exts[leader]) == 4 and binds(exts[other]) == 0

        scheds[leader].stop(signal.SIGKILL)  # no lease release: the other takes over once it runs out
        wait_for("the other scheduler to take the lease",
                 lambda: _holder(client).startswith(hosts[other] + "_"), 30)
        wait_for("its replica active", lambda: ready(exts[other]) == 200, 15)
        second = pods("after", 4)
        wait_bound(client, ns, second, timeout=60)
        assert binds(exts[other]) == 4
        assert binds(exts[leader]) == 4  # on standby since the lease moved
        assert ready(exts[leader]) == 503
    finally:
        for s in scheds.values():
            s.stop()
        for e in exts.values():
            e.stop()
        with contextlib.suppress(ApiError):
            client.request("DELETE", f"{LEASES.format(ns='kube-system')}/kube-scheduler")
