"""Start, record and stop the cluster's processes; every one has a pid file and a log file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class ClusterError(RuntimeError):
    """A failure the user can act on; the message says what and where the logs are."""


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] | None = None
    # Run through this prefix (e.g. `nsenter --mount=... --`, which execs argv): the pid file still names
    # argv[0], the program the pid will run, so stop() recognises it.
    wrap: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            raise ClusterError(f"port 127.0.0.1:{port} is busy ({e.strerror}); choose another or stop its owner") from e


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pids_by_cmdline(needle: str) -> Iterator[int]:
    """Every process on the machine whose command line contains `needle`."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and needle in pid_cmdline(int(p.name)):
            yield int(p.name)


class ProcessTable:
    """Pid files under `<dir>/pids`, logs under `<dir>/logs`."""

    def __init__(self, directory: Path) -> None:
        self.pids = directory / "pids"
        self.logs = directory / "logs"
        self.pids.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, spec: ProcessSpec) -> int:
        if not Path(spec.argv[0]).exists():
            raise ClusterError(f"{spec.name}: program {spec.argv[0]} not found")
        log = open(self.log_path(spec.name), "ab")  # noqa: SIM115 - handed to the child
        env = dict(os.environ)
        if spec.env:
            env.update(spec.env)
        try:
            proc = subprocess.Popen(
                [*spec.wrap, *spec.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                # Own session: Ctrl-C in the terminal reaches us, and we stop children in order.
                start_new_session=True,
            )
        finally:
            log.close()
        self._children[spec.name] = proc
        (self.pids / f"{spec.name}.pid").write_text(f"{proc.pid}\n{spec.argv[0]}\n")
        return proc.pid

    def pid(self, name: str) -> int | None:
        f = self.pids / f"{name}.pid"
        if not f.exists():
            return None
        try:
            return int(f.read_text().split()[0])
        except (ValueError, IndexError):
            return None

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and pid_alive(pid) and self._is_ours(name, pid)

    def _is_ours(self, name: str, pid: int) -> bool:
        # Guard against pid reuse after a reboot or a long pause: the program must match.
        f = self.pids / f"{name}.pid"
        lines = f.read_text().splitlines() if f.exists() else []
        program = lines[1] if len(lines) > 1 else ""
        return not program or program in pid_cmdline(pid)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.pids.glob("*.pid"))

    def stop(self, name: str, timeout: float = 30.0) -> None:
        pid = self.pid(name)
        if pid is not None and pid_alive(pid) and self._is_ours(name, pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and pid_alive(pid):
                self._reap(name)
                time.sleep(0.05)
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                while pid_alive(pid):
                    self._reap(name)
                    time.sleep(0.05)
        self._reap(name)
        (self.pids / f"{name}.pid").unlink(missing_ok=True)

    def _reap(self, name: str) -> None:
        proc = self._children.get(name)
        if proc is not None and proc.poll() is not None:
            self._children.pop(name, None)

    def exited(self, name: str) -> int | None:
        """Exit code of a child started by this table, None while it runs (or if not ours)."""
        proc = self._children.get(name)
        return None if proc is None else proc.poll()

    def tail(self, name: str, lines: int = 50) -> str:
        p = self.log_path(name)
        if not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])


def run_checked(argv: Sequence[str], what: str, timeout: float = 60) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise ClusterError(f"{what}: {argv[0]} not found") from e
    if out.returncode != 0:
        raise ClusterError(f"{what} failed ({out.returncode}): {out.stderr.strip()[-2000:]}")
    return out.stdout
