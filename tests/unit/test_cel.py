"""The extender's CEL subset on its own: literals, operators, errors, the semver library, what it refuses.

Expected answers are those of Kubernetes (cel-go with the Kubernetes library, as
k8s.io/dynamic-resource-allocation/cel sets it up): an unknown attribute domain is an empty map, a
`version` attribute is a semver object, a runtime error is ERROR (the allocator gives up on the node,
the extender counts the device as not matching), and forms outside the subset are None ("cannot judge").
"""

from __future__ import annotations

import pytest

from scheduler_plugin.cache import apply_event
from scheduler_plugin.cel import ERROR, CelCache, Outcome, parse_semver, tokens
from scheduler_plugin.config import default_config
from scheduler_plugin.filter import run_filter
from scheduler_plugin.model import AttrValue, ListAttr, Version, attr_value, parse_pod
from tests.unit.test_extender_support import add_node, claim, dev, make_index, pod

D = 'device.attributes["topodra.dev"]'
ATTRS: dict[str, dict[str, AttrValue]] = {
    "topodra.dev": {"productName": "Ä", "model": "H100", "index": 0, "mem": 80, "ok": True,
                    "driverVersion": Version("550.54.15"), "fw": Version("1.2.3-rc.1")},
    "resource.kubernetes.io": {"pcieRoot": "pci0000:00"},
}


def run(src: str, attrs: dict[str, dict[str, AttrValue]] | None = None, driver: str = "topodra.dev") -> Outcome:
    return CelCache().outcome(src, driver, ATTRS if attrs is None else attrs)


@pytest.mark.parametrize(("literal", "value"), [
    (r'"a\nb"', "a\nb"), (r'"\t\\\"\'"', "\t\\\"'"), (r"'\a\b\f\r\v\?\`'", "\a\b\f\r\v?`"),
    (r'"\x41\X42"', "AB"), (r'"\u00c4"', "Ä"), (r'"\U0001F600"', "\U0001F600"), (r'"\101\303"', "AÃ"),
    (r'"\xc4"', "Ä"),  # a code point, not a byte: the same string as "Ä"
    (r'r"\n\x41"', "\\n\\x41"), (r"R'\'", "\\"), ('"""a"b\nc"""', 'a"b\nc'), ("'''x\r\ny'''", "x\ny"),
    (r'r"""\d+"""', "\\d+"), ('"Ä😀"', "Ä😀"),
])
def test_string_literals_follow_the_cel_spec(literal: str, value: str) -> None:
    toks = tokens(literal)
    assert (toks[0].kind, toks[0].value) == ("str", value)


@pytest.mark.parametrize("literal", [r'"\q"', r'"\x4"', r'"\u12"', r'"\400"', r'"\uD800"', r'"\U00110000"',
                                     '"a\nb"', '"open', r'"a\"'])
def test_malformed_string_literals_cannot_be_judged(literal: str) -> None:
    assert run(f"{D}.model == {literal}") is None


@pytest.mark.parametrize(("src", "want"), [
    (f'{D}.model == "H100"', True), (f'{D}.model != "H100"', False), (f'{D}.model == "A100"', False),
    (f'{D}.mem >= 80', True), (f'{D}.mem < 80', False), (f'{D}.mem > 0x4F', True), (f"{D}.index < 1", True),
    (f'{D}.model < "I"', True), ('"a" < "b"', True), ('"é" > "z"', True),  # code point (= UTF-8 byte) order
    ("true > false", True), (f"{D}.ok == true", True), (f"!{D}.ok", False), (f"!!{D}.ok", True),
    (f'{D}.mem == "80"', False), (f'{D}.mem != "80"', True), (f"{D}.ok == 1", False),  # mixed types: unequal
    (f'{D}.mem < "80"', ERROR), (f"{D}.ok < 1", ERROR), (f"!{D}.mem", ERROR),  # ...but not ordered
    ('device.driver == "topodra.dev"', True), ('device.driver.startsWith("topo")', True),
    (f'{D}.model.endsWith("100") && {D}.model.contains("H1")', True), (f"{D}.mem.startsWith(\"8\")", ERROR),
    (f'{D}["model"] == "H100"', True), ('device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:00"', True),
    (f'"model" in {D}', True), (f'"nope" in {D}', False), ('"topodra.dev" in device.attributes', True),
    ('"x.dev" in device.attributes', False),
    (f'{D}.model in ["A100", "H100"]', True), (f"{D}.mem in [1, 2]", False), (f'{D}.mem in ["80"]', False),
    (f"has({D}.model)", True), (f"has({D}.nope)", False), ('has(device.attributes["x.dev"].model)', False),
    (f'{D}.ok ? {D}.mem == 80 : false', True), (f"{D}.mem ? true : false", ERROR),
    (f'{D}.mem == 80 == true', True), ("1 < 2 == true", True), ("-5 < 0", True),
    ("-9223372036854775808 < 9223372036854775807", True),
    (f'{D}.model == "H100" // trailing comment', True), (f'\n\t{D}.ok\r\n', True),
    (f"{D}.model", ERROR),  # not a bool: Kubernetes cannot convert the result
])
def test_operators(src: str, want: Outcome) -> None:
    assert run(src) is want


@pytest.mark.parametrize(("src", "want"), [
    (f"{D}.nope == 1", ERROR), ('device.attributes["x.dev"].model == "H100"', ERROR),  # unknown domain: empty map
    (f"false && {D}.nope == 1", False), (f"{D}.nope == 1 && false", False),  # && and || absorb errors
    (f"true || {D}.nope == 1", True), (f"{D}.nope == 1 || true", True),
    (f"true && {D}.nope == 1", ERROR), (f"false || {D}.nope == 1", ERROR), (f"!({D}.nope == 1)", ERROR),
    (f"{D}.nope != 1", ERROR), (f"{D}.model[0] == 1", ERROR), (f"[1, {D}.nope][0] == 1", ERROR),
    (f'"x" in {D}.model', ERROR),
])
def test_runtime_errors(src: str, want: Outcome) -> None:
    assert run(src) is want


def test_an_error_does_not_match() -> None:
    """The allocator never hands out a device whose selector fails; the extender counts it as no match."""
    assert CelCache().evaluate(f"{D}.nope == 1", "topodra.dev", ATTRS) is False


@pytest.mark.parametrize(("src", "want"), [
    (f'{D}.driverVersion == "550.54.15"', ERROR),  # a semver never equals a string: no matching overload
    (f'{D}.driverVersion != "550.54.15"', True),  # cel-go's `!=` is "== is not true"
    (f'"550.54.15" == {D}.driverVersion', False),  # string.Equal(semver) is plain false
    # A list of literals is a hash-set lookup in Kubernetes (cel-go OptOptimize); a semver cannot be hashed.
    (f'{D}.driverVersion in ["550.54.15"]', ERROR), (f'{D}.driverVersion in ["550.54.15", device.driver]', False),
    (f'{D}.driverVersion in [semver("550.54.15")]', True), (f"{D}.nope in []", False),
    (f'{D}.driverVersion < semver("600.0.0")', ERROR),  # semver has no ordering operators
    (f'{D}.driverVersion == semver("550.54.15")', True), (f'{D}.driverVersion == semver("550.54.16")', False),
    (f'{D}.driverVersion.isGreaterThan(semver("550.9.99"))', True),
    (f'{D}.driverVersion.isLessThan(semver("550.54.15"))', False),
    (f'{D}.driverVersion.compareTo(semver("550.54.15")) == 0', True),
    (f"{D}.driverVersion.major() == 550 && {D}.driverVersion.patch() == 15", True),
    (f'{D}.fw.isLessThan(semver("1.2.3"))', True),  # a pre-release ranks below its release
    (f'{D}.fw.isGreaterThan(semver("1.2.3-beta.2"))', True), (f'{D}.fw == semver("1.2.3-rc.1+build.5")', True),
    ('semver("1.2.3-rc.10").isGreaterThan(semver("1.2.3-rc.9"))', True),  # numeric identifiers by value
    ('semver("1.2.3-rc.a").isGreaterThan(semver("1.2.3-rc.9"))', True),  # letters above numbers
    ('semver("1.2.3-rc").isLessThan(semver("1.2.3-rc.0"))', True),
    ('semver("1.02.3") == semver("1.2.3")', ERROR), ('semver("v1.2", true) == semver("1.2.0")', True),
    ('semver("01.2.3", true).major() == 1', True), ('isSemver("1.2")', False), ('isSemver("v1.2", true)', True),
    (f"{D}.model.isGreaterThan(semver(\"1.0.0\"))", ERROR), (f"{D}.driverVersion.startsWith(\"5\")", ERROR),
])
def test_versions_are_semver_objects(src: str, want: Outcome) -> None:
    assert run(src) is want


def test_an_invalid_version_attribute_fails_every_selector() -> None:
    """Kubernetes parses every version attribute before it evaluates anything."""
    attrs: dict[str, dict[str, AttrValue]] = {"topodra.dev": {"model": "H100", "v": Version("1.0")}}
    assert run(f'{D}.model == "H100"', attrs) is ERROR


def test_list_attributes_exist_but_are_not_judged() -> None:
    """List-valued attributes (alpha in 1.37): `has()` must see them; reading one is "cannot judge"
    (before, they were dropped: `has()` said false and any read was an error, refusing nodes)."""
    lst = attr_value({"ints": [1, 2]})
    assert lst == ListAttr((1, 2)) and attr_value({"versions": ["1.0.0"]}) == ListAttr((Version("1.0.0"),))
    attrs: dict[str, dict[str, AttrValue]] = {"topodra.dev": {"model": "H100", "lst": ListAttr((1, 2))}}
    assert run(f"has({D}.lst)", attrs) is True and run(f'"lst" in {D}', attrs) is True
    assert run(f"{D}.lst == [1, 2]", attrs) is None and run(f"1 in {D}.lst", attrs) is None
    assert run(f'{D}.model == "H100"', attrs) is True


def test_semver_parser() -> None:
    v = parse_semver("1.2.3-alpha.01")
    assert v is None  # numeric pre-release identifiers have no leading zeros
    assert parse_semver("18446744073709551616.0.0") is None
    w = parse_semver("1.2.3-x-y.7+meta-1.2")
    assert w is not None and (w.major, w.minor, w.patch) == (1, 2, 3) and len(w.pre) == 2


@pytest.mark.parametrize("src", [
    f'{D}.model.matches("H1.*")', 'device.capacity["topodra.dev"].memory.compareTo(quantity("40Gi")) >= 0',
    "device.allowMultipleAllocations", f"{D}.mem + 1 > 80", f"{D}.mem * 2 > 80", f"{D}.mem > 1.5",
    f"{D}.mem > 1u", f'{D}.model == b"H100"', f"{D}.model == null", f'cel.bind(d, {D}, d.model == "H100")',
    f'{D}.?model.orValue("") == "H100"', f"{D}.exists(k, k == \"model\")", f"size({D}) > 1",
    "other.x == 1", f"{D}.model = \"H100\"", f"{D}.model == 'H100' &", "9223372036854775808 > 0",
    f'{D}.model == "H100" ||', "", '{"a": 1}["a"] == 1', f"{D} == {D}", "has(device.attributes)",
    f"has({D}['model'])",
])
def test_forms_outside_the_subset_cannot_be_judged(src: str) -> None:
    c = CelCache()
    assert c.compile(src) is None or c.outcome(src, "topodra.dev", ATTRS) is None
    assert c.evaluate(src, "topodra.dev", ATTRS) is None


def test_compiled_cache_is_a_bounded_lru() -> None:
    c = CelCache(size=3)
    for i in range(3):
        c.compile(f"{D}.mem == {i}")
    c.compile(f"{D}.mem == 0")  # used again: now the most recent
    c.compile(f"{D}.mem == 3")
    assert len(c) == 3
    assert list(c._entries) == [f"{D}.mem == 2", f"{D}.mem == 0", f"{D}.mem == 3"]


def test_names_come_from_the_syntax_tree() -> None:
    """An escaped spelling of an identity attribute is still found (the profile must keep it)."""
    assert "index" in CelCache().names(f'{D}["\\x69ndex"] < 1')


# ---- the wrong answers, as regressions ------------------------------------------------------------
def test_non_ascii_string_literal_matches() -> None:
    assert run(f'{D}.productName == "Ä"') is True


def test_version_attribute_is_not_a_string() -> None:
    assert run(f'{D}.driverVersion == "550.54.15"') is ERROR


CFG = default_config()


def test_device_class_on_an_identity_attribute_is_judged_on_the_devices() -> None:
    """`index` is left out of shared profiles unless a DeviceClass reads it; then the class is judged
    exactly, still through the shared (per signature) path, and nodes are no longer refused for nothing."""
    idx = make_index()
    add_node(idx, "a", [dev(f"gpu-{i}", "gpu", "r0", 0, **{"topodra.dev/index": i}) for i in range(4)])
    add_node(idx, "b", [dev(f"gpu-{i}", "gpu", "r0", 0, **{"topodra.dev/index": i + 4}) for i in range(4)])
    apply_event(idx, "deviceclasses", "ADDED", {"metadata": {"name": "first.topodra.dev"}, "spec": {"selectors": [
        {"cel": {"expression": f'{D}.type == "gpu" && {D}.index < 1'}}]}})
    for n, count in (("one", 1), ("two", 2)):
        spec = {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "first.topodra.dev",
                                                                    "count": count}}]}}
        apply_event(idx, "resourceclaims", "ADDED", claim("ml", n, spec))
    out = run_filter(idx, CFG, parse_pod(pod("q", claims={"acc": "two"})), ("a", "b"), 0.0)
    assert out.passed == [] and out.failed["a"] == "topodra: 1 free GPU, pod needs 2"
    out = run_filter(idx, CFG, parse_pod(pod("p", claims={"acc": "one"})), ("a", "b"), 0.0)
    assert out.passed == ["a"]
    assert out.failed == {"b": "topodra: 0 free GPUs, pod needs 1"}
    assert all(idx.fits(req).shared for req in idx.req_ids)
    # The class goes away: `index` leaves the profiles again, equal hardware shares them.
    apply_event(idx, "deviceclasses", "DELETED", {"metadata": {"name": "first.topodra.dev"}})
    idx.refresh(0.0)
    assert "index" in idx.dropped and len({p.pid for st in idx.nodes.values() for p in st.free}) == 1


def test_request_selector_on_an_identity_attribute_still_uses_exact_devices() -> None:
    idx = make_index()
    add_node(idx, "a", [dev(f"gpu-{i}", "gpu", "r0", 0, **{"topodra.dev/index": i}) for i in range(2)])
    spec = {"devices": {"requests": [{"name": "g", "exactly": {
        "deviceClassName": "gpu.topodra.dev", "selectors": [{"cel": {"expression": f"{D}.index == 1"}}]}}]}}
    apply_event(idx, "resourceclaims", "ADDED", claim("ml", "c", spec))
    out = run_filter(idx, CFG, parse_pod(pod("p", claims={"acc": "c"})), ("a",), 0.0)
    assert out.passed == ["a"]
