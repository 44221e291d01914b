"""`junit.xml` in the shape gotestsum writes for `go test`: one suite per package, one case per test and
subtest (`name="TestX/Sub"`), a failure's or skip's output as the element text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime

from topodra_cli.conformance.model import GO_PACKAGE, CheckResult, Status


def _secs(v: float) -> str:
    return f"{v:.6f}"


def junit_xml(results: Sequence[CheckResult], total_seconds: float, started: float) -> str:
    fails = sum(r.status is Status.FAIL for r in results)
    skips = sum(r.status is Status.SKIP for r in results)
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(fails), errors="0",
                      time=_secs(total_seconds))
    suite = ET.SubElement(root, "testsuite", tests=str(len(results)), failures=str(fails), errors="0",
                          skipped=str(skips), time=_secs(total_seconds), name=GO_PACKAGE,
                          timestamp=datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    props = ET.SubElement(suite, "properties")
    ET.SubElement(props, "property", name="runner", value="topodra conformance")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=GO_PACKAGE, name=r.name, time=_secs(r.elapsed))
        text = "\n".join(r.output) + ("\n" if r.output else "")
        if r.status is Status.FAIL:
            ET.SubElement(case, "failure", message=r.message or "Failed", type="").text = text
        elif r.status is Status.SKIP:
            ET.SubElement(case, "skipped", message=r.message or "Skipped").text = text
    ET.indent(root, space="\t")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
