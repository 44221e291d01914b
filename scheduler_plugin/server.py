"""HTTP(S) server: the extender verbs plus health, readiness and metrics (aiohttp).

Handlers never wait on the apiserver: every answer comes from the in-memory index, so a call takes
milliseconds even while the apiserver is down (the answer is then logged as coming from a stale cache).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scheduler_plugin.cache import Cache
from scheduler_plugin.config import ExtenderConfig
from scheduler_plugin.filter import requirements_or_none
from scheduler_plugin.gang.coordinator import Coordinator
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.views import Views, filter_reply, prioritize_reply
from scheduler_plugin.wire import (
    BadRequest,
    binding_result,
    filter_result,
    parse_args,
    parse_bind_args,
    priority_list,
)

MAX_BODY = 64 * 1024 * 1024  # full Node lists (without nodeCacheCapable) can be large
STALE_WARN_EVERY = 10.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


class Extender:
    def __init__(self, cfg: ExtenderConfig, index: Index, metrics: Metrics, cache: Cache | None = None,
                 clock: Callable[[], float] = time.monotonic, require_client_cert: bool = False,
                 coordinator: Coordinator | None = None,
                 binder: Callable[[str, str, str, str], Awaitable[str]] | None = None) -> None:
        self.cfg = cfg
        self.coordinator = coordinator  # gang members are judged and bound by it
        self.binder = binder  # binds pods that are in no gang (bindVerb)
        self.require_client_cert = require_client_cert
        self.index = index
        self.metrics = metrics
        self.cache = cache
        self.clock = clock
        self.views = Views()  # per node-list state for the verbs, patched as nodes change
        self.log = structlog.get_logger("topodra.extender")
        self._last_stale_warning = -STALE_WARN_EVERY
        # HA (--follow-lease): None while this replica is the active one, else why not. A standby answers
        # every verb with an error: kube-scheduler retries the pod, and nothing is decided on its behalf.
        self.standby: Callable[[], str | None] = lambda: None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        for prefix in ("", "/v1"):
            app.router.add_post(f"{prefix}/filter", self._timed("filter", self.filter))
            app.router.add_post(f"{prefix}/prioritize", self._timed("prioritize", self.prioritize))
            app.router.add_post(f"{prefix}/bind", self._timed("bind", self.bind))
        app.router.add_get("/debug/gangs", self.debug_gangs)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_handler)
        return app

    def _timed(self, verb: str, fn: Handler) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            resp: web.StreamResponse
            try:
                if self.require_client_cert and not _peer_cert(request):
                    resp = _json(orjson.dumps({"Error": "a client certificate signed by --client-ca is required"}), 403)
                else:
                    resp = await fn(request)
            except BadRequest as e:
                resp = _json(orjson.dumps({"Error": str(e)}), 400)
                self.log.info("bad_request", verb=verb, reason=str(e))
            except Exception as e:
                self.log.exception("internal_error", verb=verb)
                resp = _json(orjson.dumps({"Error": f"internal error: {e.__class__.__name__}: {e}"}), 500)
            self.metrics.latency.labels(verb).observe(time.perf_counter() - t0)
            self.metrics.requests.labels(verb, str(resp.status)).inc()
            return resp

        return handler

    def _stale_check(self, verb: str) -> None:
        if self.cache is None:
            return
        now = self.clock()
        stale = self.cache.stale_kinds(now)
        if stale and now - self._last_stale_warning >= STALE_WARN_EVERY:
            self._last_stale_warning = now
            self.log.warning("answering_from_stale_cache", verb=verb, stale_kinds=stale,
                             errors={k: self.cache.states[k].last_error for k in stale})

    async def filter(self, request: web.Request) -> web.StreamResponse:
        args = parse_args(await request.read())
        why = self.standby()
        if why is not None:
            self.metrics.errors.labels("standby").inc()
            return _json(filter_result([], {}, {}, f"topodra: this extender replica is not active ({why}); retry"))
        if self.cache is not None and not self.cache.synced:
            self.metrics.errors.labels("not_synced").inc()
            return _json(filter_result([], {}, {}, "topodra: extender cache not synced yet; retry"))
        self._stale_check("filter")
        if self.coordinator is not None:
            gang = self.coordinator.filter(args.pod, args.node_names)
            if gang is not None:
                m = self.metrics.decisions
                m.labels("passed").inc(len(gang.passed))
                m.labels("unresolvable").inc(len(gang.unresolvable))
                return _json(filter_result(gang.passed, gang.failed, gang.unresolvable, gang.error))
        if self.coordinator is not None:
            # A device of a gang's plan may have just gone to another pod: count the plan right first.
            self.coordinator.repair_reservations()
        out = filter_reply(self.index, self.cfg, args.pod, args.node_names, self.clock(), self.views)
        if len(args.node_names) == 1 and args.pod.nominated_node == args.node_names[0] and out.passed == 0:
            # kube-scheduler tried the pod's nominated node alone and we refuse it: it will filter the cluster.
            self.metrics.steered.labels("nomination_refused").inc()
            self.log.debug("nominated_node_refused", pod=f"{args.pod.namespace}/{args.pod.name}",
                           node=args.node_names[0], reply=out.body.decode(errors="replace")[:300])
        if out.error:
            self.metrics.errors.labels("unresolved_claim").inc()
            self.log.info("filter_error", pod=f"{args.pod.namespace}/{args.pod.name}", error=out.error)
        else:
            m = self.metrics.decisions
            m.labels("passed").inc(out.passed)
            m.labels("failed").inc(out.failed)
            m.labels("unresolvable").inc(out.unresolvable)
            if out.notes:
                self.log.info("cannot_judge", pod=f"{args.pod.namespace}/{args.pod.name}", notes=list(out.notes))
        return _json(out.body)

    async def prioritize(self, request: web.Request) -> web.StreamResponse:
        args = parse_args(await request.read())
        why = self.standby()
        if why is not None:
            # A priority list has no error field; kube-scheduler skips the scores of an extender that fails.
            return _json(orjson.dumps({"Error": f"topodra: this extender replica is not active ({why})"}), 503)
        if self.cache is not None and not self.cache.synced:
            return _json(priority_list([(n, 0) for n in args.node_names]))
        self._stale_check("prioritize")
        req = requirements_or_none(self.index, self.cfg, args.pod)
        return _json(prioritize_reply(self.index, self.cfg, args.pod, req, args.node_names, self.clock(),
                                      self.views))

    async def bind(self, request: web.Request) -> web.StreamResponse:
        """bindVerb: gang members wait at the barrier; other pods are bound at once."""
        b = parse_bind_args(await request.read())
        why = self.standby()
        if why is not None:
            err = f"topodra: this extender replica is not active ({why}); not bound"
        elif self.coordinator is not None:
            err = await self.coordinator.bind(b.namespace, b.pod_name, b.uid, b.node)
        elif self.binder is not None:
            err = await self.binder(b.namespace, b.pod_name, b.uid, b.node)
        else:
            err = "topodra: this extender was started without API access and cannot bind"
        if err:
            self.log.info("bind_refused", pod=f"{b.namespace}/{b.pod_name}", node=b.node, error=err)
        return _json(binding_result(err))

    async def debug_gangs(self, _: web.Request) -> web.StreamResponse:
        gangs = self.coordinator.snapshot() if self.coordinator is not None else []
        return _json(orjson.dumps({"gangs": gangs}))

    async def healthz(self, _: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.StreamResponse:
        if self.cache is not None and not self.cache.synced:
            waiting = [k for k, s in self.cache.states.items() if not s.synced]
            return web.Response(text=f"cache not synced: {', '.join(waiting)}", status=503)
        why = self.standby()
        if why is not None:
            return web.Response(text=why, status=503)
        return web.Response(text="ok")

    async def metrics_handler(self, _: web.Request) -> web.StreamResponse:
        if self.coordinator is not None:
            phases: dict[str, int] = {}
            for g in self.coordinator.snapshot():
                phase = str(g["phase"]) or "Collecting"
                phases[phase] = phases.get(phase, 0) + 1
            self.metrics.gangs.clear()
            for phase, n in phases.items():
                self.metrics.gangs.labels(phase).set(n)
        if self.cache is not None:
            self.cache.update_gauges()
        else:
            for k, n in self.index.sizes().items():
                self.metrics.cache_objects.labels(k).set(n)
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})


def _peer_cert(request: web.Request) -> bool:
    transport = request.transport
    return bool(transport is not None and transport.get_extra_info("peercert"))


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """With a client CA, certificates are verified when presented and required by the verbs only, so
    kubelet probes of /healthz and /readyz (which present none) keep working."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx
