"""One gang through the real kube-scheduler with topodra as planner and binder, against the same pods without it.

A local control plane (the pinned Kubernetes build) gets N fake nodes (racks of 16, blocks of 128), each
publishing 8 GPUs + 8 NICs. Every pod has one claim from a template asking for one GPU and one NIC on the
same PCIe root (a matchAttribute constraint). Each repeat runs two rows, each from a clean namespace and a
freshly started kube-scheduler:

  plain  G pods, no gang, kube-scheduler with its defaults and no extender (percentageOfNodesToScore unset);
  gang   G pods annotated `topodra.dev/gang` + `topodra.dev/gang-size: G`; `topodra extender` with its
         default flags (`--bind-hold-seconds` 20) and kube-scheduler given the extender entry that
         `scheduler_plugin.schedconfig.extender_entry(SchedulerSettings(..., bind=True))` writes.

Pods are created by 8 threads. Times are local monotonic clocks: the create call's return, and the moment
a watch first shows the planned-node annotation, the claim's allocation (kube-scheduler's PreBind) and the
pod's node. Members created before the last are refused while the gang collects and wait in kube-scheduler's
unschedulable pool; the plan annotation is what wakes them, so "last create -> first bound" is the wake-up
delay, and with the bind barrier every member is bound in one burst after the last is ready.

After each row the bench checks where the gang landed (the smallest level whose domain holds G GPUs: one
node, rack or block) and, per pod, that its GPU and NIC share a PCIe root (claims' `status.allocation`
against the slices' attributes). A gang that does not bind wholly within `--row-timeout` ends the bench
with the extender's log excerpt and its /debug/gangs.

    .venv/bin/python bench/gang_throughput.py [--nodes 1000] [--gang-size 256] [--repeats 1] [--json FILE]

Result lines read `name: value unit`; a Markdown summary follows at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.schedmetrics import Hist, client_context, delta, histograms
from bench.scheduler_throughput import (
    EXTENDER_ARGS,
    Extender,
    PodWatch,
    clean,
    machine,
    out,
    quantile,
    setup,
    wait_url,
)
from kubeaccess.errors import ApiError
from kubeaccess.stream import CONNECTED
from kubeaccess.sync import KubeClient
from scheduler_plugin.gang.coordinator import PLAN_ANNOTATION
from scheduler_plugin.schedconfig import SchedulerSettings, extender_entry
from topodra_cli.localcluster import LocalCluster
from topodra_cli.testing.objects import STD, Json, claim_pod, gpu_nic_template

GANG, SIZE = "topodra.dev/gang", "topodra.dev/gang-size"
RACK, BLOCK = "topodra.dev/rack", "topodra.dev/block"
GPUS_PER_NODE = 8
ROOT = f"{STD}/pcieRoot"
GANG_NAME = "train"


class GangExtender(Extender):
    """`topodra extender` with its default flags, as a user runs it: the throughput bench quiets its log, but
    the `gang_planned` line is logged at info."""

    def argv(self, port: int) -> list[str]:
        return [x for x in super().argv(port) if x not in EXTENDER_ARGS]


class MemberWatch(PodWatch):
    """PodWatch that also keeps each pod's node and when its plan annotation first showed."""

    def __init__(self, client: KubeClient, ns: str, want: int) -> None:
        super().__init__(client, ns, want)
        self.planned: dict[str, float] = {}
        self.node: dict[str, str] = {}

    def _see(self, pod: Json, now: float) -> None:
        name = pod["metadata"]["name"]
        if PLAN_ANNOTATION in (pod["metadata"].get("annotations") or {}):
            self.planned.setdefault(name, now)
        if node := (pod.get("spec") or {}).get("nodeName"):
            self.node.setdefault(name, node)
        super()._see(pod, now)


class AllocationWatch:
    """When each pod's claim was first seen allocated: kube-scheduler's PreBind ran for that pod, so the pod
    was taken out of the queue, filtered and reserved."""

    def __init__(self, client: KubeClient, ns: str) -> None:
        self.client, self.path = client, f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims"
        self.allocated: dict[str, float] = {}  # pod name -> time
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        if not self.connected.wait(30):
            raise SystemExit(f"watch on {self.path} did not connect")

    def _see(self, claim: Json, now: float) -> None:
        if not (claim.get("status") or {}).get("allocation"):
            return
        for ref in claim["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Pod":
                self.allocated.setdefault(ref["name"], now)

    def _run(self) -> None:
        rv = ""
        while not self.stop.is_set():
            try:
                if not rv:
                    listed = self.client.get(self.path)
                    for c in listed.get("items") or []:
                        self._see(c, time.monotonic())
                    rv = listed["metadata"]["resourceVersion"]
                for ev in self.client.watch(self.path, {"resourceVersion": rv, "timeoutSeconds": 30,
                                                        "allowWatchBookmarks": "true"}, timeout=45):
                    now = time.monotonic()
                    if ev.get("type") == CONNECTED:
                        self.connected.set()
                        continue
                    obj = ev.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev.get("type") in ("ADDED", "MODIFIED"):
                        self._see(obj, now)
                    if self.stop.is_set():
                        return
            except ApiError as e:
                if e.gone:
                    rv = ""
                time.sleep(0.5)


@dataclass
class Topology:
    """What the bench needs of the fake cluster: each node's rack and block, each device's PCIe root."""

    rack: dict[str, str]
    block: dict[str, str]
    root: dict[tuple[str, str], str]  # (pool, device) -> pcieRoot

    @classmethod
    def read(cls, client: KubeClient) -> Topology:
        rack, block, root = {}, {}, {}
        for n in client.get("/api/v1/nodes", labelSelector="topodra.dev/bench=1").get("items") or []:
            labels = n["metadata"].get("labels") or {}
            rack[n["metadata"]["name"]] = labels.get(RACK, "")
            block[n["metadata"]["name"]] = labels.get(BLOCK, "")
        for s in client.get("/apis/resource.k8s.io/v1/resourceslices").get("items") or []:
            pool = s["spec"]["pool"]["name"]
            for d in s["spec"].get("devices") or []:
                root[(pool, d["name"])] = ((d.get("attributes") or {}).get(ROOT) or {}).get("string", "")
        return cls(rack, block, root)

    def expected_level(self, gpus: int) -> str:
        """The smallest level with a domain that holds `gpus` GPUs (one per pod) on an empty cluster."""
        if gpus <= GPUS_PER_NODE:
            return "node"
        for level, of in (("rack", self.rack), ("block", self.block)):
            per_domain: dict[str, int] = {}
            for d in of.values():
                per_domain[d] = per_domain.get(d, 0) + GPUS_PER_NODE
            if max(per_domain.values(), default=0) >= gpus:
                return level
        return "cluster"

    def level_of(self, nodes: set[str]) -> str:
        if len(nodes) == 1:
            return "node"
        if len({self.rack[n] for n in nodes}) == 1:
            return "rack"
        if len({self.block[n] for n in nodes}) == 1:
            return "block"
        return "cluster"


@dataclass
class RunResult:
    kind: str  # "gang" or "plain"
    index: int
    pods: int
    created: dict[str, float]
    bound: dict[str, float]
    planned: dict[str, float]
    allocated: dict[str, float]
    node: dict[str, str]
    aligned: int = 0
    checked: int = 0
    level: str = ""
    expected_level: str = ""
    racks: int = 0
    blocks: int = 0
    load: tuple[float, float] = (0.0, 0.0)
    plan_log: list[Json] = field(default_factory=list)
    plan_metric: Hist | None = None
    held_runouts: int = 0

    def since_last_create(self, times: dict[str, float], last: bool) -> float:
        return (max(times.values()) if last else min(times.values())) - max(self.created.values())

    def figures(self) -> dict[str, tuple[float, str]]:
        first_c, last_c = min(self.created.values()), max(self.created.values())
        f: dict[str, tuple[float, str]] = {
            "create_span": (last_c - first_c, "s"),
            "first_create_to_all_bound": (max(self.bound.values()) - first_c, "s"),
            "last_create_to_first_bound": (self.since_last_create(self.bound, last=False), "s"),
            "last_create_to_all_bound": (self.since_last_create(self.bound, last=True), "s"),
            "bound_spread": (max(self.bound.values()) - min(self.bound.values()), "s"),
            "create_to_bound_p50": (quantile([self.bound[n] - self.created[n] for n in self.created], 0.5), "s"),
            "create_to_bound_p99": (quantile([self.bound[n] - self.created[n] for n in self.created], 0.99), "s"),
            "nodes_used": (len(set(self.node.values())), "nodes"),
            "racks_used": (self.racks, "racks"),
            "blocks_used": (self.blocks, "blocks"),
            "aligned_fraction": (self.aligned / self.checked if self.checked else 0.0, "fraction"),
        }
        if self.allocated:
            f["last_create_to_first_allocated"] = (self.since_last_create(self.allocated, last=False), "s")
            f["last_create_to_all_allocated"] = (self.since_last_create(self.allocated, last=True), "s")
        if self.planned:
            f["last_create_to_first_planned"] = (self.since_last_create(self.planned, last=False), "s")
            f["last_create_to_all_planned"] = (self.since_last_create(self.planned, last=True), "s")
        if self.plan_log:
            f["plan_seconds_log"] = (sum(float(x.get("plan_seconds", 0.0)) for x in self.plan_log), "s")
            f["plans"] = (len(self.plan_log), "plans")
        if self.plan_metric is not None and self.plan_metric.count:
            f["plan_seconds_metric"] = (self.plan_metric.total_s, "s")
        if self.kind == "plain":
            # Plain pods are scheduled while later ones are still being created: "first" before "last create"
            # is a negative number that measures nothing.
            for k in ("last_create_to_first_bound", "last_create_to_first_allocated"):
                f.pop(k, None)
        if self.kind == "gang":
            f["smallest_domain"] = (1.0 if self.level == self.expected_level else 0.0, "bool")
            f["held_bind_runouts"] = (self.held_runouts, "calls")
        return f


# ---- one row ---------------------------------------------------------------------------------------------------
def pod_body(i: int, gang: bool, size: int) -> Json:
    ann = {GANG: GANG_NAME, SIZE: str(size)} if gang else {}
    return claim_pod(f"m-{i:04d}", {"acc": "pair"}, node_selector={"topodra.dev/bench": "1"}, annotations=ann)


def configure_scheduler(cluster: LocalCluster, ext: Extender | None, percentage: int | None = None) -> None:
    """`percentage` (gang row only): percentageOfNodesToScore instead of what SchedulerSettings gives users."""
    if ext is not None:
        settings = SchedulerSettings(url=f"{ext.url}/v1", ca_file=str(ext.ca.cert), bind=True)
        if percentage is not None:
            settings = dataclasses.replace(settings, percentage_of_nodes_to_score=percentage)
        cluster.set_scheduler_config(extenders=[extender_entry(settings)],
                                     percentage_of_nodes_to_score=settings.percentage_of_nodes_to_score)
    else:
        cluster.set_scheduler_config(extenders=None, percentage_of_nodes_to_score=0)  # 0: unset, adaptive
    st = cluster.state
    assert st is not None
    # /readyz includes the scheduler's informer sync; healthz (what the harness waits for) does not.
    wait_url(f"https://127.0.0.1:{st.scheduler_port}/readyz",
             client_context(cluster.pki_dir / "admin.crt", cluster.pki_dir / "admin.key"), 300, "kube-scheduler")


def log_lines(path: Path, offset: int) -> list[Json]:
    lines = []
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f.read().decode(errors="replace").splitlines():
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict):
                lines.append(doc)
    return lines


def check_alignment(client: KubeClient, ns: str, topo: Topology, res: RunResult) -> None:
    claims = client.get(f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims").get("items") or []
    for c in claims:
        results = (((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
        if not results:
            continue
        roots = {topo.root.get((r["pool"], r["device"]), "") for r in results}
        res.checked += 1
        res.aligned += int(len(roots) == 1 and "" not in roots and len(results) >= 2)


def diagnose(ext: Extender, log_offset: int, watch: MemberWatch, size: int) -> str:
    lines = [f"{len(watch.bound)} of {size} pods bound; planned-node annotation seen on {len(watch.planned)}"]
    try:
        import urllib.request
        with urllib.request.urlopen(f"{ext.url}/debug/gangs", context=ext.ctx, timeout=5) as r:
            lines.append("extender /debug/gangs: " + r.read().decode()[:2000])
    except OSError as e:
        lines.append(f"extender /debug/gangs unreadable: {e}")
    logged = [ln for ln in log_lines(ext.work / "extender.log", log_offset)
              if str(ln.get("event", "")).startswith(("gang_", "bind_", "write_failed", "steer_", "claim_"))
              or ln.get("level") in ("warning", "error")]
    lines.append(f"extender log ({len(logged)} gang/bind/warning lines, last 40):")
    lines += [json.dumps(ln) for ln in logged[-40:]]
    return "\n".join(lines)


def run_row(cluster: LocalCluster, client: KubeClient, ext: Extender | None, topo: Topology, ns: str, size: int,
            timeout: float, percentage: int | None = None) -> RunResult:
    gang = ext is not None
    if ext is not None:
        ext.start()
    configure_scheduler(cluster, ext, percentage)
    client.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates",
                   body=gpu_nic_template(None, "pair", match=ROOT))
    time.sleep(1.0)  # let the template reach the controller-manager's informers
    watch = MemberWatch(client, ns, size)
    allocs = AllocationWatch(client, ns)
    watch.start()
    allocs.start()
    log_path = ext.work / "extender.log" if ext is not None else None
    log_offset = log_path.stat().st_size if log_path is not None and log_path.exists() else 0
    m0 = ext.metrics() if ext is not None else None
    created: dict[str, float] = {}

    def create(i: int) -> None:
        body = pod_body(i, gang, size)
        client.request("POST", f"/api/v1/namespaces/{ns}/pods", body=body)
        created[body["metadata"]["name"]] = time.monotonic()

    load0 = os.getloadavg()[0]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(size)))
        ok = watch.done.wait(timeout)
    finally:
        watch.stop.set()
    if not ok:
        allocs.stop.set()
        detail = diagnose(ext, log_offset, watch, size) if ext is not None else f"{len(watch.bound)} bound"
        raise SystemExit(f"{'gang' if gang else 'plain'} row in {ns}: not every pod bound after {timeout:.0f} s\n"
                         f"{detail}")
    load1 = os.getloadavg()[0]
    deadline = time.monotonic() + 10  # claims are allocated before the bind; their events may trail the pods'
    while len(allocs.allocated) < size and time.monotonic() < deadline:
        time.sleep(0.1)
    allocs.stop.set()
    res = RunResult("gang" if gang else "plain", 0, size, created, dict(watch.bound), dict(watch.planned),
                    dict(allocs.allocated), dict(watch.node), load=(load0, load1))
    check_alignment(client, ns, topo, res)
    used = set(res.node.values())
    res.racks = len({topo.rack[n] for n in used})
    res.blocks = len({topo.block[n] for n in used})
    res.level, res.expected_level = topo.level_of(used), topo.expected_level(size)
    if ext is not None and log_path is not None:
        time.sleep(0.5)
        m1 = ext.metrics()
        assert m0 is not None
        res.plan_metric = histograms(delta(m1, m0), "topodra_extender_plan_seconds", by="what").get("gang")
        logged = log_lines(log_path, log_offset)
        res.plan_log = [x for x in logged if x.get("event") == "gang_planned"]
        res.held_runouts = sum(1 for x in logged if x.get("event") == "bind_refused")
        ext.stop()
    return res


# ---- output ----------------------------------------------------------------------------------------------------
def median_of(runs: list[RunResult], key: str) -> float | None:
    vals = [r.figures()[key][0] for r in runs if key in r.figures()]
    return statistics.median(vals) if vals else None


ROWS = [  # (figure, label) in the Markdown table's order
    ("create_span", "first create → last create"),
    ("last_create_to_all_planned", "last create → plan annotation on every member"),
    ("last_create_to_first_allocated", "last create → first claim allocated (first member scheduled)"),
    ("last_create_to_all_allocated", "last create → every claim allocated"),
    ("last_create_to_first_bound", "last create → first bound (wake-up delay)"),
    ("last_create_to_all_bound", "**last create → all bound**"),
    ("first_create_to_all_bound", "**first create → all bound**"),
    ("bound_spread", "first bound → last bound"),
    ("plan_seconds_log", "extender plan time (`gang_planned` plan_seconds, summed)"),
    ("plan_seconds_metric", "extender plan time (`topodra_extender_plan_seconds{what=\"gang\"}`)"),
    ("held_bind_runouts", "held bind calls that ran out (20 s) and were retried"),
    ("nodes_used", "nodes used"),
    ("racks_used", "racks used"),
    ("blocks_used", "blocks used"),
    ("aligned_fraction", "pods with GPU and NIC on one PCIe root"),
]


def cell(runs: list[RunResult], key: str) -> str:
    vals = [r.figures()[key] for r in runs if key in r.figures()]
    if not vals:
        return "—"
    unit = vals[0][1]
    digits = 3 if unit in ("fraction",) or key.startswith("plan_seconds") else 1 if unit == "s" else 0
    text = ", ".join(f"{v:.{digits}f}" for v, _ in vals)
    return f"{text} s" if unit == "s" else text


def markdown(runs: list[RunResult], nodes: int, size: int, command: str, mach: str, started: str,
             setup_s: float) -> str:
    gang = [r for r in runs if r.kind == "gang"]
    plain = [r for r in runs if r.kind == "plain"]
    lines = [f"Command: `{command}`  ", f"Machine: {mach}  ", f"Date: {started}", "",
             f"{nodes:,} fake nodes, 8 GPUs + 8 NICs (racks of 16, blocks of 128); {size} pods of 1 GPU + 1 NIC "
             f"on one PCIe root; set-up {setup_s:.0f} s. Several runs: values in run order.", "",
             "| measure | gang (extender: plan, nominate, bind barrier) | plain pods (default kube-scheduler) |",
             "| --- | ---: | ---: |"]
    lines += [f"| {label} | {cell(gang, key)} | {cell(plain, key)} |" for key, label in ROWS]
    lines.append(f"| landed in | {', '.join(f'{r.level} (smallest: {r.expected_level})' for r in gang)} | "
                 f"{', '.join(r.level for r in plain)} |")
    g, p = median_of(gang, "last_create_to_all_bound"), median_of(plain, "first_create_to_all_bound")
    g_first = median_of(gang, "first_create_to_all_bound")
    if g is not None and p:
        lines += ["", f"Gang (last create → all bound) / plain (first create → all bound): **{g / p:.2f}**; "
                      f"gang first create → all bound / plain: {(g_first or 0.0) / p:.2f}."]
    return "\n".join(lines)


def to_json(runs: list[RunResult], a: argparse.Namespace, setup_s: float, gang_s: float | None,
            plain_s: float | None, md: str) -> Json:
    return {
        "nodes": a.nodes, "gang_size": a.gang_size, "repeats": a.repeats, "setup_s": setup_s,
        "percentage_of_nodes_to_score": a.percentage_of_nodes_to_score,
        "runs": [{"kind": r.kind, "index": r.index, "level": r.level, "expected_level": r.expected_level,
                  "load": list(r.load), "figures": {k: v for k, (v, _) in r.figures().items()},
                  "units": {k: u for k, (_, u) in r.figures().items()}} for r in runs],
        "ratio_gang_over_plain": gang_s / plain_s if gang_s is not None and plain_s else None,
        "markdown": md,
    }


def revision() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: extender and cluster stop


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="fake nodes (racks of 16, blocks of 128)")
    ap.add_argument("--gang-size", type=int, default=256, help="members of the gang, and plain pods per row")
    ap.add_argument("--repeats", type=int, default=1, help="times the plain and gang rows run")
    ap.add_argument("--row-timeout", type=float, default=900, help="seconds for one row's pods to bind")
    ap.add_argument("--percentage-of-nodes-to-score", type=int, default=None, metavar="PCT",
                    help="gang row: kube-scheduler's percentageOfNodesToScore (default: as SchedulerSettings "
                         "configures users, unset = adaptive); the plain row always runs with the defaults")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    command = " ".join(["bench/gang_throughput.py", *(shlex.quote(x) for x in sys.argv[1:])])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mach = machine()
    print(f"command: {command}\nmachine: {mach}\ndate: {started}\nrevision: {revision()}", flush=True)
    out("machine.nproc", os.cpu_count() or 0, "cores", 0)
    pct = a.percentage_of_nodes_to_score
    print(f"gang row: percentageOfNodesToScore {pct if pct is not None else 'as SchedulerSettings: unset'}; "
          "plain row: unset", flush=True)
    work = Path(tempfile.mkdtemp(prefix="topodra-gangbench-"))
    cluster = LocalCluster(Path("/tmp/topodra") / f"bench-gang-{os.getpid()}")
    ext = GangExtender(cluster, work)
    runs: list[RunResult] = []
    failed = True
    try:
        cluster.up(owner_pid=os.getpid())
        client = KubeClient.load(str(cluster.kubeconfig), pool_size=32)
        t_nodes, t_slices = setup(cluster, client, a.nodes)
        out("setup_nodes", t_nodes, "s", 1)
        out("setup_slices", t_slices, "s", 1)
        topo = Topology.read(client)
        for rep in range(1, a.repeats + 1):
            for kind in ("plain", "gang"):
                ns = f"gb-{kind}-{rep}"
                res = run_row(cluster, client, ext if kind == "gang" else None, topo, ns, a.gang_size,
                              a.row_timeout, a.percentage_of_nodes_to_score)
                res.index = rep
                runs.append(res)
                for name, (v, unit) in res.figures().items():
                    out(f"run{rep}.{kind}.{name}", v, unit, 3)
                out(f"run{rep}.{kind}.load_before", res.load[0], "load")
                out(f"run{rep}.{kind}.load_after", res.load[1], "load")
                for pl in res.plan_log:
                    # The line's `level` is the log level: structlog's own key overwrites the planned level.
                    print(f"run{rep}.{kind}.gang_planned: domain={pl.get('domain')} members={pl.get('members')} "
                          f"plan_seconds={pl.get('plan_seconds')}", flush=True)
                if kind == "gang":
                    print(f"run{rep}.gang.landed: {res.level} (smallest that fits: {res.expected_level})",
                          flush=True)
                clean(client, ns)
        for kind in ("plain", "gang"):
            rs = [r for r in runs if r.kind == kind]
            for key in rs[0].figures():
                if (m := median_of(rs, key)) is not None:
                    out(f"{kind}.{key}", m, rs[0].figures()[key][1], 3)
        g = median_of([r for r in runs if r.kind == "gang"], "last_create_to_all_bound")
        p = median_of([r for r in runs if r.kind == "plain"], "first_create_to_all_bound")
        if g is not None and p:
            out("ratio_gang_over_plain", g / p, "ratio", 3)
        md = markdown(runs, a.nodes, a.gang_size, command, mach, f"{started}, revision {revision()}",
                      t_nodes + t_slices)
        print("\n--- Markdown ---\n" + md, flush=True)
        if a.json:
            a.json.write_text(json.dumps(to_json(runs, a, t_nodes + t_slices, g, p, md), indent=2) + "\n")
        failed = False
    finally:
        ext.stop()
        cluster.down()
        shutil.rmtree(cluster.dir, ignore_errors=True)
        if failed:
            print(f"extender log kept in {work / 'extender.log'}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
