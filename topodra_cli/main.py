"""`topodra` console script: one command, one sub-command per component."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from topodra_cli import __version__

Handler = Callable[[argparse.Namespace], int]


def _version(_: argparse.Namespace) -> int:
    print(f"topodra {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # Imported here so `topodra --help` stays fast and each component owns its own flags.
    from driver import cli as driver_cli
    from scheduler_plugin import cli as extender_cli
    from topodra_cli import bench_cli, demo_cli, localcluster_cli

    parser = argparse.ArgumentParser(
        prog="topodra",
        description="Topology-aware DRA driver and gang-aware scheduler extender for Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    v = sub.add_parser("version", help="print the topodra version")
    v.set_defaults(handler=_version)
    driver_cli.register(sub)
    extender_cli.register(sub)
    localcluster_cli.register(sub)
    demo_cli.register(sub)
    bench_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0 if argv is None and len(sys.argv) <= 1 else 2
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
