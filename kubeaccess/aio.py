"""`AsyncKube`: the extender's apiserver client over aiohttp.

A paginated list that restarts when its continue token expires, a watch that yields decoded events
(the watch cache), and single JSON calls (the extender's writes). Every failure, HTTP or transport,
comes out as `ApiError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from kubeaccess.credentials import Credentials, request_headers, ssl_context, token_reader
from kubeaccess.errors import ApiError, decode_answer
from kubeaccess.stream import CONNECTED, EventSplitter, Json

T = TypeVar("T")
_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class AsyncKube:
    """One aiohttp session to one apiserver; create it inside the running event loop, `close()` it after."""

    def __init__(
        self,
        server: str,
        ssl_context: ssl.SSLContext | None = None,
        token: Callable[[], str | None] = lambda: None,
        *,
        connections: int = 16,
        user_agent: str = "topodra",
        tls_server_name: str | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.user_agent = user_agent
        # No context means plain HTTP, or HTTPS without verification (a test apiserver).
        connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else False, limit=connections)
        self._session = aiohttp.ClientSession(connector=connector)
        self._tls_name = tls_server_name

    @classmethod
    def from_credentials(cls, creds: Credentials, *, connections: int = 16, user_agent: str = "topodra") -> AsyncKube:
        return cls(creds.server, ssl_context(creds), token_reader(creds), connections=connections,
                   user_agent=user_agent, tls_server_name=creds.tls_server_name)

    async def close(self) -> None:
        await self._session.close()

    def _request(self, method: str, path: str, timeout: aiohttp.ClientTimeout, *,
                 query: Mapping[str, str] | None = None, body: Any = None,
                 content_type: str = "application/json") -> Any:
        headers = request_headers(self.token, self.user_agent)
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = content_type
        extra: dict[str, Any] = {"server_hostname": self._tls_name} if self._tls_name else {}
        return self._session.request(method, self.server + path, params=dict(query or {}), data=data,
                                     headers=headers, timeout=timeout, **extra)

    async def _call(self, method: str, path: str, timeout: float, **kw: Any) -> tuple[int, str, bytes]:
        """(status, reason, body) of one call; transport failures as ApiError(0)."""
        try:
            async with self._request(method, path, aiohttp.ClientTimeout(total=timeout), **kw) as r:
                return r.status, r.reason or "", await r.read()
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"{method} {path}: {e.__class__.__name__}: {e}") from e

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      timeout: float = 10.0) -> Json:
        """One call with a JSON body (or none); the decoded answer, `{}` if it had no body."""
        status, reason, answer = await self._call(method, path, timeout, body=body, content_type=content_type)
        if status >= 300:
            raise ApiError.from_body(status, answer, f"{method} {path}: {reason}")
        return decode_answer(answer, f"{method} {path}")

    async def list_all(self, path: str, query: Mapping[str, str], parse: Callable[[Json], T],
                       page: int = 500, timeout: float = 60.0) -> tuple[list[T], str]:
        """Every object, `parse`d page by page (raw pages are dropped as they come), and the list's
        resourceVersion. Yields to the loop between pages so that other work runs during a long list."""
        items: list[T] = []
        cont = ""
        while True:
            q = {**query, "limit": str(page)}
            if cont:
                q["continue"] = cont
            status, reason, body = await self._call("GET", path, timeout, query=q)
            if status == 410 and cont:
                cont, items = "", []  # the continue token expired: list again from the start
                continue
            if status >= 300:
                raise ApiError.from_body(status, body, f"list {path}: {reason}")
            doc = decode_answer(body, f"list {path}")
            items.extend(parse(o) for o in doc.get("items") or [])
            meta = doc.get("metadata") or {}
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")
            await asyncio.sleep(0)

    async def watch(self, path: str, query: Mapping[str, str], silence: float) -> AsyncGenerator[Json, None]:
        """`{"type": CONNECTED}`, then the events of a watch until the server ends it. No data for
        `silence` seconds, an `ERROR` event or a broken stream raise ApiError (410: list again).

        Close it (`contextlib.aclosing`) when leaving early, so the connection is released at once."""
        q = {**query, "watch": "1"}
        try:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=silence)
            async with self._request("GET", path, timeout, query=q) as r:
                if r.status >= 300:
                    raise ApiError.from_body(r.status, await r.read(), f"watch {path}: {r.reason}")
                yield {"type": CONNECTED}
                splitter = EventSplitter()
                async for chunk in r.content.iter_any():
                    for ev in splitter.feed(chunk):
                        yield ev
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
