"""A small subset of CEL for DeviceClass and request selectors, compiled to Python closures.

Supported: `device.driver`, `device.attributes["domain"].name` (also `["name"]`), string/int/bool
literals, `== != < <= > >=`, `&& || !`, parentheses, `"name" in device.attributes["domain"]` and
`has(device.attributes["domain"].name)`. Anything else (functions such as `semver(...)`, `matches`,
capacity quantities) does not compile: the caller gets `None` ("cannot judge") and must not filter on
it. Evaluation errors follow CEL: a missing attribute is an error, absorbed by `false && _` and `true || _`,
and a selector that ends in an error does not match.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from scheduler_plugin.model import AttrValue


class Unsupported(Exception):
    """The expression uses CEL the extender does not evaluate."""


class _Err:
    """CEL evaluation error value (missing key, bad operand)."""


ERR = _Err()

# What an expression sees: the device's driver and its attributes grouped by domain.
Env = tuple[str, Mapping[str, Mapping[str, AttrValue]]]
Fn = Callable[[Env], Any]

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<num>-?\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\].,]))"""
)


def _tokens(src: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    src = src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            raise Unsupported(f"cannot read CEL at {src[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(src) and src[pos].isspace():
            pos += 1
    return out


@dataclass
class _Parser:
    toks: list[tuple[str, str]]
    i: int = 0

    def peek(self) -> str:
        return self.toks[self.i][1] if self.i < len(self.toks) else ""

    def take(self, want: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise Unsupported("unexpected end of expression")
        t = self.toks[self.i]
        if want is not None and t[1] != want:
            raise Unsupported(f"expected {want!r}, got {t[1]!r}")
        self.i += 1
        return t

    def parse(self) -> Fn:
        fn = self.or_()
        if self.i != len(self.toks):
            raise Unsupported(f"unexpected {self.peek()!r}")
        return fn

    def or_(self) -> Fn:
        left = self.and_()
        while self.peek() == "||":
            self.take()
            left = _or(left, self.and_())
        return left

    def and_(self) -> Fn:
        left = self.cmp()
        while self.peek() == "&&":
            self.take()
            left = _and(left, self.cmp())
        return left

    def cmp(self) -> Fn:
        left = self.unary()
        op = self.peek()
        if op in ("==", "!=", "<", "<=", ">", ">="):
            self.take()
            return _compare(op, left, self.unary())
        if op == "in":
            self.take()
            return _in(left, self.unary())
        return left

    def unary(self) -> Fn:
        if self.peek() == "!":
            self.take()
            inner = self.unary()
            return lambda env: ERR if not isinstance(v := inner(env), bool) else not v
        return self.postfix()

    def postfix(self) -> Fn:
        fn = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "id" or self.peek() == "(":
                    raise Unsupported(f"method or field {name!r} not supported")
                fn = _field(fn, name)
            else:
                key = self.or_()
                self.take("]")
                fn = _index(fn, key)
        return fn

    def primary(self) -> Fn:
        kind, text = self.take()
        if kind == "str":
            s = bytes(text[1:-1], "utf-8").decode("unicode_escape")
            return lambda env: s
        if kind == "num":
            n = int(text)
            return lambda env: n
        if text == "(":
            fn = self.or_()
            self.take(")")
            return fn
        if text in ("true", "false"):
            b = text == "true"
            return lambda env: b
        if text == "device":
            return lambda env: _DEVICE
        if text == "has":
            self.take("(")
            inner = self.postfix()
            self.take(")")
            return lambda env: inner(env) is not ERR
        raise Unsupported(f"{text!r} not supported")


class _DeviceMarker:
    pass


_DEVICE = _DeviceMarker()


class _Attributes:
    pass


_ATTRS = _Attributes()


def _field(fn: Fn, name: str) -> Fn:
    def get(env: Env) -> Any:
        base = fn(env)
        if base is _DEVICE:
            if name == "driver":
                return env[0]
            if name == "attributes":
                return _ATTRS
            raise Unsupported(f"device.{name} not supported")
        if isinstance(base, Mapping):
            return base.get(name, ERR)
        return ERR

    # Catch unsupported fields at compile time: evaluate against an empty device once.
    try:
        get(("", {}))
    except Unsupported:
        raise
    except Exception:
        pass
    return get


def _index(fn: Fn, key: Fn) -> Fn:
    def get(env: Env) -> Any:
        base, k = fn(env), key(env)
        if base is _ATTRS:
            return env[1].get(k, {}) if isinstance(k, str) else ERR
        if isinstance(base, Mapping) and isinstance(k, str):
            return base.get(k, ERR)
        return ERR

    return get


def _in(left: Fn, right: Fn) -> Fn:
    def ev(env: Env) -> Any:
        k, m = left(env), right(env)
        if isinstance(m, Mapping) and isinstance(k, str):
            return k in m
        return ERR

    return ev


def _and(a: Fn, b: Fn) -> Fn:
    def ev(env: Env) -> Any:
        x = a(env)
        if x is False:
            return False
        y = b(env)
        if y is False:
            return False
        return True if x is True and y is True else ERR

    return ev


def _or(a: Fn, b: Fn) -> Fn:
    def ev(env: Env) -> Any:
        x = a(env)
        if x is True:
            return True
        y = b(env)
        if y is True:
            return True
        return False if x is False and y is False else ERR

    return ev


def _compare(op: str, a: Fn, b: Fn) -> Fn:
    def ev(env: Env) -> Any:
        x, y = a(env), b(env)
        if x is ERR or y is ERR or isinstance(x, Mapping | _Attributes | _DeviceMarker) or isinstance(
            y, Mapping | _Attributes | _DeviceMarker
        ):
            return ERR
        if op == "==":
            return type(x) is type(y) and x == y
        if op == "!=":
            return not (type(x) is type(y) and x == y)
        if type(x) is not type(y) or isinstance(x, bool):
            return ERR
        if op == "<":
            return x < y
        if op == "<=":
            return x <= y
        if op == ">":
            return x > y
        return x >= y

    return ev


Compiled = Callable[[str, Mapping[str, Mapping[str, AttrValue]]], bool] | None


class CelCache:
    """Compiled selectors by source text; one per index (no module-level state)."""

    def __init__(self) -> None:
        self._fns: dict[str, Fn | None] = {}

    def compile(self, src: str) -> Fn | None:
        if src not in self._fns:
            try:
                self._fns[src] = _Parser(_tokens(src)).parse()
            except Unsupported:
                self._fns[src] = None
        return self._fns[src]

    def evaluate(self, src: str, driver: str, attrs: Mapping[str, Mapping[str, AttrValue]]) -> bool | None:
        """True / False, or None when the expression is outside the supported subset."""
        fn = self.compile(src)
        if fn is None:
            return None
        try:
            return fn((driver, attrs)) is True
        except Unsupported:
            return None


def by_domain(attrs: tuple[tuple[str, AttrValue], ...]) -> dict[str, dict[str, AttrValue]]:
    """Qualified attribute names grouped as CEL sees them: `device.attributes[domain][name]`."""
    out: dict[str, dict[str, AttrValue]] = {}
    for q, v in attrs:
        domain, _, name = q.rpartition("/")
        out.setdefault(domain, {})[name] = v
    return out
