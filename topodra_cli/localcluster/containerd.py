"""One real node's containerd 2.x: the pinned build, its config, start, `ctr`, and emptying it on stop.

Its root, state, runc root and sockets all live under `<node dir>/containerd`. The traps the config
works around are listed in docs/e2e.md: no CAP_SYS_RESOURCE, no registry (a pinned local sandbox
image), no pod network, and the gRPC address taken only from `--address`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from topodra_cli.localcluster.binaries import cache_root, ensure_built
from topodra_cli.localcluster.images import PAUSE_IMAGE
from topodra_cli.localcluster.processes import ClusterError, ProcessSpec, ProcessTable, pid_cmdline, pids_by_cmdline

CONTAINERD_VERSION = "v2.4.2"
CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
NAMESPACE = "k8s.io"  # the CRI plugin's containerd namespace


def containerd_bin_dir(version: str = CONTAINERD_VERSION) -> Path:
    return cache_root() / "containerd" / version / "bin"


def ensure_containerd(version: str = CONTAINERD_VERSION, build: bool = True) -> Path:
    """The bin dir of the pinned containerd; built with hack/build-containerd.sh when missing."""
    return ensure_built(f"containerd {version}", containerd_bin_dir(version), CONTAINERD_BINARIES,
                        "build-containerd.sh", {"TOPODRA_CONTAINERD_VERSION": version}, build)


def cni_bin_dirs() -> list[str]:
    """The CNI plugin dirs of this machine that hold the loopback plugin (the only one pods use)."""
    return [c for c in CNI_BIN_DIRS if Path(c, "loopback").exists()]


@dataclass(frozen=True)
class Containerd:
    node_dir: Path
    version: str = CONTAINERD_VERSION

    @property
    def dir(self) -> Path:
        return self.node_dir / "containerd"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def bin_dir(self) -> Path:
        return containerd_bin_dir(self.version)

    @property
    def cdi_dir(self) -> Path:
        """Where containerd reads CDI specs (the driver writes them there)."""
        return self.node_dir / "cdi"

    @property
    def cni_conf_dir(self) -> Path:
        return self.node_dir / "cni" / "net.d"

    def config(self) -> str:
        d = self.dir
        q = json.dumps  # TOML basic strings are JSON strings for these paths
        return f"""version = 4
root = {q(str(d / "root"))}
state = {q(str(d / "state"))}

[plugins]
  # Version 4 keeps the server addresses in plugins; start with --address all the same (docs/e2e.md).
  [plugins.'io.containerd.server.v1.grpc']
    address = {q(str(self.socket))}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = {q(str(self.socket) + ".ttrpc")}
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {q(PAUSE_IMAGE)}
  [plugins.'io.containerd.cri.v1.runtime']
    # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails in runc.
    restrict_oom_score_adj = true
    cdi_spec_dirs = [{q(str(self.cdi_dir))}]
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{", ".join(q(c) for c in cni_bin_dirs())}]
      conf_dir = {q(str(self.cni_conf_dir))}
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = {q(str(d / "runc"))}
  [plugins.'io.containerd.internal.v1.opt']
    path = {q(str(d / "opt"))}
  [plugins.'io.containerd.nri.v1.nri']
    # NRI's socket is machine-global (/var/run/nri/nri.sock); a second containerd would clash.
    disable = true
"""

    def start(self, procs: ProcessTable, deadline: float, wrap: tuple[str, ...] = ()) -> None:
        """Write the config and the loopback CNI network, start containerd, wait until `ctr` gets an answer."""
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (self.cni_conf_dir / "10-loopback.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "topodra-loopback", "plugins": [{"type": "loopback"}],
        }, indent=2))
        cfg = self.dir / "config.toml"
        cfg.write_text(self.config())
        path = f"{self.bin_dir}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        procs.start(ProcessSpec("containerd", (
            str(self.bin_dir / "containerd"), "--config", str(cfg), "--address", str(self.socket),
        ), env={"PATH": path}, wrap=wrap))
        last = ""
        while time.monotonic() < deadline:
            code = procs.exited("containerd")
            if code is not None:
                raise ClusterError(f"containerd exited with code {code} during start; log "
                                   f"{procs.log_path('containerd')}:\n{procs.tail('containerd', 30)}")
            if self.socket.exists():
                out = self.ctr("version", check=False)
                if out.returncode == 0:
                    return
                last = out.stderr.strip()
            time.sleep(0.1)
        raise ClusterError(f"containerd not serving on {self.socket} ({last}); log "
                           f"{procs.log_path('containerd')}:\n{procs.tail('containerd', 30)}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this containerd in the CRI namespace."""
        argv = [str(self.bin_dir / "ctr"), "--address", str(self.socket), "-n", NAMESPACE, *args]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if check and out.returncode != 0:
            raise ClusterError(f"ctr {' '.join(args)} failed: {out.stderr.strip()[-1500:]}")
        return out

    def tasks(self) -> list[str]:
        return [t.strip() for t in self.ctr("tasks", "ls", "-q", check=False).stdout.splitlines() if t.strip()]

    def kill_tasks(self) -> None:
        """Stopping containerd does not stop containers: kill and delete every task first."""
        if not (self.bin_dir / "ctr").exists():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            tasks = self.tasks()
            for t in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", t, check=False, timeout=30)
            deadline = time.monotonic() + 10
            for t in tasks:
                while self.ctr("tasks", "delete", t, check=False, timeout=30).returncode != 0:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
            for t in tasks:
                self.ctr("tasks", "delete", "--force", t, check=False, timeout=30)

    def kill_shims(self) -> None:
        """Shims of this containerd (their command line names its socket) that outlived it."""
        for pid in pids_by_cmdline(f"-address {self.socket} "):
            if "containerd-shim" in pid_cmdline(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
