"""The driver's HTTP endpoint: `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz` (readiness).

Liveness and readiness are answers from callables, so the server knows nothing of the driver: each
returns None when fine, else a one-line reason that the probe's 503 body carries (kubectl describe
shows it in the probe failure event).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Check = Callable[[], str | None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6  # --metrics-host=$(POD_IP) is an IPv6 literal in IPv6 clusters


class ProbeServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Check, ready: Check) -> None:
        handler = _handler(registry, healthy, ready)
        self.httpd = (_Server6 if ":" in host else _Server)((host, port), handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="probe-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(registry: CollectorRegistry, healthy: Check, ready: Check) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                try:
                    why = (healthy if path == "/healthz" else ready)()
                except Exception as e:  # a failing check is an unhealthy answer, never a dropped connection
                    why = f"check failed: {e.__class__.__name__}: {e}"
                body = b"ok\n" if why is None else why.encode() + b"\n"
                self._send(200 if why is None else 503, body, "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log."""

    return Handler
