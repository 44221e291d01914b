"""`topodra demo` as a user runs it: its own cluster, the driver, the extender, a packed job, clean teardown."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from topodra_cli.localcluster.processes import pid_cmdline

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _processes_under(directory: Path) -> list[str]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and int(p.name) != os.getpid():
            cmd = pid_cmdline(int(p.name))
            if str(directory) in cmd:
                found.append(cmd)
    return found


def test_demo_runs_and_cleans_up(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "topodra_cli.main", "demo", "--dir", str(d)],
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    placed = dict(re.findall(r"^(train-\d)\s+\S+\s+\S+\s+\d+\s+\S+\s+\S+\s+(demo-\d{4})", r.stdout, re.M))
    assert len(placed) == 4, r.stdout
    # The demo topology puts demo-0000/0001 in rack-0 and demo-0002/0003 in rack-1: one job, one rack.
    racks = {int(n[-4:]) // 2 for n in placed.values()}
    assert len(racks) == 1, placed
    # Each node holds two of the pods, each on its own NUMA half (gpu-0..3 + nic-0,1 or gpu-4..7 + nic-2,3).
    halves = re.findall(r"^train-\d-c0-\S+\s+(demo-\d{4})\s+(\S+)$", r.stdout, re.M)
    assert sorted(devs for _, devs in halves) == sorted(
        ["gpu-0,gpu-1,gpu-2,gpu-3,nic-0,nic-1", "gpu-4,gpu-5,gpu-6,gpu-7,nic-2,nic-3"] * 2
    ), halves
    assert "cannot allocate all claims" in r.stdout
    assert 'topodra_extender_request_duration_seconds_count{verb="filter"}' in r.stdout
    assert _processes_under(d) == []
