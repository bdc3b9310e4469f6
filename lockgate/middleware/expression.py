"""The condition language of rewrite rules: parsed once when the policy loads, into a
small tree that is evaluated for each request. Nothing here ever reaches Python's
`eval`, `exec` or `compile`: a condition can only compare values and combine the
results, so a policy file cannot run code.

    user_tier == 'premium' && (hour < 9 || hour > 17) and task_type not in ['chat', "qa"]

- comparisons `== != < <= > >=`, membership `in` / `not in` (a list, or a substring of a string);
  a comparison does not chain (`a < b < c` is refused: join two with `and`)
- logic `and or not`, also written `&& || !` (`!` binds like `not`, below comparisons)
- literals: 'single' or "double" quoted strings, numbers, true/false/True/False, null/None,
  and list literals of those for `in`
- names, resolved (or refused) by the caller at parse time; dotted names such as
  `header.x-lockgate-task` are one name, so that header names may contain `-`

Values from HTTP headers are always strings, so a string compared with a number or a
boolean is read as one (`'5' > 3`, `'true' == true`). Otherwise values of different
types are never equal and never ordered: `None < 3` and `'a' < 1` are false, never
an error. A value used as a condition on its own is true unless it is null, false,
0, empty, or a string such as 'false', '0', 'no' or 'off'.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

MAX_LENGTH = 4096  # characters in one condition
MAX_DEPTH = 32  # nesting of parentheses and `not`
MAX_TERMS = 256  # operands of one chain of `and` / `or`, items of one list

FALSY_TEXT = frozenset({"", "false", "0", "no", "off"})
NUMBER_TEXT = re.compile(r"\s*-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*")
RESERVED = frozenset({"lambda", "import", "from", "def", "class", "if", "else", "for", "while", "is", "return", "yield", "await", "async"})
LITERALS = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\w.])
    |(?P<name>[A-Za-z_]\w*(?:\.[\w-]+)*)
    |(?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
    |(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\],.])
    """,
    re.VERBOSE,
)
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}
COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})


class ExpressionError(Exception):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column + 1})")
        self.message = message
        self.column = column


class Facts(Protocol):
    def get(self, name: str) -> Any: ...


# -- values -------------------------------------------------------------------------
def truth(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in FALSY_TEXT
    return bool(value)


def type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    return "other"


def as_kind(text: str, wanted: str) -> tuple[bool, Any]:
    """A header's string read as the other side's type, if it is one."""
    if wanted == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "false"):
            return True, lowered == "true"
    elif wanted == "number" and NUMBER_TEXT.fullmatch(text):
        return True, float(text)
    return False, None


def aligned(left: Any, right: Any) -> tuple[bool, Any, Any]:
    """Both sides as one type, or False when they cannot be compared."""
    left_kind, right_kind = type_of(left), type_of(right)
    if left_kind == right_kind:
        return left_kind != "other", left, right
    if left_kind == "string":
        ok, left = as_kind(left, right_kind)
        return ok, left, right
    if right_kind == "string":
        ok, right = as_kind(right, left_kind)
        return ok, left, right
    return False, left, right


def equal(left: Any, right: Any) -> bool:
    ok, left, right = aligned(left, right)
    return ok and left == right


def contains(container: Any, item: Any) -> bool:
    if isinstance(container, (list, tuple)):
        return any(equal(item, member) for member in container)
    if isinstance(container, str) and isinstance(item, str):
        return item in container
    return False


def compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return equal(left, right)
    if op == "!=":
        return not equal(left, right)
    ok, left, right = aligned(left, right)
    if not ok or type_of(left) not in ("number", "string") or left != left or right != right:
        return False  # NaN is unordered too
    # both numbers or both strings (aligned above): each comparison is a bool
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


# -- the tree ------------------------------------------------------------------------
class Const:
    __slots__ = ("constant",)

    def __init__(self, constant: Any) -> None:
        self.constant = constant

    def value(self, facts: Facts) -> Any:
        return self.constant


class Name:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def value(self, facts: Facts) -> Any:
        return facts.get(self.name)


class Compare:
    __slots__ = ("op", "left", "right")

    def __init__(self, op: str, left: Any, right: Any) -> None:
        self.op, self.left, self.right = op, left, right

    def value(self, facts: Facts) -> bool:
        left, right = self.left.value(facts), self.right.value(facts)
        if self.op == "in":
            return contains(right, left)
        if self.op == "not in":
            return not contains(right, left)
        return compare(self.op, left, right)


class Not:
    __slots__ = ("operand",)

    def __init__(self, operand: Any) -> None:
        self.operand = operand

    def value(self, facts: Facts) -> bool:
        return not truth(self.operand.value(facts))


class Node(Protocol):
    """A parsed expression's node: Const, Name, Compare, Not, AllOf or AnyOf."""

    def value(self, facts: Facts) -> Any: ...


class AllOf:
    __slots__ = ("operands",)

    def __init__(self, operands: list[Node]) -> None:
        self.operands = tuple(operands)

    def value(self, facts: Facts) -> bool:
        return all(truth(o.value(facts)) for o in self.operands)


class AnyOf:
    __slots__ = ("operands",)

    def __init__(self, operands: list[Node]) -> None:
        self.operands = tuple(operands)

    def value(self, facts: Facts) -> bool:
        return any(truth(o.value(facts)) for o in self.operands)


class Expression:
    """A parsed condition; `test(facts)` answers it for one request."""

    __slots__ = ("root",)

    def __init__(self, root: Any) -> None:
        self.root = root

    def test(self, facts: Facts) -> bool:
        return truth(self.root.value(facts))


# -- tokens and parsing ------------------------------------------------------------
def tokenize(text: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:
            char = text[position]
            if char in "'\"":
                raise ExpressionError("unterminated string", position)
            hint = {"=": "; compare with ==", "&": "; use && or and", "|": "; use || or or"}.get(char, "")
            raise ExpressionError(f"unexpected character {char!r}{hint}", position)
        group = match.lastgroup
        assert group is not None  # every alternative of TOKEN is a named group
        raw = match.group()
        if group == "string":
            if tokens and tokens[-1][0] == "name" and tokens[-1][2] + len(tokens[-1][1]) == position:
                raise ExpressionError(f"string prefixes such as {tokens[-1][1]}'...' (f-strings) are not allowed", tokens[-1][2])
            tokens.append(("string", re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), raw[1:-1]), position))
        elif group == "number":
            tokens.append(("number", float(raw) if any(c in raw for c in ".eE") else int(raw), position))
        elif group == "name" and raw in RESERVED:
            raise ExpressionError(f"`{raw}` is not part of the condition language", position)
        elif group != "space":
            tokens.append((group, raw, position))
        position = match.end()
    return tokens


class Parser:
    """Recursive descent over the tokens; `resolve(name)` returns the canonical name
    or raises ExpressionError for a name the policy may not read."""

    def __init__(self, text: str, resolve: Callable[[str, int], str]) -> None:
        self.tokens = tokenize(text)
        self.end = len(text)
        self.index = 0
        self.depth = 0
        self.resolve = resolve

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def at(self, *texts: str) -> bool:
        token = self.peek()
        return token is not None and token[0] in ("op", "name") and token[1] in texts

    def take(self) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None:
            raise ExpressionError("the condition ends too early", self.end)
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.peek()
        if token is None or token[1] != text or token[0] != "op":
            raise ExpressionError(f"expected {text!r}", token[2] if token else self.end)
        self.index += 1

    def parse(self) -> Any:
        root = self.any_of()
        token = self.peek()
        if token is not None:
            raise ExpressionError(f"unexpected {describe(token)}", token[2])
        return root

    def nested(self, parse: Callable[[], Any], position: int) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"the condition nests deeper than {MAX_DEPTH} levels", position)
        try:
            return parse()
        finally:
            self.depth -= 1

    def chain(self, words: tuple[str, ...], parse: Callable[[], Any], node: type) -> Any:
        operands = [parse()]
        while self.at(*words):
            position = self.take()[2]
            if len(operands) >= MAX_TERMS:
                raise ExpressionError(f"more than {MAX_TERMS} terms in one chain", position)
            operands.append(parse())
        return operands[0] if len(operands) == 1 else node(operands)

    def any_of(self) -> Any:
        return self.chain(("or", "||"), self.all_of, AnyOf)

    def all_of(self) -> Any:
        return self.chain(("and", "&&"), self.negation, AllOf)

    def negation(self) -> Any:
        if self.at("not", "!"):
            position = self.take()[2]
            return Not(self.nested(self.negation, position))
        return self.comparison()

    def comparison(self) -> Any:
        left = self.operand()
        op = self.operator()
        if op is None:
            return left
        node = Compare(op, left, self.operand())
        token = self.peek()
        if token is not None and self.operator(consume=False):
            raise ExpressionError("comparisons do not chain: join them with `and`", token[2])
        return node

    def operator(self, consume: bool = True) -> str | None:
        token = self.peek()
        if token is None:
            return None
        kind, text, _ = token
        op: str
        if kind == "op" and text in COMPARISONS:
            op, width = text, 1
        elif kind == "name" and text == "in":
            op, width = "in", 1
        elif kind == "name" and text == "not" and self.index + 1 < len(self.tokens) and self.tokens[self.index + 1][:2] == ("name", "in"):
            op, width = "not in", 2
        else:
            return None
        if consume:
            self.index += width
        return op

    def operand(self) -> Any:
        kind, text, position = self.take()
        if kind == "op" and text == "(":
            node = self.nested(self.any_of, position)
            self.expect(")")
        elif kind == "op" and text == "[":
            node = Const(self.list_literal(position))
        elif kind in ("string", "number"):
            node = Const(text)
        elif kind == "name":
            self.refuse_postfix()  # `open(...)`, `header[...]`: say what is wrong before the name's own problems
            node = self.name(text, position)
        else:
            raise ExpressionError(f"unexpected {describe((kind, text, position))}", position)
        self.refuse_postfix()
        return node

    def refuse_postfix(self) -> None:
        token = self.peek()
        if token is None or token[0] != "op":
            return
        refused = {"(": "function calls are not allowed", ".": "attribute access is not allowed", "[": "subscripts are not allowed"}
        if token[1] in refused:
            raise ExpressionError(refused[token[1]], token[2])

    def name(self, text: str, position: int) -> Any:
        if text in LITERALS:
            return Const(LITERALS[text])
        if text in ("and", "or", "not", "in"):
            raise ExpressionError(f"unexpected {text!r}", position)
        if any(part.startswith("_") for part in text.split(".")):
            raise ExpressionError(f"names starting with '_' are not allowed: {text}", position)
        return Name(self.resolve(text, position))

    def list_literal(self, start: int) -> tuple[Any, ...]:
        items: list[Any] = []
        while not self.at("]"):
            kind, value, position = self.take()
            if kind in ("string", "number"):
                items.append(value)
            elif kind == "name" and value in LITERALS:
                items.append(LITERALS[value])
            else:
                raise ExpressionError("a list holds only strings, numbers, booleans and null", position)
            if len(items) > MAX_TERMS:
                raise ExpressionError(f"a list holds at most {MAX_TERMS} items", start)
            if not self.at("]"):
                self.expect(",")
        self.take()
        return tuple(items)


def describe(token: tuple[str, Any, int]) -> str:
    kind, text, _ = token
    if kind == "string":
        return f"string {text!r}"
    return f"{text!r}"


def parse(text: str, resolve: Callable[[str, int], str]) -> Expression:
    """The condition `text` as an Expression. `resolve(name, column)` turns each name
    into its canonical form or raises ExpressionError for one the policy may not read."""
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError("a condition must be a non-empty string", 0)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"a condition is at most {MAX_LENGTH} characters", MAX_LENGTH)
    return Expression(Parser(text, resolve).parse())
