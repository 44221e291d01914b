"""Run the bench/ scripts one after another, each with `--json`, and record the machine as each one starts.

Each script keeps printing its own figures (echoed here with its name in front); what the report uses is the
JSON it writes plus a `<key>.meta.json` beside it (command, machine, load, wall time, exit status), so a report
can be rendered again later from the same directory without running anything (`bench/report.py --render-only`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LOGS = Path("/tmp/topodra/bench-logs")  # default home of each script's whole output (results/ is committed)
Json = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """One benchmark invocation: `bench/<script>.py <args>`; `quick` replaces `args` for smoke runs."""

    key: str
    script: str
    args: tuple[str, ...]
    quick: tuple[str, ...]
    what: str


# In the order they run and appear. Full sizes are picked so that the whole run takes 20-30 minutes on the
# project's 2-core machine; the quick sizes are the smoke test's (a few seconds each, plus cluster start-ups).
SPECS: tuple[Spec, ...] = (
    Spec("gang_planner", "gang_planner",
         ("--nodes", "1000,2500,5000", "--gangs", "16,64,256,1024", "--repeats", "30", "--pods", "200"),
         ("--nodes", "100,300", "--gangs", "4,16,32", "--repeats", "3", "--pods", "4"),
         "gang plan time against gang size (in process)"),
    Spec("extender_latency", "extender_latency",
         ("--sizes", "500,1000,2500,5000,10000", "--requests", "200"),
         ("--sizes", "100,200", "--requests", "5"),
         "extender filter/prioritize latency against node count"),
    Spec("driver_rss", "driver_rss", ("--runs", "3", "--settle", "5"), ("--runs", "1", "--settle", "1"),
         "resident memory of a one-node driver"),
    Spec("kubelet_plugin", "kubelet_plugin",
         ("--rounds", "300", "--claims", "20", "--restarts", "5", "--parallel-claims", "256"),
         ("--rounds", "6", "--claims", "2", "--restarts", "1", "--parallel-claims", "4"),
         "NodePrepareResources latency, registration, memory"),
    Spec("driver_publish", "driver_publish", ("--nodes", "1000", "--runs", "3"), ("--nodes", "20", "--runs", "1"),
         "publishing a fleet's ResourceSlices"),
    Spec("scheduler_throughput", "scheduler_throughput",
         # (c) forces kube-scheduler to 100 % of the nodes: minutes per row at 5,000 nodes, so only at 1,000.
         ("--nodes", "1000,5000", "--pods", "100", "--rows", "1000=a,c,b,a;5000=a,b", "--repeats", "2"),
         ("--nodes", "20", "--pods", "6", "--rows", "a,c,b,a"),
         "kube-scheduler throughput with and without topodra"),
    Spec("gang_throughput", "gang_throughput", ("--nodes", "1000", "--gang-size", "256", "--repeats", "2"),
         ("--nodes", "20", "--gang-size", "12"),
         "one gang through kube-scheduler against plain pods"),
)


@dataclass(frozen=True)
class Machine:
    """What the figures depend on: the machine, how busy it was, and which code ran."""

    cores: int
    memory_gib: float
    cpu_model: str
    load: tuple[float, float, float]
    date: str
    revision: str

    @classmethod
    def now(cls) -> Machine:
        mem_kib, model = 0, "unknown"
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        la = os.getloadavg()
        return cls(os.cpu_count() or 0, round(mem_kib / 1024 / 1024, 1), model, (la[0], la[1], la[2]),
                   dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), revision())

    def describe(self) -> str:
        load = " / ".join(f"{x:.2f}" for x in self.load)
        return (f"{self.cores} cores ({self.cpu_model}), {self.memory_gib:.1f} GiB memory, "
                f"load average (1 / 5 / 15 min) at start {load}")


def revision() -> str:
    """HEAD, and whether the measured code had uncommitted changes (the tree is shared with other work)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "driver",
                                "scheduler_plugin", "kubeaccess", "topodra_cli", "bench"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    where = sorted({line[3:].split("/", 1)[0] for line in dirty.splitlines() if line.strip()})
    return f"{head} + uncommitted changes in {', '.join(where)}" if where else head


@dataclass
class Outcome:
    """One script's run: its command, the machine at its start, and what it wrote (None if it failed)."""

    key: str
    script: str
    command: str
    machine: Machine
    wall_s: float
    rc: int
    load_end: tuple[float, float, float]
    data: Json | None = field(default=None, repr=False)
    log_tail: str = ""
    retried: str = ""  # why the first attempt was discarded, if there was one

    def meta(self) -> Json:
        d = asdict(self)
        d.pop("data")
        return d

    @classmethod
    def load(cls, meta_path: Path) -> Outcome:
        d = json.loads(meta_path.read_text())
        m = d.pop("machine")
        out = cls(**{**d, "machine": Machine(**{**m, "load": tuple(m["load"])}), "load_end": tuple(d["load_end"])})
        data_path = meta_path.with_name(f"{out.key}.json")
        if out.rc == 0 and data_path.exists():
            out.data = json.loads(data_path.read_text())
        return out


def run_one(spec: Spec, quick: bool, results: Path, timeout_s: float, logs: Path = LOGS) -> Outcome:
    args = spec.quick if quick else spec.args
    command = " ".join(["bench/" + spec.script + ".py", *(shlex.quote(a) for a in args)])
    data_path = results / f"{spec.key}.json"
    data_path.unlink(missing_ok=True)
    machine = Machine.now()
    print(f"\n##### {command}   [{machine.date}; load {machine.load[0]:.2f}]", flush=True)
    tail: list[str] = []
    t0 = time.monotonic()
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{spec.key}.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / f"{spec.script}.py"), *args,
                                 "--json", str(data_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        # SIGINT first (the scripts tear their clusters down in `finally` blocks), SIGKILL a minute later.
        timers = [threading.Timer(timeout_s, proc.send_signal, (signal.SIGINT,)),
                  threading.Timer(timeout_s + 60, proc.kill)]
        for t in timers:
            t.daemon = True
            t.start()
        try:
            for line in proc.stdout:
                log.write(line)
                print(f"[{spec.key}] {line}", end="", flush=True)
                tail = [*tail[-59:], line.rstrip("\n")]
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            raise
        finally:
            for t in timers:
                t.cancel()
        if time.monotonic() - t0 > timeout_s:
            tail.append(f"(stopped after {time.monotonic() - t0:.0f} s: the limit is {timeout_s:.0f} s)")
    la = os.getloadavg()
    out = Outcome(spec.key, spec.script, command, machine, round(time.monotonic() - t0, 1), rc,
                  (la[0], la[1], la[2]), log_tail="\n".join(tail[-30:]))
    if rc == 0 and data_path.exists():
        out.data = json.loads(data_path.read_text())
    elif rc == 0:
        out.rc, out.log_tail = 1, out.log_tail + f"\n(no JSON written to {data_path})"
    (results / f"{spec.key}.meta.json").write_text(json.dumps(out.meta(), indent=1) + "\n")
    return out


class LoadSampler:
    """The 1-minute load average every `every` seconds while the benchmarks run: how busy the shared machine was."""

    def __init__(self, every: float = 15.0) -> None:
        self.samples: list[float] = []
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="load-sampler")

    def _run(self) -> None:
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self._every):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# A failure this early is a start-up failure (a port taken by another cluster on a shared machine, say): one
# more attempt costs little. A later failure is reported as it is.
RETRY_WITHIN_S = 120.0


def run_all(specs: list[Spec], quick: bool, results: Path, timeout_s: float, logs: Path = LOGS) -> list[Outcome]:
    results.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for s in specs:
        o = run_one(s, quick, results, timeout_s, logs)
        if o.rc != 0 and o.wall_s < RETRY_WITHIN_S:
            last = next((ln for ln in reversed(o.log_tail.splitlines()) if ln.strip()), "")
            first_s = o.wall_s
            print(f"##### {s.key} failed after {first_s:.0f} s; trying once more", flush=True)
            o = run_one(s, quick, results, timeout_s, logs)
            o.retried = f"the first attempt failed after {first_s:.0f} s: {last[:300]}"
            (results / f"{s.key}.meta.json").write_text(json.dumps(o.meta(), indent=1) + "\n")
        outcomes.append(o)
    return outcomes


def load_all(specs: list[Spec], results: Path) -> list[Outcome]:
    return [Outcome.load(results / f"{s.key}.meta.json") for s in specs if (results / f"{s.key}.meta.json").exists()]
