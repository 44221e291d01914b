"""The driver's record of prepared claims, on disk: `<state dir>/checkpoint.json`.

Versioned, checksummed (sha256 over the canonical JSON of the payload) and stamped with the boot id
of the machine that wrote it, replaced atomically on every change. Each claim entry says whether
preparing it started or completed, which devices it got and which CDI ids were returned, so that
repeats answer the same, unprepare works without the API, and a crash half-way can be rolled back.

A file that cannot be read or whose checksum is wrong is moved aside (`checkpoint.json.corrupt-<ts>`)
and reported; the caller rebuilds what it can from the CDI spec files, so no claim is forgotten
silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from driver.cdi import atomic_write

VERSION = 1
KIND = "TopodraCheckpoint"
STARTED = "PrepareStarted"
COMPLETED = "PrepareCompleted"
DEFAULT_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class CheckpointCorrupt(Exception):
    """The checkpoint file exists but cannot be trusted."""


@dataclass(frozen=True)
class PreparedDevice:
    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requestNames": list(self.request_names),
            "poolName": self.pool_name,
            "deviceName": self.device_name,
            "cdiDeviceIDs": list(self.cdi_device_ids),
        }
        if self.share_id is not None:
            out["shareID"] = self.share_id
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PreparedDevice:
        share = d.get("shareID")
        return cls(
            request_names=tuple(str(x) for x in d.get("requestNames") or ()),
            pool_name=str(d["poolName"]),
            device_name=str(d["deviceName"]),
            cdi_device_ids=tuple(str(x) for x in d.get("cdiDeviceIDs") or ()),
            share_id=None if share is None else str(share),
        )


@dataclass(frozen=True)
class ClaimEntry:
    uid: str
    namespace: str
    name: str
    state: str
    boot_id: str
    devices: tuple[PreparedDevice, ...] = ()
    # Rebuilt from a CDI spec after the checkpoint was lost: devices are not trusted, the next
    # prepare redoes the claim from the API; unprepare works.
    recovered: bool = False
    updated: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "name": self.name,
            "state": self.state,
            "bootID": self.boot_id,
            "devices": [d.to_json() for d in self.devices],
            "updated": round(self.updated, 3),
        }
        if self.recovered:
            out["recovered"] = True
        return out

    @classmethod
    def from_json(cls, uid: str, d: Mapping[str, Any]) -> ClaimEntry:
        state = str(d["state"])
        if state not in (STARTED, COMPLETED):
            raise ValueError(f"claim {uid}: unknown state {state!r}")
        return cls(
            uid=uid,
            namespace=str(d.get("namespace", "")),
            name=str(d.get("name", "")),
            state=state,
            boot_id=str(d.get("bootID", "")),
            devices=tuple(PreparedDevice.from_json(x) for x in d.get("devices") or ()),
            recovered=bool(d.get("recovered", False)),
            updated=float(d.get("updated", 0.0)),
        )

    def with_state(self, state: str) -> ClaimEntry:
        return replace(self, state=state, updated=time.time())


def read_boot_id(path: Path = DEFAULT_BOOT_ID_FILE) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _checksum(payload: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def encode(boot_id: str, entries: Iterable[ClaimEntry]) -> bytes:
    payload = {"version": VERSION, "bootID": boot_id, "claims": {e.uid: e.to_json() for e in entries}}
    doc = {"kind": KIND, **payload, "checksum": _checksum(payload)}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def decode(data: bytes) -> tuple[str, dict[str, ClaimEntry]]:
    """(boot id of the writer, entries); CheckpointCorrupt when the bytes cannot be trusted."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CheckpointCorrupt(f"not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise CheckpointCorrupt(f"not a {KIND} document")
    if doc.get("version") != VERSION:
        raise CheckpointCorrupt(f"unsupported version {doc.get('version')!r} (want {VERSION})")
    payload = {"version": doc.get("version"), "bootID": doc.get("bootID"), "claims": doc.get("claims")}
    if doc.get("checksum") != _checksum(payload):
        raise CheckpointCorrupt("checksum mismatch")
    claims = doc.get("claims")
    if not isinstance(claims, dict):
        raise CheckpointCorrupt("claims is not an object")
    try:
        entries = {str(uid): ClaimEntry.from_json(str(uid), c) for uid, c in claims.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointCorrupt(f"bad claim entry: {e}") from e
    return str(doc.get("bootID") or ""), entries


@dataclass
class LoadResult:
    previous_boot_id: str | None  # None: no file
    corrupt_reason: str | None = None
    moved_to: Path | None = None


class Checkpoint:
    """In-memory view of the file; every change is persisted before it returns."""

    def __init__(self, path: Path, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id
        self._entries: dict[str, ClaimEntry] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._version = 0  # of the in-memory view
        self._written_version = 0  # latest version in the file
        self._durable_version = 0  # latest version fsynced

    def load(self) -> LoadResult:
        """Read the file; a corrupt one is moved aside and reported, leaving an empty view."""
        with self._lock:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                self._entries = {}
                return LoadResult(previous_boot_id=None)
            try:
                prev, entries = decode(data)
            except CheckpointCorrupt as e:
                moved = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time() * 1000)}")
                with contextlib.suppress(OSError):
                    self.path.replace(moved)
                self._entries = {}
                return LoadResult(previous_boot_id=None, corrupt_reason=str(e), moved_to=moved)
            self._entries = entries
            return LoadResult(previous_boot_id=prev)

    def reload(self) -> None:
        """Re-read after another process (rolling update) may have written; keep the view if unreadable."""
        with self._lock:
            try:
                _, entries = decode(self.path.read_bytes())
            except (FileNotFoundError, CheckpointCorrupt):
                return
            self._entries = entries

    def get(self, uid: str) -> ClaimEntry | None:
        with self._lock:
            return self._entries.get(uid)

    def entries(self) -> list[ClaimEntry]:
        with self._lock:
            return list(self._entries.values())

    def put(self, entry: ClaimEntry, durable: bool = True) -> None:
        """Record `entry`. Not `durable` is for PrepareStarted markers: a process crash keeps them (page
        cache), and a power loss that drops one is a reboot, after which stale specs are removed anyway."""
        self._change(lambda d: d.__setitem__(entry.uid, entry), durable)

    def put_many(self, entries: Iterable[ClaimEntry]) -> None:
        items = list(entries)
        self._change(lambda d: d.update({e.uid: e for e in items}), True)

    def delete(self, uid: str) -> bool:
        with self._lock:
            if uid not in self._entries:
                return False
        self._change(lambda d: d.pop(uid, None), True)
        return True

    def save(self) -> None:
        self._change(lambda d: None, True)

    def _change(self, mutate: Callable[[dict[str, ClaimEntry]], object], durable: bool) -> None:
        """Apply in memory, then make sure a write covering this change reached the disk.

        Group commit: while one thread writes the file, others queue their changes; the next write
        carries all of them, so parallel prepares share fsyncs instead of taking turns.
        """
        with self._lock:
            new = dict(self._entries)
            mutate(new)
            self._entries = new
            self._version += 1
            version = self._version
        with self._flush_lock:
            if (self._durable_version if durable else self._written_version) >= version:
                return
            with self._lock:
                snapshot, snap_version = self._entries, self._version
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, encode(self.boot_id, snapshot.values()), mode=0o600, durable=durable)
            self._written_version = max(self._written_version, snap_version)
            if durable:
                self._durable_version = max(self._durable_version, snap_version)
