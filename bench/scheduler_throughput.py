"""Real kube-scheduler throughput on 1,000 fake nodes, without and with the topodra extender.

A local control plane (the pinned Kubernetes build) gets N fake nodes (16 per rack) each publishing
8 GPUs + 8 NICs; P pods, each with a claim from a template for one GPU and one NIC on one PCIe root,
are created as fast as possible and timed until every one is bound. Then the same again with
kube-scheduler calling the extender over HTTPS (percentageOfNodesToScore: 100 both times).

    .venv/bin/python bench/scheduler_throughput.py [--nodes 1000] [--pods 100]

The plain run is repeated after the extender run; the ratio uses the mean of both plain runs.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from driver.kubeapi import ApiError, KubeClient
from scheduler_plugin.schedconfig import SchedulerSettings, extender_entry
from topodra_cli.localcluster import LocalCluster, pki
from topodra_cli.localcluster.processes import free_port

STD = "resource.kubernetes.io"
Json = dict[str, Any]
CLASSES = [
    {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": f"{k}.topodra.dev"},
     "spec": {"selectors": [{"cel": {"expression":
         f'device.driver == "topodra.dev" && device.attributes["topodra.dev"].type == "{k}"'}}]}}
    for k in ("gpu", "nic")
]


def devices() -> list[Json]:
    out = []
    for kind, base in (("gpu", 0x10), ("nic", 0x90)):
        for i in range(8):
            r = i // 2
            out.append({"name": f"{kind}-{i}", "attributes": {
                "type": {"string": kind}, f"{STD}/pcieRoot": {"string": f"pci0000:{r * 0x40:02x}"},
                f"{STD}/numaNode": {"int": r // 2}, f"{STD}/pciBusID": {"string": f"0000:{base + i:02x}:00.0"}}})
    return out


def setup(cluster: LocalCluster, client: KubeClient, n: int) -> None:
    t = time.monotonic()
    nodes: list[tuple[str, dict[str, str], dict[str, str]]] = [
        (f"bn-{i:04d}", {"topodra.dev/rack": f"r{i // 16}", "topodra.dev/block": f"b{i // 128}",
                         "topodra.dev/bench": "1"}, {})
        for i in range(n)
    ]
    cluster.add_fake_nodes(nodes)
    for dc in CLASSES:
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
    print(f"setup: {n} fake nodes with slices in {time.monotonic() - t:.0f} s", flush=True)


def run_pods(client: KubeClient, ns: str, pods: int) -> float:
    client.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    client.request("POST", f"/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaimtemplates", body={
        "metadata": {"name": "pair"}, "spec": {"spec": {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.topodra.dev"}},
                         {"name": "nic", "exactly": {"deviceClassName": "nic.topodra.dev"}}],
            "constraints": [{"requests": ["gpu", "nic"], "matchAttribute": f"{STD}/pcieRoot"}]}}}})
    time.sleep(1.0)  # let the template reach the informers

    def create(i: int) -> None:
        client.request("POST", f"/api/v1/namespaces/{ns}/pods", body={
            "metadata": {"name": f"p-{i}", "labels": {"topodra.dev/job": f"j{i // 8}"}},
            "spec": {"terminationGracePeriodSeconds": 0, "nodeSelector": {"topodra.dev/bench": "1"},
                     "containers": [{"name": "c", "image": "busybox", "resources": {"claims": [{"name": "acc"}]}}],
                     "resourceClaims": [{"name": "acc", "resourceClaimTemplateName": "pair"}]}})

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(pods)))
    deadline = t0 + 600
    while time.monotonic() < deadline:
        items = client.get(f"/api/v1/namespaces/{ns}/pods").get("items") or []
        if sum(1 for p in items if p["spec"].get("nodeName")) >= pods:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"pods in {ns} not all bound after 600 s")


def _get(url: str, ctx: ssl.SSLContext) -> str:
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return str(r.read().decode())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--pods", type=int, default=100)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="topodra-throughput-"))
    cluster = LocalCluster(Path("/tmp/topodra") / f"bench-throughput-{os.getpid()}")
    ext: subprocess.Popen[bytes] | None = None
    try:
        cluster.up(owner_pid=os.getpid())
        client = KubeClient.load(str(cluster.kubeconfig), pool_size=32)
        setup(cluster, client, a.nodes)
        base = run_pods(client, "tp-plain", a.pods)
        print(f"without extender: {a.pods} pods bound in {base:.1f} s = {a.pods / base:.1f} pods/s", flush=True)

        ca = pki.make_ca(work, "ca")
        srv = pki.issue(ca, work, "ext", "topodra-extender", server_hosts=("127.0.0.1",), client=False)
        port = free_port()
        log = (work / "extender.log").open("wb")
        ext = subprocess.Popen([str(Path(sys.executable).with_name("topodra")), "extender", "--listen=127.0.0.1",
                                f"--port={port}", f"--tls-cert={srv.cert}", f"--tls-key={srv.key}",
                                f"--kubeconfig={cluster.kubeconfig}", "--log-level=warning"],
                               stdout=log, stderr=subprocess.STDOUT)
        ctx = ssl.create_default_context(cafile=str(ca.cert))
        url = f"https://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/readyz", context=ctx, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        entry = extender_entry(SchedulerSettings(url=f"{url}/v1", ca_file=str(ca.cert)))
        cluster.set_scheduler_config(extenders=[entry], percentage_of_nodes_to_score=100)
        with_ext = run_pods(client, "tp-extender", a.pods)
        print(f"with extender:    {a.pods} pods bound in {with_ext:.1f} s = {a.pods / with_ext:.1f} pods/s", flush=True)
        metrics = _get(f"{url}/metrics", ctx)
        # Bracket: the plain run again afterwards, so drift in machine load shows instead of hiding.
        cluster.set_scheduler_config(extenders=None, percentage_of_nodes_to_score=100)
        again = run_pods(client, "tp-plain-2", a.pods)
        print(f"without extender (again): {a.pods} pods bound in {again:.1f} s = {a.pods / again:.1f} pods/s",
              flush=True)
        plain = (a.pods / base + a.pods / again) / 2
        print(f"ratio with/without (mean of both plain runs): {a.pods / with_ext / plain:.2f}")
        for verb in ("filter", "prioritize"):
            count = re.search(rf'topodra_extender_request_duration_seconds_count{{verb="{verb}"}} (\S+)', metrics)
            total = re.search(rf'topodra_extender_request_duration_seconds_sum{{verb="{verb}"}} (\S+)', metrics)
            if count and total and float(count.group(1)):
                print(f"extender {verb}: {float(count.group(1)):.0f} calls, mean "
                      f"{1000 * float(total.group(1)) / float(count.group(1)):.2f} ms server-side")
        print(f"extender RSS with {a.nodes} nodes cached: {rss_mib(ext.pid):.0f} MiB")
        return 0
    finally:
        if ext is not None:
            ext.send_signal(signal.SIGTERM)
            try:
                ext.wait(10)
            except subprocess.TimeoutExpired:
                ext.kill()
        cluster.down()


if __name__ == "__main__":
    sys.exit(main())
