"""The `go test` renderings of a run: `e2e.log` (what `go test -v` prints) and `results.json`
(`go test -json`: one test2json event per line, fields in Go's order, empty ones left out)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from topodra_cli.conformance.harness import GoEvent


def rfc3339(epoch: float) -> str:
    """Go's time.Time JSON form with nanosecond digits trimmed as Go does (RFC 3339, UTC 'Z')."""
    s = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return s + "Z"


def event_json(e: GoEvent) -> str:
    doc: dict[str, object] = {"Time": rfc3339(e.time), "Action": e.action, "Package": e.package}
    if e.test:
        doc["Test"] = e.test
    if e.elapsed is not None:
        doc["Elapsed"] = e.elapsed
    if e.output is not None:
        doc["Output"] = e.output
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def results_json(events: Iterable[GoEvent]) -> str:
    return "".join(event_json(e) + "\n" for e in events)


def e2e_log(events: Iterable[GoEvent]) -> str:
    return "".join(e.output for e in events if e.action == "output" and e.output is not None)
