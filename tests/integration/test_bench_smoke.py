"""Every benchmark still runs end to end (tiny sizes): a figure in docs/ must stay reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from topodra_cli.localcluster.binaries import repo_root

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

BENCH = repo_root() / "bench"


def _run(name: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, f"bench/{name}.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_driver_publish(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    _run("driver_publish", "--nodes", "20", "--runs", "1", "--json", str(out))
    r = json.loads(out.read_text())
    assert r["slices"] == 20 and r["publish_s"]["median"] > 0 and r["baseline_raw_create_s"]["median"] > 0
    assert r["sighup_to_converged_s"]["median"] > 0 and r["delete_to_recreated_s"]["median"] > 0


def test_driver_rss(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    _run("driver_rss", "--runs", "1", "--settle", "1", "--json", str(out))
    r = json.loads(out.read_text())
    assert 5 < r["python-baseline"]["rss_mib_median"] < r["file"]["rss_mib_median"] < r["file+plugin"]["rss_mib_median"]


def test_kubelet_plugin(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    _run("kubelet_plugin", "--rounds", "6", "--claims", "2", "--restarts", "1", "--parallel-claims", "4",
         "--json", str(out))
    r = json.loads(out.read_text())
    assert r["registered_s"] and r["rss_idle_mib"] > 0 and "1-device" in r


def test_extender_latency() -> None:
    text = _run("extender_latency", "--sizes", "200", "--requests", "5")
    assert "filter" in text and "prioritize" in text and "trivial" in text


def test_scheduler_throughput() -> None:
    text = _run("scheduler_throughput", "--nodes", "20", "--pods", "6")
    assert "pods/s" in text
