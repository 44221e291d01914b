"""Report sections for the scheduling side: extender latency, gang planner, kube-scheduler throughput, gangs."""

from __future__ import annotations

import statistics
from typing import Any

from bench.reportlib.fmt import Rendered, image, num, quantile, ratio, table, verdict

Json = dict[str, Any]
CALLS = ("extender filter", "extender prioritize", "trivial filter", "trivial prioritize")


def bench_markdown(d: Json, start: str = "") -> list[str]:
    """The Markdown a script printed itself, without its Command/Machine/Date lines (the section has them),
    from the first line that starts with `start`."""
    lines = [ln for ln in str(d.get("markdown", "")).splitlines()
             if not ln.startswith(("Command:", "Machine:", "Date:"))]
    if start:
        idx = next((i for i, ln in enumerate(lines) if ln.startswith(start)), len(lines))
        lines = lines[idx:]
    while lines and not lines[0].strip():
        lines.pop(0)
    return [*lines, ""] if lines else []


def extender_latency(d: Json, plots: list[str]) -> Rendered:
    sizes = sorted(d["sizes"], key=lambda s: s["nodes"])
    body = ["The extender's aiohttp app in its own process over HTTPS (keep-alive, one connection), its cache "
            "filled through the same event path the watches use. Every node has 8 GPUs + 8 NICs on 4 PCIe roots and "
            f"2 NUMA nodes; half of each node's GPUs and NICs are allocated ({d['pattern']} half per node: almost "
            "every node has its own free-device signature, the worst case for the per-shape memo). Each call sends "
            "**every** node name (percentageOfNodesToScore: 100) with one of four pod shapes in turn (1 GPU + 1 NIC "
            "on one PCIe root; 4 GPUs + 4 NICs on one NUMA node; a GPU and a NIC claim with required PCIe "
            "alignment; 8 GPUs, which fits nowhere). Between calls one node's allocation changes, so the calls "
            "also pay for incremental index updates. *Trivial* is a handler in the same server that parses the "
            "request and passes every node: the HTTP + JSON baseline of the same run. Untimed warm-up: per pod "
            f"shape its first filter then its first prioritize call. Then {d['requests']} timed calls per verb "
            "and handler; p50 / p99 over them.", "",
            "*Server CPU* is the handler thread's CPU time, *server* its wall time, *client* the round trip seen "
            "by a client in another process (TLS, encoding, reading the reply). The last column is the "
            "extender's server p50 over the trivial handler's for the same verb.", ""]
    rows = []
    for s in sizes:
        c = s["calls"]
        for call in CALLS:
            m = c[call]
            base = c[call.replace("extender", "trivial")]["server_ms"]["p50"] if call.startswith("ext") else None
            bold = "**" if call.startswith("ext") else ""
            rows.append([f"{s['nodes']:,}", call, num(m["server_cpu_ms"]["p50"], 2), num(m["server_cpu_ms"]["p99"], 2),
                         f"{bold}{num(m['server_ms']['p50'], 2)}{bold}", f"{bold}{num(m['server_ms']['p99'], 2)}{bold}",
                         num(m["client_ms"]["p50"], 2), num(m["client_ms"]["p99"], 2),
                         ratio(m["server_ms"]["p50"], base, 1) if base is not None else ""])
    body += table(["nodes", "call", "server CPU p50 ms", "server CPU p99 ms", "server p50 ms", "server p99 ms",
                   "client p50 ms", "client p99 ms", "vs trivial"], rows, "rlrrrrrrr")
    body += [""]
    for s in sizes:
        lo, hi = s["load"]
        body.append(f"- {s['nodes']:,} nodes: cache built in {num(s['cache_build_s'], 1)} s, cache RSS "
                    f"{num(s['cache_rss_mib'], 0)} MiB, {s['node_shapes']:,} node shapes; first filter per pod shape "
                    f"(memo cold, client-measured): {', '.join(num(x, 0) for x in s['first_filter_ms'])} ms; first "
                    f"prioritize per shape: {', '.join(num(x, 0) for x in s['first_prioritize_ms'])} ms; load "
                    f"average {num(lo, 1)} before, {num(hi, 1)} after")
    body += [""] + (image(plots[0], "extender latency against node count") if plots else [])
    body += ["The extender keeps per-node state for node lists it has seen before (docs/extender.md, \"How it is "
             "fast\"); this benchmark sends the same node list every call, as kube-scheduler does for filter with "
             "`percentageOfNodesToScore: 100`, and the filter call also builds the pod shape's prioritize scoring "
             "groups. In a real cluster prioritize receives the nodes that survived filtering, which can change "
             "from call to call and then takes the general path, slower than these figures.", ""]
    at5k = next((s for s in sizes if s["nodes"] == 5000), None)
    summary: list[tuple[str, str, str]] = []
    if at5k is not None:
        c = at5k["calls"]
        f99, p99 = c["extender filter"]["server_ms"]["p99"], c["extender prioritize"]["server_ms"]["p99"]
        summary.append((
            "extender p99 ≤ 5 ms at 5,000 nodes, 8 GPUs + 8 NICs each, half allocated at random (#6)",
            f"server p50 / p99: filter **{num(c['extender filter']['server_ms']['p50'], 2)} / {num(f99, 2)} ms**, "
            f"prioritize **{num(c['extender prioritize']['server_ms']['p50'], 2)} / {num(p99, 2)} ms**; trivial "
            f"handler in the same run: filter {num(c['trivial filter']['server_ms']['p99'], 2)}, prioritize "
            f"{num(c['trivial prioritize']['server_ms']['p99'], 2)} ms p99; cache {num(at5k['cache_rss_mib'], 0)} MiB",
            verdict(max(f99, p99) <= 5)))
    else:
        big = sizes[-1]
        summary.append(("extender latency (#6)", f"at {big['nodes']:,} nodes: filter p99 "
                        f"{num(big['calls']['extender filter']['server_ms']['p99'], 2)} ms (target is at 5,000)", "—"))
    return Rendered(body, summary)


def gang_planner(d: Json, plots: list[str]) -> Rendered:
    rows = d["rows"]
    reps = max((r["n"] for r in rows if "gang" in r), default=0)
    body = ["`plan_gang` places a whole gang in one call (docs/gang.md); `Planner.best_node` picks one pending "
            "pod's node. Both read only the extender's cache, so the benchmark fills an `Index` in process through "
            "the watch-event path (no cluster, no HTTP): 8 GPUs + 8 NICs per node (4 PCIe roots), racks of 16 "
            f"nodes, blocks of 128, zones of 1,024, {num(100 * d.get('busy', 0.3), 0)} % of the nodes with 1-6 "
            "random devices allocated. Every member asks for 1 GPU + 1 NIC on one PCIe root; no level is required, "
            "so the planner walks node ▸ rack ▸ block ▸ zone ▸ cluster until a domain fits. *Cold* is the first "
            f"call (the requirement's fit table is empty); median and p99 are over {reps} further calls (the planner "
            "is pure over the index), in wall time and, because the machine is shared, the median CPU time of the "
            "planning thread.", ""]
    body += table(["what", "nodes", "placed in", "cold ms", "median ms", "p99 ms", "CPU median ms", "wall / CPU",
                   "calls"],
                  [[r["what"], f"{r['nodes']:,}", r["where"], num(r["cold_ms"], 1), f"**{num(r['median_ms'], 1)}**",
                    num(r["p99_ms"], 1), num(r["cpu_median_ms"], 1), ratio(r["median_ms"], r["cpu_median_ms"], 1),
                    str(r["n"])] for r in rows], "lrlrrrrrr")
    body += ["", "*wall / CPU* above 1 is time the planning thread waited for a core: the machine's load, not the "
             "planner.", ""] + (image(plots[0], "gang plan time against gang size") if plots else [])
    body += ["Where the time goes (a `cProfile` of the same workload, not part of this run): for small gangs, "
             "grouping the nodes into domains level by level; for large gangs, the member-by-member first fit "
             "inside the chosen domain (memoised per node shape) and the grouping. The slowest case is a gang that "
             "has to wait: when every domain has enough free GPUs but too few with a NIC on their root, each domain "
             "is searched to the end before the next. The coordinator replans a waiting gang only when the cache "
             "has changed since its last try. `best_node` spends its time scoring each distinct (free-device "
             "signature, domains) pair and picking the fullest of the best nodes.", ""]
    target = next((r for r in rows if r.get("gang") == 1024 and r["nodes"] == 5000), None)
    if target is not None:
        summ = ("plan a 1,024-pod aligned gang on 5,000 nodes ≤ 1 s (#11)",
                f"median **{num(target['median_ms'], 0)} ms**, p99 {num(target['p99_ms'], 0)} ms wall, "
                f"{num(target['cpu_median_ms'], 0)} ms CPU; placed in {target['where']}",
                verdict(target["p99_ms"] <= 1000))
    else:
        big = max((r for r in rows if "gang" in r), key=lambda r: (r["nodes"], r["gang"]))
        summ = ("gang plan time (#11)", f"{big['what']} on {big['nodes']:,} nodes: median {num(big['median_ms'], 1)} "
                "ms (target is 1,024 pods on 5,000 nodes)", "—")
    return Rendered(body, [summ])


ROW_TEXT = {
    "a": "kube-scheduler's defaults: no extender, `percentageOfNodesToScore` unset (adaptive: about 42 % of 1,000 "
         "nodes, 10 % of 5,000)",
    "b": "kube-scheduler exactly as `topodra extender print-scheduler-config` and the Helm chart configure it "
         "(the extender with filter + prioritize, HTTPS, `nodeCacheCapable`), `topodra extender` running",
    "c": "the default scheduler forced to `percentageOfNodesToScore: {pct}` (what the chart set before it left the "
         "percentage unset), so a loss can be put down to the percentage or to the extender",
}


def scheduler_throughput(d: Json, plots: list[str]) -> Rendered:
    sizes = d["sizes"]
    pods = sizes[0]["runs"][0]["pods"] if sizes and sizes[0]["runs"] else 0
    keys = [k for k in d["rows"] if any(r["row"] == k for s in sizes for r in s["runs"])]
    body = ["A fresh local control plane with N fake nodes (racks of 16, blocks of 128), each publishing 8 GPUs + "
            f"8 NICs. Every run creates {pods} pods (8 client threads), each with a claim from a template for 1 GPU "
            "+ 1 NIC on one PCIe root, and times them until all are bound. Rows:", ""]
    body += [f"- **({k})** " + ROW_TEXT.get(k, d["rows"][k]["label"]).format(
        pct=d["rows"][k]["percentageOfNodesToScore"]) for k in keys]
    body += ["", "Every row starts with a freshly started kube-scheduler (and extender, for b) and no pods or claims "
             "left from the previous row; the rows run in the command's order, with (a) first and last to expose "
             "drift. kube-scheduler's and the extender's `/metrics` are scraped before and after each row and the "
             "difference is used. Setup (fake nodes, then slices): "
             + "; ".join(f"{s['nodes']:,} nodes {num(s['setup_nodes_s'], 0)} s + {num(s['setup_slices_s'], 0)} s"
                         for s in sizes) + ".", ""]
    rows, summary = [], []
    for s in sizes:
        med = {k: statistics.median(r["pods_per_s"] for r in s["runs"] if r["row"] == k)
               for k in keys if any(r["row"] == k for r in s["runs"])}
        bd = s.get("breakdown", {})
        for k in keys:
            rs = [r for r in s["runs"] if r["row"] == k]
            if not rs:
                continue
            c2b = [x for r in rs for x in r["create_to_bound_s"]]
            b = bd.get(k, {})
            cpu = b.get("cpu_ms_per_pod", {})
            rows.append([f"{s['nodes']:,}", f"({k})", ", ".join(num(r["pods_per_s"], 1) for r in rs),
                         f"**{num(med[k], 1)}**", f"**{ratio(med[k], med.get('a'))}**" if k != "a" else "1",
                         f"{num(quantile(c2b, 0.5), 1)} / {num(quantile(c2b, 0.99), 1)}",
                         num(b.get("algorithm_mean_ms"), 1), num(b.get("nodes_filtered_per_cycle"), 0),
                         " · ".join(num(cpu.get(c), 0) for c in ("kube-scheduler", "kube-apiserver", "etcd",
                                                                   "extender"))])
        a_runs = [r["pods_per_s"] for r in s["runs"] if r["row"] == "a"]
        drift = f"; (a) last / first run {ratio(a_runs[-1], a_runs[0])}" if len(a_runs) >= 2 else ""
        if "b" in med and "a" in med:
            summary.append((f"scheduler throughput with topodra ≥ 0.8 of the default scheduler's, {s['nodes']:,} "
                            "nodes (#6, #10)",
                            f"(b) / (a) **{ratio(med['b'], med['a'])}** ({num(med['b'], 1)} vs {num(med['a'], 1)} "
                            f"pods/s, medians of {sum(r['row'] == 'b' for r in s['runs'])} and {len(a_runs)} runs)"
                            + (f"; (c) / (a) {ratio(med['c'], med['a'])}" if "c" in med else "") + drift,
                            verdict(med["b"] / med["a"] >= 0.8 if med["a"] and s["nodes"] >= 1000 else None)))
    body += table(["nodes", "row", "runs, pods/s", "median pods/s", "vs (a)", "create → bound p50 / p99 s",
                   "algorithm ms per pod", "nodes the DRA Filter ran on per cycle",
                   "CPU ms per pod: scheduler · apiserver · etcd · extender"], rows, "rlrrrrrrr")
    body += [""] + (image(plots[0], "scheduler throughput") if plots else [])
    body += ["Where kube-scheduler's time goes, as the script prints it:", ""]
    body += bench_markdown(d, "| nodes | measure")
    body += [
        "How to read it:", "",
        "- **The serial scheduling algorithm sets the rate.** kube-scheduler runs it for one pod at a time, so "
        "1 / (algorithm ms per pod) bounds the pods/s of a row; inside it the parallel Filter pass dominates, and "
        "there the DRA plugin's per-node allocation attempt, run on the sampled share of the nodes (all of them "
        "at 100 %).",
        "- **Why topodra can be faster than the default.** The extender nominates each pod's node "
        "(`status.nominatedNodeName`); kube-scheduler evaluates the nominated node first, and when it passes, the "
        "DRA Filter runs on one node instead of hundreds (the *nodes the DRA Filter ran on* column).",
        "- **When neither is limited by scheduling**, both rows run at kube-controller-manager's pace: its "
        "resourceclaim controller creates each pod's claim and writes the pod's status at its client's default "
        "20 QPS, about 10 pods/s.",
        "- Binding (PreBind writes the claim's allocation, Bind the pod's node) runs in parallel goroutines; it adds "
        "latency, not serial time. *create → bound* is mostly waiting in the queue behind the burst.",
        "- Under load every figure grows, so compare rows of one run (the ratio column), not runs.", "",
        "Caveats:", "",
        "- `scheduler_plugin_execution_duration_seconds` is recorded for 10 % of scheduling cycles, and "
        "kube-scheduler drops observations beyond 1,000 per second from its buffer (metrics/metric_recorder.go, "
        "bufferSize 1000), so only its means are used, never its counts; call counts come from "
        "`scheduler_plugin_evaluation_total`.",
        "- kube-scheduler 1.37 has no `scheduler_e2e_scheduling_duration_seconds`; the tables use "
        "`scheduler_scheduling_attempt_duration_seconds{result=\"scheduled\"}` (algorithm + binding) and "
        "`scheduler_pod_scheduling_sli_duration_seconds` (queue → bound).",
        "- The local harness differs from a stock cluster in kube-scheduler's client QPS/burst (500/1000 instead "
        "of 50/100) and leader election (off), the same for all rows. Fake nodes have no kubelet: a heartbeat "
        "process renews their Leases (its CPU is in the script's table).", ""]
    return Rendered(body, summary)


def gang_throughput(d: Json, plots: list[str]) -> Rendered:
    size, n = d["gang_size"], d["nodes"]
    body = [f"The real kube-scheduler on {n:,} fake nodes (8 GPUs + 8 NICs each, racks of 16, blocks of 128). Every "
            "pod asks for 1 GPU + 1 NIC on one PCIe root. Each row starts with a fresh kube-scheduler and an empty "
            "namespace:", "",
            f"- **plain**: {size} pods, kube-scheduler with its defaults, no extender: the baseline of the same run;",
            f"- **gang**: the same {size} pods annotated `topodra.dev/gang` and `topodra.dev/gang-size: \"{size}\"`; "
            "`topodra extender` with its default flags (bind hold 20 s), kube-scheduler with the extender entry "
            "`extender_entry(SchedulerSettings(..., bind=True))` writes.", "",
            "Eight threads create the pods; all times are monotonic clocks of the bench. A pod watch records when "
            "each pod got its plan annotation and its node, a claim watch when each claim was allocated "
            "(kube-scheduler's PreBind). Members created first wait in kube-scheduler's unschedulable pool until the "
            "gang is complete, so *last create → first bound* is the wake-up delay. Values per run, in run order; "
            f"set-up {num(d['setup_s'], 0)} s.", ""]
    body += bench_markdown(d, "| measure")
    body += image(plots[0], "gang against plain pods") if plots else []
    gang = [x["figures"] for x in d["runs"] if x["kind"] == "gang"]

    def med(key: str) -> float | None:
        vals = [f[key] for f in gang if key in f]
        return statistics.median(vals) if vals else None

    body += ["Each member is judged on its nominated node only (no DRA Filter over the sampled nodes), and the "
             "gang lands in the smallest level that holds it, on full nodes. The bind barrier holds each member's "
             "bind call until every member is ready; a held call that runs out (after 20 s) is refused and "
             "kube-scheduler retries the member. In this run (medians): every member had its plan annotation "
             f"{num(med('last_create_to_all_planned'), 1)} s after the last create, the first member was bound "
             f"after {num(med('last_create_to_first_bound'), 1)} s and the last after "
             f"{num(med('last_create_to_all_bound'), 1)} s; {num(med('held_bind_runouts'), 0)} held bind calls ran "
             "out. The plain pods bind one by one as kube-scheduler reaches them (*first bound → last bound*), the "
             "gang's members in one burst.", ""]
    r = d.get("ratio_gang_over_plain")
    reps = sum(1 for x in d["runs"] if x["kind"] == "gang")
    return Rendered(body, [(
        f"a {size}-pod gang through kube-scheduler on {n:,} nodes (#11)",
        f"gang (last create → all bound) / plain (first create → all bound): **{num(r, 2)}** (medians of {reps} "
        "runs each); every pod's GPU and NIC on one PCIe root: "
        + ("yes" if all(x["figures"].get("aligned_fraction") == 1.0 for x in d["runs"]) else "**no**"),
        "—")])
