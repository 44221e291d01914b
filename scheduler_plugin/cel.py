"""The part of CEL the extender evaluates itself, with the answers Kubernetes gives for DRA selectors.

Kubernetes (k8s.io/dynamic-resource-allocation/cel, cel-go plus the Kubernetes CEL library) sees a device
as `device.driver` and `device.attributes[domain][name]`, where an unknown domain reads as an empty map
and a `version` attribute is a semver object. A device matches when its selector yields true; a runtime
error (missing key, no matching overload) makes the allocator give up on the node for that attempt.

The subset compiled here to Python closures: string (every CEL escape, raw, triple-quoted), int and bool
literals, list literals, `== != < <= > >= in && || ! ?:`, `has(m.f)`, `device.driver`,
`device.attributes[...]` with `.name` / `["name"]`, `startsWith` / `endsWith` / `contains`, and the
semver library (`semver()`, `isSemver()`, `major()` ... `compareTo()`). Per device the answer is true,
false, ERROR or None: outside the subset ("cannot judge"), which the caller must treat as a match.
Selectors the apiserver would reject never reach the extender, so compile errors are also "cannot judge".
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from scheduler_plugin.model import AttrValue, ListAttr, Version


class Unsupported(Exception):
    """The expression uses CEL the extender does not evaluate."""


class _Err:
    """A CEL runtime error value (no such key, no matching overload)."""

    def __repr__(self) -> str:
        return "ERROR"


ERROR = _Err()
ERR = ERROR  # short name inside this module

Attrs = Mapping[str, Mapping[str, AttrValue]]
Env = tuple[str, Attrs]  # what an expression sees: the device's driver and its attributes by domain
Fn = Callable[[Env], Any]
Outcome = bool | _Err | None

INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
CACHE_SIZE = 4096  # compiled selectors kept (least recently used dropped first)


# ---- semantic versions (blang/semver v4, as the Kubernetes semver library uses it) --------------------
@dataclass(frozen=True, slots=True)
class Semver:
    major: int
    minor: int
    patch: int
    pre: tuple[tuple[int, int, str], ...]  # per identifier: (0, number, "") or (1, 0, text); numbers sort first

    def compare(self, o: Semver) -> int:
        a, b = (self.major, self.minor, self.patch), (o.major, o.minor, o.patch)
        if a != b:
            return 1 if a > b else -1
        if self.pre == o.pre:
            return 0
        if not self.pre or not o.pre:  # a release ranks above its pre-releases
            return 1 if not self.pre else -1
        return 1 if self.pre > o.pre else -1


_NUM = re.compile(r"[0-9]+")
_ALNUM = re.compile(r"[0-9A-Za-z-]+")
U64 = 1 << 64


def _number(s: str) -> int | None:
    if not _NUM.fullmatch(s) or (len(s) > 1 and s[0] == "0"):
        return None
    n = int(s)
    return n if n < U64 else None


@lru_cache(maxsize=1024)
def parse_semver(s: str) -> Semver | None:
    """Strict semver 2.0 (`MAJOR.MINOR.PATCH[-pre][+build]`), None when invalid."""
    parts = s.split(".", 2)
    if len(parts) != 3:
        return None
    rest, _, build = parts[2].partition("+")
    if "+" in parts[2] and not all(_ALNUM.fullmatch(b) for b in build.split(".")):
        return None
    patch_s, dash, pre_s = rest.partition("-")
    nums = [_number(parts[0]), _number(parts[1]), _number(patch_s)]
    if any(n is None for n in nums):
        return None
    pre: list[tuple[int, int, str]] = []
    for ident in pre_s.split(".") if dash else ():
        if _NUM.fullmatch(ident):
            n = _number(ident)
            if n is None:
                return None
            pre.append((0, n, ""))
        elif _ALNUM.fullmatch(ident):
            pre.append((1, 0, ident))
        else:
            return None
    major, minor, patch = (int(n or 0) for n in nums)
    return Semver(major, minor, patch, tuple(pre))


def _normalized_semver(s: str) -> Semver | None:
    """`semver(s, true)`: no leading "v", no leading zeros, missing minor / patch filled with 0."""
    parts = s.removeprefix("v").split(".", 2)
    for i, p in enumerate(parts):
        if len(p) > 1:
            p = p.lstrip("0")
            parts[i] = p if p and p[0].isascii() and p[0].isdigit() else "0" + p
    if len(parts) < 3:
        if any(c in parts[-1] for c in "+-"):
            return None
        parts += ["0"] * (3 - len(parts))
    return parse_semver(".".join(parts))


def _int64(n: int) -> int:
    """Go's int64(uint64) conversion (major/minor/patch above 2^63 wrap)."""
    return n - U64 if n > INT_MAX else n


# ---- lexer ---------------------------------------------------------------------------------------------
_WS = re.compile(r"(?:[ \t\n\r\f]+|//[^\n]*)+")
_NUMBER = re.compile(
    r"(?P<double>[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<uint>(?:0x[0-9a-fA-F]+|[0-9]+)[uU])|(?P<int>0x[0-9a-fA-F]+|[0-9]+)")
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
_OPS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", "{", "}", ".", ",", "?", ":",
        "-", "+", "*", "/", "%")
_PREFIXES = frozenset({"r", "R", "b", "B", "rb", "rB", "Rb", "RB", "br", "bR", "Br", "BR"})
_RESERVED = frozenset({"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
                       "loop", "package", "namespace", "return", "var", "void", "while", "null"})
_SIMPLE_ESC = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
               "'": "'", '"': '"', "`": "`", "?": "?"}
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Tok:
    kind: str  # str, bytes, int, uint, double, id, op, end
    text: str
    value: str = ""  # decoded string literal


def _code_point(v: int) -> str:
    if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
        raise Unsupported("invalid code point in string literal")
    return chr(v)


def _unescape(body: str) -> str:
    """CEL escapes, on the source text as Unicode: \\x, \\u, \\U and octal name code points."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise Unsupported("backslash at the end of a string literal")
        e = body[i + 1]
        if e in _SIMPLE_ESC:
            out.append(_SIMPLE_ESC[e])
            i += 2
        elif e in "xXuU":
            width = {"x": 2, "X": 2, "u": 4, "U": 8}[e]
            digits = body[i + 2:i + 2 + width]
            if len(digits) != width or not set(digits) <= _HEX:
                raise Unsupported(f"bad \\{e} escape")
            out.append(_code_point(int(digits, 16)))
            i += 2 + width
        elif e in "0123":
            digits = body[i + 1:i + 4]
            if len(digits) != 3 or not all("0" <= d <= "7" for d in digits):
                raise Unsupported("bad octal escape")
            out.append(_code_point(int(digits, 8)))
            i += 4
        else:
            raise Unsupported(f"unknown escape \\{e}")
    return "".join(out)


def _string(src: str, pos: int, prefix: str) -> tuple[Tok, int]:
    """The string literal whose quote starts at `pos`; returns it and the position after it."""
    raw = "r" in prefix.lower()
    q = src[pos]
    triple = src.startswith(q * 3, pos)
    delim = q * 3 if triple else q
    i = pos + len(delim)
    while True:
        if i >= len(src):
            raise Unsupported("unterminated string literal")
        c = src[i]
        if src.startswith(delim, i):
            break
        if not triple and c in "\n\r":
            raise Unsupported("newline in string literal")
        i += 2 if c == "\\" and not raw else 1
    body = src[pos + len(delim):i].replace("\r\n", "\n").replace("\r", "\n")
    value = body if raw else _unescape(body)
    kind = "bytes" if "b" in prefix.lower() else "str"
    return Tok(kind, src[pos - len(prefix):i + len(delim)], value), i + len(delim)


def tokens(src: str) -> list[Tok]:
    out: list[Tok] = []
    pos, n = 0, len(src)
    while True:
        m = _WS.match(src, pos)
        if m:
            pos = m.end()
        if pos >= n:
            out.append(Tok("end", ""))
            return out
        c = src[pos]
        if c in "\"'":
            tok, pos = _string(src, pos, "")
        elif m := _IDENT.match(src, pos):
            word = m.group()
            if word in _PREFIXES and m.end() < n and src[m.end()] in "\"'":
                tok, pos = _string(src, m.end(), word)
            else:
                tok, pos = Tok("id", word), m.end()
        elif m := _NUMBER.match(src, pos):
            kind = m.lastgroup or "int"
            tok, pos = Tok(kind, m.group()), m.end()
        else:
            op = next((o for o in _OPS if src.startswith(o, pos)), None)
            if op is None:
                raise Unsupported(f"cannot read CEL at {src[pos:pos + 20]!r}")
            tok, pos = Tok("op", op), pos + len(op)
        out.append(tok)


# ---- syntax tree ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Lit:
    value: Any


@dataclass(frozen=True, slots=True)
class Ident:
    name: str


@dataclass(frozen=True, slots=True)
class Select:
    operand: Node
    field: str


@dataclass(frozen=True, slots=True)
class Index:
    operand: Node
    key: Node


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    target: Node | None
    args: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ListLit:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Op:
    op: str  # ! == != < <= > >= in && || ?:
    args: tuple[Node, ...]


Node = Lit | Ident | Select | Index | Call | ListLit | Op

_RELOPS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in"})


class _Parser:
    """Recursive descent over the CEL grammar (precedence: ?: then || then && then relations)."""

    def __init__(self, toks: list[Tok]) -> None:
        self.toks = toks
        self.i = 0
        self.names: set[str] = set()  # string literals and field names: which attributes the expression may read

    def peek(self) -> Tok:
        return self.toks[self.i]

    def at(self, text: str) -> bool:
        t = self.toks[self.i]
        return t.kind in ("op", "id") and t.text == text

    def take(self, text: str | None = None) -> Tok:
        t = self.toks[self.i]
        if t.kind == "end" or (text is not None and not (t.kind in ("op", "id") and t.text == text)):
            raise Unsupported(f"expected {text or 'more'}, got {t.text!r}")
        self.i += 1
        return t

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "end":
            raise Unsupported(f"unexpected {self.peek().text!r}")
        return node

    def expr(self) -> Node:
        cond = self.or_()
        if self.at("?"):
            self.take()
            a = self.or_()
            self.take(":")
            return Op("?:", (cond, a, self.expr()))
        return cond

    def or_(self) -> Node:
        left = self.and_()
        while self.at("||"):
            self.take()
            left = Op("||", (left, self.and_()))
        return left

    def and_(self) -> Node:
        left = self.relation()
        while self.at("&&"):
            self.take()
            left = Op("&&", (left, self.relation()))
        return left

    def relation(self) -> Node:
        left = self.unary()
        while self.peek().text in _RELOPS and self.peek().kind in ("op", "id"):
            op = self.take().text
            left = Op(op, (left, self.unary()))
        if self.peek().kind == "op" and self.peek().text in ("+", "-", "*", "/", "%"):
            raise Unsupported(f"arithmetic ({self.peek().text}) not supported")
        return left

    def unary(self) -> Node:
        if self.at("!"):
            self.take()
            return Op("!", (self.unary(),))
        if self.at("-"):
            self.take()
            t = self.peek()
            if t.kind != "int":
                raise Unsupported("unary minus only on int literals")
            self.take()
            return self.member(Lit(_int_literal(t.text, negative=True)))
        return self.member(self.primary())

    def member(self, node: Node) -> Node:
        while True:
            if self.at("."):
                self.take()
                t = self.take()
                if t.kind != "id" or t.text in _RESERVED or t.text in ("in", "true", "false"):
                    raise Unsupported(f"bad field name {t.text!r}")
                self.names.add(t.text)
                node = Call(t.text, node, self.args()) if self.at("(") else Select(node, t.text)
            elif self.at("["):
                self.take()
                key = self.expr()
                self.take("]")
                node = Index(node, key)
            else:
                return node

    def args(self) -> tuple[Node, ...]:
        self.take("(")
        out: list[Node] = []
        while not self.at(")"):
            out.append(self.expr())
            if not self.at(")"):
                self.take(",")
        self.take(")")
        return tuple(out)

    def primary(self) -> Node:
        t = self.take()
        if t.kind == "str":
            self.names.add(t.value)
            return Lit(t.value)
        if t.kind == "int":
            return Lit(_int_literal(t.text, negative=False))
        if t.kind != "op" and t.kind != "id":
            raise Unsupported(f"{t.kind} literals not supported")
        if t.text == "(":
            node = self.expr()
            self.take(")")
            return node
        if t.text == "[":
            items: list[Node] = []
            while not self.at("]"):
                items.append(self.expr())
                if not self.at("]"):
                    self.take(",")
            self.take("]")
            return ListLit(tuple(items))
        if t.kind == "id" and t.text in ("true", "false"):
            return Lit(t.text == "true")
        if t.kind == "id" and t.text not in _RESERVED and t.text != "in":
            if self.at("("):
                args = self.args()
                if t.text == "has":
                    if len(args) != 1 or not isinstance(args[0], Select):
                        raise Unsupported("has() needs a field selection")
                    return Op("has", args)
                return Call(t.text, None, args)
            return Ident(t.text)
        raise Unsupported(f"{t.text!r} not supported")


def _int_literal(text: str, negative: bool) -> int:
    n = int(text[2:], 16) if text.startswith("0x") else int(text, 10)
    n = -n if negative else n
    if not INT_MIN <= n <= INT_MAX:
        raise Unsupported("int literal out of range")
    return n


# ---- evaluation ----------------------------------------------------------------------------------------
class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name


_DEVICE = _Marker("device")
_ATTRS = _Marker("device.attributes")
_EMPTY: Mapping[str, AttrValue] = {}


def _read(v: Any) -> Any:
    """An attribute as CEL sees it: `version` values are semver objects."""
    if isinstance(v, Version):
        return parse_semver(v.text) or ERR
    if isinstance(v, ListAttr):
        raise Unsupported("list-valued attribute")
    return v


def _member(base: Any, key: Any) -> Any:
    """`base[key]` and `base.key`: domain maps, attribute maps and list literals."""
    if isinstance(base, Mapping):
        if not isinstance(key, str):
            return ERR
        v = base.get(key, ERR)
        return _read(v) if v is not ERR else ERR
    if isinstance(base, tuple) and type(key) is int:
        return base[key] if 0 <= key < len(base) else ERR
    if base is _DEVICE:
        raise Unsupported("device fields other than driver and attributes")
    return ERR


def _equal(a: Any, b: Any) -> Any:
    """cel-go `a.Equal(b)`: mixed types are unequal, except that a semver only compares with a semver."""
    if isinstance(a, Semver):
        return a.compare(b) == 0 if isinstance(b, Semver) else ERR
    if isinstance(a, _Marker | Mapping | tuple) or isinstance(b, _Marker | Mapping | tuple):
        raise Unsupported("equality of maps, lists or the device")
    return type(a) is type(b) and a == b


def _order(a: Any, b: Any) -> Any:
    """cel-go Compare: ints, strings (code point order = UTF-8 byte order) and bools, same type only."""
    if type(a) is type(b) and type(a) in (int, str, bool):
        return (a > b) - (a < b)
    return ERR


_CMP: dict[str, Callable[[int], bool]] = {
    "<": lambda c: c < 0, "<=": lambda c: c <= 0, ">": lambda c: c > 0, ">=": lambda c: c >= 0}


def _contains(container: Any, x: Any, env: Env) -> Any:
    if container is _ATTRS:
        return isinstance(x, str) and x in env[1]
    if isinstance(container, Mapping):
        return isinstance(x, str) and x in container
    if isinstance(container, tuple):
        # cel-go asks `x.Equal(item)` per item and skips errors: a semver is simply not in a list of strings.
        return any(_equal(x, item) is True for item in container)
    return ERR


def _string_fn(name: str, s: Any, args: list[Any]) -> Any:
    if not isinstance(s, str) or len(args) != 1 or not isinstance(args[0], str):
        return ERR
    if name == "startsWith":
        return s.startswith(args[0])
    if name == "endsWith":
        return s.endswith(args[0])
    return args[0] in s


def _semver_fn(name: str, v: Any, args: list[Any]) -> Any:
    if not isinstance(v, Semver):
        return ERR
    if name in ("major", "minor", "patch"):
        return ERR if args else _int64(getattr(v, name))
    if len(args) != 1 or not isinstance(args[0], Semver):
        return ERR
    c = v.compare(args[0])
    return c if name == "compareTo" else (c > 0 if name == "isGreaterThan" else c < 0)


def _global_fn(name: str, args: list[Any]) -> Any:
    if not args or len(args) > 2 or not isinstance(args[0], str):
        return ERR
    if len(args) == 2 and type(args[1]) is not bool:
        return ERR
    v = _normalized_semver(args[0]) if len(args) == 2 and args[1] else parse_semver(args[0])
    if name == "isSemver":
        return v is not None
    return ERR if v is None else v


_STRING_FNS = frozenset({"startsWith", "endsWith", "contains"})
_SEMVER_FNS = frozenset({"major", "minor", "patch", "isLessThan", "isGreaterThan", "compareTo"})
_GLOBAL_FNS = frozenset({"semver", "isSemver"})


def _const(value: Any) -> Fn:
    return lambda env: value


def _compile(node: Node) -> Fn:
    if isinstance(node, Lit):
        return _const(node.value)
    if isinstance(node, Ident):
        if node.name != "device":
            raise Unsupported(f"variable {node.name!r} not supported")
        return lambda env: _DEVICE
    if isinstance(node, Select):
        if isinstance(node.operand, Ident) and node.operand.name == "device":
            if node.field == "driver":
                return lambda env: env[0]
            if node.field == "attributes":
                return lambda env: _ATTRS
            raise Unsupported(f"device.{node.field} not supported")
        return _lookup(_compile(node.operand), _const(node.field))
    if isinstance(node, Index):
        return _lookup(_compile(node.operand), _compile(node.key))
    if isinstance(node, ListLit):
        items = [_compile(x) for x in node.items]

        def make_list(env: Env) -> Any:
            vals = tuple(f(env) for f in items)
            return ERR if any(v is ERR for v in vals) else vals

        return make_list
    if isinstance(node, Call):
        return _call(node)
    return _operator(node)


def _lookup(base: Fn, key: Fn) -> Fn:
    def get(env: Env) -> Any:
        b, k = base(env), key(env)
        if b is ERR or k is ERR:
            return ERR
        if b is _ATTRS:
            # An unknown domain reads as an empty map (Kubernetes' attribute map has that default).
            return env[1].get(k, _EMPTY) if isinstance(k, str) else _EMPTY
        return _member(b, k)

    return get


def _call(node: Call) -> Fn:
    args = [_compile(a) for a in node.args]
    if node.target is None:
        if node.name not in _GLOBAL_FNS:
            raise Unsupported(f"function {node.name}() not supported")
        name = node.name

        def global_call(env: Env) -> Any:
            vals = [f(env) for f in args]
            return ERR if any(v is ERR for v in vals) else _global_fn(name, vals)

        return global_call
    target = _compile(node.target)
    impl: Callable[[str, Any, list[Any]], Any]
    if node.name in _STRING_FNS:
        impl = _string_fn
    elif node.name in _SEMVER_FNS:
        impl = _semver_fn
    else:
        raise Unsupported(f"method {node.name}() not supported")
    name = node.name

    def member_call(env: Env) -> Any:
        t = target(env)
        vals = [f(env) for f in args]
        if t is ERR or any(v is ERR for v in vals):
            return ERR
        if isinstance(t, _Marker | tuple) or (isinstance(t, Mapping) and impl is _string_fn):
            raise Unsupported(f"{name}() on a map or list")
        return impl(name, t, vals)

    return member_call


def _in_constants(a: Fn, consts: tuple[Any, ...]) -> Fn:
    """`x in [literals]` as Kubernetes plans it (cel-go OptOptimize): `x in []` is the constant false, and
    other literal lists become a hash-set lookup, where a semver needle (not hashable in Go) is an error."""
    if not consts:
        return _const(False)

    def in_set(env: Env) -> Any:
        x = a(env)
        if x is ERR or isinstance(x, Semver):
            return ERR
        if isinstance(x, _Marker | Mapping | tuple):
            raise Unsupported("a map, list or the device looked up in a list")
        return any(type(c) is type(x) and c == x for c in consts)

    return in_set


def _has(sel: Select) -> Fn:
    base, field = _compile(sel.operand), sel.field

    def has(env: Env) -> Any:
        b = base(env)
        if isinstance(b, Mapping):
            return field in b
        if isinstance(b, _Marker):
            raise Unsupported("has() on the device or its attribute map")
        return ERR

    return has


def _operator(node: Node) -> Fn:
    assert isinstance(node, Op)
    op = node.op
    if op == "has":
        assert isinstance(node.args[0], Select)
        return _has(node.args[0])
    fns = [_compile(a) for a in node.args]
    if op == "!":
        (x,) = fns
        return lambda env: (not v) if type(v := x(env)) is bool else ERR
    if op == "&&":
        a, b = fns

        def and_(env: Env) -> Any:
            x = a(env)
            if x is False:
                return False
            y = b(env)
            if y is False:
                return False
            return True if x is True and y is True else ERR

        return and_
    if op == "||":
        a, b = fns

        def or_(env: Env) -> Any:
            x = a(env)
            if x is True:
                return True
            y = b(env)
            if y is True:
                return True
            return False if x is False and y is False else ERR

        return or_
    if op == "?:":
        c, a, b = fns

        def cond(env: Env) -> Any:
            x = c(env)
            return a(env) if x is True else b(env) if x is False else ERR

        return cond
    a, b = fns
    rhs = node.args[1]
    if op == "in" and isinstance(rhs, ListLit) and all(isinstance(x, Lit) for x in rhs.items):
        return _in_constants(a, tuple(x.value for x in rhs.items if isinstance(x, Lit)))
    if op == "in":
        def in_(env: Env) -> Any:
            x, m = a(env), b(env)
            return ERR if x is ERR or m is ERR else _contains(m, x, env)

        return in_
    if op in ("==", "!="):
        negate = op == "!="

        def eq(env: Env) -> Any:
            x, y = a(env), b(env)
            if x is ERR or y is ERR:
                return ERR
            r = _equal(x, y)
            # cel-go's `!=` is "Equal is not true": a semver against a string is an error for `==`, true for `!=`.
            return (r is not True) if negate else r

        return eq
    test = _CMP[op]

    def cmp(env: Env) -> Any:
        x, y = a(env), b(env)
        if x is ERR or y is ERR:
            return ERR
        if isinstance(x, _Marker) or isinstance(y, _Marker):
            raise Unsupported("ordering of the device")
        c = _order(x, y)
        return ERR if c is ERR else test(c)

    return cmp


@dataclass(frozen=True, slots=True)
class Compiled:
    fn: Fn | None  # None: outside the subset
    names: frozenset[str]  # string literals and field names the expression contains
    why: str = ""


def compile_selector(src: str) -> Compiled:
    try:
        p = _Parser(tokens(src))
        tree = p.parse()
        return Compiled(_compile(tree), frozenset(p.names))
    except Unsupported as e:
        return Compiled(None, frozenset(), str(e))
    except RecursionError:
        return Compiled(None, frozenset(), "expression nested too deeply")


def _bad_version(attrs: Attrs) -> bool:
    for m in attrs.values():
        for v in m.values():
            if isinstance(v, Version) and parse_semver(v.text) is None:
                return True
            if isinstance(v, ListAttr) and any(isinstance(e, Version) and parse_semver(e.text) is None for e in v):
                return True
    return False


class CelCache:
    """Compiled selectors by source text, least recently used dropped first; one per index."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[str, Compiled] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, src: str) -> Compiled:
        e = self._entries.get(src)
        if e is None:
            e = self._entries[src] = compile_selector(src)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(src)
        return e

    def compile(self, src: str) -> Fn | None:
        return self.entry(src).fn

    def names(self, src: str) -> frozenset[str]:
        return self.entry(src).names

    def outcome(self, src: str, driver: str, attrs: Attrs) -> Outcome:
        """True, False, ERROR (CEL runtime error), or None when the expression is outside the subset."""
        fn = self.entry(src).fn
        if fn is None:
            return None
        if _bad_version(attrs):
            return ERROR  # Kubernetes fails to build the device's attributes before evaluating anything
        try:
            r = fn((driver, attrs))
        except (Unsupported, RecursionError):
            return None
        # A non-bool result (a bare attribute) cannot be converted to the bool Kubernetes expects: an error.
        return r if type(r) is bool else ERROR

    def evaluate(self, src: str, driver: str, attrs: Attrs) -> bool | None:
        """True / False (an error does not match), or None when the expression is outside the subset."""
        r = self.outcome(src, driver, attrs)
        return None if r is None else r is True


def by_domain(attrs: tuple[tuple[str, AttrValue], ...]) -> dict[str, dict[str, AttrValue]]:
    """Qualified attribute names grouped as CEL sees them: `device.attributes[domain][name]`."""
    out: dict[str, dict[str, AttrValue]] = {}
    for q, v in attrs:
        domain, _, name = q.rpartition("/")
        out.setdefault(domain, {})[name] = v
    return out
