"""`topodra extender`: run the scheduler extender; `topodra extender print-scheduler-config`."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

from scheduler_plugin.schedconfig import SchedulerSettings, SettingsError, render


def register(sub: Any) -> None:
    env = os.environ.get
    p: argparse.ArgumentParser = sub.add_parser(
        "extender", help="run the scheduler extender (filter and prioritize over HTTP(S))",
        description="Serve kube-scheduler's extender verbs from a watch-fed cache of nodes, pods and DRA objects.")
    p.add_argument("--listen", default=env("TOPODRA_EXTENDER_LISTEN", "0.0.0.0"), help="address to listen on")
    p.add_argument("--port", type=int, default=int(env("TOPODRA_EXTENDER_PORT", "8443")), help="port")
    p.add_argument("--tls-cert", type=Path, default=None, help="serving certificate (PEM); without it: plain HTTP")
    p.add_argument("--tls-key", type=Path, default=None, help="private key of --tls-cert")
    p.add_argument("--client-ca", type=Path, default=None,
                   help="require client certificates signed by this CA for filter/prioritize")
    p.add_argument("--config", type=Path, default=None, help="YAML config (levels, weights); see docs/extender.md")
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="kubeconfig; default in-cluster")
    p.add_argument("--context", default=None, help="kubeconfig context (default: its current-context)")
    p.add_argument("--log-level", default=env("TOPODRA_LOG_LEVEL", "info"))
    p.add_argument("--steer", action=argparse.BooleanOptionalAction, default=True,
                   help="plan each pending pod's node from the cache and nominate it (status.nominatedNodeName)")
    p.add_argument("--gangs", action=argparse.BooleanOptionalAction, default=True,
                   help="gang scheduling: plan gangs whole, hold binds until all members are ready (docs/gang.md)")
    p.add_argument("--scheduler-name", action="append", default=None,
                   help="schedulerName of the pods to plan (repeatable; default: default-scheduler)")
    p.add_argument("--bind-hold-seconds", type=float, default=20.0,
                   help="how long a gang member's bind call is held (keep below the scheduler's httpTimeout)")
    p.add_argument("--handover-dir", type=Path, default=None,
                   help="hand the port over to a replacement on this node without a gap (a directory shared with "
                        "it, see scheduler_plugin/handover.py); the cluster's own kube-scheduler needs this")
    p.add_argument("--handover-grace", type=float, default=30.0,
                   help="with --handover-dir: how long a stopping extender keeps serving while no successor is ready")
    p.add_argument("--follow-lease", default=env("TOPODRA_FOLLOW_LEASE", ""), metavar="NAMESPACE/NAME",
                   help="HA: be active only while the kube-scheduler this replica serves holds this Lease "
                        "(e.g. kube-system/kube-scheduler); default: always active (env TOPODRA_FOLLOW_LEASE)")
    p.add_argument("--identity", default=env("TOPODRA_IDENTITY") or socket.gethostname(),
                   help="with --follow-lease: active when the Lease's holderIdentity is IDENTITY or IDENTITY_<suffix> "
                        "(default: this host's name, as kube-scheduler uses it; env TOPODRA_IDENTITY)")
    p.set_defaults(handler=run)
    sp = p.add_subparsers(dest="extender_command", metavar="SUBCOMMAND")
    pc = sp.add_parser("print-scheduler-config", help="print the KubeSchedulerConfiguration that calls the extender")
    d = SchedulerSettings()
    pc.add_argument("--url", default=d.url, help="extender URL prefix (the verbs are appended)")
    pc.add_argument("--server-name", default="", help="TLS server name (default: the URL's host)")
    pc.add_argument("--ca-file", default=d.ca_file, help="CA that signed the extender's certificate")
    pc.add_argument("--cert-file", default="", help="client certificate (extender run with --client-ca)")
    pc.add_argument("--key-file", default="", help="client key")
    pc.add_argument("--kubeconfig", dest="sched_kubeconfig", default=d.kubeconfig,
                    help="kube-scheduler's own kubeconfig (clientConnection.kubeconfig)")
    pc.add_argument("--weight", type=int, default=d.weight, help="extender weight (score 10 adds 10*weight*10)")
    pc.add_argument("--http-timeout", default=d.http_timeout, help="httpTimeout (bounds every call)")
    pc.add_argument("--ignorable", action="store_true", help="fail open: schedule without the extender when down")
    pc.add_argument("--bind", action="store_true",
                    help="make the extender the binder (gang bind barrier; httpTimeout 30s unless given)")
    pc.add_argument("--percentage-of-nodes-to-score", type=int, default=d.percentage_of_nodes_to_score)
    pc.set_defaults(handler=print_scheduler_config)


def print_scheduler_config(a: argparse.Namespace) -> int:
    s = SchedulerSettings(url=a.url, server_name=a.server_name, ca_file=a.ca_file, cert_file=a.cert_file,
                          key_file=a.key_file, kubeconfig=a.sched_kubeconfig, weight=a.weight,
                          http_timeout=a.http_timeout, ignorable=a.ignorable,
                          percentage_of_nodes_to_score=a.percentage_of_nodes_to_score, bind=a.bind)
    try:
        sys.stdout.write(render(s))
    except SettingsError as e:
        print(f"topodra extender print-scheduler-config: {e}", file=sys.stderr)
        return 2
    return 0


def run(a: argparse.Namespace) -> int:
    from kubeaccess.credentials import load_credentials
    from kubeaccess.errors import CredentialsError
    from scheduler_plugin.config import ConfigError, load_config
    from topodra_cli.logsetup import configure

    configure(a.log_level)
    log = structlog.get_logger("topodra.extender")
    if (a.tls_cert is None) != (a.tls_key is None):
        log.error("startup_failed", reason="--tls-cert and --tls-key go together")
        return 2
    if a.follow_lease:
        from scheduler_plugin.leadership import LeaseRef

        try:
            LeaseRef.parse(a.follow_lease)
        except ValueError as e:
            log.error("startup_failed", reason=str(e))
            return 2
        if not a.identity:
            log.error("startup_failed", reason="--follow-lease needs a non-empty --identity")
            return 2
    try:
        cfg = load_config(a.config)
        creds = load_credentials(a.kubeconfig, a.context)
    except (ConfigError, CredentialsError) as e:
        log.error("startup_failed", reason=str(e))
        return 2
    try:
        asyncio.run(_serve(a, cfg, creds))
    except OSError as e:
        log.error("cannot_serve", error=str(e))
        return 1
    return 0


async def _freeze_when_synced(cache: Any) -> None:
    """Keep the garbage collector off the cache.

    The cache is hundreds of thousands of long-lived objects; a full collection walks all of them and
    stalls a call for tens of milliseconds. Once the first lists are in, they move to the permanent
    generation, and collections run less often (calls allocate many short-lived lists).
    """
    import gc

    gc.set_threshold(50_000, 50, 100)
    while not cache.synced:
        await asyncio.sleep(0.2)
    gc.collect()
    gc.freeze()
    structlog.get_logger("topodra.extender").info("cache_synced_gc_frozen", frozen=gc.get_freeze_count())


async def _serve(a: argparse.Namespace, cfg: Any, creds: Any) -> None:
    from aiohttp import web

    from kubeaccess.aio import AsyncKube
    from kubeaccess.credentials import ssl_context, token_reader
    from scheduler_plugin.apiwrite import ApiWriter
    from scheduler_plugin.cache import GANG_KINDS, KINDS, Cache
    from scheduler_plugin.gang.coordinator import Coordinator
    from scheduler_plugin.gang.store import GroupStore
    from scheduler_plugin.handover import Handover
    from scheduler_plugin.index import Index
    from scheduler_plugin.leadership import ActiveWork, LeaseFollower, LeaseRef
    from scheduler_plugin.metrics import Metrics
    from scheduler_plugin.planner import Planner
    from scheduler_plugin.server import Extender, server_ssl_context
    from scheduler_plugin.steer import Steering

    log = structlog.get_logger("topodra.extender")
    index = Index(cfg)
    metrics = Metrics()

    groups = GroupStore() if a.gangs else None
    cache = Cache(index, creds.server, metrics, ssl_context=ssl_context(creds), token=token_reader(creds),
                  stale_after=cfg.stale_after_seconds, tls_server_name=creds.tls_server_name,
                  kinds=KINDS + GANG_KINDS if a.gangs else KINDS, groups=groups)
    api = AsyncKube.from_credentials(creds, connections=32, user_agent="topodra-extender")
    writer = ApiWriter(api)
    planner = Planner(index, cfg)

    def build() -> tuple[Steering, Coordinator | None]:
        steering = Steering(index, cfg, planner, writer, metrics,
                            scheduler_names=tuple(a.scheduler_name or ("default-scheduler",)),
                            ready=lambda: cache.synced, steer_single=a.steer)
        coordinator = None
        if groups is not None:
            coordinator = Coordinator(index, cfg, groups, planner.eligible, steering,
                                      bind_hold_seconds=a.bind_hold_seconds, metrics=metrics)
            steering.coordinator = coordinator
        return steering, coordinator

    handover = Handover(a.handover_dir, a.handover_grace) if a.handover_dir else None
    if handover is not None:
        # Sync while the predecessor still serves, then take its place: nothing of ours acts before that.
        await cache.start()
        while not cache.synced:
            await asyncio.sleep(0.1)
        await handover.acquire()
    ext = Extender(cfg, index, metrics, cache, require_client_cert=a.client_ca is not None)
    work = ActiveWork(build, index, ext, metrics)
    follower: LeaseFollower | None = None
    if a.follow_lease:
        follower = LeaseFollower(api, LeaseRef.parse(a.follow_lease), a.identity, work.set_active)
        ext.standby = follower.standby_reason
        metrics.active.set(0)
    else:
        await work.start()  # before the first call can come: bind needs the coordinator and binder
    tls = server_ssl_context(a.tls_cert, a.tls_key, a.client_ca) if a.tls_cert else None
    runner = web.AppRunner(ext.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, a.listen, a.port, ssl_context=tls, reuse_address=True)
    await site.start()
    if handover is None:
        await cache.start()
    freezer = asyncio.create_task(_freeze_when_synced(cache))
    follow_task = asyncio.create_task(follower.run(), name="follow-lease") if follower is not None else None
    log.info("serving", listen=a.listen, port=a.port, tls=tls is not None, client_ca=str(a.client_ca or ""),
             apiserver=creds.server, levels=[lv.name for lv in cfg.levels], follow_lease=a.follow_lease,
             identity=a.identity if a.follow_lease else "")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if handover is not None:
        await handover.wait_for_successor()
    log.info("stopping")
    freezer.cancel()
    if follow_task is not None:
        follow_task.cancel()
    await work.stop("the extender is stopping", drain=True)
    if handover is not None:  # free the port and the lock first: the successor is waiting
        await runner.cleanup()
        handover.release()
    await cache.stop()
    await api.close()
    if handover is None:
        await runner.cleanup()
