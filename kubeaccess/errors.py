"""The two ways Kubernetes access fails: a call failed (`ApiError`), or there is nothing to call with
(`CredentialsError`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class ApiError(Exception):
    """An API call failed. `status` is the HTTP status; 0 means no usable HTTP answer (refused, timeout, TLS, a
    stream cut or garbled).

    `body` is the apiserver's Status object when it sent one (`reason`, `details`, ...), else `{}`.
    """

    def __init__(self, status: int, reason: str, body: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {reason}" if status else reason)
        self.status = status
        self.reason = reason
        self.body: dict[str, Any] = dict(body or {})

    @classmethod
    def from_status(cls, status: Mapping[str, Any], http_status: int = 0) -> ApiError:
        """From a `Status` object: an error body, or the object of a watch `ERROR` event (HTTP 200, own code)."""
        code = status.get("code")
        code = code if isinstance(code, int) and code else http_status
        message = status.get("message") or status.get("reason") or "unknown error"
        return cls(code, str(message), status)

    @classmethod
    def from_body(cls, http_status: int, data: bytes, fallback: str) -> ApiError:
        """From a failed call's answer: its Status object if it sent one, else its text, else `fallback`."""
        try:
            doc = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            return cls(http_status, str(doc.get("message") or fallback), doc)
        text = data[:300].decode(errors="replace").strip()
        return cls(http_status, text or fallback)

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

    @property
    def gone(self) -> bool:
        """The resourceVersion (or list continue token) expired: list again from scratch."""
        return self.status == 410 or self.body.get("reason") in ("Expired", "Gone")


def decode_answer(data: bytes, what: str) -> dict[str, Any]:
    """A successful call's JSON answer (`{}` when empty; a top-level list as `{"items": [...]}`)."""
    if not data:
        return {}
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ApiError(0, f"{what}: answer is not JSON: {data[:200]!r}") from e
    return doc if isinstance(doc, dict) else {"items": doc}


class CredentialsError(Exception):
    """No usable credentials: no kubeconfig and not in a cluster, or a kubeconfig we cannot use."""
