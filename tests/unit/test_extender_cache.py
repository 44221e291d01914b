"""List+watch against a scripted fake apiserver: bookmarks, 410 relist, errors with backoff, staleness."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from kubeaccess.backoff import Backoff
from scheduler_plugin.cache import Cache, Kind
from scheduler_plugin.config import default_config
from scheduler_plugin.index import Index
from scheduler_plugin.metrics import Metrics
from tests.unit.test_extender_support import node_obj

NODES = Kind("nodes", "/api/v1/nodes")


class FakeApi:
    """Nodes only. `lists` / `watches` record the queries; `script` says what each watch connection does."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.rv = 10
        self.lists: list[dict[str, str]] = []
        self.watches: list[dict[str, str]] = []
        self.script: list[Callable[[web.Request], Any]] = []
        self.down = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/nodes", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        if self.down:
            return web.Response(status=503, text="apiserver down")
        if q.get("watch"):
            self.watches.append(q)
            if self.script:
                result: web.StreamResponse = await self.script.pop(0)(request)
                return result
            idle: web.StreamResponse = await events(then_sleep=30)(request)
            return idle
        self.lists.append(q)
        body = {"metadata": {"resourceVersion": str(self.rv)}, "items": list(self.items.values())}
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def events(*evs: dict[str, Any], then_sleep: float = 30) -> Callable[[web.Request], Any]:
    async def run(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for e in evs:
            await resp.write(orjson.dumps(e) + b"\n")
        await asyncio.sleep(then_sleep)
        return resp

    return run


def status(code: int) -> Callable[[web.Request], Any]:
    async def run(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, text="nope")

    return run


def _node(name: str, rv: str) -> dict[str, Any]:
    n = node_obj(name)
    n["metadata"]["resourceVersion"] = rv
    return n


async def _until(pred: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def _run(fake: FakeApi, body: Callable[[Cache, Index], Any], stale_after: float = 2.0) -> None:
    async def main() -> None:
        server = TestServer(fake.app())
        await server.start_server()
        idx = Index(default_config())
        cache = Cache(idx, str(server.make_url("")), Metrics(), kinds=(NODES,), stale_after=stale_after,
                      watch_timeout=5)
        await cache.start()
        try:
            await body(cache, idx)
        finally:
            await cache.stop()
            await server.close()

    asyncio.run(main())


def test_list_then_watch_with_bookmarks() -> None:
    fake = FakeApi()
    fake.items["a"] = _node("a", "5")
    fake.script = [events(
        {"type": "ADDED", "object": _node("b", "11")},
        {"type": "DELETED", "object": _node("a", "12")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "20"}}},
        then_sleep=0,
    )]

    async def body(cache: Cache, idx: Index) -> None:
        await _until(lambda: cache.synced and len(fake.watches) >= 2)
        assert sorted(n for n, s in idx.nodes.items() if s.node) == ["b"]
        assert fake.watches[0]["resourceVersion"] == "10"
        assert fake.watches[0]["allowWatchBookmarks"] == "true"
        # The stream ended normally: the next watch resumes from the bookmark, no relist.
        assert fake.watches[1]["resourceVersion"] == "20"
        assert len(fake.lists) == 1

    _run(fake, body)


def test_gone_relists_and_drops_vanished_objects() -> None:
    fake = FakeApi()
    fake.items["a"] = _node("a", "5")
    expired = events({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}})

    async def first_watch(request: web.Request) -> web.StreamResponse:
        # While the watch was away, "a" went and "c" came; the events are lost (410), only a relist sees it.
        del fake.items["a"]
        fake.items["c"] = _node("c", "30")
        fake.rv = 30
        result: web.StreamResponse = await expired(request)
        return result

    fake.script = [first_watch]

    async def body(cache: Cache, idx: Index) -> None:
        # The relist, and the watch that resumes from its resourceVersion (it starts right after).
        await _until(lambda: len(fake.lists) >= 2 and "c" in idx.nodes and len(fake.watches) >= 2)
        idx.refresh(0.0)
        assert sorted(n for n, s in idx.nodes.items() if s.node) == ["c"]
        assert cache.states["nodes"].relists == 1
        assert fake.watches[-1]["resourceVersion"] == "30"

    _run(fake, body)


def test_http_410_on_watch_start_relists() -> None:
    fake = FakeApi()
    fake.script = [status(410)]

    async def body(cache: Cache, idx: Index) -> None:
        await _until(lambda: len(fake.lists) >= 2)
        assert cache.states["nodes"].relists == 1

    _run(fake, body)


def test_outage_marks_stale_backs_off_and_recovers() -> None:
    fake = FakeApi()
    fake.items["a"] = _node("a", "5")
    fake.script = [status(500)]

    async def body(cache: Cache, idx: Index) -> None:
        await _until(lambda: cache.synced)
        await _until(lambda: bool(cache.stale_kinds()))
        assert "HTTP 500" in cache.states["nodes"].last_error
        # The cache keeps what it had while stale.
        assert "a" in idx.nodes
        await _until(lambda: not cache.stale_kinds() and len(fake.watches) >= 2)

    _run(fake, body, stale_after=0.0)


def test_not_synced_until_first_list() -> None:
    fake = FakeApi()
    fake.down = True

    async def body(cache: Cache, idx: Index) -> None:
        await asyncio.sleep(0.3)
        assert not cache.synced and cache.stale_kinds()
        fake.down = False
        await _until(lambda: cache.synced, timeout=15)

    _run(fake, body, stale_after=0.0)


def test_backoff_grows_and_is_capped() -> None:
    import random

    b = Backoff(base=0.2, cap=10.0, rng=random.Random(1))
    delays = [b.next() for _ in range(12)]
    assert delays[0] <= 0.2 and max(delays) <= 10.0 and delays[-1] >= 5.0
    b.reset()
    assert b.next() <= 0.2


def test_garbage_event_does_not_kill_the_watch() -> None:
    fake = FakeApi()
    fake.script = [events({"type": "ADDED", "object": "not an object"}, then_sleep=0),
                   events({"type": "ADDED", "object": _node("z", "40")}, then_sleep=30)]

    async def body(cache: Cache, idx: Index) -> None:
        await _until(lambda: "z" in idx.nodes)
        assert cache.synced

    _run(fake, body)
