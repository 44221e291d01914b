"""Device state: claim -> devices -> CDI spec, with the checkpoint, per claim.

`DeviceState.prepare(ref)` and `.unprepare(ref)` are what the kubelet's NodePrepareResources and
NodeUnprepareResources do for one claim; they never raise for a claim's own problem, they return
its error text. Calls for one claim UID never interleave (striped locks); different claims run in
parallel. In rolling-update mode (two driver pods on one node) every call also holds the shared
`serialize.lock` flock and re-reads the checkpoint, so either pod may serve any claim.

What a claim's containers get is built in `driver.cdispec`; the locks are in `driver.locks`, the
metrics in `driver.pluginmetrics`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from driver.cdi import CdiError, CdiStore, check_uid
from driver.cdispec import DeviceEnv, build_spec
from driver.checkpoint import COMPLETED, STARTED, Checkpoint, ClaimEntry, LoadResult, PreparedDevice
from driver.claims import ClaimsApi, Result, allocation_results
from driver.locks import FileLock, StripedLocks
from driver.model import Gpu, Nic, NodeTopology
from driver.pluginmetrics import PluginMetrics
from kubeaccess.errors import ApiError

log = structlog.get_logger("topodra.kubeletplugin")

CRASH_POINTS = ("after-started", "after-cdi", "after-completed", "after-unprepare-cdi", "before-response")
_R = TypeVar("_R")


@dataclass(frozen=True)
class ClaimRef:
    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PrepareResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str = ""


class PrepareError(Exception):
    """A claim cannot be prepared; the message goes to the kubelet as the claim's error."""


@dataclass
class DeviceStateConfig:
    driver: str
    node_name: str
    boot_id: str
    dev: DeviceEnv = field(default_factory=DeviceEnv)
    serialize_lock: Path | None = None  # rolling update: flock shared with the other pod
    write_nic_status: bool = True
    crash_at: str | None = None  # test-only fault injection (TOPODRA_CRASH_AT)


class DeviceState:
    def __init__(
        self,
        cfg: DeviceStateConfig,
        topology: Callable[[], NodeTopology],
        api: ClaimsApi,
        cdi: CdiStore,
        checkpoint: Checkpoint,
        metrics: PluginMetrics | None = None,
    ) -> None:
        self.cfg = cfg
        self.topology = topology
        self.api = api
        self.cdi = cdi
        self.checkpoint = checkpoint
        self.metrics = metrics or PluginMetrics()
        self._locks = StripedLocks()
        self._shared: AbstractContextManager[None] | None = (
            FileLock(cfg.serialize_lock) if cfg.serialize_lock is not None else None
        )
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="topodra-claim")
        # NIC status writes are for DRA networking consumers, not the kubelet: off the prepare path.
        self._status_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="topodra-status")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._status_pool.shutdown(wait=True)

    @contextlib.contextmanager
    def _claim_lock(self, uid: str) -> Iterator[None]:
        with self._locks.hold(uid):
            if self._shared is None:
                yield
                return
            with self._shared:
                self.checkpoint.reload()
                yield

    def node_event(self, reason: str, message: str) -> None:
        """Best effort: a Warning Event on this node; never fails the caller."""
        try:
            self.api.node_event(self.cfg.node_name, reason, message)
        except Exception as e:
            log.warning("node_event_failed", reason=reason, error=str(e))

    def crash_point(self, point: str) -> None:
        if self.cfg.crash_at == point:
            log.warning("crash_injected", point=point)
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- start-up ------------------------------------------------------------------------------------
    def recover(self) -> LoadResult:
        """Load the checkpoint and make the CDI directory agree with it (see module docs of checkpoint)."""
        ctx = self._shared if self._shared is not None else contextlib.nullcontext()
        with ctx:
            res = self.checkpoint.load()
            boot = self.cfg.boot_id
            if res.corrupt_reason is not None:
                self.metrics.checkpoint_corrupt.inc()
                rebuilt = [
                    ClaimEntry(uid=uid, namespace="", name="", state=COMPLETED, boot_id=boot, recovered=True)
                    for uid in self.cdi.claim_uids()
                ]
                log.error(
                    "checkpoint_corrupt",
                    path=str(self.checkpoint.path),
                    reason=res.corrupt_reason,
                    moved_to=str(res.moved_to),
                    recovered_claims=[e.uid for e in rebuilt],
                )
                self.checkpoint.put_many(rebuilt)
                self.node_event(
                    "CheckpointCorrupt",
                    f"{self.cfg.driver} kubelet plugin: checkpoint {self.checkpoint.path} was unusable "
                    f"({res.corrupt_reason}); moved to {res.moved_to}; {len(rebuilt)} prepared claims recovered "
                    "from CDI specs",
                )
            if res.previous_boot_id is not None and res.previous_boot_id != boot:
                stale = list(self.cdi.claim_uids())
                for uid in stale:
                    self.cdi.remove(uid)
                log.info("reboot_detected", previous_boot_id=res.previous_boot_id, removed_cdi_specs=stale)
            entries = self.checkpoint.entries()
            known = {e.uid for e in entries}
            for e in entries:
                if e.state == STARTED:
                    self.cdi.remove(e.uid)
                    self.checkpoint.delete(e.uid)
                    log.info("prepare_rolled_back", claim_uid=e.uid, claim=f"{e.namespace}/{e.name}")
            for uid in list(self.cdi.claim_uids()):
                if uid not in known:
                    self.cdi.remove(uid)
                    log.info("orphan_cdi_spec_removed", claim_uid=uid)
            self.cdi.remove_temp_files()
            self.checkpoint.save()
            self.metrics.prepared.set(len(self.checkpoint.entries()))
            log.info(
                "checkpoint_loaded",
                path=str(self.checkpoint.path),
                claims=len(self.checkpoint.entries()),
                boot_id=boot,
            )
            return res

    # ---- batch ---------------------------------------------------------------------------------------
    def prepare_many(self, refs: Sequence[ClaimRef]) -> dict[str, PrepareResult]:
        return self._many(self.prepare, refs)

    def unprepare_many(self, refs: Sequence[ClaimRef]) -> dict[str, str]:
        return self._many(self.unprepare, refs)

    def _many(self, fn: Callable[[ClaimRef], _R], refs: Sequence[ClaimRef]) -> dict[str, _R]:
        if len(refs) <= 1:
            return {r.uid: fn(r) for r in refs}
        futures = [(r.uid, self._pool.submit(fn, r)) for r in refs]
        return {uid: f.result() for uid, f in futures}

    # ---- prepare -------------------------------------------------------------------------------------
    def prepare(self, ref: ClaimRef) -> PrepareResult:
        t0 = time.perf_counter()
        try:
            check_uid(ref.uid)
            with self._claim_lock(ref.uid):
                devices = self._prepare_locked(ref)
            self.metrics.claims.labels("prepare", "ok").inc()
            return PrepareResult(devices=devices)
        except (PrepareError, CdiError) as e:
            self.metrics.claims.labels("prepare", "error").inc()
            log.warning("prepare_failed", claim=str(ref), claim_uid=ref.uid, error=str(e))
            return PrepareResult(error=str(e))
        except Exception as e:  # a bug or an I/O error must not take the batch down
            self.metrics.claims.labels("prepare", "error").inc()
            log.exception("prepare_crashed", claim=str(ref), claim_uid=ref.uid)
            return PrepareResult(error=f"prepare claim {ref}: internal error: {type(e).__name__}: {e}")
        finally:
            self.metrics.seconds.labels("prepare").observe(time.perf_counter() - t0)

    def _prepare_locked(self, ref: ClaimRef) -> tuple[PreparedDevice, ...]:
        cfg = self.cfg
        entry = self.checkpoint.get(ref.uid)
        if (
            entry is not None
            and entry.state == COMPLETED
            and not entry.recovered
            and entry.boot_id == cfg.boot_id
            and self.cdi.exists(ref.uid)
        ):
            log.debug("prepare_repeat", claim=str(ref), claim_uid=ref.uid)
            return entry.devices
        t_api = time.perf_counter()
        try:
            claim = self.api.get_claim(ref.namespace, ref.name)
        except ApiError as e:
            raise PrepareError(f"retrieve claim {ref}: {e}") from None
        api_ms = (time.perf_counter() - t_api) * 1e3
        uid = (claim.get("metadata") or {}).get("uid")
        if uid != ref.uid:
            raise PrepareError(f"claim {ref} got replaced (UID {uid}, expected {ref.uid})")
        results = allocation_results(claim)
        if results is None:
            raise PrepareError(f"claim {ref} not allocated")
        ours = [r for r in results if r.driver == cfg.driver]
        topo = self.topology()
        named = topo.named_devices()
        picked: list[tuple[Result, Gpu | Nic]] = []
        for r in ours:
            if r.pool != cfg.node_name:
                raise PrepareError(f"claim {ref}: device {r.pool}/{r.device} is not in this node's pool")
            d = named.get(r.device)
            if d is None:
                raise PrepareError(f"claim {ref}: unknown device {r.pool}/{r.device}")
            picked.append((r, d))
        spec, cdi_names = build_spec(self.cdi.kind, ref.uid, [(r.device, d) for r, d in picked], cfg.dev)
        devices = tuple(
            PreparedDevice(
                request_names=(r.request_name,),
                pool_name=r.pool,
                device_name=r.device,
                cdi_device_ids=(spec.qualified(cdi_names[r.device]),),
                share_id=r.share_id,
            )
            for r, _ in picked
        )
        if entry is not None:  # started before a crash, stale after a reboot, or rebuilt: start over
            self.cdi.remove(ref.uid)
        if not devices:  # nothing of ours in the claim: nothing to set up, nothing to remember
            if entry is not None:
                self.checkpoint.delete(ref.uid)
            return ()
        started = ClaimEntry(ref.uid, ref.namespace, ref.name, STARTED, cfg.boot_id, devices)
        t_write = time.perf_counter()
        self.checkpoint.put(started, durable=False)
        self.crash_point("after-started")
        try:
            self.cdi.write(ref.uid, spec)
            t_cdi = time.perf_counter()
        except OSError as e:
            self.cdi.remove(ref.uid)
            self.checkpoint.delete(ref.uid)
            raise PrepareError(f"claim {ref}: write CDI spec: {e}") from None
        self.crash_point("after-cdi")
        self.checkpoint.put(started.with_state(COMPLETED))
        t_done = time.perf_counter()
        self.metrics.prepared.set(len(self.checkpoint.entries()))
        self.crash_point("after-completed")
        log.info(
            "claim_prepared",
            claim=str(ref),
            claim_uid=ref.uid,
            devices=[d.device_name for d in devices],
            cdi_spec=str(self.cdi.path(ref.uid)),
            api_ms=round(api_ms, 2),
            cdi_ms=round((t_cdi - t_write) * 1e3, 2),
            checkpoint_ms=round((t_done - t_cdi) * 1e3, 2),
        )
        if cfg.write_nic_status and any(isinstance(d, Nic) for _, d in picked):
            self._status_pool.submit(self._write_nic_status, ref, picked)
        return devices

    def _write_nic_status(self, ref: ClaimRef, picked: Sequence[tuple[Result, Gpu | Nic]]) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        entries = []
        for r, d in picked:
            if not isinstance(d, Nic):
                continue
            e: dict[str, Any] = {
                "driver": r.driver,
                "pool": r.pool,
                "device": r.device,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "Prepared",
                        "message": "prepared by the kubelet plugin",
                        "lastTransitionTime": now,
                    }
                ],
                "networkData": {
                    k: v for k, v in (("interfaceName", d.if_name), ("hardwareAddress", d.mac)) if v
                },
            }
            if r.share_id is not None:
                e["shareID"] = r.share_id
            entries.append(e)
        if not entries:
            return
        try:
            self.api.apply_device_status(ref.namespace, ref.name, entries, field_manager=self.cfg.driver)
            log.debug("claim_status_written", claim=str(ref), devices=[e["device"] for e in entries])
        except Exception as e:
            self.metrics.status_failures.inc()
            log.warning("claim_status_write_failed", claim=str(ref), claim_uid=ref.uid, error=str(e))

    # ---- unprepare -----------------------------------------------------------------------------------
    def unprepare(self, ref: ClaimRef) -> str:
        t0 = time.perf_counter()
        try:
            try:
                check_uid(ref.uid)
            except CdiError:  # we never prepared such a claim: nothing to undo
                log.info("claim_unprepare_unknown", claim=str(ref), claim_uid=ref.uid)
                return ""
            with self._claim_lock(ref.uid):
                entry = self.checkpoint.get(ref.uid)
                removed = self.cdi.remove(ref.uid)
                self.crash_point("after-unprepare-cdi")
                if entry is not None:
                    self.checkpoint.delete(ref.uid)
                    self.metrics.prepared.set(len(self.checkpoint.entries()))
            if entry is not None or removed:
                log.info("claim_unprepared", claim=str(ref), claim_uid=ref.uid)
            else:
                log.info("claim_unprepare_unknown", claim=str(ref), claim_uid=ref.uid)
            self.metrics.claims.labels("unprepare", "ok").inc()
            return ""
        except CdiError as e:
            self.metrics.claims.labels("unprepare", "error").inc()
            return str(e)
        except Exception as e:
            self.metrics.claims.labels("unprepare", "error").inc()
            log.exception("unprepare_crashed", claim=str(ref), claim_uid=ref.uid)
            return f"unprepare claim {ref}: {type(e).__name__}: {e}"
        finally:
            self.metrics.seconds.labels("unprepare").observe(time.perf_counter() - t0)
