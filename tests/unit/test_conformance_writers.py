"""The evidence files of `topodra conformance`: go test -v text, test2json events, junit XML, PRODUCT.yaml."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
import yaml

from topodra_cli.conformance.gotest import e2e_log, results_json, rfc3339
from topodra_cli.conformance.harness import Recorder, T, execute
from topodra_cli.conformance.junit import junit_xml
from topodra_cli.conformance.model import GO_PACKAGE, Status
from topodra_cli.conformance.product import Coverage, product_fragment
from topodra_cli.conformance.registry import coverage
from topodra_cli.conformance.requirements import DRA_SUPPORT, GANG_SCHEDULING, SECURE_ACCELERATOR_ACCESS
from topodra_cli.conformance.selection import Selector

T0 = 1_800_000_000.0


def _clock() -> Iterator[float]:
    t = T0
    while True:
        yield t
        t += 0.5


def sample(run: str = "") -> Recorder:
    """Two families: one passes with a skip, one fails in a subtest; an error and a <special> & "quoted" log."""
    ticks = _clock()
    rec = Recorder(clock=lambda: next(ticks))
    sel = Selector(run)

    def access(t: T) -> None:
        t.run("PositiveAccessTest", lambda s: s.log("sees ACCELERATOR_COUNT=1 <gpu-0> & \"ok\""))
        t.run("NegativeIsolationTest", lambda s: s.skip("no second node"))

    def gang(t: T) -> None:
        t.run("PositiveGangScheduling", lambda s: s.log("2 pods\ncomplete"))
        t.run("NegativeGangScheduling", lambda s: s.fail("VIOLATION: neg-job-abc on n1"))

        def boom(s: T) -> None:
            raise RuntimeError("kaput")

        t.run("ResourcesReleased", boom)

    for name, fn in (("TestSecureAcceleratorAccess", access), ("TestGangScheduling", gang)):
        if sel.matches(name):
            execute(T(rec, rec.begin(name), sel), fn)
    rec.finish()
    return rec


def test_outcomes_follow_go_test() -> None:
    rec = sample()
    got = {r.name: r.status for r in rec.results}
    assert got == {
        "TestSecureAcceleratorAccess": Status.PASS,  # a skipped subtest does not fail its parent
        "TestSecureAcceleratorAccess/PositiveAccessTest": Status.PASS,
        "TestSecureAcceleratorAccess/NegativeIsolationTest": Status.SKIP,
        "TestGangScheduling": Status.FAIL,
        "TestGangScheduling/PositiveGangScheduling": Status.PASS,
        "TestGangScheduling/NegativeGangScheduling": Status.FAIL,
        "TestGangScheduling/ResourcesReleased": Status.FAIL,
    }
    released = next(r for r in rec.results if r.name.endswith("ResourcesReleased"))
    assert released.message == "error: RuntimeError: kaput"


def test_e2e_log_is_go_test_v_output() -> None:
    text = e2e_log(sample().events)
    lines = re.sub(r"\(\d+\.\d\ds\)", "(T)", text).splitlines()  # durations depend on the fake clock's ticks
    # Logs stream as they come; subtests' results follow their parent's, indented (go test -v).
    assert lines[:8] == [
        "=== RUN   TestSecureAcceleratorAccess",
        "=== RUN   TestSecureAcceleratorAccess/PositiveAccessTest",
        '    sees ACCELERATOR_COUNT=1 <gpu-0> & "ok"',
        "=== RUN   TestSecureAcceleratorAccess/NegativeIsolationTest",
        "    no second node",
        "--- PASS: TestSecureAcceleratorAccess (T)",
        "    --- PASS: TestSecureAcceleratorAccess/PositiveAccessTest (T)",
        "    --- SKIP: TestSecureAcceleratorAccess/NegativeIsolationTest (T)",
    ]
    gang = lines.index("--- FAIL: TestGangScheduling (T)")
    assert lines[gang + 1:gang + 4] == [
        "    --- PASS: TestGangScheduling/PositiveGangScheduling (T)",
        "    --- FAIL: TestGangScheduling/NegativeGangScheduling (T)",
        "    --- FAIL: TestGangScheduling/ResourcesReleased (T)",
    ]
    assert re.search(r"^--- FAIL: TestGangScheduling \(\d+\.\d\ds\)$", text, re.M)
    assert lines[-2] == "FAIL"
    assert lines[-1].startswith(f"FAIL\t{GO_PACKAGE}\t")


def test_results_json_is_a_test2json_stream() -> None:
    rec = sample()
    text = results_json(rec.events)
    events = [json.loads(line) for line in text.splitlines()]
    assert text.endswith("\n") and len(events) == len(rec.events)
    allowed = {"start", "run", "pause", "cont", "pass", "bench", "fail", "output", "skip"}
    for e in events:
        assert list(e)[:3] == ["Time", "Action", "Package"]  # Go's field order
        assert set(e) <= {"Time", "Action", "Package", "Test", "Elapsed", "Output"}
        assert e["Action"] in allowed and e["Package"] == GO_PACKAGE
        assert e["Time"].endswith("Z") and e["Time"].startswith("2027-01-15T08:")
        assert ("Output" in e) == (e["Action"] == "output")
        assert ("Elapsed" in e) == (e["Action"] in ("pass", "fail", "skip"))
    assert events[0] == {"Time": rfc3339(T0), "Action": "start", "Package": GO_PACKAGE}
    assert events[-1]["Action"] == "fail" and "Test" not in events[-1]
    ends = {e["Test"]: e["Action"] for e in events if e["Action"] in ("pass", "fail", "skip") and "Test" in e}
    assert ends["TestSecureAcceleratorAccess/NegativeIsolationTest"] == "skip"
    assert ends["TestGangScheduling"] == "fail"
    # Each test's output events, joined, are its go test -v lines; all of them together are the e2e.log.
    assert "".join(e["Output"] for e in events if e["Action"] == "output") == e2e_log(rec.events)
    # Every run is matched by exactly one end, after it; a parent ends after its subtests, as test2json has it.
    runs = [e["Test"] for e in events if e["Action"] == "run"]
    assert sorted(runs) == sorted(ends)
    order = [e["Test"] for e in events if e["Action"] in ("pass", "fail", "skip") and "Test" in e]
    assert order.index("TestGangScheduling") > order.index("TestGangScheduling/ResourcesReleased")
    for e in events:
        if e["Action"] == "output" and "--- " in e["Output"]:
            assert e["Output"].strip().split(": ", 1)[1].startswith(e["Test"] + " (")


def test_rfc3339_trims_like_go() -> None:
    assert rfc3339(T0) == "2027-01-15T08:00:00Z"
    assert rfc3339(T0 + 0.25) == "2027-01-15T08:00:00.25Z"


def test_junit_xml_parses_in_gotestsum_shape() -> None:
    rec = sample()
    root = ET.fromstring(junit_xml(rec.results, 4.5, rec.started_at))
    assert root.tag == "testsuites" and root.get("tests") == "7" and root.get("failures") == "3"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == GO_PACKAGE and suite.get("skipped") == "1" and suite.get("timestamp")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {r.name for r in rec.results}
    assert all(c.get("classname") == GO_PACKAGE and float(c.get("time", "x")) >= 0 for c in cases.values())
    neg = cases["TestGangScheduling/NegativeGangScheduling"].find("failure")
    assert neg is not None and neg.get("message") == "VIOLATION: neg-job-abc on n1"
    skip = cases["TestSecureAcceleratorAccess/NegativeIsolationTest"].find("skipped")
    assert skip is not None and skip.get("message") == "no second node"
    pos = cases["TestSecureAcceleratorAccess/PositiveAccessTest"]
    assert pos.find("failure") is None and pos.find("skipped") is None


def test_run_regex_selects_like_go_test() -> None:
    rec = sample("Gang/Negative")
    assert [r.name for r in rec.results] == ["TestGangScheduling", "TestGangScheduling/NegativeGangScheduling"]
    sel = Selector("TestSecure|TestGang")
    assert sel.matches("TestGangScheduling/Anything") and not sel.matches("TestDRASupport")
    assert Selector("Test[a-zA-Z/]*Access/Pos").matches("TestSecureAcceleratorAccess/PositiveAccessTest")
    assert not Selector("TestSecureAcceleratorAccess/Neg").matches("TestSecureAcceleratorAccess/PositiveAccessTest")


def _entries(text: str) -> dict[str, dict[str, object]]:
    doc = yaml.safe_load(text)
    return {e["id"]: e for entries in doc["spec"].values() for e in entries}


def test_product_fragment_statuses_and_evidence() -> None:
    rec = sample()
    cov = [Coverage(SECURE_ACCELERATOR_ACCESS, "TestSecureAcceleratorAccess"),
           Coverage(GANG_SCHEDULING, "TestGangScheduling"), Coverage(DRA_SUPPORT, "TestDRASupport")]
    text = product_fragment(rec.results, cov, "v1.37.2", "https://k8s.example:6443", now=T0)
    got = _entries(text)
    assert set(got) == {"secure_accelerator_access", "gang_scheduling"}  # TestDRASupport did not run
    sec, gang = got["secure_accelerator_access"], got["gang_scheduling"]
    assert sec["status"] == "Implemented" and sec["level"] == "MUST"
    assert sec["description"] == SECURE_ACCELERATOR_ACCESS.description
    assert sec["evidence"][0] == "file://junit.xml#TestSecureAcceleratorAccess"
    assert gang["status"] == "Partially Implemented"
    assert "VIOLATION: neg-job-abc on n1" in str(gang["notes"])
    assert yaml.safe_load(text)["metadata"] == {"kubernetesVersion": "v1.37"}


@pytest.mark.parametrize(("version", "has_dra", "has_net"), [("v1.35.1", True, False), ("v1.37.0", False, True),
                                                             ("v1.40.0", False, True)])
def test_product_fragment_follows_the_checklist_version(version: str, has_dra: bool, has_net: bool) -> None:
    ticks = _clock()
    rec = Recorder(clock=lambda: next(ticks))
    for fam in ("TestDRASupport", "TestHighPerformanceNetworking"):
        execute(T(rec, rec.begin(fam), Selector("")), lambda t: t.run("Sub", lambda s: None))
    text = product_fragment(rec.results, coverage(), version, "https://x", now=T0)
    got = _entries(text)
    assert ("dra_support" in got) == has_dra
    assert ("high_performance_networking" in got) == has_net
    if not has_dra:
        assert "TestDRASupport (dra_support): no such requirement" in text


def test_all_skipped_is_not_applicable_with_the_reason() -> None:
    ticks = _clock()
    rec = Recorder(clock=lambda: next(ticks))
    execute(T(rec, rec.begin("TestHighPerformanceNetworking"), Selector("")),
            lambda t: t.skip("no candidate node publishes a topodra NIC"))
    got = _entries(product_fragment(rec.results, coverage(), "v1.37.2", "https://x", now=T0))
    net = got["high_performance_networking"]
    assert net["status"] == "N/A" and "no candidate node publishes a topodra NIC" in str(net["notes"])
