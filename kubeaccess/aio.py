"""`AsyncKube`: list and watch over aiohttp, for the extender's watch cache.

Only reads: a paginated list that restarts when its continue token expires, and a watch that yields
decoded events. Every failure, HTTP or transport, comes out as `ApiError`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import orjson

from kubeaccess.credentials import Credentials, ssl_context, token_reader
from kubeaccess.errors import ApiError
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

    def _headers(self) -> dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": self.user_agent}
        tok = self.token()
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        return h

    def _get(self, path: str, query: Mapping[str, str], timeout: aiohttp.ClientTimeout) -> Any:
        extra: dict[str, Any] = {"server_hostname": self._tls_name} if self._tls_name else {}
        return self._session.get(self.server + path, params=dict(query), headers=self._headers(), timeout=timeout,
                                 **extra)

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                      timeout: float = 10.0) -> Json:
        """One call with a JSON body (or none); the decoded answer, `{}` if it had no body."""
        extra: dict[str, Any] = {"server_hostname": self._tls_name} if self._tls_name else {}
        headers = self._headers()
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = content_type
        try:
            async with self._session.request(method, self.server + path, data=data, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=timeout), **extra) as r:
                answer = await r.read()
                status, reason = r.status, r.reason or ""
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"{method} {path}: {e.__class__.__name__}: {e}") from e
        if status >= 300:
            raise ApiError.from_body(status, answer, f"{method} {path}: {reason}")
        try:
            doc = orjson.loads(answer) if answer else {}
        except orjson.JSONDecodeError as e:
            raise ApiError(0, f"{method} {path}: answer is not JSON: {answer[:200]!r}") from e
        return doc if isinstance(doc, dict) else {}

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
            try:
                async with self._get(path, q, aiohttp.ClientTimeout(total=timeout)) as r:
                    body = await r.read()
                    status, reason = r.status, r.reason or ""
            except _TRANSPORT_ERRORS as e:
                raise ApiError(0, f"list {path}: {e.__class__.__name__}: {e}") from e
            if status == 410 and cont:
                cont, items = "", []  # the continue token expired: list again from the start
                continue
            if status >= 300:
                raise ApiError.from_body(status, body, f"list {path}: {reason}")
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as e:
                raise ApiError(0, f"list {path}: answer is not JSON: {body[:200]!r}") from e
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
            async with self._get(path, q, aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=silence)) as r:
                if r.status >= 300:
                    raise ApiError.from_body(r.status, await r.read(), f"watch {path}: {r.reason}")
                yield {"type": CONNECTED}
                splitter = EventSplitter()
                async for chunk in r.content.iter_any():
                    for ev in splitter.feed(chunk):
                        yield ev
        except _TRANSPORT_ERRORS as e:
            raise ApiError(0, f"watch {path}: {e.__class__.__name__}: {e}") from e
