"""`topodra conformance`: run the AI-conformance checks against a cluster with topodra installed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from topodra_cli.conformance.model import DEFAULT_IMAGE, DEFAULT_NAMESPACE_PREFIX, Options, UsageError

EXIT_USAGE = 2


def _pairs(flag: str, raw: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in raw:
        for part in filter(None, item.split(",")):
            k, eq, v = part.partition("=")
            if not eq or not k:
                raise UsageError(f"{flag} {part!r}: want KEY=VALUE")
            out.append((k, v))
    return tuple(out)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "conformance", help="check a cluster's DRA accelerators, isolation, gangs and NICs; write evidence files",
        description="Runs Go-test-style checks mapped to the CNCF AI-conformance requirements against the cluster "
                    "and writes e2e.log, junit.xml, results.json and a PRODUCT.yaml fragment. Exit 0: every check "
                    "that ran passed; 1: a check failed; 2: bad usage or the cluster cannot be reached.")
    p.add_argument("--kubeconfig", help="kubeconfig file (default $KUBECONFIG, in-cluster, ~/.kube/config)")
    p.add_argument("--context", help="kubeconfig context (default: its current-context)")
    p.add_argument("--run", default="", metavar="REGEX", help="only checks matching, as `go test -run` "
                   "(e.g. TestGangScheduling or 'TestSecure.*/Negative')")
    p.add_argument("--out", type=Path, default=Path("conformance-results"), metavar="DIR",
                   help="where the evidence files go (default ./conformance-results)")
    p.add_argument("--dry-run", action="store_true", help="list the selected checks; touch no cluster")
    p.add_argument("--namespace-prefix", default=DEFAULT_NAMESPACE_PREFIX, metavar="P",
                   help=f"prefix of the namespaces the run creates (default {DEFAULT_NAMESPACE_PREFIX})")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="seconds each wait may take: a pod running, a Job complete, devices released (default 120)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image with sh, ls, grep (default {DEFAULT_IMAGE}); "
                   "pulled only if absent, so a preloaded image works without a registry")
    p.add_argument("--host-network", action="store_true",
                   help="run pods with hostNetwork (nodes without a pod network); the in-pod interface check skips")
    p.add_argument("--node-selector", action="append", default=[], metavar="K=V[,K=V]",
                   help="only nodes with these labels take part (repeatable)")
    p.add_argument("--gang-window", type=float, default=30.0, metavar="S",
                   help="how long the gang that cannot fit is watched for bound pods (default 30, as upstream)")
    p.add_argument("--gang-job-label", action="append", default=[], metavar="K=V",
                   help="labels that make a Job a gang for your gang scheduler (default topodra.dev/gang=true)")
    p.add_argument("--topology-level", default="node", metavar="LEVEL[=LABEL]",
                   help="level the packed gang requires (topodra.dev/topology-required) and the node label naming "
                        "its domains; default node (the node itself); e.g. rack=topodra.dev/rack")
    p.add_argument("--scheduler-name", default="", metavar="NAME",
                   help="schedulerName of the pods, when topodra runs in its own scheduler (e.g. topodra-scheduler)")
    p.add_argument("--expect-nic-in-pod", action="store_true",
                   help="fail, not skip, when an allocated NIC is not in the pod's network namespace")
    p.set_defaults(handler=_main)


def options(args: argparse.Namespace) -> Options:
    if args.timeout <= 0 or args.gang_window <= 0:
        raise UsageError("--timeout and --gang-window must be positive")
    if not args.namespace_prefix or len(args.namespace_prefix) > 40 or not all(
            (ch.isalnum() and ch == ch.lower()) or ch == "-" for ch in args.namespace_prefix) \
            or not args.namespace_prefix[0].isalnum():
        raise UsageError(f"--namespace-prefix {args.namespace_prefix!r}: want up to 40 lower-case letters, digits "
                         "and '-', starting with a letter or digit")
    level, _, label = args.topology_level.partition("=")
    if not level:
        raise UsageError(f"--topology-level {args.topology_level!r}: want LEVEL or LEVEL=LABEL")
    if level != "node" and not label:
        from scheduler_plugin.config import DEFAULT_LEVELS

        known = {lv.name: lv.labels[0] for lv in DEFAULT_LEVELS if lv.labels}
        if level not in known:
            raise UsageError(f"--topology-level {level}: give its node label as {level}=LABEL")
        label = known[level]
    return Options(
        kubeconfig=args.kubeconfig, context=args.context, run=args.run, out=args.out, dry_run=args.dry_run,
        namespace_prefix=args.namespace_prefix, timeout=args.timeout, image=args.image,
        host_network=args.host_network, node_selector=_pairs("--node-selector", args.node_selector),
        gang_window=args.gang_window,
        gang_job_labels=_pairs("--gang-job-label", args.gang_job_label) or Options().gang_job_labels,
        topology_level=level, topology_label=label, expect_nic_in_pod=args.expect_nic_in_pod,
        scheduler_name=args.scheduler_name,
    )


def _main(args: argparse.Namespace) -> int:
    from topodra_cli.conformance.runner import run

    try:
        return run(options(args))
    except UsageError as e:
        print(f"topodra conformance: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any check started: nothing was created
        print("topodra conformance: interrupted", file=sys.stderr)
        return 1
