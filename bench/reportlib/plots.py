"""The report's PNG plots, one function per benchmark: JSON in, a file out (None when the JSON has nothing to plot).

Medians are bars or solid lines; every single run is a dot, so the spread stays visible.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # files only, no display; before pyplot is imported

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

Json = dict[str, Any]
GREY = "#999999"


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    # No software/date metadata: the same figures give the same file, so regenerating leaves git quiet.
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def _bars_with_runs(ax: Axes, x: float, runs: list[float], color: str, label: str | None, width: float) -> None:
    ax.bar(x, statistics.median(runs), width, color=color, label=label, alpha=0.8)
    ax.scatter([x] * len(runs), runs, color="black", s=12, zorder=3)


def _ticks(ax: Axes, xs: list[int]) -> None:
    """The measured sizes as plain numbers on a log axis (not 10^3 or 2^6)."""
    ax.set_xticks(xs, [f"{x:,}" for x in xs])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def extender_latency(data: Json, path: Path) -> Path | None:
    sizes = sorted(data.get("sizes", []), key=lambda s: s["nodes"])
    if not sizes:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    nodes = [s["nodes"] for s in sizes]
    for call, color in (("extender filter", "C0"), ("extender prioritize", "C1"),
                        ("trivial filter", GREY), ("trivial prioritize", "#555555")):
        p50 = [s["calls"][call]["server_ms"]["p50"] for s in sizes]
        p99 = [s["calls"][call]["server_ms"]["p99"] for s in sizes]
        ax.plot(nodes, p50, "o-", color=color, label=f"{call} p50")
        ax.plot(nodes, p99, "s--", color=color, label=f"{call} p99", alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks(ax, nodes)
    ax.axhline(5, color="#d62728", alpha=0.5, label="target p99 5 ms (at 5,000 nodes)")
    ax.set_xlabel("nodes in the request (8 GPUs + 8 NICs each)")
    ax.set_ylabel("server-side time per call, ms")
    ax.set_title("Extender latency against node count (trivial handler = HTTP + JSON baseline)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def gang_plan(data: Json, path: Path) -> Path | None:
    rows = [r for r in data.get("rows", []) if "gang" in r]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, n in enumerate(sorted({r["nodes"] for r in rows})):
        rs = sorted((r for r in rows if r["nodes"] == n), key=lambda r: r["gang"])
        g = [r["gang"] for r in rs]
        ax.plot(g, [r["median_ms"] for r in rs], "o-", color=f"C{i}", label=f"{n:,} nodes: median (wall)")
        ax.plot(g, [r["p99_ms"] for r in rs], "s--", color=f"C{i}", alpha=0.7, label=f"{n:,} nodes: p99 (wall)")
        ax.plot(g, [r["cpu_median_ms"] for r in rs], "^:", color=f"C{i}", alpha=0.7,
                label=f"{n:,} nodes: median CPU")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _ticks(ax, sorted({r["gang"] for r in rows}))
    ax.axhline(1000, color="#d62728", alpha=0.5, label="target 1 s (1,024 pods, 5,000 nodes)")
    ax.set_xlabel("gang size (pods, 1 GPU + 1 NIC on one PCIe root each)")
    ax.set_ylabel("plan_gang time, ms")
    ax.set_title("Gang plan time against gang size")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylim(top=4000)  # room for the legend above the target line
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    return _save(fig, path)


ROW_COLORS = {"a": GREY, "c": "#d62728", "b": "C0"}


def scheduler_throughput(data: Json, path: Path) -> Path | None:
    sizes = [s for s in data.get("sizes", []) if s.get("runs")]
    if not sizes:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    keys = [k for k in ("a", "c", "b") if any(r["row"] == k for s in sizes for r in s["runs"])]
    width = 0.8 / len(keys)
    for i, s in enumerate(sizes):
        for j, k in enumerate(keys):
            runs = [r["pods_per_s"] for r in s["runs"] if r["row"] == k]
            base = [r["pods_per_s"] for r in s["runs"] if r["row"] == "a"]
            if runs:
                label = f"({k}) {data['rows'][k]['label']}" if i == 0 else None
                x = i + (j - (len(keys) - 1) / 2) * width
                _bars_with_runs(ax, x, runs, ROW_COLORS[k], label, width)
                if k != "a" and base:
                    r = statistics.median(runs) / statistics.median(base)
                    ax.annotate(f"{r:.2f} of (a)", (x, max(runs)), ha="center", va="bottom", fontsize=8,
                                xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(range(len(sizes)), [f"{s['nodes']:,} nodes" for s in sizes])
    ax.set_ylabel("pods bound per second (bar: median; dots: runs)")
    ax.set_title("kube-scheduler throughput, DRA pods (1 GPU + 1 NIC each)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=1)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


KP_KINDS = ("1-device", "8-device (8 GPUs)", "8-device (4 GPUs + 4 NICs)")


def prepare_latency(data: Json, path: Path) -> Path | None:
    kinds = [k for k in KP_KINDS if data.get(k, {}).get("prepare_ms", {}).get("samples")]
    if not kinds:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, k in enumerate(kinds):
        xs = sorted(data[k]["prepare_ms"]["samples"])
        ax.step(xs, [(n + 1) / len(xs) for n in range(len(xs))], where="post", color=f"C{i}",
                label=f"{k} (n = {len(xs)})")
    if f := data.get("disk_fsync_ms"):
        ax.axvline(f["p50"], color=GREY, linestyle=":", label=f"disk floor p50 {f['p50']:.2f} ms")
        ax.axvline(f["p99"], color=GREY, linestyle="--", label=f"disk floor p99 {f['p99']:.2f} ms")
    ax.axvline(20, color="#d62728", linestyle="-", alpha=0.5, label="target p99 20 ms")
    ax.axhline(0.99, color="black", linewidth=0.5, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("NodePrepareResources latency per claim, ms (client side)")
    ax.set_ylabel("fraction of calls at most this long")
    ax.set_title("Prepare latency distribution (first prepare of each claim)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


PUBLISH_STEPS = (("baseline_raw_create_s", "baseline: raw create", GREY), ("publish_s", "publish", "C0"),
                 ("change_s", "change (all rewritten)", "C1"), ("noop_s", "no-op", "C2"))


def driver_publish(data: Json, path: Path) -> Path | None:
    steps = [s for s in PUBLISH_STEPS if s[0] in data]
    if not steps:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
    for i, (key, _, color) in enumerate(steps):
        _bars_with_runs(ax, i, data[key]["all"], color, None, 0.7)
        cpu = [data.get(key.removesuffix("_s") + "_client_cpu_s", {}).get("median", 0.0),
               data.get(key.removesuffix("_s") + "_server_cpu_s", {}).get("median", 0.0)]
        ax2.bar(i, cpu[0], 0.7, color=color, alpha=0.8)
        ax2.bar(i, cpu[1], 0.7, bottom=cpu[0], color=color, alpha=0.35, hatch="//")
    names = [s[1] for s in steps]
    ax.set_xticks(range(len(steps)), names, rotation=15, fontsize=8)
    ax.set_ylabel("wall time, s (bar: median; dots: runs)")
    ax.set_title(f"{data.get('slices', 0):,} ResourceSlices ({data.get('nodes', 0):,} nodes)")
    ax2.set_xticks(range(len(steps)), names, rotation=15, fontsize=8)
    ax2.set_ylabel("CPU s (solid: our process; hatched: apiserver + etcd)")
    ax2.set_title("CPU seconds, medians")
    for a in (ax, ax2):
        a.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def driver_rss(data: Json, path: Path) -> Path | None:
    variants = [k for k, v in data.items() if isinstance(v, dict) and "rss_mib_all" in v]
    if not variants:
        return None
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, k in enumerate(variants):
        runs = data[k]["rss_mib_all"]
        ax.barh(i, statistics.median(runs), 0.7, color=GREY if k == "python-baseline" else "C0", alpha=0.8)
        ax.scatter(runs, [i] * len(runs), color="black", s=12, zorder=3)
    ax.axvline(60, color="#d62728", alpha=0.5, label="target 60 MiB")
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("resident memory (VmRSS), MiB (bar: median; dots: runs)")
    ax.set_title("One-node driver process memory")
    ax.legend(fontsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


GANG_FIGURES = (("first_create_to_all_bound", "first create → all bound"),
                ("last_create_to_all_bound", "last create → all bound"),
                ("last_create_to_first_bound", "last create → first bound"),
                ("bound_spread", "first bound → last bound"),
                ("create_span", "first create → last create"))


def gang_throughput(data: Json, path: Path) -> Path | None:
    runs = data.get("runs", [])
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, (kind, color) in enumerate((("gang", "C0"), ("plain", GREY))):
        for i, (key, _) in enumerate(GANG_FIGURES):
            vals = [r["figures"][key] for r in runs if r["kind"] == kind and key in r["figures"]]
            if vals:
                y = i + (j - 0.5) * 0.38
                ax.barh(y, statistics.median(vals), 0.38, color=color, alpha=0.8,
                        label=kind if i == 0 else None)
                ax.scatter(vals, [y] * len(vals), color="black", s=12, zorder=3)
    ax.set_yticks(range(len(GANG_FIGURES)), [label for _, label in GANG_FIGURES], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (bar: median; dots: runs)")
    ax.set_title(f"A {data.get('gang_size')}-pod gang against plain pods, {data.get('nodes', 0):,} nodes")
    ax.legend(fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


# key of the Spec -> (file name, function)
PLOTS: dict[str, list[tuple[str, Callable[[Json, Path], Path | None]]]] = {
    "gang_planner": [("gang-plan-time.png", gang_plan)],
    "extender_latency": [("extender-latency.png", extender_latency)],
    "driver_rss": [("driver-rss.png", driver_rss)],
    "kubelet_plugin": [("prepare-latency.png", prepare_latency)],
    "driver_publish": [("driver-publish.png", driver_publish)],
    "scheduler_throughput": [("scheduler-throughput.png", scheduler_throughput)],
    "gang_throughput": [("gang-throughput.png", gang_throughput)],
}


def draw(key: str, data: Json, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = [fn(data, out_dir / name) for name, fn in PLOTS.get(key, [])]
    return [p for p in made if p is not None]
