"""A small Kubernetes REST client on urllib3: kubeconfig or in-cluster credentials, JSON, watch streams.

The driver publishes slices with this instead of the `kubernetes` package, whose import alone costs
~35 MiB of resident memory; the driver runs on every GPU node. The kubelet plugin reads claims
through it too (`driver.claims.KubeClientClaimsApi`).
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import urllib3
import yaml

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")

Json = dict[str, Any]
CONNECTED = "TOPODRA_CONNECTED"  # synthetic first event of every watch stream


class ApiError(Exception):
    """An API call failed; `status` 0 means no HTTP answer (connection refused, timeout, TLS)."""

    def __init__(self, status: int, reason: str, body: Json | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason
        self.body = body or {}

    @property
    def transient(self) -> bool:
        """Worth retrying with backoff: outages, throttling, server errors, timeouts."""
        return self.status in (0, 408, 429) or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class ConfigError(Exception):
    """No usable credentials (bad kubeconfig, not in a cluster)."""


@dataclass(frozen=True)
class Credentials:
    server: str
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    kubeconfig: str | None = None  # where they came from (None = in-cluster)


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """--kubeconfig, else $KUBECONFIG, else in-cluster, else ~/.kube/config."""
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return _from_kubeconfig(Path(path.split(os.pathsep)[0]), context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SA_DIR / "token").exists():
        return _in_cluster()
    home = Path.home() / ".kube" / "config"
    if home.exists():
        return _from_kubeconfig(home, context)
    raise ConfigError("no kubeconfig given (--kubeconfig or $KUBECONFIG) and not running in a cluster")


def _in_cluster() -> Credentials:
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    return Credentials(
        server=f"https://{host}:{port}", ca_file=str(SA_DIR / "ca.crt"), token_file=str(SA_DIR / "token")
    )


def _from_kubeconfig(path: Path, context: str | None) -> Credentials:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"kubeconfig {path}: cannot read: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig")
    ctx_name = context or doc.get("current-context")
    ctx = _named(doc.get("contexts"), ctx_name, "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster"), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user"), "user", path) if ctx.get("user") else {}
    base = path.parent

    def rel(p: str | None) -> str | None:
        return None if p is None else str(base / p) if not os.path.isabs(p) else p

    def data(v: str | None) -> bytes | None:
        return None if v is None else base64.b64decode(v)

    if not cluster.get("server"):
        raise ConfigError(f"kubeconfig {path}: cluster {ctx.get('cluster')!r} has no server")
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=rel(cluster.get("certificate-authority")),
        ca_data=data(cluster.get("certificate-authority-data")),
        cert_file=rel(user.get("client-certificate")),
        key_file=rel(user.get("client-key")),
        cert_data=data(user.get("client-certificate-data")),
        key_data=data(user.get("client-key-data")),
        token=user.get("token"),
        token_file=rel(user.get("tokenFile")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        kubeconfig=str(path),
    )


def _named(items: Any, name: Any, kind: str, path: Path) -> dict[str, Any]:
    for it in items or []:
        if isinstance(it, dict) and it.get("name") == name:
            inner = it.get(kind) or {}
            return inner if isinstance(inner, dict) else {}
    raise ConfigError(f"kubeconfig {path}: no {kind} named {name!r}")


def _ssl_context(c: Credentials) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if c.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif c.ca_data:
        ctx.load_verify_locations(cadata=c.ca_data.decode())
    elif c.ca_file:
        ctx.load_verify_locations(cafile=c.ca_file)
    if c.cert_file and c.key_file:
        ctx.load_cert_chain(c.cert_file, c.key_file)
    elif c.cert_data and c.key_data:
        # ssl wants files; keep them only for the duration of the load.
        with tempfile.TemporaryDirectory(prefix="topodra-") as d:
            cert, key = Path(d, "c.pem"), Path(d, "k.pem")
            cert.write_bytes(c.cert_data)
            key.touch(mode=0o600)
            key.write_bytes(c.key_data)
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


class KubeClient:
    """Thread-safe: one connection pool shared by all threads."""

    def __init__(self, creds: Credentials, pool_size: int = 16, timeout: float = 30.0) -> None:
        self.creds = creds
        self.server = creds.server
        self.timeout = timeout
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, ssl_context=_ssl_context(creds), retries=False
        )
        self._token: Callable[[], str | None] = self._token_reader()

    @classmethod
    def load(cls, kubeconfig: str | None = None, pool_size: int = 16) -> KubeClient:
        return cls(load_credentials(kubeconfig), pool_size=pool_size)

    def _token_reader(self) -> Callable[[], str | None]:
        c = self.creds
        if c.token:
            return lambda: c.token
        if c.token_file:
            path = c.token_file
            # Projected service-account tokens rotate: read the file each time (it is tiny and cached by the OS).
            return lambda: Path(path).read_text().strip()
        return lambda: None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "topodra-driver"}
        tok = self._token()
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        if content_type:
            h["Content-Type"] = content_type
        return h

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        q = {k: v for k, v in (query or {}).items() if v is not None}
        return self.server + path + ("?" + urlencode(q) if q else "")

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Json:
        data = None if body is None else orjson.dumps(body)
        try:
            r = self._pool.request(
                method,
                self.url(path, query),
                body=data,
                headers=self._headers(content_type if data is not None else None),
                timeout=urllib3.Timeout(connect=5.0, read=timeout or self.timeout),
                preload_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, f"{method} {path}: {e.__class__.__name__}: {e}") from e
        payload: Json = {}
        if r.data:
            try:
                parsed = orjson.loads(r.data)
                payload = parsed if isinstance(parsed, dict) else {"items": parsed}
            except orjson.JSONDecodeError:
                payload = {"message": r.data[:500].decode(errors="replace")}
        if r.status >= 300:
            raise ApiError(r.status, str(payload.get("message") or r.reason), payload)
        return payload

    def get(self, path: str, **query: Any) -> Json:
        return self.request("GET", path, query=query)

    def watch(self, path: str, query: Mapping[str, Any], timeout: float) -> Iterator[Json]:
        """Events of a watch (`{"type": ..., "object": ...}`) until the server closes it or `timeout`."""
        try:
            r = self._pool.request(
                "GET",
                self.url(path, {**query, "watch": "true"}),
                headers=self._headers(None),
                timeout=urllib3.Timeout(connect=5.0, read=timeout),
                preload_content=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
        try:
            if r.status >= 300:
                raise ApiError(r.status, f"watch {path}: {r.reason}")
            yield {"type": CONNECTED}
            buf = b""
            for chunk in r.stream(8192):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield orjson.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
        finally:
            r.release_conn()


def path_escape(name: str) -> str:
    return quote(name, safe="")
