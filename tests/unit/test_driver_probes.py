"""The driver's /healthz, /readyz and /metrics, and what the driver app answers through them."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter

from driver.app import DriverApp, DriverConfig
from driver.probeserver import ProbeServer
from kubeaccess.sync import KubeClient


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def server() -> Any:
    state: dict[str, Any] = {"health": None, "ready": "not registered with the kubelet yet"}
    reg = CollectorRegistry()
    Counter("topodra_probe_test", "a metric", registry=reg).inc()

    def ready() -> str | None:
        v = state["ready"]
        if isinstance(v, Exception):
            raise v
        return cast("str | None", v)

    srv = ProbeServer("127.0.0.1", 0, reg, lambda: state["health"], ready).start()
    yield srv, state
    srv.stop()


def test_endpoints_answer_from_the_checks(server: Any) -> None:
    srv, state = server
    assert _get(srv.port, "/healthz") == (200, "ok\n")
    assert _get(srv.port, "/readyz") == (503, "not registered with the kubelet yet\n")
    state["ready"] = None
    assert _get(srv.port, "/readyz") == (200, "ok\n")
    state["health"] = "the DRA gRPC server is not serving /x/dra.sock"
    assert _get(srv.port, "/healthz") == (503, "the DRA gRPC server is not serving /x/dra.sock\n")
    code, body = _get(srv.port, "/metrics")
    assert code == 200 and "topodra_probe_test_total 1.0" in body
    assert _get(srv.port, "/nope")[0] == 404
    assert _get(srv.port, "/readyz?verbose=1")[0] == 200  # kubelet probes may carry a query


def test_a_failing_check_is_a_503_with_its_reason(server: Any) -> None:
    srv, state = server
    state["ready"] = RuntimeError("boom")
    assert _get(srv.port, "/readyz") == (503, "check failed: RuntimeError: boom\n")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_metrics_host_is_honoured(host: str) -> None:
    try:
        srv = ProbeServer(host, 0, CollectorRegistry(), lambda: None, lambda: None).start()
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    try:
        assert srv.httpd.server_address[0] == host
        url = f"http://[{host}]:{srv.port}/healthz" if ":" in host else f"http://{host}:{srv.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
    finally:
        srv.stop()


class _Loop:
    def __init__(self) -> None:
        self.synced = threading.Event()


class _Plugin:
    def __init__(self) -> None:
        self.registered = threading.Event()
        self.problem: str | None = None

    def liveness_problem(self) -> str | None:
        return self.problem

    def unhealthy_devices(self) -> dict[str, str]:
        return {}


def _app(tmp_path: Path, **kw: Any) -> DriverApp:
    cfg = DriverConfig(node_name="n1", backends=("nvml",), sysfs_root=tmp_path, **kw)
    return DriverApp(cfg, client=cast(KubeClient, object()))


def test_readiness_order_registered_then_published_then_gpus(tmp_path: Path) -> None:
    app = _app(tmp_path, driver_root=tmp_path / "no-driver-here")
    assert app.readiness() == "the kubelet plugin is not started yet"
    plugin, loop = _Plugin(), _Loop()
    app.plugin = cast(Any, plugin)
    assert app.readiness() == "not registered with the kubelet yet"
    plugin.registered.set()
    assert app.readiness() == "ResourceSlices not published yet"
    app.loop = cast(Any, loop)
    loop.synced.set()
    assert app.readiness() is None
    app._discover(app.cfg.backend_config())
    why = app.readiness()
    assert why is not None and why.startswith("no GPUs: no libnvidia-ml.so.1 under driver root")
    assert app.liveness() is None
    plugin.problem = "the registration socket /r.sock is gone"
    assert app.liveness() == "the registration socket /r.sock is gone"


def test_no_gpus_is_logged_once_with_what_was_searched(tmp_path: Path) -> None:
    app = _app(tmp_path, driver_root=tmp_path / "root", kubelet_plugin=False)
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            topo = app._discover(app.cfg.backend_config())
    assert topo.gpus == ()
    errors = [e for e in logs if e["event"] == "no_gpus"]
    assert len(errors) == 1, logs
    assert errors[0]["log_level"] == "error"
    assert errors[0]["reason"] == (
        f"no libnvidia-ml.so.1 under driver root {tmp_path / 'root'} (looked in usr/lib64, usr/lib/x86_64-linux-gnu, "
        "usr/lib/aarch64-linux-gnu, lib64, lib/x86_64-linux-gnu, lib/aarch64-linux-gnu, usr/lib, lib, "
        f"home/kubernetes/bin/nvidia/lib64, usr/local/nvidia/lib64 below {tmp_path / 'root'} and "
        f"{tmp_path / 'root' / 'run/nvidia/driver'})"
    )
