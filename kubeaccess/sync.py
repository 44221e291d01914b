"""`KubeClient`: a thread-safe Kubernetes REST client on urllib3 (JSON in, JSON out, watch streams).

The driver uses this rather than the `kubernetes` package, whose import alone costs ~35 MiB of
resident memory on every GPU node; tests, benchmarks and the harness use it for raw JSON access.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import urllib3

from kubeaccess.credentials import Credentials, load_credentials, request_headers, ssl_context, token_reader
from kubeaccess.errors import ApiError, decode_answer
from kubeaccess.stream import CONNECTED, EventSplitter, Json

__all__ = ["CONNECTED", "ApiError", "Json", "KubeClient", "path_escape"]

_TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class KubeClient:
    """One connection pool shared by all threads."""

    def __init__(self, creds: Credentials, pool_size: int = 16, timeout: float = 30.0,
                 user_agent: str = "topodra") -> None:
        self.creds = creds
        self.server = creds.server
        self.timeout = timeout
        self.user_agent = user_agent
        tls: dict[str, Any] = {"server_hostname": creds.tls_server_name} if creds.tls_server_name else {}
        self._pool = urllib3.PoolManager(
            num_pools=4, maxsize=pool_size, block=False, ssl_context=ssl_context(creds), retries=False, **tls
        )
        self._token = token_reader(creds)

    @classmethod
    def load(cls, kubeconfig: str | None = None, pool_size: int = 16, context: str | None = None,
             user_agent: str = "topodra") -> KubeClient:
        return cls(load_credentials(kubeconfig, context), pool_size=pool_size, user_agent=user_agent)

    def _headers(self, content_type: str | None) -> dict[str, str]:
        h = request_headers(self._token, self.user_agent)
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
        """The decoded JSON answer (a top-level list comes back as `{"items": [...]}`); ApiError otherwise."""
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
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"{method} {path}: {e.__class__.__name__}: {e}") from e
        if r.status >= 300:
            raise ApiError.from_body(r.status, r.data, f"{method} {path}: {r.reason}")
        return decode_answer(r.data, f"{method} {path}")

    def get(self, path: str, **query: Any) -> Json:
        return self.request("GET", path, query=query)

    def get_text(self, path: str, **query: Any) -> str:
        """A text answer, such as a container's log; ApiError otherwise."""
        try:
            r = self._pool.request("GET", self.url(path, query), headers=self._headers(None),
                                   timeout=urllib3.Timeout(connect=5.0, read=self.timeout), preload_content=True)
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"GET {path}: {e.__class__.__name__}: {e}") from e
        if r.status >= 300:
            raise ApiError.from_body(r.status, r.data, f"GET {path}: {r.reason}")
        return str(r.data.decode(errors="replace"))

    def watch(self, path: str, query: Mapping[str, Any], timeout: float) -> Iterator[Json]:
        """`{"type": CONNECTED}`, then the watch's events until the server ends it or `timeout` passes
        without data. An `ERROR` event or a broken stream raises ApiError."""
        try:
            r = self._pool.request(
                "GET",
                self.url(path, {**query, "watch": "true"}),
                headers=self._headers(None),
                timeout=urllib3.Timeout(connect=5.0, read=timeout),
                preload_content=False,
            )
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
        try:
            if r.status >= 300:
                raise ApiError.from_body(r.status, r.read(), f"watch {path}: {r.reason}")
            yield {"type": CONNECTED}
            splitter = EventSplitter()
            for chunk in r.stream(8192):
                yield from splitter.feed(chunk)
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
        finally:
            r.release_conn()


def path_escape(name: str) -> str:
    """One path segment (an object name), escaped."""
    return quote(name, safe="")
