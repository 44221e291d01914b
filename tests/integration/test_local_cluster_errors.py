"""Bad input for the harness: no Go, a busy port, a stale directory from a killed run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from topodra_cli.localcluster import ClusterError, LocalCluster
from topodra_cli.localcluster.binaries import repo_root
from topodra_cli.localcluster.processes import pid_alive


def test_build_without_go_says_so(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TOPODRA_CACHE": str(tmp_path / "cache")}
    r = subprocess.run(["bash", str(repo_root() / "hack" / "build-k8s.sh")], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode != 0
    assert "no Go toolchain" in r.stderr


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ClusterError, match=f"127.0.0.1:{port} is busy"):
            LocalCluster(tmp_path / "c").up(apiserver_port=port, build=False)
    assert not list((tmp_path / "c" / "pids").glob("*.pid"))


@pytest.mark.cluster
def test_stale_dir_from_killed_run_is_recovered(cluster: LocalCluster, tmp_path: Path) -> None:
    # `cluster` only guarantees the binaries exist; this test runs its own small cluster.
    d = Path("/tmp/topodra") / f"stale-{os.getpid()}"
    first = LocalCluster(d)
    first.up(build=False)
    try:
        old = {n: first.procs.pid(n) for n in first.procs.names()}
        # A killed run: the apiserver dies, the rest is orphaned; state and pid files stay behind.
        os.kill(old["kube-apiserver"] or 0, signal.SIGKILL)
        # SIGKILL is delivered asynchronously: the test is about a dead run, so wait until it is dead.
        deadline = time.monotonic() + 10
        while pid_alive(old["kube-apiserver"] or 0) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = LocalCluster(d)
        second.up(build=False)
        assert second.is_running()
        for name, pid in old.items():
            assert pid is not None and not pid_alive(pid), f"stale {name} ({pid}) still running"
        # Running twice in the same dir is refused, not a second control plane.
        with pytest.raises(ClusterError, match="already running"):
            LocalCluster(d).up(build=False)
    finally:
        LocalCluster(d).down()
    assert not any(first.procs.running(n) for n in ("etcd", "kube-apiserver", "kube-scheduler"))
