"""Safe condition expressions for CONDITIONAL dependency edges (a CEL subset).

A condition decides whether a dependency edge between two tasks is satisfied.
It is a small, side-effect free, language-neutral expression language modelled
on a subset of Google's Common Expression Language (CEL) and evaluated against
a mapping of variables.  For a dependency edge the engine passes:

=========  =================================================================
variable   meaning
=========  =================================================================
result     the prerequisite task's result (any JSON value)
status     ``"completed"``, ``"failed"`` or ``"cancelled"``
success    ``true`` if the prerequisite completed successfully
error      the error message (string) or ``null``
task_id    the prerequisite task's id (string)
=========  =================================================================

Examples::

    success
    status == "completed" && result.score > 0.5
    result.status == "ok" || (has(result.retries) && result.retries < 3)
    status in ["failed", "cancelled"]
    error != null && error.contains("timeout")
    size(result.items) > 0 && result.items[0].name.startsWith("prod-")
    result["content-type"].matches("^application/json")
    has(result.metrics.latency_ms) ? result.metrics.latency_ms < 250 : false

Grammar (lowest to highest precedence, as in CEL)::

    expr      := or ["?" or ":" expr]                      conditional
    or        := and {"||" and}                            boolean OR
    and       := rel {"&&" rel}                            boolean AND
    rel       := add {("=="|"!="|"<"|"<="|">"|">="|"in") add}
    add       := mul {("+"|"-") mul}
    mul       := unary {("*"|"/"|"%") unary}
    unary     := {"!"|"-"} member
    member    := primary {"." IDENT ["(" args ")"] | "[" expr "]"}
    primary   := IDENT ["(" args ")"] | "(" expr ")" | "[" [args [","]] "]"
               | INT | FLOAT | STRING | "true" | "false" | "null"
    args      := expr {"," expr}

Lexical rules:

* integers: ``42``, ``0x2A`` (64-bit signed range); floats: ``1.5``, ``.5``,
  ``1e-3``.
* strings: ``"..."`` or ``'...'`` with escapes ``\\\\ \\" \\' \\n \\t \\r
  \\b \\f \\v \\a \\?``, backslash-backtick, ``\\xHH``, ``\\uXXXX`` (JSON-style surrogate pairs are
  combined) and ``\\UXXXXXXXX``; raw strings ``r"\\d+"`` take backslashes
  literally.  Strings cannot span lines.
* ``// comments`` run to the end of the line.
* identifiers: ``[A-Za-z_][A-Za-z0-9_]*``; CEL reserved words (``if``,
  ``import``, ``in``, ...) cannot name variables.

Semantics:

* Values are JSON-like: null, bool, int, double, string, list, map.  ``bool``
  is not a number.
* ``a.b`` and ``a["b"]`` read map keys, ``a[0]`` reads list elements.  A
  missing key or an out-of-range index is an error (``no key 'b'``); use
  ``has(a.b)`` / ``has(a["b"])`` / ``has(a[3])`` to test for presence.
  Unlike CEL, ``has()`` is lenient along the whole path: it is false when any
  key along the path is missing or when an intermediate value is not a
  container (for example ``null``).  There is no attribute access on Python
  objects whatsoever; only map keys and list indexes.
* ``&&``, ``||``, ``!`` and the condition of ``?:`` require booleans.  ``&&``
  and ``||`` short-circuit left to right: ``false && (1/0 == 1)`` is false.
* ``==`` / ``!=`` compare any two values; values of different types are simply
  unequal, except that ints and doubles compare numerically.  Lists and maps
  compare element-wise.
* ``<``, ``<=``, ``>``, ``>=`` compare numbers with numbers, strings with
  strings and bools with bools; anything else is an error.
* ``x in list`` tests membership (using ``==``), ``key in map`` tests for a
  key, ``sub in string`` tests for a substring.
* ``+`` adds numbers and concatenates strings or lists; ``- * / %`` work on
  numbers only (``*`` on strings is an error).  As in CEL, int op int stays an
  int: ``/`` truncates towards zero and ``%`` takes the sign of the dividend;
  ints overflowing 64 bits are an error.  Mixing ints and doubles yields a
  double (a relaxation of CEL).  Division or modulo by zero is an error.
* Functions: ``size(x)`` (string, list or map), ``has(a.b)``, ``int(x)``,
  ``double(x)``, ``string(x)``, ``lower(s)``, ``upper(s)``,
  ``matches(s, re)``.  Methods: ``s.startsWith(p)``, ``s.endsWith(p)``,
  ``s.contains(p)``, ``s.matches(re)``, ``x.size()``, ``s.lower()``,
  ``s.upper()``.  ``matches`` uses RE2 syntax (as CEL specifies: no
  backreferences or lookaround) with search (partial match) semantics and runs
  in time linear in its input; patterns are limited to 256 characters and
  inputs to 100,000 characters.
* The whole condition must evaluate to a bool.

Limits: sources are at most :data:`MAX_CONDITION_LENGTH` characters and
:data:`MAX_NESTING_DEPTH` levels of nesting (parentheses, list literals,
function arguments, indexes and ``?:``).  String or list results longer than
1,000,000 elements are rejected at evaluation time.

Implementation: a hand-written tokenizer and a recursive-descent /
operator-precedence parser build a small AST, which is compiled once into a
tree of Python closures.  Nothing is ever passed to ``eval``, ``exec`` or
``compile``.  Compiled conditions are cached (LRU, 1024 entries), immutable and
safe to share between threads.

Usage::

    cond = compile_condition('status == "completed" && result.score > 0.5')
    cond.evaluate({"status": "completed", "result": {"score": 0.9}, ...})
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeAlias

import re2  # type: ignore[import-untyped]

__all__ = [
    "MAX_CONDITION_LENGTH",
    "MAX_NESTING_DEPTH",
    "CompiledCondition",
    "ConditionError",
    "ConditionEvaluationError",
    "ConditionSyntaxError",
    "compile_condition",
]

MAX_CONDITION_LENGTH: Final = 4096
MAX_NESTING_DEPTH: Final = 64
MAX_STRING_LENGTH: Final = 1_000_000
MAX_LIST_LENGTH: Final = 1_000_000
MAX_REGEX_LENGTH: Final = 256
MAX_REGEX_INPUT_LENGTH: Final = 100_000

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
_MAX_SHOWN_SOURCE: Final = 80
_MAX_LISTED_NAMES: Final = 20


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def _shorten(text: str, limit: int = _MAX_SHOWN_SOURCE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConditionError(ValueError):
    """Base class for invalid conditions.

    ``expression`` is the full condition source, ``position`` the 0-based
    character offset the problem was detected at (``None`` when it concerns the
    whole condition) and ``detail`` the bare description of the problem.
    """

    _prefix: str = "Invalid condition"

    def __init__(self, detail: str, expression: str = "", position: int | None = None) -> None:
        self.detail = detail
        self.expression = expression
        self.position = position
        message = f"{self._prefix} {_shorten(expression)!r}: {detail}"
        if position is not None:
            message += f" at position {position}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.detail, self.expression, self.position))


class ConditionSyntaxError(ConditionError):
    """The condition source cannot be compiled."""


class ConditionEvaluationError(ConditionError):
    """The condition failed at evaluation time (type errors, missing keys...)."""

    _prefix = "Cannot evaluate condition"


class _Fail(Exception):
    """Internal evaluation failure; converted to ConditionEvaluationError."""

    def __init__(self, detail: str, position: int | None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.position = position


# --------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------

_EOF: Final = "eof"
_INT: Final = "int"
_FLOAT: Final = "float"
_STRING: Final = "string"
_IDENT: Final = "ident"
_OP: Final = "op"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    value: Any
    pos: int
    end: int


_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER_RE: Final = re.compile(r"0[xX][0-9a-fA-F]+|(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD_TAIL_RE: Final = re.compile(r"[A-Za-z0-9_.]*")
_WHITESPACE: Final = frozenset(" \t\n\r\f\v")
_TWO_CHAR_OPS: Final = frozenset({"||", "&&", "==", "!=", "<=", ">="})
_ONE_CHAR_OPS: Final = frozenset("<>!+-*/%?:.,()[]")
_CHAR_HINTS: Final = {
    "=": " (use '==' to compare values)",
    "&": " (use '&&' for logical AND)",
    "|": " (use '||' for logical OR)",
    "{": " (map literals are not supported)",
    "}": " (map literals are not supported)",
    "`": " (strings use double or single quotes)",
}
_SIMPLE_ESCAPES: Final = {
    "\\": "\\",
    '"': '"',
    "'": "'",
    "`": "`",
    "?": "?",
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "a": "\a",
}
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_DIGITS: Final = frozenset("0123456789")
_IDENT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _syntax_error(source: str, detail: str, position: int | None) -> NoReturn:
    raise ConditionSyntaxError(detail, source, position)


def _read_hex(source: str, start: int, count: int, escape_pos: int) -> int:
    digits = source[start : start + count]
    if len(digits) != count or not all(c in _HEX_DIGITS for c in digits):
        _syntax_error(
            source,
            f"invalid escape sequence {source[escape_pos : escape_pos + 2]!r}: expected {count} hex digits",
            escape_pos,
        )
    return int(digits, 16)


def _read_string(source: str, start: int, quote_pos: int, raw: bool) -> tuple[str, int]:
    """Read a string literal whose opening quote is at quote_pos."""
    quote = source[quote_pos]
    n = len(source)
    i = quote_pos + 1
    parts: list[str] = []
    while True:
        if i >= n or source[i] in "\r\n":
            _syntax_error(source, "unterminated string starting", start)
        c = source[i]
        if c == quote:
            return "".join(parts), i + 1
        if c != "\\" or raw:
            parts.append(c)
            i += 1
            continue
        if i + 1 >= n:
            _syntax_error(source, "unterminated string starting", start)
        e = source[i + 1]
        simple = _SIMPLE_ESCAPES.get(e)
        if simple is not None:
            parts.append(simple)
            i += 2
        elif e == "x":
            parts.append(chr(_read_hex(source, i + 2, 2, i)))
            i += 4
        elif e == "U":
            code = _read_hex(source, i + 2, 8, i)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                _syntax_error(source, f"invalid unicode escape {source[i : i + 10]!r}", i)
            parts.append(chr(code))
            i += 10
        elif e == "u":
            code = _read_hex(source, i + 2, 4, i)
            i += 6
            if 0xD800 <= code <= 0xDBFF and source[i : i + 2] == "\\u":
                low = _read_hex(source, i + 2, 4, i)
                if 0xDC00 <= low <= 0xDFFF:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            if 0xD800 <= code <= 0xDFFF:
                _syntax_error(source, "invalid unicode escape (unpaired surrogate)", i - 6)
            parts.append(chr(code))
        else:
            _syntax_error(
                source,
                f'invalid escape sequence {source[i : i + 2]!r} (supported: \\\\ \\" '
                "\\' \\n \\t \\r \\b \\f \\v \\a \\xHH \\uXXXX \\UXXXXXXXX)",
                i,
            )


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    append = tokens.append
    n = len(source)
    i = 0
    while i < n:
        c = source[i]
        if c in _WHITESPACE:
            i += 1
            continue
        if c == "/" and source.startswith("//", i):
            newline = source.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if c in "\"'":
            value, end = _read_string(source, i, i, raw=False)
            append(_Token(_STRING, value, i, end))
            i = end
            continue
        if c in "rR" and i + 1 < n and source[i + 1] in "\"'":
            value, end = _read_string(source, i, i + 1, raw=True)
            append(_Token(_STRING, value, i, end))
            i = end
            continue
        if c in _DIGITS or (c == "." and i + 1 < n and source[i + 1] in _DIGITS):
            match = _NUMBER_RE.match(source, i)
            assert match is not None  # guaranteed by the checks above
            end = match.end()
            if end < n and source[end] in _IDENT_CHARS:
                bad = _WORD_TAIL_RE.match(source, i)
                text = bad.group() if bad else source[i:end]
                _syntax_error(source, f"invalid number literal {text!r}", i)
            text = match.group()
            is_hex = text[:2] in ("0x", "0X")
            if is_hex or not any(ch in text for ch in ".eE"):
                integer = int(text, 16) if is_hex else int(text, 10)
                if integer > _INT_MAX:
                    _syntax_error(
                        source,
                        f"integer literal {_shorten(text, 30)!r} is out of range (maximum {_INT_MAX})",
                        i,
                    )
                append(_Token(_INT, integer, i, end))
            else:
                number = float(text)
                if math.isinf(number):
                    _syntax_error(source, f"number literal {_shorten(text, 30)!r} is out of range", i)
                append(_Token(_FLOAT, number, i, end))
            i = end
            continue
        match = _IDENT_RE.match(source, i)
        if match is not None:
            end = match.end()
            append(_Token(_IDENT, match.group(), i, end))
            i = end
            continue
        two = source[i : i + 2]
        if two in _TWO_CHAR_OPS:
            append(_Token(_OP, two, i, i + 2))
            i += 2
            continue
        if c in _ONE_CHAR_OPS:
            append(_Token(_OP, c, i, i + 1))
            i += 1
            continue
        _syntax_error(source, f"unexpected character {c!r}{_CHAR_HINTS.get(c, '')}", i)
    append(_Token(_EOF, None, n, n))
    return tokens


# --------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Lit:
    value: Any
    pos: int


@dataclass(slots=True)
class _ListLit:
    items: list[_Node]
    pos: int


@dataclass(slots=True)
class _Ident:
    name: str
    pos: int


@dataclass(slots=True)
class _Step:
    kind: str  # "field" | "index" | "method"
    name: str
    index: _Node | None
    args: list[_Node]
    pos: int


@dataclass(slots=True)
class _Select:
    base: _Node
    steps: list[_Step]
    pos: int


@dataclass(slots=True)
class _Call:
    name: str
    args: list[_Node]
    pos: int


@dataclass(slots=True)
class _Unary:
    ops: list[tuple[str, int]]  # outermost first
    operand: _Node
    pos: int


@dataclass(slots=True)
class _Chain:
    """A left-associative run of binary operators of one precedence level."""

    prec: int
    operands: list[_Node]
    ops: list[tuple[str, int]]
    pos: int


@dataclass(slots=True)
class _Cond:
    cond: _Node
    then: _Node
    other: _Node
    pos: int


_Node: TypeAlias = "_Lit | _ListLit | _Ident | _Select | _Call | _Unary | _Chain | _Cond"

# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------

_PREC_OR: Final = 1
_PREC_AND: Final = 2
_PREC_REL: Final = 3
_PREC_ADD: Final = 4
_PREC_MUL: Final = 5
_PRECEDENCE: Final = {
    "||": _PREC_OR,
    "&&": _PREC_AND,
    "==": _PREC_REL,
    "!=": _PREC_REL,
    "<": _PREC_REL,
    "<=": _PREC_REL,
    ">": _PREC_REL,
    ">=": _PREC_REL,
    "in": _PREC_REL,
    "+": _PREC_ADD,
    "-": _PREC_ADD,
    "*": _PREC_MUL,
    "/": _PREC_MUL,
    "%": _PREC_MUL,
}
_RESERVED: Final = frozenset(
    {
        "as", "break", "const", "continue", "else", "for", "function", "if",
        "import", "in", "let", "loop", "package", "namespace", "return", "var",
        "void", "while",
    }
)  # fmt: skip
_WORD_HINTS: Final = {
    "and": " (use '&&' for logical AND)",
    "or": " (use '||' for logical OR)",
    "not": " (use '!' for logical NOT)",
    "is": " (use '==' to compare values)",
}
# name -> number of arguments (functions) / of arguments besides the receiver.
_FUNCTION_ARITY: Final = {
    "size": 1,
    "has": 1,
    "int": 1,
    "double": 1,
    "string": 1,
    "lower": 1,
    "upper": 1,
    "matches": 2,
}
_METHOD_ARITY: Final = {
    "startsWith": 1,
    "endsWith": 1,
    "contains": 1,
    "matches": 1,
    "size": 0,
    "lower": 0,
    "upper": 0,
}


def _plural(count: int) -> str:
    return f"{count} argument" if count == 1 else f"{count} arguments"


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokenize(source)
        self.index = 0
        self.depth = 0

    # -- helpers -----------------------------------------------------------

    def error(self, detail: str, position: int | None) -> NoReturn:
        _syntax_error(self.source, detail, position)

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != _EOF:
            self.index += 1
        return token

    def at_op(self, value: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == _OP and token.value == value

    def unexpected(self, token: _Token, expected: str | None = None) -> NoReturn:
        suffix = f" (expected {expected})" if expected else ""
        if token.kind == _EOF:
            self.error(f"unexpected end of expression{suffix}", token.pos)
        text = _shorten(self.source[token.pos : token.end], 40)
        if not suffix and token.kind == _IDENT:
            suffix = _WORD_HINTS.get(token.value, "")
        self.error(f"unexpected token {text!r}{suffix}", token.pos)

    def expect_op(self, value: str) -> _Token:
        token = self.peek()
        if token.kind != _OP or token.value != value:
            self.unexpected(token, f"{value!r}")
        self.index += 1
        return token

    # -- grammar -----------------------------------------------------------

    def parse(self) -> _Node:
        if self.peek().kind == _EOF:
            self.error("condition is empty", None)
        node = self.parse_expr()
        token = self.peek()
        if token.kind != _EOF:
            self.unexpected(token)
        return node

    def parse_expr(self) -> _Node:
        self.depth += 1
        if self.depth > MAX_NESTING_DEPTH:
            self.error(
                f"expression is nested too deeply (maximum depth is {MAX_NESTING_DEPTH})",
                self.peek().pos,
            )
        node = self.parse_binary()
        token = self.peek()
        if token.kind == _OP and token.value == "?":
            self.index += 1
            then = self.parse_expr()
            self.expect_op(":")
            other = self.parse_expr()
            node = _Cond(node, then, other, token.pos)
        self.depth -= 1
        return node

    def parse_binary(self) -> _Node:
        # Operator-precedence parsing with an explicit stack: long operator
        # chains neither recurse nor build deep trees (runs of one precedence
        # level are flattened into a single _Chain node).
        operands: list[_Node] = [self.parse_unary()]
        pending: list[tuple[str, int, int]] = []
        while True:
            token = self.peek()
            if token.kind == _OP:
                prec = _PRECEDENCE.get(token.value)
            elif token.kind == _IDENT and token.value == "in":
                prec = _PREC_REL
            else:
                prec = None
            if prec is None:
                break
            while pending and pending[-1][1] >= prec:
                self._reduce(operands, pending)
            self.index += 1
            pending.append((token.value, prec, token.pos))
            operands.append(self.parse_unary())
        while pending:
            self._reduce(operands, pending)
        return operands[0]

    @staticmethod
    def _reduce(operands: list[_Node], pending: list[tuple[str, int, int]]) -> None:
        op, prec, pos = pending.pop()
        right = operands.pop()
        left = operands.pop()
        if isinstance(left, _Chain) and left.prec == prec:
            # (a op b) op c == a op b op c for left-associative operators.
            left.operands.append(right)
            left.ops.append((op, pos))
            operands.append(left)
        else:
            operands.append(_Chain(prec, [left, right], [(op, pos)], left.pos))

    def parse_unary(self) -> _Node:
        ops: list[tuple[str, int]] = []
        while True:
            token = self.peek()
            if token.kind == _OP and token.value in ("!", "-"):
                ops.append((token.value, token.pos))
                self.index += 1
            else:
                break
        operand = self.parse_member()
        if not ops:
            return operand
        if (
            isinstance(operand, _Lit)
            and all(op == "-" for op, _ in ops)
            and type(operand.value) in (int, float)
        ):
            value = operand.value
            for _ in ops:
                value = -value
            return _Lit(value, ops[0][1])
        return _Unary(ops, operand, ops[0][1])

    def parse_args(self) -> list[_Node]:
        self.expect_op("(")
        args: list[_Node] = []
        if self.at_op(")"):
            self.index += 1
            return args
        while True:
            args.append(self.parse_expr())
            token = self.advance()
            if token.kind == _OP and token.value == ")":
                return args
            if token.kind != _OP or token.value != ",":
                self.unexpected(token, "',' or ')'")

    def parse_member(self) -> _Node:
        node = self.parse_primary()
        steps: list[_Step] = []
        while True:
            token = self.peek()
            if token.kind != _OP:
                break
            if token.value == ".":
                self.index += 1
                name_token = self.peek()
                if name_token.kind != _IDENT:
                    self.unexpected(name_token, "a field or method name after '.'")
                self.index += 1
                name = name_token.value
                if self.at_op("("):
                    arity = _METHOD_ARITY.get(name)
                    if arity is None:
                        self.error(
                            f"unknown method {name!r} (supported: {', '.join(_METHOD_ARITY)})",
                            name_token.pos,
                        )
                    args = self.parse_args()
                    if len(args) != arity:
                        self.error(
                            f"{name}() takes exactly {_plural(arity)} ({len(args)} given)",
                            name_token.pos,
                        )
                    if name == "matches":
                        self.check_regex_literal(args[0])
                    steps.append(_Step("method", name, None, args, name_token.pos))
                else:
                    steps.append(_Step("field", name, None, [], name_token.pos))
            elif token.value == "[":
                self.index += 1
                index = self.parse_expr()
                self.expect_op("]")
                steps.append(_Step("index", "", index, [], token.pos))
            else:
                break
        if steps:
            return _Select(node, steps, node.pos)
        return node

    def parse_primary(self) -> _Node:
        token = self.advance()
        kind = token.kind
        if kind in (_INT, _FLOAT, _STRING):
            return _Lit(token.value, token.pos)
        if kind == _IDENT:
            name = token.value
            if name == "true":
                return _Lit(True, token.pos)
            if name == "false":
                return _Lit(False, token.pos)
            if name == "null":
                return _Lit(None, token.pos)
            if self.at_op("("):
                return self.parse_call(token)
            if name in _RESERVED:
                self.error(
                    f"{name!r} is a reserved word and cannot be used as a variable name",
                    token.pos,
                )
            return _Ident(name, token.pos)
        if kind == _OP:
            if token.value == "(":
                node = self.parse_expr()
                self.expect_op(")")
                return node
            if token.value == "[":
                return self.parse_list(token)
        self.unexpected(token)

    def parse_list(self, open_token: _Token) -> _Node:
        items: list[_Node] = []
        while True:
            if self.at_op("]"):
                self.index += 1
                break
            items.append(self.parse_expr())
            token = self.advance()
            if token.kind == _OP and token.value == "]":
                break
            if token.kind != _OP or token.value != ",":
                self.unexpected(token, "',' or ']'")
        return _ListLit(items, open_token.pos)

    def parse_call(self, name_token: _Token) -> _Node:
        name = name_token.value
        arity = _FUNCTION_ARITY.get(name)
        if arity is None:
            hint = ""
            if name in _METHOD_ARITY:
                hint = f"; {name} is a method, write x.{name}(...)"
            self.error(
                f"unknown function {name!r} (supported: {', '.join(_FUNCTION_ARITY)}){hint}",
                name_token.pos,
            )
        args = self.parse_args()
        if len(args) != arity:
            self.error(
                f"{name}() takes exactly {_plural(arity)} ({len(args)} given)",
                name_token.pos,
            )
        if name == "has":
            arg = args[0]
            if not isinstance(arg, _Select) or any(step.kind == "method" for step in arg.steps):
                self.error(
                    "has() requires a field selection such as has(result.field) or has(result['key'])",
                    arg.pos,
                )
        elif name == "matches":
            self.check_regex_literal(args[1])
        return _Call(name, args, name_token.pos)

    def check_regex_literal(self, node: _Node) -> None:
        if isinstance(node, _Lit) and isinstance(node.value, str):
            try:
                _compile_regex(node.value)
            except _Fail as exc:
                self.error(exc.detail, node.pos)


# --------------------------------------------------------------------------
# Runtime helpers
# --------------------------------------------------------------------------

Evaluator: TypeAlias = Callable[[Mapping[str, Any]], Any]
_StepFn: TypeAlias = Callable[[Any, Mapping[str, Any]], Any]
_BinaryFn: TypeAlias = Callable[[Any, Any, int], Any]

_NO_ARGS: Final[list[Any]] = []
_SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None)})
_MISSING: Final = object()


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return f"unsupported type {type(value).__name__}"


def _is_number(value: Any) -> bool:
    vtype = type(value)
    if vtype is int or vtype is float:
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(value: int, pos: int) -> int:
    if _INT_MIN <= value <= _INT_MAX:
        return value
    raise _Fail("integer overflow (ints are limited to 64 bits)", pos)


def _equals(a: Any, b: Any) -> bool:
    ta = type(a)
    if ta is type(b) and ta in _SCALAR_TYPES:
        return bool(a == b)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        return str(a) == str(b)
    if a is None or b is None:
        return False
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equals(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if len(a) != len(b):
            return False
        for key, value in a.items():
            if key not in b or not _equals(value, b[key]):
                return False
        return True
    return a is b


def _not_equals(a: Any, b: Any, pos: int) -> bool:
    return not _equals(a, b)


def _equals_op(a: Any, b: Any, pos: int) -> bool:
    return _equals(a, b)


def _make_ordering(symbol: str, compare: Callable[[Any, Any], bool]) -> _BinaryFn:
    def ordering(a: Any, b: Any, pos: int) -> bool:
        ta = type(a)
        if ta is type(b) and (ta is int or ta is float or ta is str):
            return compare(a, b)
        if (
            (_is_number(a) and _is_number(b))
            or (isinstance(a, str) and isinstance(b, str))
            or (isinstance(a, bool) and isinstance(b, bool))
        ):
            return bool(compare(a, b))
        raise _Fail(f"cannot compare {_type_name(a)} and {_type_name(b)} with {symbol!r}", pos)

    return ordering


_ORDERING_OPS: Final = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _in(a: Any, b: Any, pos: int) -> bool:
    if isinstance(b, str):
        if isinstance(a, str):
            return a in b
        raise _Fail(f"'in' on a string needs a string on the left, got {_type_name(a)}", pos)
    if isinstance(b, (list, tuple)):
        if type(a) is str or a is None:
            return a in b
        return any(_equals(a, item) for item in b)
    if isinstance(b, Mapping):
        if type(a) is str:
            return a in b
        return any(_equals(a, key) for key in b)
    raise _Fail(f"'in' requires a list, map or string on the right, got {_type_name(b)}", pos)


def _arith_error(symbol: str, a: Any, b: Any, pos: int) -> NoReturn:
    if symbol == "*" and (isinstance(a, str) or isinstance(b, str)):
        raise _Fail("'*' is not supported on strings", pos)
    raise _Fail(f"cannot apply {symbol!r} to {_type_name(a)} and {_type_name(b)}", pos)


def _mixed(fn: Callable[[float, float], float], a: Any, b: Any, pos: int) -> float:
    try:
        return fn(float(a), float(b))
    except OverflowError:
        raise _Fail("numeric overflow", pos) from None


def _add(a: Any, b: Any, pos: int) -> Any:
    ta = type(a)
    if ta is type(b):
        if ta is int:
            result = a + b
            if _INT_MIN <= result <= _INT_MAX:
                return result
            raise _Fail("integer overflow (ints are limited to 64 bits)", pos)
        if ta is float:
            return a + b
    if _is_number(a) and _is_number(b):
        if isinstance(a, int) and isinstance(b, int):
            return _check_int(int(a) + int(b), pos)
        return _mixed(operator.add, a, b, pos)
    if isinstance(a, str) and isinstance(b, str):
        length = len(a) + len(b)
        if length > MAX_STRING_LENGTH:
            raise _Fail(
                f"string result too long ({length} characters, maximum {MAX_STRING_LENGTH})",
                pos,
            )
        return str(a) + str(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        length = len(a) + len(b)
        if length > MAX_LIST_LENGTH:
            raise _Fail(
                f"list result too long ({length} elements, maximum {MAX_LIST_LENGTH})",
                pos,
            )
        return [*a, *b]
    _arith_error("+", a, b, pos)


def _sub(a: Any, b: Any, pos: int) -> Any:
    atype = type(a)
    if atype is type(b):
        if atype is float:
            return a - b
        if atype is int:
            result = a - b
            if _INT_MIN <= result <= _INT_MAX:
                return result
            raise _Fail("integer overflow (ints are limited to 64 bits)", pos)
    if _is_number(a) and _is_number(b):
        if isinstance(a, int) and isinstance(b, int):
            return _check_int(int(a) - int(b), pos)
        return _mixed(operator.sub, a, b, pos)
    _arith_error("-", a, b, pos)


def _mul(a: Any, b: Any, pos: int) -> Any:
    atype = type(a)
    if atype is type(b):
        if atype is float:
            return a * b
        if atype is int:
            result = a * b
            if _INT_MIN <= result <= _INT_MAX:
                return result
            raise _Fail("integer overflow (ints are limited to 64 bits)", pos)
    if _is_number(a) and _is_number(b):
        if isinstance(a, int) and isinstance(b, int):
            return _check_int(int(a) * int(b), pos)
        return _mixed(operator.mul, a, b, pos)
    _arith_error("*", a, b, pos)


def _div(a: Any, b: Any, pos: int) -> Any:
    if type(a) is float and type(b) is float and b != 0.0:
        return a / b
    if _is_number(a) and _is_number(b):
        if b == 0:
            raise _Fail("division by zero", pos)
        if isinstance(a, int) and isinstance(b, int):
            quotient = abs(int(a)) // abs(int(b))
            return _check_int(-quotient if (a < 0) != (b < 0) else quotient, pos)
        return _mixed(operator.truediv, a, b, pos)
    _arith_error("/", a, b, pos)


def _fmod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:  # fmod(inf, x)
        return math.nan


def _mod(a: Any, b: Any, pos: int) -> Any:
    if _is_number(a) and _is_number(b):
        if b == 0:
            raise _Fail("modulo by zero", pos)
        if isinstance(a, int) and isinstance(b, int):
            remainder = abs(int(a)) % abs(int(b))
            return -remainder if a < 0 else remainder
        return _mixed(_fmod, a, b, pos)
    _arith_error("%", a, b, pos)


_BINARY_OPS: Final[dict[str, _BinaryFn]] = {
    "==": _equals_op,
    "!=": _not_equals,
    "in": _in,
    "+": _add,
    "-": _sub,
    "*": _mul,
    "/": _div,
    "%": _mod,
    **{symbol: _make_ordering(symbol, fn) for symbol, fn in _ORDERING_OPS.items()},
}


def _negate(value: Any, pos: int) -> Any:
    if type(value) is int or (isinstance(value, int) and not isinstance(value, bool)):
        return _check_int(-int(value), pos)
    if isinstance(value, float):
        return -value
    raise _Fail(f"unary '-' requires a number, got {_type_name(value)}", pos)


def _logical_not(value: Any, pos: int) -> bool:
    if value is True:
        return False
    if value is False:
        return True
    raise _Fail(f"'!' requires a boolean, got {_type_name(value)}", pos)


_UNARY_OPS: Final[dict[str, Callable[[Any, int], Any]]] = {
    "-": _negate,
    "!": _logical_not,
}


def _describe_keys(mapping: Mapping[Any, Any]) -> str:
    keys = [_shorten(repr(key), 40) for key in list(mapping)[: _MAX_LISTED_NAMES + 1]]
    if not keys:
        return "the map is empty"
    if len(keys) > _MAX_LISTED_NAMES:
        keys[_MAX_LISTED_NAMES:] = ["..."]
    return "available keys: " + ", ".join(keys)


def _missing_key(mapping: Mapping[Any, Any], key: Any) -> _Fail:
    return _Fail(
        f"no key {_shorten(repr(key), 60)} ({_describe_keys(mapping)}; use has() to test for optional keys)",
        None,
    )


def _select_field(value: Any, name: str, pos: int) -> Any:
    if isinstance(value, Mapping):
        try:
            return value[name]
        except KeyError:
            fail = _missing_key(value, name)
            fail.position = pos
            raise fail from None
    hint = "; use has() to test for optional values" if value is None else ""
    raise _Fail(f"cannot select field {name!r} on {_type_name(value)}{hint}", pos)


def _index(value: Any, key: Any, pos: int) -> Any:
    if isinstance(value, (list, tuple)):
        if isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(value):
                return value[key]
            raise _Fail(
                f"index {key} out of range (list has {len(value)} elements); "
                "use has() to test for optional elements",
                pos,
            )
        raise _Fail(f"list index must be an int, got {_type_name(key)}", pos)
    if isinstance(value, Mapping):
        if isinstance(key, (str, int)):
            try:
                return value[key]
            except KeyError:
                fail = _missing_key(value, key)
                fail.position = pos
                raise fail from None
        raise _Fail(f"map key must be a string, int or bool, got {_type_name(key)}", pos)
    hint = "; use has() to test for optional values" if value is None else ""
    raise _Fail(f"cannot index into {_type_name(value)}{hint}", pos)


def _lenient_field(value: Any, name: str) -> Any:
    if type(value) is dict:
        return value.get(name, _MISSING)
    if isinstance(value, Mapping):
        try:
            return value[name]
        except KeyError:
            return _MISSING
    return _MISSING


def _lenient_index(value: Any, key: Any) -> Any:
    if type(value) is dict and type(key) is str:
        return value.get(key, _MISSING)
    if isinstance(value, (list, tuple)):
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(value):
            return value[key]
        return _MISSING
    if isinstance(value, Mapping) and isinstance(key, (str, int)):
        try:
            return value[key]
        except KeyError:
            return _MISSING
    return _MISSING


# -- functions ---------------------------------------------------------------

_INT_TEXT_RE: Final = re.compile(r"[+-]?[0-9]{1,19}")
_FLOAT_TEXT_RE: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)


def _require_string(value: Any, what: str, pos: int) -> str:
    if isinstance(value, str):
        return value
    raise _Fail(f"{what} requires a string, got {_type_name(value)}", pos)


def _fn_size(value: Any, pos: int) -> int:
    if isinstance(value, (str, list, tuple, dict)) or isinstance(value, Mapping):
        return len(value)
    raise _Fail(f"size() requires a string, list or map, got {_type_name(value)}", pos)


def _fn_int(value: Any, pos: int) -> int:
    if isinstance(value, bool):
        raise _Fail("int() cannot convert bool (bool is not a number)", pos)
    if isinstance(value, int):
        return _check_int(int(value), pos)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise _Fail(f"int() cannot convert {value!r}", pos)
        return _check_int(math.trunc(value), pos)
    if isinstance(value, str):
        if _INT_TEXT_RE.fullmatch(value):
            return _check_int(int(value), pos)
        raise _Fail(f"int() cannot convert string {_shorten(repr(value), 40)}", pos)
    raise _Fail(f"int() requires an int, double or string, got {_type_name(value)}", pos)


def _fn_double(value: Any, pos: int) -> float:
    if isinstance(value, bool):
        raise _Fail("double() cannot convert bool (bool is not a number)", pos)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:
            raise _Fail("double() argument is too large", pos) from None
    if isinstance(value, str):
        if len(value) <= 400 and _FLOAT_TEXT_RE.fullmatch(value):
            return float(value)
        raise _Fail(f"double() cannot convert string {_shorten(repr(value), 40)}", pos)
    raise _Fail(f"double() requires an int, double or string, got {_type_name(value)}", pos)


def _fn_string(value: Any, pos: int) -> str:
    if isinstance(value, str):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(int(value))
        except ValueError:
            raise _Fail("string() argument is too large", pos) from None
    if isinstance(value, float):
        return repr(float(value))
    raise _Fail(f"string() requires a string, number, bool or null, got {_type_name(value)}", pos)


def _fn_lower(value: Any, pos: int) -> str:
    return _require_string(value, "lower()", pos).lower()


def _fn_upper(value: Any, pos: int) -> str:
    return _require_string(value, "upper()", pos).upper()


# RE2 matches in time linear in the input, whatever the pattern. Python's ``re`` backtracks:
# ``(a+)+$`` against 30 a's takes minutes, ``.*x`` against 100,000 characters seconds, and a
# condition is evaluated on the server's event loop, so one hostile pattern would stall every
# orion. RE2 is also the syntax CEL specifies for matches() (no backreferences, no lookaround).
_RE2_OPTIONS: Final = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors become ConditionErrors, not lines on stderr


@functools.lru_cache(maxsize=256)
def _compile_regex_cached(pattern: str) -> Any:
    try:
        return re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else "invalid pattern"
        return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    except (OverflowError, RecursionError, ValueError, TypeError) as exc:
        return str(exc) or type(exc).__name__


def _compile_regex(pattern: str) -> Any:
    if len(pattern) > MAX_REGEX_LENGTH:
        raise _Fail(
            f"regular expression too long ({len(pattern)} characters, maximum {MAX_REGEX_LENGTH})",
            None,
        )
    compiled = _compile_regex_cached(pattern)
    if isinstance(compiled, str):
        raise _Fail(f"invalid regular expression {_shorten(repr(pattern), 60)}: {compiled}", None)
    return compiled


def _fn_matches(text: Any, pattern: Any, pos: int) -> bool:
    text = _require_string(text, "matches()", pos)
    pattern = _require_string(pattern, "matches() pattern", pos)
    if len(text) > MAX_REGEX_INPUT_LENGTH:
        raise _Fail(
            f"matches() input too long ({len(text)} characters, maximum {MAX_REGEX_INPUT_LENGTH})",
            pos,
        )
    try:
        compiled = _compile_regex(pattern)
    except _Fail as exc:
        exc.position = pos
        raise
    return compiled.search(text) is not None


def _method_starts_with(receiver: Any, args: list[Any], pos: int) -> bool:
    if type(receiver) is str and type(args[0]) is str:
        return receiver.startswith(args[0])
    text = _require_string(receiver, "startsWith()", pos)
    return text.startswith(_require_string(args[0], "startsWith() argument", pos))


def _method_ends_with(receiver: Any, args: list[Any], pos: int) -> bool:
    if type(receiver) is str and type(args[0]) is str:
        return receiver.endswith(args[0])
    text = _require_string(receiver, "endsWith()", pos)
    return text.endswith(_require_string(args[0], "endsWith() argument", pos))


def _method_contains(receiver: Any, args: list[Any], pos: int) -> bool:
    if type(receiver) is str and type(args[0]) is str:
        return args[0] in receiver
    text = _require_string(receiver, "contains()", pos)
    return _require_string(args[0], "contains() argument", pos) in text


_UNARY_FUNCTIONS: Final[dict[str, Callable[[Any, int], Any]]] = {
    "size": _fn_size,
    "int": _fn_int,
    "double": _fn_double,
    "string": _fn_string,
    "lower": _fn_lower,
    "upper": _fn_upper,
}


def _method_matches(receiver: Any, args: list[Any], pos: int) -> bool:
    return _fn_matches(receiver, args[0], pos)


def _method_size(receiver: Any, args: list[Any], pos: int) -> int:
    return _fn_size(receiver, pos)


def _method_lower(receiver: Any, args: list[Any], pos: int) -> str:
    return _fn_lower(receiver, pos)


def _method_upper(receiver: Any, args: list[Any], pos: int) -> str:
    return _fn_upper(receiver, pos)


_METHODS: Final[dict[str, Callable[[Any, list[Any], int], Any]]] = {
    "startsWith": _method_starts_with,
    "endsWith": _method_ends_with,
    "contains": _method_contains,
    "matches": _method_matches,
    "size": _method_size,
    "lower": _method_lower,
    "upper": _method_upper,
}

_PYTHON_WORDS: Final = {"True": "true", "False": "false", "None": "null"}


def _unknown_variable(name: str, variables: Mapping[str, Any], pos: int) -> _Fail:
    names = [str(key) for key in list(variables)[: _MAX_LISTED_NAMES + 1]]
    if len(names) > _MAX_LISTED_NAMES:
        names[_MAX_LISTED_NAMES:] = ["..."]
    known = f"known: {', '.join(names)}" if names else "no variables are defined"
    hint = f"; did you mean {_PYTHON_WORDS[name]!r}?" if name in _PYTHON_WORDS else ""
    return _Fail(f"unknown variable {name!r} ({known}){hint}", pos)


# --------------------------------------------------------------------------
# Compiler: AST -> closures
# --------------------------------------------------------------------------


def _compile(node: _Node) -> Evaluator:
    if isinstance(node, _Lit):
        return _compile_literal(node.value)
    if isinstance(node, _Ident):
        return _compile_ident(node)
    if isinstance(node, _Select):
        return _compile_select(node)
    if isinstance(node, _Chain):
        if node.prec in (_PREC_OR, _PREC_AND):
            return _compile_logical(node)
        return _compile_chain(node)
    if isinstance(node, _Unary):
        return _compile_unary(node)
    if isinstance(node, _Call):
        return _compile_call(node)
    if isinstance(node, _ListLit):
        return _compile_list(node)
    return _compile_conditional(node)


def _compile_literal(value: Any) -> Evaluator:
    def literal(variables: Mapping[str, Any]) -> Any:
        return value

    return literal


def _compile_ident(node: _Ident) -> Evaluator:
    name, pos = node.name, node.pos

    def ident(variables: Mapping[str, Any]) -> Any:
        try:
            return variables[name]
        except KeyError:
            raise _unknown_variable(name, variables, pos) from None

    return ident


def _compile_list(node: _ListLit) -> Evaluator:
    if all(isinstance(item, _Lit) for item in node.items):
        constant = tuple(item.value for item in node.items if isinstance(item, _Lit))
        return _compile_literal(constant)
    items = [_compile(item) for item in node.items]

    def list_literal(variables: Mapping[str, Any]) -> list[Any]:
        return [item(variables) for item in items]

    return list_literal


def _compile_step(step: _Step) -> _StepFn:
    pos = step.pos
    if step.kind == "field":
        name = step.name

        def field_step(value: Any, variables: Mapping[str, Any]) -> Any:
            if type(value) is dict:
                try:
                    return value[name]
                except KeyError:
                    pass
            return _select_field(value, name, pos)

        return field_step
    if step.kind == "index":
        assert step.index is not None
        index_fn = _compile(step.index)

        def index_step(value: Any, variables: Mapping[str, Any]) -> Any:
            return _index(value, index_fn(variables), pos)

        return index_step
    method = _METHODS[step.name]
    arg_fns = [_compile(arg) for arg in step.args]
    if not arg_fns:

        def method_step_0(value: Any, variables: Mapping[str, Any]) -> Any:
            return method(value, _NO_ARGS, pos)

        return method_step_0
    if len(arg_fns) == 1:
        arg_fn = arg_fns[0]

        def method_step_1(value: Any, variables: Mapping[str, Any]) -> Any:
            return method(value, [arg_fn(variables)], pos)

        return method_step_1

    def method_step(value: Any, variables: Mapping[str, Any]) -> Any:
        return method(value, [arg(variables) for arg in arg_fns], pos)

    return method_step


def _compile_lenient_step(step: _Step) -> _StepFn:
    if step.kind == "field":
        name = step.name

        def field_step(value: Any, variables: Mapping[str, Any]) -> Any:
            return _lenient_field(value, name)

        return field_step
    assert step.index is not None
    index_fn = _compile(step.index)

    def index_step(value: Any, variables: Mapping[str, Any]) -> Any:
        return _lenient_index(value, index_fn(variables))

    return index_step


def _compile_select(node: _Select) -> Evaluator:
    steps = node.steps
    if isinstance(node.base, _Ident) and len(steps) == 1 and steps[0].kind == "field":
        # Fast path for the very common `variable.field`.
        var, var_pos = node.base.name, node.base.pos
        name, pos = steps[0].name, steps[0].pos

        def variable_field(variables: Mapping[str, Any]) -> Any:
            try:
                value = variables[var]
            except KeyError:
                raise _unknown_variable(var, variables, var_pos) from None
            if type(value) is dict:
                try:
                    return value[name]
                except KeyError:
                    pass
            return _select_field(value, name, pos)

        return variable_field
    base = _compile(node.base)
    step_fns = [_compile_step(step) for step in steps]
    if len(step_fns) == 1:
        only = step_fns[0]

        def select_1(variables: Mapping[str, Any]) -> Any:
            return only(base(variables), variables)

        return select_1
    if len(step_fns) == 2:
        step_a, step_b = step_fns

        def select_2(variables: Mapping[str, Any]) -> Any:
            return step_b(step_a(base(variables), variables), variables)

        return select_2

    def select(variables: Mapping[str, Any]) -> Any:
        value = base(variables)
        for step in step_fns:
            value = step(value, variables)
        return value

    return select


def _compile_has(node: _Select) -> Evaluator:
    steps = node.steps
    if isinstance(node.base, _Ident) and len(steps) == 1 and steps[0].kind == "field":
        var, var_pos, name = node.base.name, node.base.pos, steps[0].name

        def has_variable_field(variables: Mapping[str, Any]) -> bool:
            try:
                value = variables[var]
            except KeyError:
                raise _unknown_variable(var, variables, var_pos) from None
            if type(value) is dict:
                return name in value
            return _lenient_field(value, name) is not _MISSING

        return has_variable_field
    base = _compile(node.base)
    step_fns = [_compile_lenient_step(step) for step in node.steps]

    def has(variables: Mapping[str, Any]) -> bool:
        value = base(variables)
        for step in step_fns:
            value = step(value, variables)
            if value is _MISSING:
                return False
        return True

    return has


def _compile_call(node: _Call) -> Evaluator:
    name, pos = node.name, node.pos
    if name == "has":
        arg = node.args[0]
        assert isinstance(arg, _Select)
        return _compile_has(arg)
    if name == "matches":
        text_fn, pattern_fn = (_compile(arg) for arg in node.args)

        def matches(variables: Mapping[str, Any]) -> bool:
            return _fn_matches(text_fn(variables), pattern_fn(variables), pos)

        return matches
    function = _UNARY_FUNCTIONS[name]
    arg_fn = _compile(node.args[0])

    def call(variables: Mapping[str, Any]) -> Any:
        return function(arg_fn(variables), pos)

    return call


def _compile_unary(node: _Unary) -> Evaluator:
    operand = _compile(node.operand)
    # Applied innermost first.
    ops = [(_UNARY_OPS[op], pos) for op, pos in reversed(node.ops)]
    if len(ops) == 1:
        op_fn, pos = ops[0]

        def unary(variables: Mapping[str, Any]) -> Any:
            return op_fn(operand(variables), pos)

        return unary

    def unary_chain(variables: Mapping[str, Any]) -> Any:
        value = operand(variables)
        for op_fn, pos in ops:
            value = op_fn(value, pos)
        return value

    return unary_chain


def _compile_conditional(node: _Cond) -> Evaluator:
    cond, then, other = _compile(node.cond), _compile(node.then), _compile(node.other)
    pos = node.cond.pos

    def conditional(variables: Mapping[str, Any]) -> Any:
        test = cond(variables)
        if test is True:
            return then(variables)
        if test is False:
            return other(variables)
        raise _Fail(f"the condition of '?:' must be a boolean, got {_type_name(test)}", pos)

    return conditional


def _compile_logical(node: _Chain) -> Evaluator:
    symbol = "||" if node.prec == _PREC_OR else "&&"
    stop: bool = node.prec == _PREC_OR  # the value that short-circuits
    fns = [_compile(operand) for operand in node.operands]
    positions = [operand.pos for operand in node.operands]

    def fail(value: Any, pos: int) -> NoReturn:
        raise _Fail(f"{symbol!r} requires boolean operands, got {_type_name(value)}", pos)

    if len(fns) == 2:
        first, second = fns
        first_pos, second_pos = positions
        if stop:

            def logical_or(variables: Mapping[str, Any]) -> bool:
                value = first(variables)
                if value is True:
                    return True
                if value is not False:
                    fail(value, first_pos)
                value = second(variables)
                if value is True:
                    return True
                if value is False:
                    return False
                fail(value, second_pos)

            return logical_or

        def logical_and(variables: Mapping[str, Any]) -> bool:
            value = first(variables)
            if value is False:
                return False
            if value is not True:
                fail(value, first_pos)
            value = second(variables)
            if value is True:
                return True
            if value is False:
                return False
            fail(value, second_pos)

        return logical_and

    items = list(zip(fns, positions, strict=True))
    proceed = not stop

    def logical_chain(variables: Mapping[str, Any]) -> bool:
        for fn, pos in items:
            value = fn(variables)
            if value is not proceed:
                if value is stop:
                    return not proceed
                fail(value, pos)
        return proceed

    return logical_chain


def _compile_constant_comparison(op: str, left: Evaluator, constant: Any, pos: int) -> Evaluator | None:
    """Fast paths for `expr OP literal`, the overwhelmingly common shape."""
    ctype = type(constant)
    generic = _BINARY_OPS[op]
    if op in ("==", "!=") and ctype in (str, int, float):
        negate = op == "!="
        numeric = ctype is not str

        def compare_equal(variables: Mapping[str, Any]) -> bool:
            value = left(variables)
            vtype = type(value)
            if vtype is ctype or (numeric and (vtype is int or vtype is float)):
                same: bool = (value != constant) if negate else (value == constant)
                return same
            return (not _equals(value, constant)) if negate else _equals(value, constant)

        return compare_equal
    if op in _ORDERING_OPS and ctype in (str, int, float):
        compare = _ORDERING_OPS[op]
        numeric = ctype is not str

        def compare_order(variables: Mapping[str, Any]) -> Any:
            value = left(variables)
            vtype = type(value)
            if vtype is ctype or (numeric and (vtype is int or vtype is float)):
                return compare(value, constant)
            return generic(value, constant, pos)

        return compare_order
    if op == "in" and type(constant) is tuple and all(type(x) is str for x in constant):
        members = frozenset(constant)

        def in_strings(variables: Mapping[str, Any]) -> bool:
            value = left(variables)
            if type(value) is str:
                return value in members
            return _in(value, constant, pos)

        return in_strings
    return None


def _compile_chain(node: _Chain) -> Evaluator:
    fns = [_compile(operand) for operand in node.operands]
    if len(fns) == 2:
        op, pos = node.ops[0]
        left, right = fns
        right_node = node.operands[1]
        if isinstance(right_node, _Lit) or (
            isinstance(right_node, _ListLit) and all(isinstance(item, _Lit) for item in right_node.items)
        ):
            constant = right(_EMPTY_VARIABLES)
            fast = _compile_constant_comparison(op, left, constant, pos)
            if fast is not None:
                return fast
            constant_impl = _BINARY_OPS[op]

            def binary_constant(variables: Mapping[str, Any]) -> Any:
                return constant_impl(left(variables), constant, pos)

            return binary_constant
        impl = _BINARY_OPS[op]

        def binary(variables: Mapping[str, Any]) -> Any:
            return impl(left(variables), right(variables), pos)

        return binary

    first = fns[0]
    rest = [(_BINARY_OPS[op], fn, pos) for (op, pos), fn in zip(node.ops, fns[1:], strict=True)]

    def chain(variables: Mapping[str, Any]) -> Any:
        value = first(variables)
        for impl, fn, pos in rest:
            value = impl(value, fn(variables), pos)
        return value

    return chain


_EMPTY_VARIABLES: Final[Mapping[str, Any]] = {}


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A compiled condition; immutable, thread-safe, reusable.

    Create instances with :func:`compile_condition`.
    """

    source: str
    _evaluator: Evaluator = field(repr=False, compare=False)

    def evaluate(self, variables: Mapping[str, Any]) -> bool:
        """Evaluate against ``variables`` and return the boolean result.

        Raises :class:`ConditionEvaluationError` on runtime errors (unknown
        variables, missing keys, type errors, division by zero, ...) or when
        the result is not a boolean.
        """
        if type(variables) is not dict and not isinstance(variables, Mapping):
            raise ConditionEvaluationError(
                f"variables must be a mapping, got {type(variables).__name__}",
                self.source,
                None,
            )
        try:
            value = self._evaluator(variables)
        except _Fail as exc:
            raise ConditionEvaluationError(exc.detail, self.source, exc.position) from None
        except RecursionError:
            raise ConditionEvaluationError(
                "a value is nested too deeply to evaluate", self.source, None
            ) from None
        except ConditionError:
            raise
        except Exception as exc:  # defensive: never leak foreign exceptions
            raise ConditionEvaluationError(
                f"unexpected {type(exc).__name__}: {exc}", self.source, None
            ) from exc
        if value is True or value is False:
            return value
        raise ConditionEvaluationError(
            f"condition must evaluate to a boolean, got {_type_name(value)}",
            self.source,
            None,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (compile_condition, (self.source,))


@functools.lru_cache(maxsize=1024)
def _compile_cached(source: str) -> CompiledCondition:
    if len(source) > MAX_CONDITION_LENGTH:
        raise ConditionSyntaxError(
            f"condition is too long ({len(source)} characters, maximum {MAX_CONDITION_LENGTH})",
            source,
            None,
        )
    ast = _Parser(source).parse()
    return CompiledCondition(source, _compile(ast))


def compile_condition(source: str) -> CompiledCondition:
    """Compile ``source`` into a :class:`CompiledCondition` (LRU-cached).

    Raises :class:`ConditionSyntaxError` if the source is not a valid
    condition.
    """
    if type(source) is not str:
        if not isinstance(source, str):
            raise ConditionSyntaxError(f"condition must be a string, got {type(source).__name__}", "", None)
        source = str.__str__(source)
    return _compile_cached(source)


compile_condition.cache_info = _compile_cached.cache_info  # type: ignore[attr-defined]
compile_condition.cache_clear = _compile_cached.cache_clear  # type: ignore[attr-defined]
