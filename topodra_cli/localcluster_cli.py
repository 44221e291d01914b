"""`topodra local-cluster up|down|status|add-node`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from topodra_cli.localcluster import ClusterError, LocalCluster, default_dir
from topodra_cli.localcluster.processes import ProcessTable


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "local-cluster", help="run a real Kubernetes control plane as local processes (tests, demo)"
    )
    lsub = p.add_subparsers(dest="lc_command", metavar="ACTION", required=True)

    up = lsub.add_parser("up", help="start etcd, apiserver, controller-manager, scheduler; print the kubeconfig")
    up.add_argument("--dir", type=Path, default=None, help=f"cluster directory (default {default_dir()})")
    up.add_argument("--apiserver-port", type=int, default=None, help="fixed apiserver port (default: a free one)")
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing binaries")
    up.add_argument("--generic-workload", action="store_true",
                    help="turn on upstream workload-aware (gang) scheduling: gate GenericWorkload and its "
                         "dependents on every component, API scheduling.k8s.io/v1beta1 (Workload, PodGroup)")
    up.add_argument("--scheduler-config", type=Path, default=None, metavar="FILE",
                    help="start kube-scheduler from this KubeSchedulerConfiguration (the harness still sets "
                         "clientConnection.kubeconfig and leaderElection)")
    up.set_defaults(handler=_up)

    down = lsub.add_parser("down", help="stop every process of the cluster")
    down.add_argument("--dir", type=Path, default=None)
    down.set_defaults(handler=_down)

    st = lsub.add_parser("status", help="show the cluster's processes")
    st.add_argument("--dir", type=Path, default=None)
    st.set_defaults(handler=_status)

    an = lsub.add_parser("add-node", help="add a fake Ready node (no kubelet), or with --real a real one")
    an.add_argument("name", nargs="?", help="node name (with --real: default this machine's hostname)")
    an.add_argument("--dir", type=Path, default=None)
    an.add_argument("--label", action="append", default=[], metavar="K=V")
    an.add_argument("--real", action="store_true",
                    help="start a real kubelet + containerd (root; hostNetwork pods only; see docs/e2e.md)")
    an.add_argument("--topology", type=Path, default=None,
                    help="with --real: also run the topodra driver on this topology file (file backend)")
    an.add_argument("--driver-arg", action="append", default=[], metavar="ARG",
                    help="with --real: extra argument for `topodra driver` (repeatable)")
    an.add_argument("--isolated", action="store_true",
                    help="with --real: one of several real nodes on this machine: its own mount namespace where "
                         "/var/lib/kubelet, /var/run/cdi and /etc/kubernetes/topodra are its own dirs (what a "
                         "DaemonSet expects), and its own node IP (10.250.x.y on lo)")
    an.set_defaults(handler=_add_node)

    li = lsub.add_parser("load-image", help="import OCI image tarballs (default: the topodra image, built if "
                                            "needed) into every real node's containerd")
    li.add_argument("tarballs", nargs="*", type=Path, metavar="TARBALL",
                    help="OCI layout tarballs (e.g. from `make image`); default: build and load the topodra image")
    li.add_argument("--dir", type=Path, default=None)
    li.set_defaults(handler=_load_image)


def _fail(e: Exception) -> int:
    print(f"topodra local-cluster: {e}", file=sys.stderr)
    return 1


def _up(args: argparse.Namespace) -> int:
    c = LocalCluster(args.dir, generic_workload=args.generic_workload, scheduler_config=args.scheduler_config)
    try:
        c.up(apiserver_port=args.apiserver_port, build=not args.no_build)
    except ClusterError as e:
        return _fail(e)
    print(f"local-cluster: up ({c.server}), logs in {c.dir / 'logs'}", file=sys.stderr)
    print(c.kubeconfig)
    return 0


def _down(args: argparse.Namespace) -> int:
    c = LocalCluster(args.dir)
    c.down()
    print(f"local-cluster: down ({c.dir})", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    c = LocalCluster(args.dir)
    names = c.procs.names()
    if not names:
        print(f"no cluster in {c.dir}")
        return 1
    for n in names:
        print(f"{n:28} pid {c.procs.pid(n)!s:8} {'running' if c.procs.running(n) else 'STOPPED'}")
    for node_dir in sorted((c.dir / "nodes").glob("*/pids")):  # real nodes (add-node --real)
        table = ProcessTable(node_dir.parent)
        for n in table.names():
            label = f"{node_dir.parent.name}/{n}"
            print(f"{label:28} pid {table.pid(n)!s:8} {'running' if table.running(n) else 'STOPPED'}")
    return 0 if c.is_running() else 1


def _labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for kv in pairs:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise ClusterError(f"--label wants K=V, got {kv!r}")
        labels[k] = v
    return labels


def _add_node(args: argparse.Namespace) -> int:
    if args.real:
        return _add_real_node(args)
    if not args.name:
        return _fail(ClusterError("add-node needs a node name (or --real)"))
    try:
        c = LocalCluster.attach(args.dir)
        c.add_fake_node(args.name, _labels(args.label))
    except ClusterError as e:
        return _fail(e)
    print(f"node/{args.name} added")
    return 0


def _add_real_node(args: argparse.Namespace) -> int:
    from topodra_cli.localcluster.realnode import add_real_node

    try:
        labels = _labels(args.label)
        c = LocalCluster.attach(args.dir)
        node = add_real_node(c, args.name, topology=args.topology, driver_args=args.driver_arg,
                             isolated=args.isolated)
        if labels:  # set by the admin, not the kubelet: it may not claim node-role.kubernetes.io/* itself
            c.label_node(node.name, labels)
    except ClusterError as e:
        return _fail(e)
    print(f"local-cluster: real node {node.name} Ready (containerd {node.containerd_socket}, kubelet root "
          f"{node.kubelet_root}, logs in {node.dir / 'logs'}); `topodra local-cluster down` stops it", file=sys.stderr)
    print(f"node/{node.name} added")
    return 0


def _load_image(args: argparse.Namespace) -> int:
    from topodra_cli.imagebuild import build_topodra_image, default_out, load_into_nodes
    from topodra_cli.localcluster.images import Image

    try:
        LocalCluster.attach(args.dir)
        missing = [str(t) for t in args.tarballs if not t.is_file()]
        if missing:
            raise ClusterError(f"no such image tarball: {', '.join(missing)}")
        images = [Image(t.name, t) for t in args.tarballs] or [
            build_topodra_image(default_out())]
        nodes = load_into_nodes(images, args.dir)
    except ClusterError as e:
        return _fail(e)
    if not nodes:
        return _fail(ClusterError("the cluster has no running real node (topodra local-cluster add-node --real)"))
    for img in images:
        print(f"{img.tarball} -> {', '.join(nodes)}")
    return 0
