"""`topodra demo`: a real local cluster, fake GPUs, and what topodra does with them."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from topodra_cli.localcluster import ClusterError, LocalCluster


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the demo on an embedded local cluster")
    p.add_argument("--dir", type=Path, default=Path("/tmp/topodra/demo"), help="cluster directory")
    p.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    p.set_defaults(handler=_demo)


def _say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def _kubectl(c: LocalCluster, *args: str) -> None:
    subprocess.run([str(c.bin_dir / "kubectl"), "--kubeconfig", str(c.kubeconfig), *args], check=False)


def _demo(args: argparse.Namespace) -> int:
    c = LocalCluster(args.dir)
    _say("starting a real Kubernetes control plane (etcd, apiserver, controller-manager, scheduler)")
    try:
        c.up()
    except ClusterError as e:
        print(f"topodra demo: {e}", file=sys.stderr)
        return 1
    try:
        print(f"kubeconfig: {c.kubeconfig}")
        _kubectl(c, "version")
        _say("the DRA API (resource.k8s.io) served by the apiserver")
        _kubectl(c, "api-resources", "--api-group=resource.k8s.io")
        _say("adding two fake GPU nodes")
        c.add_fake_nodes([
            ("gpu-node-a", {"topology.kubernetes.io/rack": "rack-1"}, {}),
            ("gpu-node-b", {"topology.kubernetes.io/rack": "rack-2"}, {}),
        ])
        _kubectl(c, "get", "nodes", "-L", "topology.kubernetes.io/rack")
    finally:
        if args.keep:
            print(f"\ncluster left running; stop it with: topodra local-cluster down --dir {c.dir}")
        else:
            _say("tearing down")
            c.down()
    return 0
