"""`when:` conditions: a tiny, bounded expression language (tokeniser, recursive descent, evaluator), no eval.

The grammar (docs/spec.md#conditions-when):

    expr     := or_expr
    or_expr  := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | compare
    compare  := operand [("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in") operand]
    operand  := NUMBER | "-" NUMBER | STRING | "true" | "false" | "null" | name
              | "[" [expr ("," expr)*] "]" | "(" expr ")"
    name     := IDENT ("." IDENT)*

A name's first part is resolved by the caller (an upstream out, a node, or `params`); every further part is a
key of a mapping, never an attribute, so no object's internals are reachable. Comparisons do not chain."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 1000  # characters of one condition
MAX_TOKENS = 200
MAX_DEPTH = 16  # nesting of parentheses, lists and `not`

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_LITERAL_WORDS: dict[str, Any] = {"true": True, "false": False, "null": None}
_COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|-)
""", re.VERBOSE)
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}


class ExprError(ValueError):
    """A condition that is not an expression of the grammar, or too big; `position` is a 0-based offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position + 1})")
        self.reason, self.position = message, position


class ConditionError(Exception):
    """A condition that parsed but cannot be evaluated on these values (a wrong type, a missing key)."""


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Name:
    parts: tuple[str, ...]

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class ListOf:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Not:
    operand: Expr


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Compare:
    op: str  # one of _COMPARISONS, "in" or "not in"
    left: Expr
    right: Expr


Expr = Lit | Name | ListOf | Not | BoolOp | Compare


@dataclass(frozen=True)
class _Tok:
    kind: str  # number, name, string, op, keyword, end
    text: str
    at: int


def _tokens(text: str) -> list[_Tok]:
    if len(text) > MAX_LENGTH:
        raise ExprError(f"the condition is {len(text)} characters long; at most {MAX_LENGTH}", MAX_LENGTH)
    out: list[_Tok] = []
    at = 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise ExprError(f"unexpected character {text[at]!r}", at)
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            if kind == "name" and word in KEYWORDS:
                kind = "keyword"
            elif kind == "name" and "." not in word and word in ("True", "False", "None"):
                raise ExprError(f"{word!r} is Python; write {word.lower() if word != 'None' else 'null'!r}", at)
            out.append(_Tok(kind, word, at))
            if len(out) > MAX_TOKENS:
                raise ExprError(f"the condition has more than {MAX_TOKENS} tokens", at)
        at = match.end()
    out.append(_Tok("end", "", len(text)))
    return out


def _string(token: _Tok) -> str:
    body, chars, i = token.text[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\":
            escaped = body[i + 1]
            if escaped not in _ESCAPES:
                raise ExprError(f"unknown escape \\{escaped} in a string (use \\\\ \\\" \\' \\n \\t)", token.at + i + 1)
            chars.append(_ESCAPES[escaped])
            i += 2
        else:
            chars.append(body[i])
            i += 1
    return "".join(chars)


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.depth = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        token = self.toks[self.i]
        self.i += 1
        return token

    def accept(self, kind: str, text: str) -> bool:
        token = self.peek()
        if token.kind == kind and token.text == text:
            self.i += 1
            return True
        return False

    def expect(self, kind: str, text: str) -> None:
        if not self.accept(kind, text):
            raise ExprError(f"expected {text!r}, found {_shown(self.peek())}", self.peek().at)

    def nested(self, at: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExprError(f"the condition nests deeper than {MAX_DEPTH}", at)

    def expr(self) -> Expr:
        operands = [self.and_expr()]
        while self.accept("keyword", "or"):
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def and_expr(self) -> Expr:
        operands = [self.not_expr()]
        while self.accept("keyword", "and"):
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def not_expr(self) -> Expr:
        token = self.peek()
        if token.kind == "keyword" and token.text == "not":  # at the start of an operand `not` negates
            self.take()
            self.nested(token.at)
            operand = self.not_expr()
            self.depth -= 1
            return Not(operand)
        return self.compare()

    def compare(self) -> Expr:
        left = self.operand()
        token = self.peek()
        if token.kind == "op" and token.text in _COMPARISONS:
            self.take()
            op = token.text
        elif token.kind == "keyword" and token.text == "in":
            self.take()
            op = "in"
        elif token.kind == "keyword" and token.text == "not" and self.toks[self.i + 1].text == "in":
            self.i += 2
            op = "not in"
        else:
            return left
        right = self.operand()
        after = self.peek()
        if (after.kind == "op" and after.text in _COMPARISONS) or (after.kind == "keyword" and after.text in ("in",)):
            raise ExprError("comparisons do not chain: write `a < b and b < c`", after.at)
        return Compare(op, left, right)

    def operand(self) -> Expr:
        token = self.take()
        if token.kind == "number":
            return Lit(_number(token.text, token.at))
        if token.kind == "op" and token.text == "-" and self.peek().kind == "number":
            number = self.take()
            return Lit(-_number(number.text, number.at))
        if token.kind == "string":
            return Lit(_string(token))
        if token.kind == "keyword" and token.text in _LITERAL_WORDS:
            return Lit(_LITERAL_WORDS[token.text])
        if token.kind == "name":
            parts = tuple(token.text.split("."))
            for part in parts:
                if part.startswith("__"):
                    raise ExprError(f"names starting with '__' are not allowed ({part!r})", token.at)
                if part in KEYWORDS:
                    raise ExprError(f"{part!r} is a keyword and cannot be part of a name", token.at)
            return Name(parts)
        if token.kind == "op" and token.text == "(":
            self.nested(token.at)
            inner = self.expr()
            self.expect("op", ")")
            self.depth -= 1
            return inner
        if token.kind == "op" and token.text == "[":
            self.nested(token.at)
            items: list[Expr] = []
            if not self.accept("op", "]"):
                items.append(self.expr())
                while self.accept("op", ","):
                    items.append(self.expr())
                self.expect("op", "]")
            self.depth -= 1
            return ListOf(tuple(items))
        raise ExprError(f"expected a value, a name, '(' or '[', found {_shown(token)}", token.at)


def _number(text: str, at: int) -> int | float:
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"number {text} is out of range", at)
    return value


def _shown(token: _Tok) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def parse(text: str) -> Expr:
    """The condition's syntax tree; ExprError if it is not one expression of the grammar or too big."""
    if not isinstance(text, str):
        raise ExprError(f"a condition is a string, not a {type(text).__name__}", 0)
    parser = _Parser(text)
    if parser.peek().kind == "end":
        raise ExprError("the condition is empty", 0)
    tree = parser.expr()
    if parser.peek().kind != "end":
        raise ExprError(f"unexpected {_shown(parser.peek())} after a complete expression", parser.peek().at)
    return tree


def names(tree: Expr) -> list[Name]:
    """Every name the condition reads, in order of appearance, each once."""
    found: dict[Name, None] = {}
    stack: list[Expr] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Name):
            found[node] = None
        elif isinstance(node, ListOf | BoolOp):
            stack.extend(reversed(node.items if isinstance(node, ListOf) else node.operands))
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, Compare):
            stack.extend((node.right, node.left))
    return list(found)


Lookup = Callable[[Name], Any]  # the value of a name (its first part, resolved; then keys, see `dig`)


def dig(value: Any, name: Name, start: int) -> Any:
    """Follow `name.parts[start:]` as mapping keys into `value`: keys only, never attributes."""
    for index in range(start, len(name.parts)):
        key = name.parts[index]
        reached = ".".join(name.parts[:index])
        if not isinstance(value, Mapping):
            raise ConditionError(f"{name.dotted}: {reached} is {_kind(value)}, not a mapping with key {key!r}")
        if key not in value:
            keys = ", ".join(sorted(map(str, value))[:10])
            raise ConditionError(f"{name.dotted}: {reached} has no key {key!r} (it has: {keys or 'no keys'})")
        value = value[key]
    return value


def evaluate(tree: Expr, lookup: Lookup) -> bool:
    """True or False; ConditionError when a value has the wrong type for its operator (no implicit truthiness)."""
    result = _value(tree, lookup)
    if not isinstance(result, bool):
        raise ConditionError(f"the condition must be true or false, but it is {_kind(result)}")
    return result


def _value(node: Expr, lookup: Lookup) -> Any:
    if isinstance(node, Lit):
        return node.value
    if isinstance(node, Name):
        return lookup(node)
    if isinstance(node, ListOf):
        return [_value(item, lookup) for item in node.items]
    if isinstance(node, Not):
        return not _truth(_value(node.operand, lookup), "not")
    if isinstance(node, BoolOp):
        for operand in node.operands:  # short-circuits as Python's and/or, on booleans only
            value = _truth(_value(operand, lookup), node.op)
            if value is (node.op == "or"):
                return value
        return node.op == "and"
    return _compare(node.op, _value(node.left, lookup), _value(node.right, lookup))


def _truth(value: Any, op: str) -> bool:
    if not isinstance(value, bool):
        raise ConditionError(f"`{op}` takes true or false, not {_kind(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _compare(op: str, left: Any, right: Any) -> bool:
    for side in (left, right):
        if not isinstance(side, _PLAIN):
            raise ConditionError(f"`{op}` compares plain values (numbers, strings, booleans, null, lists, mappings), "
                                 f"not {_kind(side)}")
    try:
        return _compare_plain(op, left, right)
    except (TypeError, ValueError) as exc:  # e.g. an array inside a list: its == is not a boolean
        raise ConditionError(f"`{op}` cannot compare {_kind(left)} with {_kind(right)}: {exc}") from None


_PLAIN = (type(None), bool, numbers.Real, str, list, tuple, set, frozenset, Mapping)


def _compare_plain(op: str, left: Any, right: Any) -> bool:
    if op in ("==", "!="):
        same = (left == right) if _comparable(left, right) else False
        return bool(same) if op == "==" else not same
    if op in ("in", "not in"):
        if isinstance(right, str):
            if not isinstance(left, str):
                raise ConditionError(f"`{op}` a string needs a string on the left, not {_kind(left)}")
            found = left in right
        elif isinstance(right, list | tuple | set | frozenset | Mapping):
            found = any(_comparable(left, item) and left == item for item in right)
        else:
            raise ConditionError(f"`{op}` needs a list, a mapping or a string on the right, not {_kind(right)}")
        return found if op == "in" else not found
    if _is_number(left) and _is_number(right) or isinstance(left, str) and isinstance(right, str):
        if _is_number(left) and (math.isnan(left) or math.isnan(right)):
            raise ConditionError(f"`{op}` cannot order NaN")
        return bool({"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op])
    raise ConditionError(f"`{op}` compares two numbers or two strings, not {_kind(left)} and {_kind(right)}")


def _comparable(left: Any, right: Any) -> bool:
    """Equality across kinds is false, never Python's True == 1."""
    if _is_number(left) and _is_number(right):
        return True
    return type(left) is type(right) or (isinstance(left, list | tuple) and isinstance(right, list | tuple))


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40] + '...' if len(shown) > 40 else shown}"


def unparse(tree: Expr) -> str:
    """The condition as text that parses back to `tree` (fully parenthesised where it nests)."""
    if isinstance(tree, Lit):
        return _literal(tree.value)
    if isinstance(tree, Name):
        return tree.dotted
    if isinstance(tree, ListOf):
        return "[" + ", ".join(unparse(item) for item in tree.items) + "]"
    if isinstance(tree, Not):
        return f"not ({unparse(tree.operand)})"
    if isinstance(tree, BoolOp):
        return f" {tree.op} ".join(f"({unparse(operand)})" for operand in tree.operands)
    return f"{unparse(tree.left)} {tree.op} {unparse(tree.right)}"


def _literal(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'
    if isinstance(value, int | float) and not (isinstance(value, float) and not math.isfinite(value)):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(item) for item in value) + "]"
    raise ExprError(f"a {type(value).__name__} cannot be written in a condition", 0)
