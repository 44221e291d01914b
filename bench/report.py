"""Run every benchmark and regenerate docs/benchmarks.md with its plots (what `make bench` runs).

    .venv/bin/python bench/report.py                 # full sizes, 20-30 minutes on 2 cores; writes docs/
    .venv/bin/python bench/report.py --quick         # smoke sizes (about 2 minutes); writes /tmp/topodra/bench-quick/
    .venv/bin/python bench/report.py --only gang_planner   # run one again; the other sections stay as they were
    .venv/bin/python bench/report.py --render-only   # the page again from the JSON of the last run

The page goes to --out, its PNGs to `benchmarks/` beside it, and each script's JSON and run record to
`benchmarks/results/` (kept with the page, so it can be rendered again without a run); their whole output to
/tmp/topodra/bench-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.reportlib import markdown, plots
from bench.reportlib.runner import LOGS, ROOT, SPECS, LoadSampler, Machine, Outcome, load_all, run_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes; output under /tmp unless --out")
    ap.add_argument("--only", default="", help="comma-separated benchmarks (default: all): "
                    + ",".join(s.key for s in SPECS))
    ap.add_argument("--out", type=Path, default=None,
                    help="the Markdown page (default docs/benchmarks.md; --quick: /tmp/topodra/bench-quick/)")
    ap.add_argument("--render-only", action="store_true", help="do not run; render from the results directory")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one script may run before it is stopped")
    ap.add_argument("--logs", type=Path, default=LOGS, help=f"each script's whole output goes here (default {LOGS})")
    ap.add_argument("--label", default="", help="how the run was started, for the page (default: this command)")
    a = ap.parse_args(argv)
    keys = [k.strip() for k in a.only.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in {s.key for s in SPECS}]:
        ap.error(f"unknown benchmarks {unknown}")
    specs = [s for s in SPECS if not keys or s.key in keys]
    out: Path = a.out or (Path("/tmp/topodra/bench-quick/benchmarks.md") if a.quick else ROOT / "docs/benchmarks.md")
    assets = out.parent / "benchmarks"
    results = assets / "results"
    results.mkdir(parents=True, exist_ok=True)
    run_path = results / "run.json"
    if a.render_only:
        outcomes = load_all(specs, results)
        info = json.loads(run_path.read_text())
        run = markdown.RunInfo(info["command"], Machine(**{**info["start"], "load": tuple(info["start"]["load"])}),
                               info["finished"], info["wall_s"], tuple(info["load_end"]), info["quick"],
                               tuple(info.get("load_samples", ())))
    else:
        start, t0 = Machine.now(), time.monotonic()
        with LoadSampler() as load:
            fresh = {o.key: o for o in run_all(specs, a.quick, results, a.timeout, a.logs)}
        # Sections not run this time keep the figures of their last run (each section gives its own date).
        outcomes = [fresh.get(s.key) or Outcome.load(results / f"{s.key}.meta.json") for s in SPECS
                    if s.key in fresh or (results / f"{s.key}.meta.json").exists()]
        la = os.getloadavg()
        label = a.label or " ".join(["bench/report.py", *(argv if argv is not None else sys.argv[1:])])
        run = markdown.RunInfo(label, start, Machine.now().date, round(time.monotonic() - t0, 1),
                               (la[0], la[1], la[2]), a.quick, tuple(load.samples))
        run_path.write_text(json.dumps({**run.__dict__, "start": start.__dict__}, indent=1) + "\n")
    files: dict[str, list[str]] = {}
    for o in outcomes:
        if o.data is not None:
            files[o.key] = [p.name for p in plots.draw(o.key, o.data, assets)]
    out.write_text(markdown.render(outcomes, files, run) + "\n")
    for name, text in markdown.stubs().items():
        (out.parent / name).write_text(text)
    failed = [o.key for o in outcomes if o.rc != 0]  # in this run or in a section kept from an earlier one
    print(f"\nwrote {out} and {sum(len(v) for v in files.values())} plots in {assets}"
          f"{'; FAILED: ' + ', '.join(failed) if failed else ''}; {run.wall_s / 60:.1f} minutes", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
