"""Hand the extender's port over to its replacement on the same node without a gap kube-scheduler can't cross.

With the cluster's own kube-scheduler (chart mode cluster) every pod passes through the extender,
including the pod that replaces a deleted or upgraded extender. If the old process stopped first, the
replacement could never be scheduled: kube-scheduler would wait for an extender that only that pod can
bring back. So the two overlap:

- the new process starts its watches and waits until its cache is synced, then says so in
  `<dir>/successor` and waits for `<dir>/lock` (an flock the serving process holds);
- the old one, told to stop, keeps serving until a successor says it is ready (or `grace` passes),
  then exits, which releases the lock; the new one takes it and binds the port.

The gap is one process exit and one bind. Only one process serves at a time, so the extender's state
(plans, held binds) is never split. The files are made by the chart's init container, writable by the
extender's non-root user; the directory is a hostPath shared by the old and the new pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from pathlib import Path

import structlog

LOCK = "lock"
SUCCESSOR = "successor"
POLL = 0.1

log = structlog.get_logger("topodra.extender.handover")


class Handover:
    def __init__(self, directory: Path, grace: float) -> None:
        self.dir = directory
        self.grace = grace
        self._fd: int | None = None

    def _open(self, name: str, flags: int) -> int:
        return os.open(self.dir / name, flags | os.O_CLOEXEC, 0o666)

    async def acquire(self) -> float:
        """Take the lock, announcing ourselves as successor while someone else holds it; seconds waited."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = self._open(LOCK, os.O_RDWR | os.O_CREAT)
        t0 = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    self._write_successor(f"{os.getpid()} {time.time():.3f}\n")
                    log.info("waiting_for_predecessor", dir=str(self.dir))
                    announced = True
                await asyncio.sleep(POLL)
        self._fd = fd
        self._write_successor("")
        waited = time.monotonic() - t0
        if announced:
            log.info("took_over", waited_seconds=round(waited, 3))
        return waited

    def _write_successor(self, text: str) -> None:
        fd = self._open(SUCCESSOR, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def successor_ready(self) -> bool:
        with contextlib.suppress(OSError):
            return bool((self.dir / SUCCESSOR).read_text().strip())
        return False

    async def wait_for_successor(self) -> bool:
        """Told to stop: keep serving until a successor is ready or the grace period ends."""
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            if self.successor_ready():
                log.info("successor_ready_handing_over")
                return True
            await asyncio.sleep(POLL)
        log.info("no_successor_within_grace", grace_seconds=self.grace)
        return False

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
