"""Real kube-scheduler throughput for DRA pods: the default scheduler as users run it today, and with topodra.

A local control plane (the pinned Kubernetes build) gets N fake nodes (16 per rack) each publishing
8 GPUs + 8 NICs. P pods, each with a claim from a template for one GPU and one NIC on one PCIe root,
are created as fast as possible and timed until every one is bound. One run measures, bracketed:

  (a) kube-scheduler with its defaults: no extender, percentageOfNodesToScore unset (0 = adaptive:
      about 42 % of the nodes at 1,000 and 10 % at 5,000, contract scheduler.md §4.2);
  (b) kube-scheduler configured exactly as `topodra extender print-scheduler-config` / the Helm chart
      configures it (the extender, and that config's percentageOfNodesToScore);
  (c) only when (b)'s config forces percentageOfNodesToScore, the default scheduler forced to it too,
      so the loss can be attributed to the percentage or to the extender.

    .venv/bin/python bench/scheduler_throughput.py [--nodes 1000,5000] [--pods 100] [--repeats 1]

Each repeat runs the rows in `--rows` order (default a,c,b,a: baseline before and after). Every row
starts from a cluster without pods or claims and a freshly started kube-scheduler (and extender, for
(b)); kube-scheduler's and the extender's /metrics are scraped before and after the row and the
difference is reported. Result lines read `name: value unit`; a Markdown summary follows at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.schedmetrics import Hist, Samples, client_context, counter, counters, delta, histograms, scrape
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED
from kubeaccess.sync import KubeClient
from scheduler_plugin.schedconfig import SchedulerSettings, scheduler_config
from topodra_cli.localcluster import LocalCluster, pki
from topodra_cli.localcluster.processes import free_port
from topodra_cli.testing.objects import STD, Json, claim_pod, device_classes, gpu_nic_template

# How the extender runs in row (b), in one place (besides where it listens, its TLS files and kubeconfig,
# which the bench chooses). The admin kubeconfig it gets can patch pods/status.
EXTENDER_ARGS: tuple[str, ...] = ("--log-level=warning",)

SCHED_EP = "scheduler_framework_extension_point_duration_seconds"
SCHED_PLUGIN = "scheduler_plugin_execution_duration_seconds"
EXT_LATENCY = "topodra_extender_request_duration_seconds"
# Extension points in the order a pod meets them; the first five run in the (serial) scheduling cycle.
EXTENSION_POINTS = ("PreFilter", "Filter", "PostFilter", "PreScore", "Score", "Reserve", "Permit", "PreBind", "Bind",
                    "PostBind")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "heartbeat")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    extender: bool
    percentage: int  # 0 = kube-scheduler's adaptive default, the same as leaving it unset


@dataclass
class RunResult:
    nodes: int
    row: str
    index: int  # 1-based count of this row within this node count
    pods: int
    wall_s: float
    create_to_bound_s: list[float]
    claims_to_bound_s: list[float]
    load: tuple[float, float]  # 1-minute load average before and after
    sched: Samples
    ext: Samples | None
    cpu_s: dict[str, float]
    extender_ready_s: float = 0.0
    extender_rss_mib: float = 0.0

    @property
    def pods_per_s(self) -> float:
        return self.pods / self.wall_s

    @property
    def name(self) -> str:
        return f"n{self.nodes}.{self.row}.{self.index}"


@dataclass
class SizeResult:
    nodes: int
    setup_nodes_s: float
    setup_slices_s: float
    runs: list[RunResult] = field(default_factory=list)


# ---- cluster content ------------------------------------------------------------------------------------------
def devices() -> list[Json]:
    out = []
    for kind, base in (("gpu", 0x10), ("nic", 0x90)):
        for i in range(8):
            r = i // 2
            out.append({"name": f"{kind}-{i}", "attributes": {
                "type": {"string": kind}, f"{STD}/pcieRoot": {"string": f"pci0000:{r * 0x40:02x}"},
                f"{STD}/numaNode": {"int": r // 2}, f"{STD}/pciBusID": {"string": f"0000:{base + i:02x}:00.0"}}})
    return out


def setup(cluster: LocalCluster, client: KubeClient, n: int) -> tuple[float, float]:
    """N fake nodes, then their slices; returns the seconds each part took."""
    t = time.monotonic()
    nodes: list[tuple[str, dict[str, str], dict[str, str]]] = [
        (f"bn-{i:05d}", {"topodra.dev/rack": f"r{i // 16}", "topodra.dev/block": f"b{i // 128}",
                         "topodra.dev/bench": "1"}, {})
        for i in range(n)
    ]
    cluster.add_fake_nodes(nodes)
    t_nodes = time.monotonic() - t
    t = time.monotonic()
    for dc in device_classes():
        try:
            client.request("POST", "/apis/resource.k8s.io/v1/deviceclasses", body=dc)
        except ApiError as e:
            if not e.conflict:
                raise
    devs = devices()

    def publish(name: str) -> None:
        client.request("POST", "/apis/resource.k8s.io/v1/resourceslices", body={
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{name}-topodra.dev"},
            "spec": {"driver": "topodra.dev", "nodeName": name,
                     "pool": {"name": name, "generation": 1, "resourceSliceCount": 1}, "devices": devs}})

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(publish, [x[0] for x in nodes]))
    return t_nodes, time.monotonic() - t


# ---- one row: pods created, watched until bound ---------------------------------------------------------------
class PodWatch:
    """Local monotonic times at which each pod of a namespace got its claims and its node, from a watch."""

    def __init__(self, client: KubeClient, ns: str, want: int) -> None:
        self.client, self.ns, self.want = client, ns, want
        self.claims_ready: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self.connected = threading.Event()
        self.done = threading.Event()
        self.stop = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.connected.wait(30):
            raise SystemExit(f"watch on pods in {self.ns} did not connect: {self.error}")

    def _see(self, pod: Json, now: float) -> None:
        name = pod["metadata"]["name"]
        if (pod.get("status") or {}).get("resourceClaimStatuses"):
            self.claims_ready.setdefault(name, now)
        if (pod.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, now)
            if len(self.bound) >= self.want:
                self.done.set()

    def _run(self) -> None:
        path = f"/api/v1/namespaces/{self.ns}/pods"
        rv = ""
        while not self.stop.is_set() and not self.done.is_set():
            try:
                if not rv:
                    listed = self.client.get(path)
                    now = time.monotonic()
                    for p in listed.get("items") or []:
                        self._see(p, now)
                    rv = listed["metadata"]["resourceVersion"]
                for ev in self.client.watch(path, {"resourceVersion": rv, "timeoutSeconds": 30,
                                                   "allowWatchBookmarks": "true"}, timeout=45):
                    now = time.monotonic()
                    kind = ev.get("type")
                    if kind == CONNECTED:
                        self.connected.set()
                        continue
                    obj = ev.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind in ("ADDED", "MODIFIED"):
                        self._see(obj, now)
                    if self.done.is_set() or self.stop.is_set():
                        return
            except ApiError as e:  # an ERROR event too; 410 Gone: list again
                if e.gone:
                    rv = ""
                self.error = str(e)
                time.sleep(0.5)


def pod_body(i: int) -> Json:
    return claim_pod(f"p-{i}", {"acc": "pair"}, node_selector={"topodra.dev/bench": "1"},
                     labels={"topodra.dev/job": f"j{i // 8}"})


def run_pods(client: KubeClient, ns: str, pods: int, timeout: float) -> tuple[float, list[float], list[float]]:
    """Wall seconds from the first create to the last bind; per pod: create→bound and claims ready→bound."""
    client.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates",
                   body=gpu_nic_template(None, "pair", match=f"{STD}/pcieRoot"))
    time.sleep(1.0)  # let the template reach the controller-manager's informers
    watch = PodWatch(client, ns, pods)
    watch.start()
    created: dict[str, float] = {}

    def create(i: int) -> None:
        body = pod_body(i)
        client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)
        created[body["metadata"]["name"]] = time.monotonic()

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(pods)))
    ok = watch.done.wait(timeout)
    watch.stop.set()
    if not ok:
        raise SystemExit(f"only {len(watch.bound)} of {pods} pods in {ns} bound after {timeout:.0f} s "
                         f"(watch error: {watch.error})")
    wall = max(watch.bound.values()) - t0
    c2b = [watch.bound[n] - created[n] for n in created]
    r2b = [watch.bound[n] - watch.claims_ready.get(n, created[n]) for n in created]
    return wall, c2b, r2b


def clean(client: KubeClient, ns: str, timeout: float = 180) -> None:
    """Pods and claims gone (claims keep devices allocated), so every row starts from the same state."""
    client.request("DELETE", f"/api/v1/namespaces/{ns}/pods", query={"gracePeriodSeconds": 0})
    claims = f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.get(f"/api/v1/namespaces/{ns}/pods").get("items"):
            break
        time.sleep(0.5)
    client.request("DELETE", claims)
    while time.monotonic() < deadline:
        if not client.get(claims).get("items"):
            return
        time.sleep(0.5)
    print(f"warning: claims in {ns} still there after {timeout:.0f} s", flush=True)


# ---- processes -------------------------------------------------------------------------------------------------
def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime of the process and its waited-for children (fields 14-17 of proc(5)).
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_url(url: str, ctx: ssl.SSLContext, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise SystemExit(f"{what} not ready at {url} after {timeout:.0f} s ({last})")


class Extender:
    """`topodra extender` as a process serving HTTPS on a free loopback port."""

    def __init__(self, cluster: LocalCluster, work: Path) -> None:
        self.ca = pki.make_ca(work, "ext-ca")
        self.srv = pki.issue(self.ca, work, "ext", "topodra-extender", server_hosts=("127.0.0.1",), client=False)
        self.ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        self.cluster, self.work = cluster, work
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (work / "extender.log").open("ab")
        self.url = ""

    def argv(self, port: int) -> list[str]:
        return [str(Path(sys.executable).with_name("topodra")), "extender", "--listen=127.0.0.1", f"--port={port}",
                f"--tls-cert={self.srv.cert}", f"--tls-key={self.srv.key}",
                f"--kubeconfig={self.cluster.kubeconfig}", *EXTENDER_ARGS]

    def start(self) -> float:
        """Start and wait until its cache is synced; returns the seconds that took."""
        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        t = time.monotonic()
        self.proc = subprocess.Popen(self.argv(port), stdout=self.log, stderr=subprocess.STDOUT)
        wait_url(f"{self.url}/readyz", self.ctx, 600, "extender")
        return time.monotonic() - t

    def scheduler_config(self) -> dict[str, Any]:
        return scheduler_config(SchedulerSettings(url=f"{self.url}/v1", ca_file=str(self.ca.cert)))

    def metrics(self) -> Samples:
        return scrape(f"{self.url}/metrics", self.ctx)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


# ---- the bench -------------------------------------------------------------------------------------------------
def rows_for(percentage_b: int) -> dict[str, Row]:
    # (c) attributes a loss to the percentage rather than the extender; it is in the default sequence only when
    # (b)'s config forces a percentage, but --rows can ask for it (then at 100 %) to compare with earlier runs.
    forced = percentage_b or 100
    return {  # in the order the tables show them
        "a": Row("a", "default kube-scheduler (no extender, percentageOfNodesToScore unset)", False, 0),
        "c": Row("c", f"default kube-scheduler forced to percentageOfNodesToScore {forced}", False, forced),
        "b": Row("b", "kube-scheduler + topodra extender (as print-scheduler-config / Helm)", True, percentage_b),
    }


def run_row(cluster: LocalCluster, client: KubeClient, ext: Extender, row: Row, ns: str, pods: int,
            timeout: float) -> RunResult:
    st = cluster.state
    assert st is not None
    ready_s = 0.0
    if row.extender:
        ready_s = ext.start()
        cfg = ext.scheduler_config()  # exactly what print-scheduler-config prints, but for this URL and CA
        cluster.set_scheduler_config(extenders=cfg["extenders"],
                                     percentage_of_nodes_to_score=int(cfg.get("percentageOfNodesToScore") or 0))
    else:
        cluster.set_scheduler_config(extenders=None, percentage_of_nodes_to_score=row.percentage)
    sched_url = f"https://127.0.0.1:{st.scheduler_port}"
    sched_ctx = client_context(cluster.pki_dir / "admin.crt", cluster.pki_dir / "admin.key")
    # /readyz includes the scheduler's informer sync; healthz (what the harness waits for) does not.
    wait_url(f"{sched_url}/readyz", sched_ctx, 300, "kube-scheduler")
    # /metrics needs the admin's client certificate recognised: kube-scheduler learns the client CA from a
    # ConfigMap it watches, which can sync after /readyz answers (until then: 403).
    wait_url(f"{sched_url}/metrics", sched_ctx, 60, "kube-scheduler metrics")
    pids = {c: cluster.procs.pid(c) for c in COMPONENTS}
    if ext.proc is not None:
        pids["extender"] = ext.proc.pid
    cpu0 = {c: cpu_seconds(p) for c, p in pids.items()}
    bench0 = sum(os.times()[:2])
    s0 = scrape(f"{sched_url}/metrics", sched_ctx)
    e0 = ext.metrics() if row.extender else None
    load0 = os.getloadavg()[0]
    wall, c2b, r2b = run_pods(client, ns, pods, timeout)
    load1 = os.getloadavg()[0]
    # A bound pod's binding cycle (PostBind) may still be finishing, and the sampled plugin durations reach the
    # registry from a buffer flushed every second: wait a little longer than that before the scrape.
    time.sleep(1.5)
    s1 = scrape(f"{sched_url}/metrics", sched_ctx)
    e1 = ext.metrics() if row.extender else None
    cpu = {c: cpu_seconds(p) - cpu0[c] for c, p in pids.items()}
    cpu["bench"] = sum(os.times()[:2]) - bench0
    res = RunResult(nodes=0, row=row.key, index=0, pods=pods, wall_s=wall, create_to_bound_s=c2b,
                    claims_to_bound_s=r2b, load=(load0, load1), sched=delta(s1, s0),
                    ext=delta(e1, e0) if e1 is not None and e0 is not None else None, cpu_s=cpu)
    if row.extender and ext.proc is not None:
        res.extender_ready_s = ready_s
        res.extender_rss_mib = rss_mib(ext.proc.pid)
    ext.stop()
    return res


def quantile(values: Iterable[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return 0.0
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def out(name: str, value: float, unit: str, digits: int = 2) -> None:
    print(f"{name}: {value:.{digits}f} {unit}", flush=True)


# ---- breakdown from the scheduler's and extender's metrics -----------------------------------------------------
@dataclass
class Breakdown:
    pods: int = 0
    ep: dict[str, Hist] = field(default_factory=dict)
    # "Plugin/ExtensionPoint". Sampled (10 % of cycles), and kube-scheduler drops observations beyond 1,000 a
    # second from its buffer, so only the means are usable, never the counts.
    plugin: dict[str, Hist] = field(default_factory=dict)
    evals: dict[str, float] = field(default_factory=dict)  # "Plugin/ExtensionPoint": exact call counts
    algorithm: Hist = field(default_factory=lambda: Hist(0, 0))
    attempt: Hist = field(default_factory=lambda: Hist(0, 0))  # scheduled attempts only
    sli: Hist = field(default_factory=lambda: Hist(0, 0))
    attempts: dict[str, float] = field(default_factory=dict)
    ext: dict[str, Hist] = field(default_factory=dict)
    ext_nodes: float = 0.0  # nodes the extender judged in filter calls
    ext_counts: dict[str, float] = field(default_factory=dict)  # "what.label": steering and decision counters
    ext_plan: dict[str, Hist] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    def add(self, r: RunResult) -> None:
        def merge(into: dict[str, Hist], new: dict[str, Hist]) -> None:
            for k, h in new.items():
                into[k] = into.get(k, Hist(0, 0)) + h

        s = r.sched
        self.pods += r.pods
        self.wall_s += r.wall_s
        merge(self.ep, histograms(s, SCHED_EP, by="extension_point"))
        merge(self.plugin, histograms(s, SCHED_PLUGIN, by=("plugin", "extension_point")))
        for k, v in counters(s, "scheduler_plugin_evaluation_total", by=("plugin", "extension_point")).items():
            self.evals[k] = self.evals.get(k, 0.0) + v
        self.algorithm += histograms(s, "scheduler_scheduling_algorithm_duration_seconds").get("", Hist(0, 0))
        self.attempt += histograms(s, "scheduler_scheduling_attempt_duration_seconds",
                                   where={"result": "scheduled"}).get("", Hist(0, 0))
        self.sli += histograms(s, "scheduler_pod_scheduling_sli_duration_seconds").get("", Hist(0, 0))
        for result in ("scheduled", "unschedulable", "error"):
            self.attempts[result] = self.attempts.get(result, 0.0) + counter(
                s, "scheduler_schedule_attempts_total", {"result": result})
        if r.ext is not None:
            merge(self.ext, histograms(r.ext, EXT_LATENCY, by="verb"))
            self.ext_nodes += counter(r.ext, "topodra_extender_node_decisions_total")
            merge(self.ext_plan, histograms(r.ext, "topodra_extender_plan_seconds", by="what"))
            for what, name in (("steered", "topodra_extender_steered_total"),
                               ("decisions", "topodra_extender_node_decisions_total")):
                for label, v in counters(r.ext, name, by="outcome").items():
                    self.ext_counts[f"{what}.{label}"] = self.ext_counts.get(f"{what}.{label}", 0.0) + v
        for c, v in r.cpu_s.items():
            self.cpu_s[c] = self.cpu_s.get(c, 0.0) + v

    def in_tree_cycle(self) -> Hist:
        """PreFilter + Filter + PreScore + Score, summed over the cycles that ran them."""
        total = Hist(0, 0)
        for p in ("PreFilter", "Filter", "PreScore", "Score"):
            total += self.ep.get(p, Hist(0, 0))
        return total

    def nodes_filtered_per_cycle(self) -> float:
        """Nodes the DRA Filter ran on per scheduling cycle (exact counters: Filter once per node, PreFilter once
        per cycle)."""
        pre = self.evals.get("DynamicResources/PreFilter", 0.0)
        return self.evals.get("DynamicResources/Filter", 0.0) / pre if pre else 0.0


def print_breakdown(prefix: str, b: Breakdown) -> None:
    out(f"{prefix}.pods", b.pods, "pods", 0)
    for result, n in b.attempts.items():
        out(f"{prefix}.attempts.{result}_per_pod", n / b.pods, "attempts/pod")
    for ep in EXTENSION_POINTS:
        h = b.ep.get(ep)
        if h:
            out(f"{prefix}.sched.{ep}.mean", h.mean_ms, "ms")
            out(f"{prefix}.sched.{ep}.calls_per_pod", h.count / b.pods, "calls/pod")
    out(f"{prefix}.sched.algorithm.mean", b.algorithm.mean_ms, "ms")
    alg_per_pod = b.algorithm.total_s / b.pods
    in_tree_per_pod = b.in_tree_cycle().total_s / b.pods
    # The extenders run inside the algorithm, after Filter and beside Score; the framework times neither.
    out(f"{prefix}.sched.algorithm_minus_plugins_per_pod", 1000 * (alg_per_pod - in_tree_per_pod), "ms")
    out(f"{prefix}.sched.attempt_scheduled.mean", b.attempt.mean_ms, "ms")
    out(f"{prefix}.sched.sli.mean", b.sli.mean_ms, "ms")
    out(f"{prefix}.sched.nodes_filtered_per_cycle", b.nodes_filtered_per_cycle(), "nodes")
    for key, n in sorted(b.evals.items()):
        plugin, ep = key.split("/", 1)
        out(f"{prefix}.plugin_calls.{plugin}.{ep}_per_pod", n / b.pods, "calls/pod", 1)
    for key, h in sorted(b.plugin.items(), key=lambda kv: -kv[1].total_s):
        plugin, ep = key.split("/", 1)
        out(f"{prefix}.plugin_sampled.{plugin}.{ep}.mean", h.mean_ms, "ms", 4)
        out(f"{prefix}.plugin_sampled.{plugin}.{ep}.calls", h.count, "calls", 0)
    for verb, h in sorted(b.ext.items()):
        out(f"{prefix}.extender.{verb}.mean", h.mean_ms, "ms")
        out(f"{prefix}.extender.{verb}.calls_per_pod", h.count / b.pods, "calls/pod")
    if "filter" in b.ext and b.ext["filter"].count:
        out(f"{prefix}.extender.filter.nodes_per_call", b.ext_nodes / b.ext["filter"].count, "nodes")
    for key, n in sorted(b.ext_counts.items()):
        out(f"{prefix}.extender.{key}_per_pod", n / b.pods, "per_pod")
    for what, h in sorted(b.ext_plan.items()):
        out(f"{prefix}.extender.plan.{what}.mean", h.mean_ms, "ms")
        out(f"{prefix}.extender.plan.{what}.calls_per_pod", h.count / b.pods, "calls/pod")
    for c, v in sorted(b.cpu_s.items()):
        out(f"{prefix}.cpu.{c}_per_pod", 1000 * v / b.pods, "ms")


# ---- Markdown --------------------------------------------------------------------------------------------------
def fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def markdown(sizes: list[SizeResult], rows: dict[str, Row], command: str, machine: str, started: str,
             pods: int) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ", f"Date: {started}", ""]
    lines += ["| nodes | configuration | pct | runs, pods/s in order | pods/s (median) | vs (a) | "
              "create → bound p50 / p99 | claims ready → bound p50 / p99 |",
              "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for s in sizes:
        a = statistics.median([r.pods_per_s for r in s.runs if r.row == "a"] or [0.0])
        for key, row in rows.items():
            rs = [r for r in s.runs if r.row == key]
            if not rs:
                continue
            med = statistics.median(r.pods_per_s for r in rs)
            c2b = [x for r in rs for x in r.create_to_bound_s]
            r2b = [x for r in rs for x in r.claims_to_bound_s]
            pct = str(row.percentage) if row.percentage else "unset (adaptive)"
            lines.append(
                f"| {s.nodes:,} | ({key}) {row.label} | {pct} | {', '.join(fmt(r.pods_per_s) for r in rs)} | "
                f"**{fmt(med)}** | {fmt(med / a, 2) if a else '—'} | "
                f"{fmt(quantile(c2b, 0.5))} / {fmt(quantile(c2b, 0.99))} s | "
                f"{fmt(quantile(r2b, 0.5))} / {fmt(quantile(r2b, 0.99))} s |")
    lines += ["", f"{pods} pods per run; setup (fake nodes, then slices): " + "; ".join(
        f"{s.nodes:,} nodes {fmt(s.setup_nodes_s, 0)} s + {fmt(s.setup_slices_s, 0)} s" for s in sizes), ""]
    keys = [k for k in rows if any(r.row == k for s in sizes for r in s.runs)]
    lines += ["Where kube-scheduler's time goes, from its own /metrics (difference over each run, pooled per row; "
              "mean ms per call, calls per pod in brackets):", "",
              "| nodes | measure | " + " | ".join(f"({k})" for k in keys) + " |",
              "| ---: | --- | " + " | ".join("---:" for _ in keys) + " |"]
    for s in sizes:
        bd = {k: Breakdown() for k in keys}
        for r in s.runs:
            bd[r.row].add(r)

        def cell(h: Hist | None, b: Breakdown) -> str:
            return f"{fmt(h.mean_ms, 2)} ({fmt(h.count / b.pods, 1)})" if h and b.pods else "—"

        def line(label: str, cells: list[str], nodes: int = s.nodes) -> None:
            lines.append(f"| {nodes:,} | {label} | " + " | ".join(cells) + " |")

        line("nodes the DRA Filter ran on, per cycle",
             [fmt(bd[k].nodes_filtered_per_cycle(), 0) if bd[k].nodes_filtered_per_cycle() else "—" for k in keys])
        for ep in EXTENSION_POINTS:
            if any(ep in bd[k].ep for k in keys):
                line(ep, [cell(bd[k].ep.get(ep), bd[k]) for k in keys])
        line("extenders + other, per pod (algorithm - in-tree PreFilter…Score)",
             [fmt(1000 * (b.algorithm.total_s - b.in_tree_cycle().total_s) / b.pods, 2) if b.pods else "—"
              for b in (bd[k] for k in keys)])
        line("scheduling algorithm", [cell(bd[k].algorithm, bd[k]) for k in keys])
        line("attempt, scheduled (algorithm + binding)", [cell(bd[k].attempt, bd[k]) for k in keys])
        line("pod SLI (queue → bound)", [cell(bd[k].sli, bd[k]) for k in keys])
        for verb in ("filter", "prioritize"):
            if any(verb in bd[k].ext for k in keys):
                line(f"extender {verb}, server side", [cell(bd[k].ext.get(verb), bd[k]) for k in keys])
        if any(bd[k].ext_plan for k in keys):
            line("extender plan per pod (its own /metrics)", [cell(bd[k].ext_plan.get("pod"), bd[k]) for k in keys])
        for key in sorted({c for k in keys for c in bd[k].ext_counts}):
            line(f"extender {key}, per pod",
                 [fmt(bd[k].ext_counts[key] / bd[k].pods, 2) if key in bd[k].ext_counts else "—" for k in keys])
        top = sorted({p for k in keys for p in bd[k].plugin}, key=lambda p: -max(
            bd[k].plugin.get(p, Hist(0, 0)).total_s for k in keys))[:6]
        for p in top:
            line(f"plugin {p}, per call (sampled; exact calls per pod in brackets)",
                 [(fmt(bd[k].plugin[p].mean_ms, 3) + (f" ({fmt(bd[k].evals[p] / bd[k].pods, 0)})"
                                                      if p in bd[k].evals else ""))
                  if p in bd[k].plugin else "—" for k in keys])
        comps = sorted({c for k in keys for c in bd[k].cpu_s})
        for c in comps:
            line(f"CPU ms per pod: {c}",
                 [fmt(1000 * bd[k].cpu_s.get(c, 0.0) / bd[k].pods, 0) if bd[k].pods else "—" for k in keys])
    return "\n".join(lines)


def revision() -> str:
    """The commit measured, and whether the extender's code differed from it (the tree is shared and busy)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "scheduler_plugin", "kubeaccess"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' + uncommitted extender changes' if dirty else ''}"


def machine() -> str:
    mem = 0.0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) / 1024 / 1024
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc {os.cpu_count()}, {mem:.1f} GiB memory, load average at start {load}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1000", help="node counts, comma-separated (one fresh cluster each)")
    ap.add_argument("--pods", type=int, default=100, help="DRA pods per run")
    ap.add_argument("--repeats", type=int, default=1, help="times the row sequence runs per node count")
    ap.add_argument("--rows", default="", help="row sequence per repeat (default a,c,b,a; a,b,a without c); per node "
                    "count: '1000=a,c,b,a;5000=a,b' ((c) at 100 %% of 5,000 nodes takes minutes per row)")
    ap.add_argument("--row-timeout", type=float, default=1800, help="seconds for one row's pods to bind")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    sizes_wanted = [int(x) for x in a.nodes.split(",") if x.strip()]
    command = " ".join(["bench/scheduler_throughput.py", *(shlex.quote(x) for x in sys.argv[1:])])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mach = machine()
    rev = revision()
    print(f"command: {command}\nmachine: {mach}\ndate: {started}\nrevision: {rev}", flush=True)
    out("machine.nproc", os.cpu_count() or 0, "cores", 0)
    percentage_b = int(scheduler_config(SchedulerSettings()).get("percentageOfNodesToScore") or 0)
    rows = rows_for(percentage_b)
    orders = row_orders(a.rows or ("a,c,b,a" if percentage_b else "a,b,a"), sizes_wanted)
    order = [k for o in orders.values() for k in o]
    if unknown := [x for x in order if x not in rows]:
        raise SystemExit(f"--rows: unknown rows {unknown}; known: {sorted(rows)}")
    for r in (rows[k] for k in dict.fromkeys(order)):
        print(f"row {r.key}: {r.label}; percentageOfNodesToScore {r.percentage or 'unset'}", flush=True)
    print(f"extender flags: {' '.join(EXTENDER_ARGS)}", flush=True)
    results: list[SizeResult] = []
    for n in sizes_wanted:
        work = Path(tempfile.mkdtemp(prefix="topodra-throughput-"))
        cluster = LocalCluster(Path("/tmp/topodra") / f"bench-throughput-{os.getpid()}")
        ext = Extender(cluster, work)
        try:
            cluster.up(owner_pid=os.getpid())
            client = KubeClient.load(str(cluster.kubeconfig), pool_size=32)
            t_nodes, t_slices = setup(cluster, client, n)
            out(f"n{n}.setup_nodes", t_nodes, "s", 1)
            out(f"n{n}.setup_slices", t_slices, "s", 1)
            out(f"n{n}.setup_total", t_nodes + t_slices, "s", 1)
            size = SizeResult(n, t_nodes, t_slices)
            seen: dict[str, int] = {}
            for rep in range(1, a.repeats + 1):
                for key in orders[n]:
                    seen[key] = seen.get(key, 0) + 1
                    ns = f"tp-{key}-{seen[key]}"
                    res = run_row(cluster, client, ext, rows[key], ns, a.pods, a.row_timeout)
                    res.nodes, res.index = n, seen[key]
                    size.runs.append(res)
                    p = res.name
                    print(f"{p}: repeat {rep}, {rows[key].label}", flush=True)
                    out(f"{p}.pods_per_s", res.pods_per_s, "pods/s")
                    out(f"{p}.wall", res.wall_s, "s")
                    out(f"{p}.create_to_bound_p50", quantile(res.create_to_bound_s, 0.5), "s", 3)
                    out(f"{p}.create_to_bound_p99", quantile(res.create_to_bound_s, 0.99), "s", 3)
                    out(f"{p}.claims_to_bound_p50", quantile(res.claims_to_bound_s, 0.5), "s", 3)
                    out(f"{p}.claims_to_bound_p99", quantile(res.claims_to_bound_s, 0.99), "s", 3)
                    out(f"{p}.load_before", res.load[0], "load")
                    out(f"{p}.load_after", res.load[1], "load")
                    if res.extender_ready_s:
                        out(f"{p}.extender_ready", res.extender_ready_s, "s", 1)
                        out(f"{p}.extender_rss", res.extender_rss_mib, "MiB", 0)
                    clean(client, ns)
            results.append(size)
            summarize(size, rows)
        finally:
            ext.stop()
            cluster.down()
            # The cluster dir is this run's own (named by pid); etcd's data at 5,000 nodes is ~0.5 GB.
            shutil.rmtree(cluster.dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    md = markdown(results, rows, command, mach, f"{started}, revision {rev}", a.pods)
    print("\n--- Markdown ---\n" + md, flush=True)
    if a.json:
        doc = to_json(results, rows, command, mach, started)
        doc["markdown"] = md  # the report (bench/report.py) shows this breakdown as the bench renders it
        a.json.write_text(json.dumps(doc, indent=2))
    return 0


def row_orders(spec: str, sizes: list[int]) -> dict[int, list[str]]:
    """`a,b,a` for every node count, or `N=a,c,b,a;M=a,b` per node count (each listed count must be run)."""
    def seq(text: str) -> list[str]:
        return [x.strip() for x in text.split(",") if x.strip()]

    if "=" not in spec:
        return {n: seq(spec) for n in sizes}
    per = {int(n): seq(rows) for n, rows in (part.split("=", 1) for part in spec.split(";") if part.strip())}
    if missing := [n for n in sizes if n not in per]:
        raise SystemExit(f"--rows: no row sequence for {missing} nodes")
    return {n: per[n] for n in sizes}


def summarize(size: SizeResult, rows: dict[str, Row]) -> None:
    n = size.nodes
    med: dict[str, float] = {}
    for key in rows:
        rs = [r for r in size.runs if r.row == key]
        if not rs:
            continue
        med[key] = statistics.median(r.pods_per_s for r in rs)
        out(f"n{n}.{key}.pods_per_s_median", med[key], "pods/s")
        c2b = [x for r in rs for x in r.create_to_bound_s]
        out(f"n{n}.{key}.create_to_bound_p50", quantile(c2b, 0.5), "s", 3)
        out(f"n{n}.{key}.create_to_bound_p99", quantile(c2b, 0.99), "s", 3)
        b = Breakdown()
        for r in rs:
            b.add(r)
        print_breakdown(f"n{n}.{key}", b)
    for x, y in (("b", "a"), ("b", "c"), ("c", "a")):
        if x in med and y in med and med[y]:
            out(f"n{n}.ratio_{x}_over_{y}", med[x] / med[y], "ratio", 3)
    a_runs = [r.pods_per_s for r in size.runs if r.row == "a"]
    if len(a_runs) >= 2:
        out(f"n{n}.drift_a_last_over_first", a_runs[-1] / a_runs[0], "ratio", 3)


def to_json(sizes: list[SizeResult], rows: dict[str, Row], command: str, mach: str, started: str) -> Json:
    return {
        "command": command, "machine": mach, "date": started,
        "rows": {k: {"label": r.label, "percentageOfNodesToScore": r.percentage} for k, r in rows.items()},
        "sizes": [{
            "nodes": s.nodes, "setup_nodes_s": s.setup_nodes_s, "setup_slices_s": s.setup_slices_s,
            "runs": [{"row": r.row, "index": r.index, "pods": r.pods, "wall_s": r.wall_s,
                      "pods_per_s": r.pods_per_s, "create_to_bound_s": r.create_to_bound_s,
                      "claims_to_bound_s": r.claims_to_bound_s, "load": r.load, "cpu_s": r.cpu_s,
                      "extender_ready_s": r.extender_ready_s, "extender_rss_mib": r.extender_rss_mib}
                     for r in s.runs],
            "breakdown": breakdown_json(s, rows),
        } for s in sizes],
    }


def breakdown_json(size: SizeResult, rows: dict[str, Row]) -> Json:
    """Per row, pooled over its runs: what sets the rate (the serial algorithm) and the DRA Filter's reach."""
    out: Json = {}
    for key in rows:
        b = Breakdown()
        for r in (r for r in size.runs if r.row == key):
            b.add(r)
        if b.pods:
            out[key] = {"pods": b.pods, "algorithm_mean_ms": b.algorithm.mean_ms,
                        "nodes_filtered_per_cycle": b.nodes_filtered_per_cycle(),
                        "cpu_ms_per_pod": {c: 1000 * v / b.pods for c, v in b.cpu_s.items()}}
    return out


if __name__ == "__main__":
    sys.exit(main())
