"""`topodra bench [NAME ...]`: run the benchmark scripts in bench/ (each prints its own figures)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from topodra_cli.localcluster.binaries import repo_root


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("bench", help="run benchmarks (figures go to docs/benchmarks.md)")
    p.add_argument("names", nargs="*", help="benchmark names (files in bench/ without .py); default: all")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    bench_dir = repo_root() / "bench"
    available = sorted(p.stem for p in bench_dir.glob("*.py") if not p.stem.startswith("_"))
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"topodra bench: unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    rc = 0
    for name in args.names or available:
        print(f"\n##### bench/{name}.py", flush=True)
        rc |= subprocess.call([sys.executable, str(bench_dir / f"{name}.py")])
    return rc
