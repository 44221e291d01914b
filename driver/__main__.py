"""`python -m driver ARGS` = `topodra driver ARGS`, without building the other components' command lines.

`topodra` registers every sub-command before parsing, and the extender's and local cluster's modules
import `cryptography` and the cluster harness that the driver never uses (their resident memory is in
docs/benchmarks-driver.md); this entry point loads only the driver's own flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from driver import cli


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m")
    sub = parser.add_subparsers(dest="command")
    cli.register(sub)
    args = parser.parse_args(["driver", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
