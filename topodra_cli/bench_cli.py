"""`topodra bench [NAME ...]`: without names, run every benchmark and regenerate docs/benchmarks.md with its plots
(bench/report.py, what `make bench` runs); with names, run those scripts in bench/ and print their figures."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

from topodra_cli.localcluster.binaries import repo_root

# Modules in bench/ that are not benchmarks: the report itself and a helper library.
NOT_BENCHMARKS = {"report", "schedmetrics"}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="run the benchmarks and regenerate docs/benchmarks.md (or run single benchmarks by name)")
    p.add_argument("names", nargs="*", help="benchmark names (files in bench/ without .py): run only these and "
                                            "print their figures; default: all of them, and write the report")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--quick", action="store_true",
                   help="report with smoke-test sizes (about 2 minutes), written under /tmp/topodra/bench-quick/")
    p.add_argument("--out", default=None, help="where the report's Markdown goes (default docs/benchmarks.md)")
    p.add_argument("--render-only", action="store_true", help="render the report again from the last run's JSON")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    bench_dir = repo_root() / "bench"
    available = sorted(p.stem for p in bench_dir.glob("*.py")
                       if not p.stem.startswith("_") and p.stem not in NOT_BENCHMARKS)
    if args.list:
        print("\n".join(available))
        return 0
    unknown = [n for n in args.names if n not in available]
    if unknown:
        print(f"topodra bench: unknown benchmark(s) {unknown}; available: {available}", file=sys.stderr)
        return 2
    if not args.names:
        cmd = [sys.executable, str(bench_dir / "report.py"), "--label",
               "topodra bench" + (" --quick" if args.quick else "")]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--out", args.out] if args.out else []
        cmd += ["--render-only"] if args.render_only else []
        return subprocess.call(cmd)
    rc = 0
    for name in args.names:
        print(f"\n##### bench/{name}.py", flush=True)
        rc |= subprocess.call([sys.executable, str(bench_dir / f"{name}.py")])
    return rc
