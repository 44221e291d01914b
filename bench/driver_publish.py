"""Driver publishing benchmark: a fleet of simulated nodes against a real local control plane.

Measured per run (medians over --runs), each against the same freshly started apiserver:

- baseline   raw create throughput: the same ResourceSlice JSON bodies, pre-built and pre-serialised, POSTed
             by a bare urllib3 loop with as many threads as the driver uses (no discovery, list, plan,
             validation or read-back): what the apiserver + etcd can take on this machine.
- publish    `topodra driver --fleet --once` from an empty API: process start, topology file parse,
             node/slice LISTs, plan, create. Wall clock of the whole command.
- no-op      the same command again when everything already matches (LIST + plan only).
- change     the same command after a driver upgrade in the file (every GPU's driverVersion changes,
             so every pool is rewritten with a new generation).
- one-node   a single `topodra driver` process (file backend, watch on): time from SIGHUP after a file
             change until the API matches, and from a foreign delete of its slice until it is back.

Each step also records the CPU seconds used by our side (the CLI child's rusage; this process for the
baseline) and by kube-apiserver + etcd (from /proc): these hardly depend on what else the machine runs,
while wall times on a shared 2-core machine do. The publish/baseline ratio is also given per run
(baseline and publish run back to back, so they share the load of the moment).

Usage: python bench/driver_publish.py [--nodes 1000] [--runs 3] [--workers 16] [--json FILE]
       (or `topodra bench driver_publish`). Starts its own cluster under /tmp/topodra/bench-<pid>.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from driver.discovery import discover_fleet  # noqa: E402
from driver.fleet import node_object  # noqa: E402
from driver.publisher import SLICES, field_selector  # noqa: E402
from driver.slices import desired_slices, node_owner, slice_object  # noqa: E402
from kubeaccess.errors import ApiError  # noqa: E402
from kubeaccess.sync import KubeClient  # noqa: E402
from topodra_cli.localcluster import LocalCluster  # noqa: E402

DRIVER = "topodra.dev"

# An HGX-like node: 8 GPUs and 8 RDMA NICs, one GPU-NIC pair per PCIe root, 2 NUMA nodes.
FLEET = """
defaults:
  gpu: {{driverVersion: "{driver_version}", memory: 80Gi}}
  nic: {{speedMbps: 400000, mtu: 4096}}
nodeSets:
- namePattern: "{prefix}-{{i:04d}}"
  count: {count}
  rackSize: 16
  labels:
    topology.kubernetes.io/zone: zone-a
    topology.kubernetes.io/rack: "rack-{{rack}}"
    nvidia.com/gpu.clique: "5e1c0de0-0000-4000-8000-00000000d3e0.{{rack}}"
  template:
    gpus:
{gpus}
    nics:
{nics}
"""


def fleet_text(prefix: str, count: int, driver_version: str = "550.54.15") -> str:
    gpus, nics = [], []
    for i in range(8):
        root = f"pci0000:{i * 0x10 + (0x80 if i >= 4 else 0):02x}"
        bus = int(root[-2:], 16)
        numa = 0 if i < 4 else 1
        gpus.append(
            f'    - {{pciBusID: "0000:{bus + 1:02x}:00.0", pcieRoot: {root}, numaNode: {numa}, '
            f'clique: "5e1c0de0-0000-4000-8000-00000000d3e0.{{rack}}"}}'
        )
        nics.append(
            f'    - {{pciBusID: "0000:{bus + 2:02x}:00.0", pcieRoot: {root}, numaNode: {numa}, '
            f"ifName: ibp{bus + 2}s0, rdmaDevice: mlx5_{i}}}"
        )
    return FLEET.format(
        prefix=prefix, count=count, driver_version=driver_version, gpus="\n".join(gpus), nics="\n".join(nics)
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def delete_all_slices(client: KubeClient) -> None:
    client.request("DELETE", SLICES, query={"fieldSelector": field_selector(DRIVER)})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not client.get(SLICES, fieldSelector=field_selector(DRIVER), limit=1).get("items"):
            return
        time.sleep(0.2)
    raise RuntimeError("slices were not deleted within 120 s")


def create_nodes(client: KubeClient, topos: list[Any], workers: int) -> dict[str, str]:
    def one(t: Any) -> None:
        try:
            client.request("POST", "/api/v1/nodes", body=node_object(t))
        except ApiError as e:
            if not e.conflict:
                raise

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, topos))
    return {n["metadata"]["name"]: n["metadata"]["uid"] for n in client.get("/api/v1/nodes").get("items") or []}


def raw_create(client: KubeClient, bodies: list[bytes], workers: int) -> float:
    """POST pre-serialised bodies with bare urllib3 (the client's pool, not its request wrapper)."""
    pool = client._pool  # same TLS connection pool, no JSON encode/decode on our side
    url = client.url(SLICES)
    headers = client._headers("application/json")
    errors: list[int] = []

    def one(b: bytes) -> None:
        r = pool.request("POST", url, body=b, headers=headers, preload_content=True)
        if r.status >= 300:
            errors.append(r.status)

    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, bodies))
    dt = time.monotonic() - t0
    if errors:
        raise RuntimeError(f"raw create: {len(errors)} errors, e.g. HTTP {errors[0]}")
    return dt


def cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a running process (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(cluster: LocalCluster) -> float:
    """CPU seconds used so far by kube-apiserver + etcd: the server-side cost, whatever else the machine runs."""
    return sum(cpu_seconds(cluster.procs.pid(n)) for n in ("kube-apiserver", "etcd"))


class Phase:
    """Wall time, our CPU and the server's CPU of one measured step."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster

    def __enter__(self) -> Phase:
        self.t0, self.c0, self.s0 = time.monotonic(), time.process_time(), server_cpu(self.cluster)
        self.client_cpu = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        self.client_cpu += time.process_time() - self.c0
        self.server = server_cpu(self.cluster) - self.s0


def run_cli(args: list[str], log: Path, phase: Phase) -> dict[str, Any]:
    """Run `topodra driver ARGS`; its CPU time goes into `phase.client_cpu`; returns its fleet_published line."""
    exe = Path(sys.executable).with_name("topodra")
    with log.open("wb") as out:
        proc = subprocess.Popen([str(exe), "driver", *args], stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    phase.client_cpu += ru.ru_utime + ru.ru_stime
    summary: dict[str, Any] = {}
    for line in log.read_text(errors="replace").splitlines():
        if '"fleet_published"' in line:
            summary = json.loads(line)
    if proc.returncode != 0:
        raise RuntimeError(f"topodra driver {' '.join(args)} failed (rc {proc.returncode}); log {log}")
    return summary


def _matches(client: KubeClient, topo: Any) -> bool:
    from driver.slices import devices_equal

    want = desired_slices(topo, DRIVER)
    have = sorted(
        client.get(SLICES, fieldSelector=field_selector(DRIVER, topo.node_name)).get("items") or [],
        key=lambda s: s["metadata"]["name"],
    )
    return [s["metadata"]["name"] for s in have] == [d.name for d in want] and all(
        devices_equal(s["spec"].get("devices"), d.devices) for s, d in zip(have, want, strict=True)
    )


def _wait(pred: Any, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if pred():
                return time.monotonic() - t0
        except ApiError:
            pass
        time.sleep(0.01)
    raise RuntimeError("timed out")


def one_node(client: KubeClient, cluster: LocalCluster, work: Path, runs: int) -> dict[str, list[float]]:
    """SIGHUP-to-converged and delete-to-recreated latency of a single-node driver process."""
    prefix = f"one-{uuid.uuid4().hex[:6]}"
    f = work / "one.yaml"
    versions = ["550.54.15", "550.90.7"]
    f.write_text(fleet_text(prefix, 1, versions[0]))
    (topo,) = discover_fleet(f)
    name = topo.node_name
    create_nodes(client, [topo], 1)
    exe = Path(sys.executable).with_name("topodra")
    args = ["driver", "--node-name", name, "--kubeconfig", str(cluster.kubeconfig), "--topology", str(f),
            "--no-kubelet-plugin", "--rediscover-interval", "0"]
    out: dict[str, list[float]] = {"sighup_to_converged_s": [], "delete_to_recreated_s": []}
    with (work / "one.log").open("wb") as log:
        proc = subprocess.Popen([str(exe), *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait(lambda: _matches(client, topo))
            for r in range(runs):
                f.write_text(fleet_text(prefix, 1, versions[(r + 1) % 2]))
                (new,) = discover_fleet(f)
                t0 = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                _wait(lambda new=new: _matches(client, new))
                out["sighup_to_converged_s"].append(time.monotonic() - t0)
                time.sleep(0.5)
                sl = client.get(SLICES, fieldSelector=field_selector(DRIVER, name))["items"][0]["metadata"]["name"]
                t0 = time.monotonic()
                client.request("DELETE", f"{SLICES}/{sl}")
                _wait(lambda new=new: _matches(client, new))
                out["delete_to_recreated_s"].append(time.monotonic() - t0)
                time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(10)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--dir", type=Path, default=Path(f"/tmp/topodra/bench-{os.getpid()}"))
    ap.add_argument("--keep", action="store_true", help="keep the cluster dir and logs (default: removed)")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="topodra-bench-"))

    cluster = LocalCluster(a.dir)
    print(f"starting a local control plane in {a.dir} ...", flush=True)
    cluster.up(owner_pid=os.getpid())
    finished = False
    results: dict[str, Any] = {"nodes": a.nodes, "devices_per_node": 16, "workers": a.workers, "runs": a.runs}
    try:
        client = KubeClient.load(str(cluster.kubeconfig), pool_size=max(16, a.workers))
        prefix = "bench"
        f = work / "fleet.yaml"
        f.write_text(fleet_text(prefix, a.nodes))
        topos = discover_fleet(f)
        t0 = time.monotonic()
        uids = create_nodes(client, topos, a.workers)
        results["node_create_s"] = round(time.monotonic() - t0, 2)
        bodies = [
            orjson.dumps(slice_object(ds, DRIVER, t.node_name, 0, 1, node_owner(t.node_name, uids[t.node_name])))
            for t in topos
            for ds in desired_slices(t, DRIVER)
        ]
        results["slices"] = len(bodies)
        results["slice_json_bytes"] = len(bodies[0])
        args = ["--fleet", "--once", "--topology", str(f), "--kubeconfig", str(cluster.kubeconfig),
                "--workers", str(a.workers), "--log-level", "info"]
        series: dict[str, list[float]] = {}

        def record(name: str, ph: Phase) -> None:
            series.setdefault(f"{name}_s", []).append(ph.wall)
            series.setdefault(f"{name}_client_cpu_s", []).append(ph.client_cpu)
            series.setdefault(f"{name}_server_cpu_s", []).append(ph.server)

        for r in range(a.runs):
            delete_all_slices(client)
            with Phase(cluster) as ph:
                raw_create(client, bodies, a.workers)
            record("baseline_raw_create", ph)
            delete_all_slices(client)
            f.write_text(fleet_text(prefix, a.nodes))
            with Phase(cluster) as ph:
                summary = run_cli(args, work / f"publish-{r}.log", ph)
            record("publish", ph)
            series.setdefault("publish_inner_s", []).append(float(summary.get("seconds", "nan")))
            assert summary.get("created") == len(bodies), summary
            with Phase(cluster) as ph:
                summary = run_cli(args, work / f"noop-{r}.log", ph)
            record("noop", ph)
            assert summary.get("unchanged") == a.nodes, summary
            f.write_text(fleet_text(prefix, a.nodes, driver_version="550.90.7"))
            with Phase(cluster) as ph:
                summary = run_cli(args, work / f"change-{r}.log", ph)
            record("change", ph)
            assert summary.get("updated") == len(bodies), summary
            print(f"run {r + 1}/{a.runs}: " + ", ".join(f"{k}={v[-1]:.2f}" for k, v in series.items())
                  + f"  (load {_loadavg()})", flush=True)
        series.update(one_node(client, cluster, work, a.runs))
        for k, v in series.items():
            results[k] = {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
        base = results["baseline_raw_create_s"]["median"]
        results["publish_over_baseline"] = round(results["publish_s"]["median"] / base, 2)
        ratios = [p / b for p, b in zip(series["publish_s"], series["baseline_raw_create_s"], strict=True)]
        results["publish_over_baseline_per_run_median"] = round(statistics.median(ratios), 2)
        results["baseline_slices_per_s"] = round(len(bodies) / base, 1)
        results["publish_slices_per_s"] = round(len(bodies) / results["publish_s"]["median"], 1)
        results["loadavg_end"] = _loadavg()
        results["cpus"] = os.cpu_count()
        finished = True
    finally:
        cluster.down()
        if a.keep or not finished:
            print(f"kept: cluster dir {a.dir}, logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(a.dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
