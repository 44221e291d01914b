"""HTTP behaviour: wire keys and casing, 400 on bad input (never 500), health, readiness, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_plugin.cache import apply_event
from scheduler_plugin.config import default_config
from scheduler_plugin.metrics import Metrics
from scheduler_plugin.server import Extender
from tests.unit.test_extender_support import add_node, dev, make_index, pod
from topodra_cli.testing.objects import STD, gpu_nic_template

ALIGNED = [dev("gpu-0", "gpu", "pci0000:80", 1), dev("nic-0", "nic", "pci0000:80", 1)]
UNALIGNED = [dev("gpu-0", "gpu", "pci0000:00", 0), dev("nic-0", "nic", "pci0000:20", 1)]


def _extender() -> Extender:
    idx = make_index()
    add_node(idx, "a", ALIGNED, **{"topodra.dev/rack": "r1"})
    add_node(idx, "b", UNALIGNED, **{"topodra.dev/rack": "r2"})
    apply_event(idx, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "pair", match=f"{STD}/pcieRoot"))
    return Extender(default_config(), idx, Metrics())


def _with_client(fn: Callable[[TestClient[Any, Any]], Awaitable[None]], ext: Extender | None = None) -> None:
    async def main() -> None:
        async with TestClient(TestServer((ext or _extender()).app())) as c:
            await fn(c)

    asyncio.run(main())


def _args(p: dict[str, Any], names: list[str]) -> bytes:
    return orjson.dumps({"Pod": p, "Nodes": None, "NodeNames": names})


def test_filter_wire_format() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        r = await c.post("/v1/filter", data=_args(pod("p", templates={"acc": "pair"}), ["a", "b"]))
        assert r.status == 200 and r.content_type == "application/json"
        body = orjson.loads(await r.read())
        assert list(body) == ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"]
        assert body["NodeNames"] == ["a"] and body["Nodes"] is None and body["Error"] == ""
        assert body["FailedAndUnresolvableNodes"] == {"b": "topodra: no PCIe root with a free GPU and a free NIC"}

    _with_client(t)


def test_prioritize_wire_format_prefers_aligned_node() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        # Without the constraint both nodes fit; the aligned one must score higher.
        ext_pod = pod("p", templates={"acc": "loose"})
        r = await c.post("/prioritize", data=_args(ext_pod, ["a", "b"]))
        assert r.status == 200
        body = orjson.loads(await r.read())
        assert [set(x) for x in body] == [{"Host", "Score"}] * 2
        scores = {x["Host"]: x["Score"] for x in body}
        assert all(0 <= s <= 10 for s in scores.values())
        assert scores["a"] > scores["b"]

    ext = _extender()
    apply_event(ext.index, "resourceclaimtemplates", "ADDED", gpu_nic_template("ml", "loose"))
    _with_client(t, ext)


def test_bad_requests_get_400_with_reason() -> None:
    cases = [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b"{\"Pod\": 123456789012345678901234567890}", "Pod must be an object"),
        (b"{}", "missing field Pod"),
        (orjson.dumps({"Pod": {"metadata": {"name": "x"}}, "NodeNames": []}), "unknown pod"),
        (orjson.dumps({"Pod": pod("p"), "NodeNames": None, "Nodes": None}), "NodeNames"),
        (orjson.dumps({"Pod": pod("p"), "NodeNames": [1, 2]}), "list of strings"),
    ]

    async def t(c: TestClient[Any, Any]) -> None:
        for body, reason in cases:
            for verb in ("filter", "prioritize"):
                r = await c.post(f"/{verb}", data=body)
                assert r.status == 400, (body, await r.text())
                assert reason in orjson.loads(await r.read())["Error"]

    _with_client(t)


def test_lowercase_keys_and_full_node_lists_are_accepted() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        body = {"pod": pod("p", templates={"acc": "pair"}), "nodes": {"items": [{"metadata": {"name": "a"}}]}}
        r = await c.post("/filter", data=orjson.dumps(body))
        assert orjson.loads(await r.read())["NodeNames"] == ["a"]

    _with_client(t)


def test_health_ready_metrics() -> None:
    async def t(c: TestClient[Any, Any]) -> None:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/readyz")).status == 200
        await c.post("/filter", data=_args(pod("p", templates={"acc": "pair"}), ["a", "b"]))
        text = await (await c.get("/metrics")).text()
        assert 'topodra_extender_request_duration_seconds_bucket{le="0.005",verb="filter"}' in text
        assert 'topodra_extender_node_decisions_total{outcome="unresolvable"} 1.0' in text
        assert 'topodra_extender_cache_objects{kind="nodes"} 2.0' in text

    _with_client(t)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_pod_like = st.fixed_dictionaries({
    "metadata": st.fixed_dictionaries({"name": st.text(min_size=1, max_size=5), "namespace": st.just("ml")},
                                      optional={"uid": _json, "labels": _json, "annotations": _json}),
}, optional={"spec": _json, "status": _json})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(
    st.binary(max_size=64),
    _json.map(orjson.dumps),
    st.fixed_dictionaries({"Pod": _json | _pod_like}, optional={"NodeNames": _json, "Nodes": _json}).map(orjson.dumps),
))
def test_garbage_never_500(body: bytes) -> None:
    ext = _extender()

    async def t(c: TestClient[Any, Any]) -> None:
        for verb in ("filter", "prioritize"):
            r = await c.post(f"/v1/{verb}", data=body)
            assert r.status in (200, 400), (r.status, await r.text())
            orjson.loads(await r.read())

    _with_client(t, ext)


def test_https_with_client_ca(tmp_path: Any) -> None:
    """Verbs need a client certificate signed by --client-ca; probes of /healthz do not."""
    import ssl

    from aiohttp import ClientSession, TCPConnector, web

    from scheduler_plugin.server import server_ssl_context
    from topodra_cli.localcluster import pki
    from topodra_cli.localcluster.processes import free_port

    ca = pki.make_ca(tmp_path, "ca")
    srv = pki.issue(ca, tmp_path, "srv", "ext", server_hosts=("127.0.0.1",), client=False)
    cli = pki.issue(ca, tmp_path, "cli", "kube-scheduler")
    ext = _extender()
    ext.require_client_cert = True
    port = free_port()

    async def main() -> None:
        runner = web.AppRunner(ext.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ssl_context(srv.cert, srv.key, ca.cert)).start()
        try:
            anon = ssl.create_default_context(cafile=str(ca.cert))
            mutual = ssl.create_default_context(cafile=str(ca.cert))
            mutual.load_cert_chain(str(cli.cert), str(cli.key))
            body = _args(pod("p", templates={"acc": "pair"}), ["a", "b"])
            async with ClientSession(connector=TCPConnector(ssl=anon)) as s:
                assert (await s.get(f"https://127.0.0.1:{port}/healthz")).status == 200
                assert (await s.post(f"https://127.0.0.1:{port}/v1/filter", data=body)).status == 403
            async with ClientSession(connector=TCPConnector(ssl=mutual)) as s:
                r = await s.post(f"https://127.0.0.1:{port}/v1/filter", data=body)
                assert r.status == 200 and orjson.loads(await r.read())["NodeNames"] == ["a"]
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_bind_verb_binds_through_the_binder_and_refuses_bad_input() -> None:
    calls: list[tuple[str, str, str, str]] = []

    async def binder(ns: str, name: str, uid: str, node: str) -> str:
        calls.append((ns, name, uid, node))
        return "" if node == "a" else "node gone"

    ext = _extender()
    ext.binder = binder

    async def t(c: TestClient[Any, Any]) -> None:
        args = {"PodName": "p", "PodNamespace": "ml", "PodUID": "u1", "Node": "a"}
        r = await c.post("/v1/bind", data=orjson.dumps(args))
        assert r.status == 200 and orjson.loads(await r.read()) == {"Error": ""}
        r = await c.post("/bind", data=orjson.dumps({**args, "Node": "b"}))
        assert orjson.loads(await r.read()) == {"Error": "node gone"}
        for bad in (b"[]", b"{", orjson.dumps({**args, "PodUID": ""}), orjson.dumps({"PodName": "p"})):
            r = await c.post("/v1/bind", data=bad)
            assert r.status == 400, bad
            assert orjson.loads(await r.read())["Error"]
        r = await c.get("/debug/gangs")
        assert orjson.loads(await r.read()) == {"gangs": []}

    _with_client(t, ext)
    assert calls == [("ml", "p", "u1", "a"), ("ml", "p", "u1", "b")]
