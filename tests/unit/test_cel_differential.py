"""The extender's CEL subset against a maintained CEL implementation, on generated selectors and devices.

The reference is `common-expression-language` (Python bindings of the Rust `cel` crate, a dev
dependency). Where our subset answers, it must answer as CEL does: true, false, or an error. Generated
expressions stay inside the subset, so "cannot judge" is itself a failure here.

Two Kubernetes rules the reference does not know are set up in its input rather than in its engine:
every domain the generator can name is present (Kubernetes reads an unknown domain as an empty map), and
a result that is not a bool counts as an error (Kubernetes cannot convert it). `version` attributes are
left out: the reference has no semver type; tests/unit/test_cel.py covers them from cel-go's rules.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler_plugin.cel import ERROR, INT_MAX, INT_MIN, CelCache, Outcome, tokens
from scheduler_plugin.model import AttrValue

cel = pytest.importorskip("cel")

DOMAINS = ("topodra.dev", "resource.kubernetes.io", "x.example")  # the last one is never populated
NAMES = ("model", "index", "mem", "ok", "uuid", "Ä")  # "Ä" only through ["..."]
DRIVERS = ("topodra.dev", "other.dev")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

chars = st.characters(codec="utf-8", exclude_categories=("Cs",))
texts = st.sampled_from(["", "H100", "h", "Ä", "é", "a\nb", "\\", '"', "'", "😀", "topodra.dev"]) | st.text(chars,
                                                                                                        max_size=5)
ints = st.integers(-3, 3) | st.sampled_from([INT_MIN, INT_MAX, 80, 0x7F])
values: st.SearchStrategy[AttrValue] = st.one_of(texts, ints, st.booleans())

_SIMPLE = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
           "\\": "\\\\", '"': '\\"', "'": "\\'", "`": "\\`", "?": "\\?"}


@st.composite
def string_literal(draw: st.DrawFn, value: st.SearchStrategy[str] = texts) -> tuple[str, str]:
    """(CEL source, the string it denotes): any quoting, raw when possible, escapes chosen per character."""
    s = draw(value)
    quote = draw(st.sampled_from(['"', "'", '"""', "'''"]))
    triple = len(quote) == 3
    raw_ok = "\\" not in s and "\r" not in s and quote[0] not in s and (triple or "\n" not in s)
    # The reference's lexer rejects NUL inside raw triple-quoted strings (cel-go's grammar allows it).
    raw_ok = raw_ok and not (triple and "\0" in s)
    if raw_ok and draw(st.booleans()):
        return f"{draw(st.sampled_from('rR'))}{quote}{s}{quote}", s
    out = []
    for i, c in enumerate(s):
        cp = ord(c)
        forms = []
        must = c in "\\\r" or c == quote[0] or (c == "\n" and not triple)
        if not must:
            forms.append(c)
        if c in _SIMPLE:
            forms.append(_SIMPLE[c])
        if cp <= 0xFF:
            forms += [f"\\x{cp:02x}", f"\\X{cp:02X}"]
        if cp <= 0o377:
            forms.append(f"\\{cp:03o}")
        if cp <= 0xFFFF:
            forms.append(f"\\u{cp:04x}")
        forms.append(f"\\U{cp:08X}")
        form = draw(st.sampled_from(forms))
        # Inside a triple-quoted string a raw quote char next to the closing delimiter would end it early.
        if triple and c == quote[0] and (i == len(s) - 1):
            form = "\\" + c
        out.append(form)
    return f"{quote}{''.join(out)}{quote}", s


@st.composite
def int_literal(draw: st.DrawFn) -> str:
    n = draw(ints)
    if draw(st.booleans()):
        return str(n) if n >= 0 else f"-{draw(st.sampled_from(['', ' ']))}{-n}"
    return f"0x{n:x}" if n >= 0 else f"-0x{-n:x}"


@st.composite
def attr_ref(draw: st.DrawFn, dotted: bool = False) -> str:
    domain = draw(string_literal(st.sampled_from(DOMAINS)))[0]
    name = draw(st.sampled_from(NAMES[:-1] if dotted else NAMES))
    if dotted or (name.isidentifier() and name.isascii() and draw(st.booleans())):
        return f"device.attributes[{domain}].{name}"
    return f"device.attributes[{domain}][{draw(string_literal(st.just(name)))[0]}]"


atoms = st.one_of(attr_ref(), st.just("device.driver"), string_literal().map(lambda t: t[0]), int_literal(),
                  st.sampled_from(["true", "false"]))


def _paren(s: str) -> str:
    return f"({s})"


base_bools = st.one_of(
    st.tuples(atoms, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), atoms).map(" ".join),
    attr_ref(dotted=True).map(lambda r: f"has({r})"),
    st.tuples(string_literal(st.sampled_from(NAMES)), string_literal(st.sampled_from(DOMAINS))).map(
        lambda t: f"{t[0][0]} in device.attributes[{t[1][0]}]"),
    # Not `x in []`: Kubernetes folds it to false (cel-go OptOptimize), the reference evaluates x first.
    st.tuples(atoms, st.lists(atoms, min_size=1, max_size=3)).map(lambda t: f"{t[0]} in [{', '.join(t[1])}]"),
    st.tuples(atoms.map(_paren), st.sampled_from(["startsWith", "endsWith", "contains"]), atoms).map(
        lambda t: f"{t[0]}.{t[1]}({t[2]})"),
    attr_ref(), st.sampled_from(["true", "false"]),
)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(lambda x: f"!{_paren(x)}"),
        st.tuples(inner, st.sampled_from(["&&", "||", "==", "!="]), inner).map(
            lambda t: f"{_paren(t[0])} {t[1]} {_paren(t[2])}"),
        st.tuples(inner, inner, inner).map(lambda t: f"{_paren(t[0])} ? {_paren(t[1])} : {_paren(t[2])}"),
    )


selectors = st.recursive(base_bools, _extend, max_leaves=6)
devices = st.tuples(
    st.sampled_from(DRIVERS),
    st.dictionaries(st.sampled_from(DOMAINS[:2]),
                    st.dictionaries(st.sampled_from(NAMES), values, min_size=2, max_size=6), max_size=2))


def reference(src: str, driver: str, attrs: dict[str, dict[str, AttrValue]]) -> Outcome | str:
    """What CEL says; "unparsed" when the reference cannot read the expression."""
    ctx: dict[str, Any] = {"device": {"driver": driver,
                                      "attributes": {d: dict(attrs.get(d, {})) for d in DOMAINS}}}
    try:
        r = cel.evaluate(src, ctx)
    except ValueError as e:
        if "Failed to parse" in str(e):
            return "unparsed"
        return ERROR
    except Exception:
        return ERROR
    return r if type(r) is bool else ERROR


@SETTINGS
@given(string_literal())
def test_string_literals_decode_like_cel(lit: tuple[str, str]) -> None:
    src, value = lit
    assert tokens(src)[0].value == value
    assert cel.evaluate(src) == value


@SETTINGS
@given(selectors, devices)
def test_subset_answers_like_cel(src: str, device: tuple[str, dict[str, dict[str, AttrValue]]]) -> None:
    driver, attrs = device
    ours = CelCache().outcome(src, driver, attrs)
    assert ours is not None, f"generated selector outside the subset: {src}"
    assert reference(src, driver, attrs) is ours, src


@pytest.mark.parametrize(("src", "attrs"), [
    ('device.attributes["topodra.dev"].productName == "Ä"', {"topodra.dev": {"productName": "Ä"}}),
    ('device.attributes["topodra.dev"].productName == "\\u00c4"', {"topodra.dev": {"productName": "Ä"}}),
    ('device.attributes["x.example"].model == "H100"', {}),
    ('has(device.attributes["x.example"].model)', {}),
])
def test_known_cases(src: str, attrs: dict[str, dict[str, AttrValue]]) -> None:
    assert reference(src, "topodra.dev", attrs) is CelCache().outcome(src, "topodra.dev", attrs)
