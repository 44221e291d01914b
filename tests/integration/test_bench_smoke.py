"""`make bench`'s report runs end to end at its quick sizes (`bench/report.py --quick`, about 2 minutes), and every
benchmark in it prints sane figures: a figure in docs/ must stay reproducible, and a NaN, a zero or a negative time
printed where a measurement belongs is a broken benchmark. The report run happens once per module; each test reads
one script's output (its log) and JSON from it.

The bounds are physical, not performance targets: times are positive and shorter than the run, memory is
more than an empty interpreter and less than the machine, rates are positive, p50 <= p99.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from topodra_cli.localcluster.binaries import repo_root

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BENCH = repo_root() / "bench"
TIMEOUT = 600
NUM = r"[-+]?(?:nan|inf|\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?)"
# (lowest, highest) per unit; None = no bound on that side.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "s": (0.0, TIMEOUT),
    "ms": (0.0, TIMEOUT * 1000.0),
    "MiB": (5.0, 65536.0),  # a process's RSS: more than an empty interpreter
    "MiB_growth": (0.0, 65536.0),  # what a data structure added to it
    "per_s": (0.0, 1e7),
    "count": (0.0, None),
}


@dataclass(frozen=True)
class QuickRun:
    out: Path  # the Markdown page; plots in out.parent / "benchmarks"
    rc: int
    stdout: str

    def text(self, name: str) -> str:
        return (self.out.parent / "logs" / f"{name}.log").read_text()

    def json(self, name: str) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.out.parent / "benchmarks" / "results" / f"{name}.json").read_text())
        return doc


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    d = tmp_path_factory.mktemp("bench-quick")
    r = subprocess.run([sys.executable, str(BENCH / "report.py"), "--quick", "--out", str(d / "benchmarks.md"),
                        "--logs", str(d / "logs")], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return QuickRun(d / "benchmarks.md", r.returncode, r.stdout[-4000:] + r.stderr[-3000:])


def _run(quick: QuickRun, name: str) -> str:
    meta = json.loads((quick.out.parent / "benchmarks" / "results" / f"{name}.meta.json").read_text())
    assert meta["rc"] == 0, f"bench/{name}.py failed:\n{meta['log_tail']}"
    return quick.text(name)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def check(what: str, value: float, unit: str, *, strict: bool = True) -> None:
    """Finite and inside the unit's bounds; `strict`: above the lower bound, not equal to it."""
    assert math.isfinite(value), f"{what} = {value} {unit}: not a number"
    lo, hi = BOUNDS[unit]
    if lo is not None:
        assert value > lo if strict else value >= lo, f"{what} = {value} {unit}: not above {lo}"
    if hi is not None:
        assert value < hi, f"{what} = {value} {unit}: not below {hi}"


def _unit_of_key(path: list[str]) -> str:
    """The unit a JSON key names (innermost key that names one): `*_s`, `*_ms`, `*mib*`, `*_per_s`."""
    for key in reversed(path):
        k = key.lower()
        if k.endswith("_per_s"):
            return "per_s"
        if k.endswith("_ms"):
            return "ms"
        if k.endswith("_s"):
            return "s"
        if "mib" in k:
            return "MiB"
    return "count"


def _leaves(obj: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, [*path, str(k)])
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, [*path, str(i)])
    else:
        yield path, obj


def check_json(doc: dict[str, Any]) -> None:
    """Every number finite and in its key's bounds; p50 <= p99 and median <= max wherever both are given."""
    for path, v in _leaves(doc, []):
        if isinstance(v, bool) or not isinstance(v, int | float):
            continue
        unit = _unit_of_key(path)
        # Sizes must exceed an empty interpreter; a time inside a breakdown may round to 0 (the tests
        # check the headline figures strictly).
        check(".".join(path), float(v), unit, strict=unit == "MiB")
    stack: list[Any] = [doc]
    while stack:
        d = stack.pop()
        if isinstance(d, dict):
            if isinstance(d.get("p50"), int | float) and isinstance(d.get("p99"), int | float):
                assert d["p50"] <= d["p99"], d
            if isinstance(d.get("median"), int | float) and isinstance(d.get("max"), int | float):
                assert d["median"] <= d["max"], d
            stack.extend(d.values())
        elif isinstance(d, list):
            stack.extend(d)


def printed_json(text: str) -> dict[str, Any]:
    """The JSON document a benchmark prints last (from its first line that is just `{`)."""
    lines = text.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln == "{")
    doc: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return doc


def test_report(quick: QuickRun) -> None:
    """The page has every section, no failure, and a valid PNG per plot it shows."""
    assert quick.rc == 0, quick.stdout
    md = quick.out.read_text()
    assert "**Quick mode**" in md and "failed in this run" not in md
    images = [ln.split("](", 1)[1].rstrip(")") for ln in md.splitlines() if ln.startswith("![")]
    assert len(images) == 7, images
    for rel in images:
        assert (quick.out.parent / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel


def test_driver_publish(quick: QuickRun) -> None:
    text = _run(quick, "driver_publish")
    r = quick.json("driver_publish")
    assert printed_json(text) == r
    check_json(r)
    assert r["slices"] == 20
    for key in ("publish_s", "baseline_raw_create_s", "sighup_to_converged_s", "delete_to_recreated_s"):
        check(key, r[key]["median"], "s")
    runs = re.findall(rf"(\w+)=({NUM})", "\n".join(ln for ln in text.splitlines() if ln.startswith("run ")))
    assert runs, text
    for k, v in runs:
        check(f"printed {k}", number(v), "s")


def test_driver_rss(quick: QuickRun) -> None:
    text = _run(quick, "driver_rss")
    r = quick.json("driver_rss")
    assert printed_json(text) == r
    check_json(r)
    assert r["python-baseline"]["rss_mib_median"] < r["file"]["rss_mib_median"] < r["file+plugin"]["rss_mib_median"]
    printed = re.findall(rf"rss ({NUM}) MiB, peak ({NUM}) MiB", text)
    assert printed, text
    for rss, peak in printed:
        check("rss", number(rss), "MiB")
        assert number(rss) <= number(peak), (rss, peak)


def test_kubelet_plugin(quick: QuickRun) -> None:
    text = _run(quick, "kubelet_plugin")
    r = quick.json("kubelet_plugin")
    check_json(r)
    assert "1-device" in r
    m = re.search(rf"start -> registered: median ({NUM}) s, max ({NUM}) s", text)
    assert m, text
    check("registered median", number(m[1]), "s")
    assert number(m[1]) <= number(m[2])
    for verb in ("prepare", "unprepare"):
        rows = re.findall(rf"(?<![a-z]){verb} p50 ({NUM}) ms +p99 ({NUM}) ms", text)
        assert len(rows) == 3, text  # one per claim shape
        for p50, p99 in rows:
            check(f"{verb} p50", number(p50), "ms")
            assert number(p50) <= number(p99)
    m = re.search(rf"parallel prepare: ({NUM}) claims/s", text)
    assert m, text
    check("parallel prepare", number(m[1]), "per_s")
    m = re.search(rf"RSS: idle ({NUM}) MiB, after runs ({NUM}) MiB", text)
    assert m, text
    check("idle RSS", number(m[1]), "MiB")
    check("RSS after runs", number(m[2]), "MiB")
    m = re.search(rf"dir fsync p50 ({NUM}) ms, p99 ({NUM}) ms", text)
    assert m, text
    check("fsync p50", number(m[1]), "ms")
    assert number(m[1]) <= number(m[2])


def test_extender_latency(quick: QuickRun) -> None:
    text = _run(quick, "extender_latency")
    sizes = {s["nodes"]: s for s in quick.json("extender_latency")["sizes"]}
    assert sorted(sizes[200]["calls"]) == ["extender filter", "extender prioritize", "trivial filter",
                                           "trivial prioritize"]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if re.match(r"\| 200 \|", ln)]
    assert sorted(r[1] for r in rows) == ["extender filter", "extender prioritize", "trivial filter",
                                          "trivial prioritize"], text
    for row in rows:
        cpu50, cpu99, srv50, srv99, cli50, cli99 = (number(c) for c in row[2:])
        for name, v in (("server CPU", cpu50), ("server", srv50)):
            # A trivial handler's time can round to 0.00 ms; never below.
            check(f"{row[1]} {name} p50", v, "ms", strict=False)
        check(f"{row[1]} client p50", cli50, "ms")
        assert cpu50 <= cpu99 and srv50 <= srv99 and cli50 <= cli99, row
        assert srv50 <= cli50, f"{row[1]}: the server's time is part of the client's: {row}"
    m = re.search(rf"cache built in ({NUM}) s, cache RSS ({NUM}) MiB", text)
    assert m, text
    check("cache build", number(m[1]), "s", strict=False)
    check("cache RSS", number(m[2]), "MiB_growth")
    firsts = re.search(r"first filter per pod shape \(memo cold\): ([^;]*) ms", text)
    assert firsts, text
    for first in firsts[1].split(","):
        check("first filter", number(first.strip()), "ms", strict=False)


# scheduler_throughput prints `name: value unit`; the unit decides the bounds.
THROUGHPUT_UNITS = {"pods/s": "per_s", "s": "s", "ms": "ms", "MiB": "MiB", "ratio": "per_s"}


def test_scheduler_throughput(quick: QuickRun) -> None:
    text = _run(quick, "scheduler_throughput")
    assert {r["row"] for r in quick.json("scheduler_throughput")["sizes"][0]["runs"]} == {"a", "b", "c"}
    figures = {m[1]: (number(m[2]), m[3])
               for m in re.finditer(rf"^([\w.+/-]+): ({NUM}) (\S+)$", text, re.MULTILINE)}
    rates = {k: v for k, (v, unit) in figures.items() if unit == "pods/s"}
    assert rates, text
    for name, (v, unit) in figures.items():
        if "minus" in name:  # a difference of two means: either sign, but a number
            assert math.isfinite(v), (name, v)
            continue
        kind = THROUGHPUT_UNITS.get(unit, "count")
        # Set-up of 20 nodes may print 0.0 s at one digit; a rate, a memory size or a ratio may never be 0.
        check(name, v, kind, strict=kind in ("per_s", "MiB"))
    for name, (v, _) in figures.items():
        if name.endswith("_p50") and name[:-3] + "p99" in figures:
            assert v <= figures[name[:-3] + "p99"][0], name


def test_gang_throughput(quick: QuickRun) -> None:
    # 12 one-GPU members need two nodes of 8 GPUs, so one rack is the smallest domain that fits.
    text = _run(quick, "gang_throughput")
    assert quick.json("gang_throughput")["gang_size"] == 12
    figures = {m[1]: (number(m[2]), m[3])
               for m in re.finditer(rf"^([\w.+/-]+): ({NUM}) (\S+)$", text, re.MULTILINE)}
    for name, (v, unit) in figures.items():
        kind = {"s": "s", "ratio": "per_s"}.get(unit, "count")
        # An interval that contains scheduling work or a ratio is never 0; a spread or a count may be.
        check(name, v, kind, strict="_to_" in name or kind == "per_s")
    for kind in ("gang", "plain"):
        assert figures[f"{kind}.aligned_fraction"][0] == 1.0, text
        assert figures[f"{kind}.create_to_bound_p50"][0] <= figures[f"{kind}.create_to_bound_p99"][0]
        assert figures[f"{kind}.last_create_to_all_bound"][0] < figures[f"{kind}.first_create_to_all_bound"][0] + 1e-3
    assert figures["gang.smallest_domain"][0] == 1.0 and figures["gang.racks_used"][0] == 1.0, text
    assert figures["gang.last_create_to_first_bound"][0] <= figures["gang.last_create_to_all_bound"][0]
    assert figures["gang.plans"][0] >= 1, text
    assert "| **last create → all bound** |" in text, text


def test_gang_planner(quick: QuickRun) -> None:
    # In process, no cluster: 100 and 300 nodes; 4 aligned members fit on one node, 32 need a rack.
    text = _run(quick, "gang_planner")
    check_json(quick.json("gang_planner"))
    figures = {m[1]: (number(m[2]), m[3])
               for m in re.finditer(rf"^([\w.+/-]+): ({NUM}) (\S+)$", text, re.MULTILINE)}
    for name, (v, unit) in figures.items():
        check(name, v, {"s": "s", "ms": "ms"}[unit])
    for key in ("gang_plan.n100.g4", "gang_plan.n100.g32", "best_node.n100"):
        assert figures[f"{key}.median"][0] <= figures[f"{key}.p99"][0], text
        assert f"{key}.cold" in figures and f"{key}.cpu_median" in figures, text
    assert re.search(r"^gang_plan\.n100\.g4: placed in node node-\d+ on 1 nodes$", text, re.MULTILINE), text
    assert re.search(r"^gang_plan\.n100\.g32: placed in rack r\d+ on \d+ nodes$", text, re.MULTILINE), text
    assert len(re.findall(r"^\| (plan_gang|best_node)", text, re.MULTILINE)) == 8, text  # 2 sizes x (3 gangs + 1)
