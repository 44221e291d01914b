"""Gang planner time, in process: plan_gang for 64-, 256- and 1,024-pod gangs, and Planner.best_node per pod.

The Index is filled through the watch path (scheduler_plugin.cache.apply_event) from the objects the API
would return: N nodes of 8 GPUs + 8 NICs (4 PCIe roots, 2 GPUs + 2 NICs each, 2 NUMA nodes), racks of 16
nodes, blocks of 128, zones of 1,024. A share of the nodes (`--busy`, default 30 %) has 1-6 random devices
allocated, so that whole blocks rarely fit and the search has to go through domains and node shapes. Every gang
member asks for 1 GPU + 1 NIC on one PCIe root (a claim template with a `matchAttribute` constraint); no
topology level is required, so the planner walks node, rack, block, zone, cluster until a domain fits.
No cluster, no HTTP: the figures are the planner's own time on one core.

    .venv/bin/python bench/gang_planner.py [--nodes 1000,5000] [--gangs 64,256,1024] [--repeats 20]

Per (nodes, gang): the first call (cold: the requirement's fit table is empty), then the median and p99 of
`--repeats` further calls (the planner is pure over the index; nothing is reserved between calls), in wall time
and, since machines are shared, the median CPU time of the planning thread. best_node: the same over `--pods`
pods. Result lines read `name: value unit`; a Markdown table follows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scheduler_throughput import machine
from scheduler_plugin.cache import apply_event
from scheduler_plugin.claims import resolve
from scheduler_plugin.config import default_config
from scheduler_plugin.gang.planner import GangPlan, Member, plan_gang
from scheduler_plugin.index import Index
from scheduler_plugin.model import parse_pod
from scheduler_plugin.planner import Choice, Planner
from topodra_cli.testing.objects import STD, claim_pod, device_classes, eight_by_eight, gpu_nic_template

NS = "bench"
CFG = default_config()
DEVICES = [d["name"] for d in eight_by_eight()]


def build(n: int, busy: float, rng: random.Random) -> Index:
    idx = Index(CFG)
    for dc in device_classes():
        apply_event(idx, "deviceclasses", "ADDED", dc)
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template(NS, "pair", 1, 1, f"{STD}/pcieRoot"))
    for i in range(n):
        name = f"node-{i:05d}"
        apply_event(idx, "nodes", "ADDED", {"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": f"z{i // 1024}",
            "topodra.dev/block": f"b{i // 128}", "topodra.dev/rack": f"r{i // 16}"}}})
        apply_event(idx, "resourceslices", "ADDED", {"metadata": {"name": f"{name}-topodra.dev"}, "spec": {
            "driver": "topodra.dev", "nodeName": name, "devices": eight_by_eight(),
            "pool": {"name": name, "generation": 1, "resourceSliceCount": 1}}})
        if rng.random() < busy:
            taken = rng.sample(DEVICES, rng.randint(1, 6))
            apply_event(idx, "resourceclaims", "ADDED", {
                "metadata": {"namespace": NS, "name": f"busy-{name}", "uid": f"busy-{i}"}, "spec": {},
                "status": {"allocation": {"devices": {"results": [
                    {"request": "r", "driver": "topodra.dev", "pool": name, "device": d} for d in taken]}}}})
    idx.refresh(time.monotonic())
    return idx


def members(idx: Index, gang: str, size: int) -> list[Member]:
    out = []
    for j in range(size):
        obj = claim_pod(f"{gang}-{j:04d}", {"acc": "pair"}, namespace=NS)
        obj["metadata"]["uid"] = f"{gang}-{j}"
        p = parse_pod(obj)
        out.append(Member(p, resolve(p, idx, CFG.alignment)))
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def out(name: str, value: float, unit: str, digits: int = 2) -> None:
    print(f"{name}: {value:.{digits}f} {unit}", flush=True)


def revision() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                       cwd=Path(__file__).resolve().parents[1])
    return r.stdout.strip() or "unknown"


def run(n: int, gangs: list[int], repeats: int, pods: int, busy: float, rows: list[dict[str, Any]]) -> None:
    rng = random.Random(n)
    t0 = time.perf_counter()
    idx = build(n, busy, rng)
    out(f"build.n{n}", time.perf_counter() - t0, "s")
    planner = Planner(idx, CFG)
    free = sum(st.free_gpus for st in idx.nodes.values())
    print(f"n{n}: {free} of {8 * n} GPUs free", flush=True)
    for size in gangs:
        ms = members(idx, f"g{size}", size)
        t = time.perf_counter()
        plan = plan_gang(idx, ms, None, planner.eligible)
        cold = time.perf_counter() - t
        times, cpu = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.thread_time()
            again = plan_gang(idx, ms, None, planner.eligible)
            times.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            assert again == plan, "the planner is pure over the index"
        if not isinstance(plan, GangPlan):
            raise SystemExit(f"n{n} gang {size}: no plan: {plan.message}")
        assert len(plan.members) == size
        key = f"gang_plan.n{n}.g{size}"
        med, p99 = statistics.median(times), pct(times, 0.99)
        out(f"{key}.cold", cold * 1000, "ms")
        out(f"{key}.median", med * 1000, "ms")
        out(f"{key}.p99", p99 * 1000, "ms")
        out(f"{key}.cpu_median", statistics.median(cpu) * 1000, "ms")
        nodes = len({a.node for a in plan.members.values()})
        print(f"{key}: placed in {plan.describe()} on {nodes} nodes", flush=True)
        rows.append({"what": f"plan_gang, {size} pods", "gang": size, "nodes": n,
                     "where": f"{plan.describe()}, {nodes} nodes",
                     "cold_ms": cold * 1000, "median_ms": med * 1000, "p99_ms": p99 * 1000,
                     "cpu_median_ms": statistics.median(cpu) * 1000, "n": repeats})
    ms = members(idx, "single", pods)
    times, cpu = [], []
    for m in ms:
        t, c = time.perf_counter(), time.thread_time()
        choice = planner.best_node(m.pod, m.req)
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        assert isinstance(choice, Choice), choice
    key = f"best_node.n{n}"
    med, p99 = statistics.median(times[1:] or times), pct(times[1:] or times, 0.99)
    out(f"{key}.cold", times[0] * 1000, "ms")
    out(f"{key}.median", med * 1000, "ms")
    out(f"{key}.p99", p99 * 1000, "ms")
    cpu_med = statistics.median(cpu[1:] or cpu) * 1000
    out(f"{key}.cpu_median", cpu_med, "ms")
    rows.append({"what": "best_node, one pod", "nodes": n, "where": "", "cold_ms": times[0] * 1000,
                 "median_ms": med * 1000, "p99_ms": p99 * 1000, "cpu_median_ms": cpu_med,
                 "n": max(1, len(times) - 1)})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1000,5000", help="node counts, comma-separated (one index each)")
    ap.add_argument("--gangs", default="64,256,1024", help="gang sizes, comma-separated")
    ap.add_argument("--repeats", type=int, default=20, help="timed plan_gang calls per gang after the cold one")
    ap.add_argument("--pods", type=int, default=200, help="pods for best_node (the first one is the cold call)")
    ap.add_argument("--busy", type=float, default=0.3, help="share of nodes with 1-6 devices allocated")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    command = " ".join(["bench/gang_planner.py", *(shlex.quote(x) for x in sys.argv[1:])])
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mach = machine()
    print(f"command: {command}\nmachine: {mach}\ndate: {started}\nrevision: {revision()}", flush=True)
    rows: list[dict[str, Any]] = []
    for n in (int(x) for x in a.nodes.split(",") if x.strip()):
        run(n, [int(x) for x in a.gangs.split(",") if x.strip()], a.repeats, a.pods, a.busy, rows)
    md = ["| what | nodes | placed in | cold | median | p99 | CPU median | calls |",
          "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['what']} | {r['nodes']:,} | {r['where']} | {r['cold_ms']:.1f} ms | {r['median_ms']:.1f} ms "
                  f"| {r['p99_ms']:.1f} ms | {r['cpu_median_ms']:.1f} ms | {r['n']} |")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average at end: {load}", flush=True)
    print("\n--- Markdown ---\n" + "\n".join(md), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"command": command, "machine": mach, "date": started, "rows": rows,
                                      "busy": a.busy, "markdown": "\n".join(md)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
