"""`topodra demo`: a real local cluster, fake GPUs, and what topodra does with them.

The story, in the order a user would do it: control plane up → DeviceClasses → GPU nodes published by
the driver (fleet mode, from the demo topology file) → the extender behind kube-scheduler over HTTPS →
a training job whose pods each ask for GPUs and NICs on one NUMA node → where they landed and why.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from scheduler_plugin.schedconfig import SchedulerSettings, extender_entry
from topodra_cli.localcluster import ClusterError, LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.localcluster.pki import issue, make_ca
from topodra_cli.localcluster.processes import ProcessSpec, free_port

JOB_PODS = 4
RACK = "topology.kubernetes.io/rack"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the demo on an embedded local cluster")
    p.add_argument("--dir", type=Path, default=Path("/tmp/topodra/demo"), help="cluster directory")
    p.add_argument("--keep", action="store_true", help="leave the cluster (and extender) running afterwards")
    p.set_defaults(handler=_demo)


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


class _Demo:
    def __init__(self, c: LocalCluster) -> None:
        self.c = c
        self.root = repo_root()
        self.examples = self.root / "deploy" / "examples"
        self.log = c.procs.log_path("extender")
        self.ext_port = 0
        self.ext_ca: Path | None = None

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        r = subprocess.run(
            [str(self.c.bin_dir / "kubectl"), "--kubeconfig", str(self.c.kubeconfig), *args],
            input=stdin, capture_output=True, text=True, check=False,
        )
        if r.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {r.stderr.strip()}")
        return r.stdout

    def show(self, *args: str) -> None:
        print(self.kubectl(*args), end="", flush=True)

    def topodra(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "topodra_cli.main", *args]

    # ---- steps ---------------------------------------------------------------------------------
    def nodes_and_slices(self) -> None:
        from driver.discovery import discover_fleet

        topo_file = self.examples / "topology-demo.yaml"
        _say("DeviceClasses gpu.topodra.dev and nic.topodra.dev")
        self.show("apply", "-f", str(self.root / "deploy" / "deviceclasses.yaml"))
        topos = discover_fleet(topo_file)
        _say(f"{len(topos)} simulated GPU nodes from {topo_file.relative_to(self.root)} (no kubelet on them)")
        self.c.add_fake_nodes([(t.node_name, dict(t.labels), {}) for t in topos])
        self.show("get", "nodes", "-L", f"{RACK},nvidia.com/gpu.clique")
        _say("the driver publishes their GPUs and NICs as ResourceSlices, with PCIe root, NUMA node and clique")
        r = subprocess.run(
            self.topodra("driver", "--fleet", "--once", "--topology", str(topo_file),
                         "--kubeconfig", str(self.c.kubeconfig), "--log-level", "warning"),
            check=False,
        )
        if r.returncode != 0:
            raise ClusterError("topodra driver --fleet failed (its log is above)")
        self.show("get", "resourceslices", "-o", "wide")
        first = topos[0].node_name
        print(f"\ndevices of {first} (type, PCIe root, NUMA node):")
        self.show(
            "get", "resourceslices", f"--field-selector=spec.nodeName={first}", "-o",
            "jsonpath={range .items[*].spec.devices[*]}{.name}{'\\t'}"
            "{.attributes.type.string}{'\\t'}"
            "{.attributes.resource\\.kubernetes\\.io/pcieRoot.string}{'\\t'}"
            "{.attributes.resource\\.kubernetes\\.io/numaNode.int}{'\\n'}{end}",
        )

    def start_extender(self) -> None:
        _say("the topodra extender, called by the real kube-scheduler over HTTPS")
        pki = self.c.dir / "extender-pki"
        pki.mkdir(exist_ok=True)
        ca = make_ca(pki, "extender-ca")
        srv = issue(ca, pki, "extender", "topodra-extender", server_hosts=("127.0.0.1", "localhost"), client=False)
        self.ext_ca = ca.cert
        self.ext_port = free_port()
        # In the cluster's process table: `local-cluster down` stops it like every other component.
        self.c.procs.start(ProcessSpec("extender", tuple(
            self.topodra("extender", "--listen", "127.0.0.1", "--port", str(self.ext_port),
                         "--tls-cert", str(srv.cert), "--tls-key", str(srv.key),
                         "--kubeconfig", str(self.c.kubeconfig)))))
        self._wait_ready()
        # The same entry `topodra extender print-scheduler-config` prints for a real cluster.
        entry = extender_entry(SchedulerSettings(url=f"https://127.0.0.1:{self.ext_port}/v1", ca_file=str(ca.cert)))
        self.c.set_scheduler_config(extenders=[entry], percentage_of_nodes_to_score=100)
        print(f"extender ready on https://127.0.0.1:{self.ext_port} (log: {self.log});"
              f" kube-scheduler restarted with it")

    def _get(self, path: str) -> str:
        assert self.ext_ca is not None
        ctx = ssl.create_default_context(cafile=str(self.ext_ca))
        with urllib.request.urlopen(f"https://127.0.0.1:{self.ext_port}{path}", context=ctx, timeout=2) as r:
            return bytes(r.read()).decode()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.c.procs.running("extender"):
                raise ClusterError(f"the extender exited; see {self.log}")
            with contextlib.suppress(OSError):
                self._get("/readyz")
                return
            time.sleep(0.3)
        raise ClusterError(f"the extender was not ready after {timeout:.0f}s; see {self.log}")

    def job(self) -> None:
        ns = "demo"
        _say(f"a training job: {JOB_PODS} pods, each 4 GPUs + 2 NICs on one NUMA node")
        self.kubectl("create", "namespace", ns)
        self.show("apply", "-n", ns, "-f", str(self.examples / "claims"))
        pods = [self._pod(f"train-{i}", "four-gpus-two-nics-one-numa", job="train") for i in range(JOB_PODS)]
        pods.append(self._pod("too-big", "eight-gpus-one-clique", job="other", claims=2))
        self.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(pods))
        self._wait_bound(ns, [f"train-{i}" for i in range(JOB_PODS)])
        _say("where they landed: packed into one rack, two pods per node, each on its own NUMA node")
        self.show("get", "pods", "-n", ns, "-o", "wide")
        print()
        self.show(
            "get", "resourceclaims", "-n", ns, "-o",
            "custom-columns=CLAIM:.metadata.name,NODE:.status.allocation.devices.results[0].pool,"
            "DEVICES:.status.allocation.devices.results[*].device",
        )
        _say("a pod asking for two whole cliques (16 GPUs) on one node: refused, with the scheduler's reason")
        deadline = time.monotonic() + 30
        msg = ""
        while time.monotonic() < deadline and not msg:
            out = self.kubectl("get", "events", "-n", ns, "--field-selector",
                               "involvedObject.name=too-big,reason=FailedScheduling", "-o",
                               "jsonpath={.items[*].message}")
            msg = out.strip()
            time.sleep(0.5)
        print(msg or "(no event yet)")
        _say("extender metrics (decisions and latency)")
        for line in self._get("/metrics").splitlines():
            if line.startswith("topodra_") and "_created" not in line and (
                "_count" in line or "decisions" in line or "cache_objects" in line
            ):
                print(line)

    def _pod(self, name: str, template: str, job: str, claims: int = 1) -> dict[str, Any]:
        refs = [{"name": f"c{i}", "resourceClaimTemplateName": template} for i in range(claims)]
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"job-name": job}},
            "spec": {
                "containers": [{"name": "main", "image": "busybox", "command": ["true"],
                                "resources": {"claims": [{"name": r["name"]} for r in refs]}}],
                "resourceClaims": refs,
            },
        }

    def _wait_bound(self, ns: str, names: list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.kubectl("get", "pods", "-n", ns, "-o",
                               "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{'\\n'}{end}")
            bound = {ln.split("=")[0] for ln in out.splitlines() if ln.partition("=")[2]}
            if set(names) <= bound:
                return
            time.sleep(0.5)
        raise ClusterError(f"pods not bound after {timeout:.0f}s; scheduler log: {self.c.dir}/logs")

def _demo(args: argparse.Namespace) -> int:
    c = LocalCluster(args.dir)
    _say("starting a real Kubernetes control plane (etcd, apiserver, controller-manager, scheduler)")
    try:
        c.up(owner_pid=0 if args.keep else os.getpid())
    except ClusterError as e:
        print(f"topodra demo: {e}", file=sys.stderr)
        return 1
    d = _Demo(c)
    rc = 0
    try:
        print(f"kubeconfig: {c.kubeconfig}")
        d.show("version")
        _say("the DRA API (resource.k8s.io) served by the apiserver")
        d.show("api-resources", "--api-group=resource.k8s.io")
        d.nodes_and_slices()
        d.start_extender()
        d.job()
    except (ClusterError, OSError) as e:
        print(f"topodra demo: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    finally:
        if args.keep and rc == 0:
            print(f"\ncluster and extender left running; stop them with: topodra local-cluster down --dir {c.dir}")
        else:
            _say("tearing down")
            c.down()
    return rc
