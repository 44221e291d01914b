"""Resident memory of a one-node `topodra driver` process, against a real local control plane.

Variants (each a fresh process; medians over --runs):
- python-baseline   `python -c 'import time; time.sleep(...)'` from the same venv: the interpreter alone.
- file              `topodra driver --topology <demo> --node-name N --no-kubelet-plugin` (8 GPUs + 4 NICs),
                    re-discovering every second, slices published and watched.
- file/lean         the same through `python -m driver` (only the driver's command line is built; `topodra`
                    also imports the extender's and local cluster's modules, i.e. `kubernetes`, `cryptography`).
- nvml+sysfs/lean   `--backend nvml,sysfs` against the fake libnvidia-ml.so.1 (built with gcc from
                    tests/fakes/fake_nvml.c) and a fake sysfs tree: the production code path (pynvml loaded).
- file+plugin[/lean] with the kubelet plugin on (gRPC servers on sockets in a temp dir), only if
                    driver.kubeletplugin.runner exists in this tree.

For each: VmRSS after --settle seconds of running (slices published, several re-discoveries), and VmHWM
(peak). Usage: python bench/driver_rss.py [--runs 3] [--settle 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from driver.discovery import discover_fleet  # noqa: E402
from driver.model import NodeTopology  # noqa: E402
from driver.publisher import SLICES, field_selector  # noqa: E402
from driver.slices import desired_slices, devices_equal  # noqa: E402
from kubeaccess.sync import KubeClient  # noqa: E402
from topodra_cli.localcluster import LocalCluster  # noqa: E402

DEMO = ROOT / "deploy" / "examples" / "topology-demo.yaml"
MIB = 1024 * 1024


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def matches(client: KubeClient, topo: NodeTopology) -> bool:
    want = desired_slices(topo)
    have = sorted(
        client.get(SLICES, fieldSelector=field_selector("topodra.dev", topo.node_name)).get("items") or [],
        key=lambda s: s["metadata"]["name"],
    )
    return len(have) == len(want) and all(
        devices_equal(s["spec"].get("devices"), d.devices) for s, d in zip(have, want, strict=True)
    )


def measure(
    argv: list[str], env: dict[str, str], settle: float, ready: Any = None, log: Path | None = None
) -> tuple[float, float]:
    """(RSS MiB after settling, peak RSS MiB) of a process; `ready()` must turn true before settling."""
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if ready is not None:
            deadline = time.monotonic() + 60
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{argv[:3]} did not get ready (rc {proc.poll()}); log {log}")
                time.sleep(0.1)
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[:3]} exited early (rc {proc.returncode}); log {log}")
        return status_kib(proc.pid, "VmRSS") / 1024, status_kib(proc.pid, "VmHWM") / 1024
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds to run after the first publish")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--dir", type=Path, default=Path(f"/tmp/topodra/bench-rss-{os.getpid()}"))
    ap.add_argument("--keep", action="store_true", help="keep the cluster dir and logs (default: removed)")
    a = ap.parse_args(argv)

    exe = str(Path(sys.executable).with_name("topodra"))
    work = Path(tempfile.mkdtemp(prefix="topodra-rss-"))
    cluster = LocalCluster(a.dir)
    print(f"starting a local control plane in {a.dir} ...", flush=True)
    cluster.up(owner_pid=os.getpid())
    finished = False
    series: dict[str, list[tuple[float, float]]] = {}
    try:
        client = KubeClient.load(str(cluster.kubeconfig))
        base_env = dict(os.environ)
        variants = ["python-baseline", "file", "file/lean"]
        if shutil.which("gcc"):
            variants.append("nvml+sysfs/lean")
        if importlib.util.find_spec("driver.kubeletplugin.runner") is not None:
            variants += ["file+plugin", "file+plugin/lean"]
        for r in range(a.runs):
            for name in variants:
                drv = [sys.executable, "-m", "driver"] if name.endswith("/lean") else [exe, "driver"]
                kind = name.removesuffix("/lean")
                prefix = f"rss-{uuid.uuid4().hex[:6]}"
                f = work / f"{prefix}.yaml"
                text = DEMO.read_text().replace('namePattern: "demo-{i:04d}"', f'namePattern: "{prefix}-{{i}}"')
                f.write_text(text.replace("count: 4", "count: 1"))
                (topo,) = discover_fleet(f)
                node = topo.node_name
                common = ["--node-name", node, "--kubeconfig", str(cluster.kubeconfig), "--rediscover-interval", "1"]
                env = dict(base_env)
                if kind == "python-baseline":
                    cmd = [sys.executable, "-c", "import time; time.sleep(600)"]
                    ready = None
                else:
                    cluster.add_fake_node(node)
                    if kind == "file":
                        cmd = [*drv, *common, "--topology", str(f), "--no-kubelet-plugin"]
                    elif kind == "file+plugin":
                        kr = work / f"kubelet-{node}"
                        cmd = [*drv, *common, "--topology", str(f), "--kubelet-root-dir", str(kr),
                               "--cdi-dir", str(work / f"cdi-{node}")]
                    else:
                        from tests.fakes.nvml import build_fake_nvml, nvml_env, write_nvml_config
                        from tests.fakes.sysfs import build_sysfs

                        sysroot = build_sysfs(work / f"sys-{node}", topo)
                        lib = build_fake_nvml(work / "nvml-lib")
                        cfg = write_nvml_config(work / f"nvml-{node}.conf", topo)
                        env = nvml_env(lib, cfg, base_env)
                        cmd = [*drv, *common, "--backend", "nvml,sysfs", "--sysfs-root", str(sysroot),
                               "--no-kubelet-plugin"]
                        topo = replace(topo, gpus=tuple(replace(g, healthy=True) for g in topo.gpus))

                    def ready(topo: NodeTopology = topo) -> bool:
                        try:
                            return bool(client.get(SLICES, fieldSelector=field_selector("topodra.dev", topo.node_name))
                                        .get("items")) and matches(client, topo)
                        except Exception:
                            return False

                rss, hwm = measure(cmd, env, a.settle, ready, work / f"{name.replace('/', '-')}-{r}.log")
                series.setdefault(name, []).append((rss, hwm))
                print(f"run {r + 1}/{a.runs} {name}: rss {rss:.1f} MiB, peak {hwm:.1f} MiB", flush=True)
        finished = True
    finally:
        cluster.down()
        if a.keep or not finished:
            print(f"kept: cluster dir {a.dir}, logs in {work}", file=sys.stderr)
        else:
            shutil.rmtree(a.dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    results: dict[str, Any] = {"runs": a.runs, "settle_s": a.settle}
    for name, vals in series.items():
        results[name] = {
            "rss_mib_median": round(statistics.median(v[0] for v in vals), 1),
            "peak_mib_median": round(statistics.median(v[1] for v in vals), 1),
            "rss_mib_all": [round(v[0], 1) for v in vals],
        }
    print(json.dumps(results, indent=2))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
