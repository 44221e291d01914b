"""Watch streams: the apiserver sends one JSON event per line; chunks arrive cut anywhere.

`EventSplitter` turns chunks into events for both the sync and the async client. A cut can fall in
the middle of a line or of a multi-byte UTF-8 character: lines are split as bytes (a newline byte
never occurs inside a UTF-8 sequence) and decoded only once whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from kubeaccess.errors import ApiError

Json = dict[str, Any]
# The first event of every watch, made by the client when the server has answered 200: the caller
# knows it is connected (and can resync what it may have missed) before any real event arrives.
CONNECTED = "TOPODRA_CONNECTED"


class EventSplitter:
    """Feed chunks in, get whole events out; a partial last line waits for the next chunk."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the line begun so far, unjoined (large objects arrive in many chunks)

    def feed(self, chunk: bytes) -> Iterator[Json]:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            line = chunk[start:nl]
            if self._parts:
                self._parts.append(line)
                line = b"".join(self._parts)
                self._parts.clear()
            start = nl + 1
            if line.strip():
                yield parse_event(line)
        if start < len(chunk):
            self._parts.append(chunk[start:])

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line (a stream that ends with some was cut mid-event)."""
        return sum(len(p) for p in self._parts)


def parse_event(line: bytes) -> Json:
    """One watch line -> `{"type": ..., "object": ...}`; an `ERROR` event raises its Status as ApiError."""
    try:
        ev = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ApiError(0, f"watch: undecodable event: {e}") from e
    if not isinstance(ev, dict):
        raise ApiError(0, f"watch: event is not an object: {line[:200]!r}")
    if ev.get("type") == "ERROR":
        obj = ev.get("object")
        raise ApiError.from_status(obj if isinstance(obj, Mapping) else {"message": str(obj)})
    return ev
