"""`topodra` console script: one command, one sub-command per component."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from topodra_cli import __version__

Handler = Callable[[argparse.Namespace], int]


def _version(_: argparse.Namespace) -> int:
    print(f"topodra {__version__}")
    return 0


# Sub-command -> the module that registers it. Each component owns its own flags.
# Imported by name only for start-up speed (see build_parser), not to hide a cycle: none of these modules
# imports this one, which tests/unit/test_import_graph.py checks.
COMMANDS = {
    "driver": "driver.cli",
    "extender": "scheduler_plugin.cli",
    "local-cluster": "topodra_cli.localcluster_cli",
    "demo": "topodra_cli.demo_cli",
    "bench": "topodra_cli.bench_cli",
    "conformance": "topodra_cli.conformance_cli",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All sub-commands, or just `only`: a DaemonSet's `topodra driver` then never imports the
    local-cluster and extender modules (the kubernetes client, cryptography; what they cost is in
    docs/benchmarks-driver.md)."""
    parser = argparse.ArgumentParser(
        prog="topodra",
        description="Topology-aware DRA driver and gang-aware scheduler extender for Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    v = sub.add_parser("version", help="print the topodra version")
    v.set_defaults(handler=_version)
    for name, module in COMMANDS.items():
        if only is None or only == name:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(words[0] if words and words[0] in COMMANDS else None)
    args = parser.parse_args(words)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
