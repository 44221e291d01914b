"""Kubelet plugin benchmark: a real `topodra driver` process, a real apiserver, the kubelet's gRPC calls.

Measured (a kubelet-like client over the unix sockets, exact method paths, hand-encoded protobuf):

- registered   time from starting the driver process until GetInfo + NotifyRegistrationStatus(true)
               succeeded (includes Python start-up and imports), median of --restarts;
- prepare      NodePrepareResources latency for one claim per call, p50/p99, for 1-device (1 GPU),
               8-device (8 GPUs) and 8-device mixed (4 GPUs + 4 NICs, which adds the claim status
               write) claims; every call is a first prepare: API GET of the claim, checks, CDI spec
               write (fsync + rename), two checkpoint writes; each claim is unprepared between rounds;
- repeat       a repeated prepare of an already prepared claim (answered from the checkpoint);
- unprepare    NodeUnprepareResources latency;
- parallel     claims/s with --parallel client threads, one claim per call, distinct claims;
- RSS          of the driver process, idle after start and after the runs.

Claims are created with their allocation written directly into status (as the scheduler would), so
many claims can point at the same node's devices.

Usage: python bench/kubelet_plugin.py [--rounds 200] [--parallel 16] [--restarts 3] [--kubeconfig FILE]
       (or `topodra bench kubelet_plugin`). Without --kubeconfig it starts its own local cluster under
       /tmp/topodra/bench-kp-<pid> and tears it down at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubeaccess.sync import KubeClient  # noqa: E402
from tests.fakes.kubeletsim import KubeletSim  # noqa: E402

DRIVER = "topodra.dev"
NS = "kp-bench"


def topology(node: str) -> str:
    gpus = "\n".join(
        f'  - {{pciBusID: "0000:{0x10 * (i + 1):02x}:00.0", pcieRoot: "pci0000:{0x10 * (i + 1):02x}", minor: {i}}}'
        for i in range(8)
    )
    nics = "\n".join(
        f'  - {{pciBusID: "0000:{0x10 * (i + 1) + 1:02x}:00.0", pcieRoot: "pci0000:{0x10 * (i + 1):02x}", '
        f'ifName: "ib{i}", rdmaDevice: "mlx5_{i}"}}'
        for i in range(8)
    )
    return f"nodes:\n- name: {node}\n  gpus:\n{gpus}\n  nics:\n{nics}\n"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self, kubeconfig: Path, base: Path) -> None:
        self.kubeconfig = kubeconfig
        self.client = KubeClient.load(str(kubeconfig))
        self.base = base
        self.node = f"kpb-{uuid.uuid4().hex[:6]}"
        self.proc: subprocess.Popen[bytes] | None = None
        # CDI specs on tmpfs like /var/run/cdi on a node; checkpoint on disk like /var/lib/kubelet
        shm = Path("/dev/shm")
        self.cdi_dir = Path(tempfile.mkdtemp(prefix="kpb-cdi-", dir=shm)) if shm.is_dir() else base / "cdi"

    def setup(self) -> None:
        b = self.base
        (b / "topo.yaml").write_text(topology(self.node))
        (b / "dev" / "infiniband").mkdir(parents=True, exist_ok=True)
        for i in range(8):
            (b / "dev" / f"nvidia{i}").write_text("")
            (b / "dev" / "infiniband" / f"uverbs{i}").write_text("")
            v = b / "sys" / "class" / "infiniband_verbs" / f"uverbs{i}"
            v.mkdir(parents=True, exist_ok=True)
            (v / "ibdev").write_text(f"mlx5_{i}\n")
        for n in ("nvidiactl", "nvidia-uvm", "infiniband/rdma_cm"):
            (b / "dev" / n).write_text("")
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node}}
        self.client.request("POST", "/api/v1/nodes", body=node)
        with contextlib.suppress(Exception):  # already there from an earlier run
            self.client.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NS}})

    def start(self) -> tuple[KubeletSim, float]:
        b = self.base
        args = [
            str(Path(sys.executable).with_name("topodra")), "driver", "--node-name", self.node,
            "--backend", "file", "--topology", str(b / "topo.yaml"), "--kubeconfig", str(self.kubeconfig),
            "--kubelet-root-dir", str(b / "k"), "--cdi-dir", str(self.cdi_dir), "--dev-root", str(b / "dev"),
            "--sysfs-root", str(b / "sys"), "--rediscover-interval", "0", "--log-level", "info",
        ]  # fmt: skip
        t0 = time.monotonic()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=(b / "driver.log").open("ab"))
        sim = KubeletSim(b / "k")
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"driver exited: {(b / 'driver.log').read_text()[-2000:]}")
            if sim.registration_sockets():
                try:
                    sim.register()
                    return sim, time.monotonic() - t0
                except Exception:
                    pass
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def make_claim(self, devices: list[str]) -> tuple[str, str, str]:
        name = f"c-{uuid.uuid4().hex[:10]}"
        requests = [{"name": f"r{i}", "exactly": {"deviceClassName": "gpu.topodra.dev"}} for i in range(len(devices))]
        claim = {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name},
            "spec": {"devices": {"requests": requests}},
        }
        c = self.client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims", body=claim)
        c["status"] = {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": f"r{i}", "driver": DRIVER, "pool": self.node, "device": d}
                        for i, d in enumerate(devices)
                    ]
                },
                "nodeSelector": {
                    "nodeSelectorTerms": [
                        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [self.node]}]}
                    ]
                },
            }
        }
        self.client.request("PUT", f"/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims/{name}/status", body=c)
        return NS, c["metadata"]["uid"], name


def breakdown(log: Path, end: int) -> dict[str, dict[str, float]]:
    """Median API read / CDI write / checkpoint time per claim kind (serial runs), from claim_prepared logs."""
    per: dict[str, dict[str, list[float]]] = {}
    with log.open("rb") as f:
        text = f.read(end).decode(errors="replace")
    for line in text.splitlines():
        if '"claim_prepared"' not in line:
            continue
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        devs = ev.get("devices") or []
        kind = "1-device" if len(devs) == 1 else ("8-device (4 GPUs + 4 NICs)" if any("nic" in d for d in devs)
                                                   else "8-device (8 GPUs)")
        d = per.setdefault(kind, {"api_ms": [], "cdi_ms": [], "checkpoint_ms": []})
        for k in d:
            d[k].append(float(ev.get(k, 0.0)))
    return {kind: {k: statistics.median(v) for k, v in d.items() if v} for kind, d in per.items()}


def disk_fsync_ms(d: Path, n: int = 100) -> dict[str, float]:
    """The floor under every durable write here: 2 KiB write + fsync + rename + directory fsync."""
    d.mkdir(parents=True, exist_ok=True)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(d / "probe.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.write(fd, b"x" * 2048)
        os.fsync(fd)
        os.close(fd)
        os.replace(d / "probe.tmp", d / "probe")
        dfd = os.open(d, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        ts.append(time.perf_counter() - t0)
    return {"p50": pct(ts, 50) * 1e3, "p99": pct(ts, 99) * 1e3}


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check_prepare(res: Any, uid: str, n: int) -> None:
    if res[uid].error or len(res[uid].devices) != n:
        raise SystemExit(f"prepare failed: {res[uid]}")


def run(args: argparse.Namespace, kubeconfig: Path) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="kpb-", dir="/tmp"))
    b = Bench(kubeconfig, base)
    out: dict[str, Any] = {}
    try:
        b.setup()
        reg_times = []
        for _ in range(args.restarts):
            sim, t = b.start()
            reg_times.append(t)
            sim.close()
            b.stop()
        out["registered_s"] = {"median": statistics.median(reg_times), "max": max(reg_times), "n": len(reg_times)}
        sim, _ = b.start()
        assert b.proc is not None
        time.sleep(1.0)
        out["rss_idle_mib"] = rss_mib(b.proc.pid)
        gpus8 = [f"gpu-{i}" for i in range(8)]
        mixed = [f"gpu-{i}" for i in range(4)] + [f"nic-{i}" for i in range(4)]
        kinds = {"1-device": ["gpu-0"], "8-device (8 GPUs)": gpus8, "8-device (4 GPUs + 4 NICs)": mixed}
        for label, devs in kinds.items():
            claims = [b.make_claim(devs) for _ in range(args.claims)]
            for c in claims[:3]:  # warm-up
                sim.prepare([c])
                sim.unprepare([c])
            prep: list[float] = []
            rep: list[float] = []
            unp: list[float] = []
            for i in range(args.rounds):
                c = claims[i % len(claims)]
                res: Any = None

                def p(c: tuple[str, str, str] = c) -> None:
                    nonlocal res
                    res = sim.prepare([c])

                prep.append(timed(p))
                check_prepare(res, c[1], len(devs))
                rep.append(timed(lambda c=c: sim.prepare([c])))
                unp.append(timed(lambda c=c: sim.unprepare([c])))
            out[label] = {
                "prepare_ms": {"p50": pct(prep, 50) * 1e3, "p99": pct(prep, 99) * 1e3, "n": len(prep),
                               "samples": [round(x * 1e3, 3) for x in prep]},  # the report plots the distribution
                "repeat_ms": {"p50": pct(rep, 50) * 1e3, "p99": pct(rep, 99) * 1e3},
                "unprepare_ms": {"p50": pct(unp, 50) * 1e3, "p99": pct(unp, 99) * 1e3},
            }
        serial_log_end = (base / "driver.log").stat().st_size
        # parallel: distinct 1-device claims, one per call, N client threads
        claims = [b.make_claim(["gpu-0"]) for _ in range(args.parallel_claims)]
        sims = [KubeletSim(base / "k") for _ in range(args.parallel)]
        for s in sims:
            s.register()
        lock = threading.Lock()
        idx = iter(range(len(claims)))

        def worker(s: KubeletSim) -> None:
            while True:
                with lock:
                    i = next(idx, None)
                if i is None:
                    return
                check_prepare(s.prepare([claims[i]]), claims[i][1], 1)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as ex:
            list(ex.map(worker, sims))
        dt = time.perf_counter() - t0
        out["parallel"] = {"threads": args.parallel, "claims": len(claims), "claims_per_s": len(claims) / dt}
        out["rss_after_mib"] = rss_mib(b.proc.pid)
        for s in sims:
            s.unprepare([c for c in claims[: len(claims) // len(sims) + 1]])
            s.close()
        sim.unprepare(claims)
        sim.close()
        out["cpu_cores"] = os.cpu_count()
        out["disk_fsync_ms"] = disk_fsync_ms(base / "fsync-probe")
        out["breakdown_ms"] = breakdown(base / "driver.log", serial_log_end)
        return out
    finally:
        b.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(b.cdi_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--claims", type=int, default=20, help="distinct claims per kind (cycled over the rounds)")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--parallel-claims", type=int, default=256)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--kubeconfig", type=Path, default=None, help="use this cluster instead of starting one")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cluster = None
    if args.kubeconfig is None:
        from topodra_cli.localcluster import LocalCluster

        cluster = LocalCluster(Path("/tmp/topodra") / f"bench-kp-{os.getpid()}")
        cluster.up(owner_pid=os.getpid())
        kubeconfig = cluster.kubeconfig
    else:
        kubeconfig = args.kubeconfig
    try:
        out = run(args, kubeconfig)
    finally:
        if cluster is not None:
            cluster.down()
    r = out["registered_s"]
    print(f"start -> registered: median {r['median']:.3f} s, max {r['max']:.3f} s (n={r['n']})")
    for label in ("1-device", "8-device (8 GPUs)", "8-device (4 GPUs + 4 NICs)"):
        m = out[label]
        print(
            f"{label:28s} prepare p50 {m['prepare_ms']['p50']:.2f} ms  p99 {m['prepare_ms']['p99']:.2f} ms"
            f"  | repeat p50 {m['repeat_ms']['p50']:.2f} ms | unprepare p50 {m['unprepare_ms']['p50']:.2f} ms"
            f"  p99 {m['unprepare_ms']['p99']:.2f} ms  (n={m['prepare_ms']['n']})"
        )
    p = out["parallel"]
    print(f"parallel prepare: {p['claims_per_s']:.0f} claims/s ({p['claims']} claims, {p['threads']} client threads)")
    print(f"RSS: idle {out['rss_idle_mib']:.1f} MiB, after runs {out['rss_after_mib']:.1f} MiB")
    for kind, b in out["breakdown_ms"].items():
        print(f"median inside the driver, {kind}: " + ", ".join(f"{k} {v:.2f}" for k, v in b.items()))
    f = out["disk_fsync_ms"]
    print(f"disk floor (state dir): write+fsync+rename+dir fsync p50 {f['p50']:.2f} ms, p99 {f['p99']:.2f} ms")
    print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
