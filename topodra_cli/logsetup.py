"""One log format for every topodra process: each line on stderr is one JSON object with an `event` key.

Our own events go through structlog; records of libraries that log through the standard library
(grpc, aiohttp, urllib3, asyncio, Python warnings) are rendered by the same processors into the
same shape, with the record's logger name under `logger` and its message as `event`. Both paths
write through one lock per stream, so lines from different threads never interleave. Uncaught
exceptions (main thread and other threads) become `uncaught_exception` events, not raw tracebacks.

Imports nothing of the project, so every component's command line can call `configure` first.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

import orjson
import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _strip_event(_logger: Any, _name: str, ed: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """Library messages may end in a newline (warnings do); the line break is ours to write."""
    ev = ed.get("event")
    if isinstance(ev, str):
        ed["event"] = ev.rstrip()
    return ed


def _level(name: str) -> int:
    n = logging.getLevelName(name.upper())
    return n if isinstance(n, int) else logging.INFO


class _LineHandler(logging.Handler):
    """Formats a stdlib record into one JSON line and writes it through structlog's locked writer."""

    def __init__(self, stream: TextIO, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self._out = structlog.PrintLogger(stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record))
        except Exception:  # a broken record must not take the caller down (logging's own rule)
            self.handleError(record)


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's `logging` to JSON lines on `stream` (default stderr).

    `level` filters both: at `debug`, libraries' debug records (urllib3 connections, asyncio) show too.
    """
    out = stream if stream is not None else sys.stderr
    lvl = _level(level)
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    render = structlog.processors.JSONRenderer(serializer=_dumps)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp, _strip_event],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            render,
        ],
    )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_LineHandler(out, formatter))
    root.setLevel(lvl)
    logging.captureWarnings(True)  # warnings.warn -> logger "py.warnings"
    _hook_uncaught(structlog.get_logger("topodra"))


def _hook_uncaught(log: Any) -> None:
    previous: Callable[[type[BaseException], BaseException, TracebackType | None], Any] = sys.excepthook

    def main_thread(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, exc, tb)
            return
        log.critical("uncaught_exception", thread="MainThread", exc_info=(kind, exc, tb))

    def other_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):
            return
        name = args.thread.name if args.thread is not None else "?"
        log.error("uncaught_exception", thread=name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = main_thread
    threading.excepthook = other_thread
