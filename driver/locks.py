"""Locks for claim calls: per-claim stripes inside the process, a flock between two driver pods."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

LOCK_STRIPES = 64


class FileLock(AbstractContextManager[None]):
    """An exclusive flock on a path, a new open file each time (so threads exclude each other too)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._local.fd = fd

    def __exit__(self, *exc: object) -> None:
        fd = self._local.fd
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class StripedLocks:
    def __init__(self, n: int = LOCK_STRIPES) -> None:
        self._locks = tuple(threading.Lock() for _ in range(n))

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        lock = self._locks[hash(key) % len(self._locks)]
        with lock:
            yield
