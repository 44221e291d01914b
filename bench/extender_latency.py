"""Extender latency: filter and prioritize over HTTPS at 1,000 / 5,000 / 10,000 nodes.

Each node has 8 GPUs + 8 NICs (4 PCIe roots, 2 NUMA nodes), half of each allocated in a random pattern
per node (the worst case for the extender's per-shape memo). The server runs in its own process with the
cache filled through the same event path the watches use; between calls one node's allocation changes
(churn), so every call also pays for incremental index updates. The client sends every node name
(percentageOfNodesToScore: 100) with one of four pod shapes. Untimed warm-up: per pod shape, its first
filter call then its first prioritize call (the same pod), as kube-scheduler orders them. A trivial handler
(parse the JSON, pass every node) runs in the same server, so the figures separate the extender's work from
HTTP+JSON costs.

    .venv/bin/python bench/extender_latency.py [--sizes 1000,5000,10000] [--requests 200] [--pattern random|first]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import random
import ssl
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from aiohttp import ClientSession, TCPConnector, web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.server import Extender, server_ssl_context
from scheduler_plugin.wire import filter_result, parse_args, priority_list
from topodra_cli.localcluster import pki
from topodra_cli.localcluster.processes import free_port
from topodra_cli.testing.objects import STD, Json, device_classes, gpu_nic_template


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _dev(kind: str, i: int, clique: str) -> Json:
    root = f"pci0000:{(i // 2) * 0x40:02x}"
    attrs: Json = {"type": {"string": kind}, f"{STD}/pcieRoot": {"string": root},
                   f"{STD}/numaNode": {"int": (i // 2) // 2},
                   f"{STD}/pciBusID": {"string": f"0000:{(0x10 if kind == 'gpu' else 0x90) + i:02x}:00.0"},
                   "uuid": {"string": f"{kind}-{clique}-{i}-{random.random()}"}}
    if kind == "gpu":
        attrs["clique"] = {"string": clique}
        attrs["productName"] = {"string": "NVIDIA H100 80GB HBM3"}
    return {"name": f"{kind}-{i}", "attributes": attrs}


def build(index: Index, n: int, rng: random.Random, pattern: str = "random") -> list[str]:
    for dc in device_classes():
        apply_event(index, "deviceclasses", "ADDED", dc)
    for t in (gpu_nic_template("bench", "pair", 1, 1, f"{STD}/pcieRoot"),
              gpu_nic_template("bench", "quad", 4, 4, f"{STD}/numaNode"),
              gpu_nic_template("bench", "g2", 2, 0), gpu_nic_template("bench", "n2", 0, 2),
              gpu_nic_template("bench", "eight", 8, 0)):
        apply_event(index, "resourceclaimtemplates", "ADDED", t)
    names = []
    for i in range(n):
        name = f"node-{i:05d}"
        rack, block, zone = i // 16, i // 128, i // 2048
        names.append(name)
        apply_event(index, "nodes", "ADDED", {"metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "topology.kubernetes.io/zone": f"z{zone}",
            "topodra.dev/block": f"b{block}", "topodra.dev/rack": f"r{rack}"}}})
        devices = [_dev("gpu", g, f"c{rack}") for g in range(8)] + [_dev("nic", k, f"c{rack}") for k in range(8)]
        apply_event(index, "resourceslices", "ADDED", {"metadata": {"name": f"{name}-topodra.dev"}, "spec": {
            "driver": "topodra.dev", "nodeName": name, "pool": {"name": name, "generation": 1,
                                                                "resourceSliceCount": 1}, "devices": devices}})
        if pattern == "random":  # every node its own pattern: the worst case for the shared memo
            taken = [f"gpu-{g}" for g in rng.sample(range(8), 4)] + [f"nic-{k}" for k in rng.sample(range(8), 4)]
        else:  # the first free devices, as an allocator taking devices in order would leave them
            taken = [f"gpu-{g}" for g in range(4)] + [f"nic-{k}" for k in range(4)]
        apply_event(index, "resourceclaims", "ADDED", {
            "metadata": {"namespace": "bench", "name": f"half-{name}", "uid": f"h-{i}"}, "spec": {},
            "status": {"allocation": {"devices": {"results": [
                {"request": "r", "driver": "topodra.dev", "pool": name, "device": d} for d in taken]}}}})
    # A job already running in racks 0-1.
    for j in range(32):
        apply_event(index, "pods", "ADDED", {"metadata": {"namespace": "bench", "name": f"j-{j}", "uid": f"j-{j}",
                                                          "labels": {"topodra.dev/job": "train"}},
                                             "spec": {"nodeName": names[j % 32]}})
    index.refresh(time.monotonic())
    return names


def serve(n: int, port: int, cert: str, key: str, conn: Connection, pattern: str) -> None:
    rng = random.Random(n)
    gc.collect()
    before = rss_kib()
    t0 = time.perf_counter()
    index = Index(default_config())
    names = build(index, n, rng, pattern)
    build_s = time.perf_counter() - t0
    gc.collect()
    mem = rss_kib() - before
    # As `topodra extender` does once its cache is synced (scheduler_plugin/cli.py).
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()
    metrics = Metrics()
    ext = Extender(default_config(), index, metrics)
    app = ext.app()
    durations: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    churn: dict[str, bool] = {}

    @web.middleware
    async def churn_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        # One allocation changes between calls, as in a busy cluster (outside the timing).
        if request.path.startswith("/v1/"):
            node = names[rng.randrange(len(names))]
            key = f"churn-{node}"
            taken = {k[2] for k, _ in index.allocated.items() if k[1] == node}
            free = [f"gpu-{g}" for g in range(8) if f"gpu-{g}" not in taken]
            if churn.pop(key, False):
                apply_event(index, "resourceclaims", "DELETED", {"metadata": {"namespace": "bench", "name": key}})
            elif free:
                churn[key] = True
                apply_event(index, "resourceclaims", "ADDED", {
                    "metadata": {"namespace": "bench", "name": key, "uid": key}, "spec": {},
                    "status": {"allocation": {"devices": {"results": [
                        {"request": "r", "driver": "topodra.dev", "pool": node, "device": free[0]}]}}}})
        t, c = time.perf_counter(), time.thread_time()
        resp: web.StreamResponse = await handler(request)
        durations.setdefault(request.path, []).append(time.perf_counter() - t)
        cpu.setdefault(request.path, []).append(time.thread_time() - c)
        return resp

    app.middlewares.append(churn_mw)

    async def trivial_filter(request: web.Request) -> web.StreamResponse:
        args = parse_args(await request.read())
        return web.Response(body=filter_result(args.node_names, {}, {}), content_type="application/json")

    async def trivial_prioritize(request: web.Request) -> web.StreamResponse:
        args = parse_args(await request.read())
        return web.Response(body=priority_list([(h, 0) for h in args.node_names]), content_type="application/json")

    async def stats(_: web.Request) -> web.StreamResponse:
        out = orjson.dumps({"wall": durations, "cpu": cpu})
        durations.clear()
        cpu.clear()
        return web.Response(body=out, content_type="application/json")

    app.router.add_post("/trivial/filter", trivial_filter)
    app.router.add_post("/trivial/prioritize", trivial_prioritize)
    app.router.add_get("/bench/stats", stats)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ssl_context(Path(cert), Path(key))).start()
        conn.send({"names": names, "build_s": build_s, "rss_kib": mem, "sizes": index.sizes()})
        while True:
            await asyncio.sleep(3600)

    asyncio.run(main())


def pods(i: int) -> Json:
    shapes: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"acc": "pair"}, {}),
        ({"acc": "quad"}, {}),
        ({"g": "g2", "n": "n2"}, {"topodra.dev/alignment": "pcieRoot"}),
        ({"acc": "eight"}, {}),  # never fits (4 GPUs free): every node gets a reason
    ]
    tmpl, ann = shapes[i % len(shapes)]
    return {"metadata": {"name": f"p-{i}", "namespace": "bench", "uid": f"u-{i}-{time.monotonic_ns()}",
                         "labels": {"topodra.dev/job": "train" if i % 2 else f"job-{i}"}, "annotations": ann},
            "spec": {"containers": [{"name": "c", "image": "x"}],
                     "resourceClaims": [{"name": k, "resourceClaimTemplateName": v} for k, v in tmpl.items()]}}


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000 if s else float("nan")


async def client(port: int, ca: str, names: list[str], requests: int) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=ca)
    base = f"https://127.0.0.1:{port}"
    out: dict[str, Any] = {}
    async with ClientSession(connector=TCPConnector(ssl=ctx, limit=1)) as s:
        first: dict[str, float] = {}
        first_prio: dict[str, float] = {}
        # Warm-up, untimed, both verbs alike: per pod shape its first filter call (fills the memo for every
        # node shape), then its first prioritize call for the same pod, in kube-scheduler's order.
        for i in range(4):
            body = orjson.dumps({"Pod": pods(i), "Nodes": None, "NodeNames": names})
            for verb, into in (("filter", first), ("prioritize", first_prio)):
                t = time.perf_counter()
                async with s.post(f"{base}/v1/{verb}", data=body) as r:
                    await r.read()
                into[f"shape{i}"] = (time.perf_counter() - t) * 1000
        await (await s.get(f"{base}/bench/stats")).read()
        out["first_call_ms"] = first
        out["first_prioritize_ms"] = first_prio
        for path in ("/v1/filter", "/v1/prioritize", "/trivial/filter", "/trivial/prioritize"):
            lat = []
            for i in range(requests):
                body = orjson.dumps({"Pod": pods(i), "Nodes": None, "NodeNames": names})
                t = time.perf_counter()
                async with s.post(base + path, data=body) as r:
                    payload = await r.read()
                    assert r.status == 200, payload[:300]
                lat.append(time.perf_counter() - t)
            out[path] = {"client": lat}
        server = orjson.loads(await (await s.get(f"{base}/bench/stats")).read())
        for kind in ("wall", "cpu"):
            for path, xs in server[kind].items():
                if path in out:
                    out[path]["server" if kind == "wall" else "cpu"] = xs
    return out


def run_size(n: int, requests: int, certs: tuple[str, str, str], pattern: str) -> dict[str, Any]:
    ca, cert, key = certs
    port = free_port()
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=serve, args=(n, port, cert, key, child, pattern), daemon=True)
    proc.start()
    try:
        info = parent.recv()
        res = asyncio.run(client(port, ca, info["names"], requests))
        res["info"] = {k: v for k, v in info.items() if k != "names"}
        return res
    finally:
        proc.terminate()
        proc.join(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--requests", type=int, default=200, help="calls per verb and size")
    ap.add_argument("--pattern", choices=("random", "first"), default="random",
                    help="which half of each node is allocated: a random half per node (worst case) or the first")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = ap.parse_args()
    results: dict[str, Any] = {"requests": a.requests, "pattern": a.pattern, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="topodra-bench-") as d:
        ca = pki.make_ca(Path(d), "ca")
        srv = pki.issue(ca, Path(d), "srv", "bench", server_hosts=("127.0.0.1",), client=False)
        certs = (str(ca.cert), str(srv.cert), str(srv.key))
        print("| nodes | call | server CPU p50 ms | server CPU p99 ms | server p50 ms | server p99 ms "
              "| client p50 ms | client p99 ms |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        extra = []
        for n in (int(x) for x in a.sizes.split(",")):
            load_before = os.getloadavg()[0]
            res = run_size(n, a.requests, certs, a.pattern)
            load_after = os.getloadavg()[0]
            load = f"load average (1 min) {load_before:.1f} before, {load_after:.1f} after"
            calls: dict[str, Any] = {}
            for path in ("/v1/filter", "/v1/prioritize", "/trivial/filter", "/trivial/prioritize"):
                r = res[path]
                label = path.replace("/v1/", "extender ").replace("/trivial/", "trivial ")
                print(f"| {n:,} | {label} | {pct(r.get('cpu', []), .5):.2f} | {pct(r.get('cpu', []), .99):.2f} | "
                      f"{pct(r.get('server', []), .5):.2f} | {pct(r.get('server', []), .99):.2f} | "
                      f"{pct(r['client'], .5):.2f} | {pct(r['client'], .99):.2f} |", flush=True)
                calls[label] = {f"{side}_ms": {"p50": pct(r.get(key, []), .5), "p99": pct(r.get(key, []), .99)}
                                for side, key in (("server_cpu", "cpu"), ("server", "server"), ("client", "client"))}
            info = res["info"]
            firsts = ", ".join(f"{v:.0f}" for v in res["first_call_ms"].values())
            first_prio = ", ".join(f"{v:.0f}" for v in res["first_prioritize_ms"].values())
            mib = info["rss_kib"] / 1024
            extra.append(f"- {n:,} nodes: cache built in {info['build_s']:.1f} s, cache RSS {mib:.0f} MiB, "
                         f"{info['sizes']['signatures']} node shapes, {info['sizes']['profiles']} device profiles; "
                         f"first filter per pod shape (memo cold): {firsts} ms; "
                         f"first prioritize per pod shape (after its filter): {first_prio} ms; {load}")
            results["sizes"].append({
                "nodes": n, "calls": calls, "cache_build_s": info["build_s"], "cache_rss_mib": mib,
                "node_shapes": info["sizes"]["signatures"], "device_profiles": info["sizes"]["profiles"],
                "first_filter_ms": list(res["first_call_ms"].values()),
                "first_prioritize_ms": list(res["first_prioritize_ms"].values()),
                "load": [load_before, load_after]})
        print()
        print("\n".join(extra))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
