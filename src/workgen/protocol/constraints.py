"""Golem's demand/offer constraint language: parser, evaluator, renderer and two-way match.

Demands and offers on yagna's market carry a constraints string in an LDAP-filter-like
syntax, for example::

    (&(golem.inf.mem.gib>=0.5)
        (golem.inf.storage.gib>=2.0)
        (golem.runtime.name=vm)
        (golem.node.id.name=prov*))

Grammar (whitespace is allowed around every clause and after ``(``, ``&``, ``|`` and ``!``)::

    filter  := "(" ( "&" filter* | "|" filter* | "!" filter | name op value | "" ) ")"
    op      := "=" | "<>" | "<" | "<=" | ">" | ">="

``()`` and ``(&)`` are true, ``(|)`` is false. ``(name=*)`` tests presence and other
unescaped ``*`` in an ``=`` value are wildcards. A value runs to the next ``)``; a literal
``(``, ``)``, ``*`` or ``\\`` in a value is written as an RFC 4515 escape (``\\28``, ``\\29``,
``\\2a``, ``\\5c``). Evaluation is two-valued: a comparison against an absent (or ``None``)
property is false, so ``(!(x=1))`` holds when ``x`` is absent. Properties are looked up in
the flat (dotted-name) form; see :mod:`workgen.protocol.properties` to flatten nested ones.
"""

from __future__ import annotations

import enum
import math
import operator
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Decimal, InvalidOperation, localcontext
from typing import Any

__all__ = [
    "And", "Compare", "Constraint", "ConstraintSyntaxError", "Constraints", "Like", "Not",
    "Op", "Or", "Present", "compare", "like", "match", "parse_constraints",
]

# Deep enough for any real demand, shallow enough that recursion never hits Python's limit.
MAX_DEPTH = 200

_NAME_RE = re.compile(r"[^\s()=<>~*\\&|!][^\s()=<>~*\\]*")
_NUMBER_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_HEX = frozenset("0123456789abcdefABCDEF")
_OPS_BY_LENGTH = ("<=", ">=", "<>", "=", "<", ">")


class ConstraintSyntaxError(ValueError):
    """A constraints string that does not parse; ``position`` is a 0-based character offset."""

    def __init__(self, text: str, position: int, expected: str) -> None:
        self.text = text
        self.position = position
        self.expected = expected
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        found = repr(text[position]) if position < len(text) else "end of input"
        super().__init__(
            f"expected {expected} at position {position} (line {line}, column {column}),"
            f" found {found}"
        )


class Op(enum.Enum):
    """A comparison operator, valued by its spelling in the constraint language."""

    EQ = "="
    NE = "<>"
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="


_RELATIONS: dict[Op, Callable[[Any, Any], Any]] = {
    Op.EQ: operator.eq, Op.NE: operator.ne, Op.LT: operator.lt,
    Op.LE: operator.le, Op.GT: operator.gt, Op.GE: operator.ge,
}


class Constraint(ABC):
    """An immutable node of a parsed constraint expression."""

    __slots__ = ()

    @abstractmethod
    def matches(self, properties: Mapping[str, object]) -> bool:
        """Whether a flat property set satisfies this constraint."""

    @abstractmethod
    def __str__(self) -> str:
        """The canonical (compact) rendering, which parses back to an equal constraint."""

    def __and__(self, other: Constraint) -> And:
        return And((*_operands(self, And), *_operands(other, And)))

    def __or__(self, other: Constraint) -> Or:
        return Or((*_operands(self, Or), *_operands(other, Or)))

    def __invert__(self) -> Not:
        return Not(self)


def _operands(node: Constraint, kind: type[_Group]) -> tuple[Constraint, ...]:
    return node.children if isinstance(node, kind) else (node,)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(f"invalid property name {name!r}")


@dataclass(frozen=True, slots=True)
class _Group(Constraint):
    children: tuple[Constraint, ...] = ()

    def __post_init__(self) -> None:
        children = self.children
        if not isinstance(children, (list, tuple)) or not all(
            isinstance(child, Constraint) for child in children
        ):
            raise TypeError("children must be a sequence of Constraint")
        object.__setattr__(self, "children", tuple(children))


class And(_Group):
    """All children hold; with none it is true (``(&)``)."""

    __slots__ = ()

    def matches(self, properties: Mapping[str, object]) -> bool:
        return all(child.matches(properties) for child in self.children)

    def __str__(self) -> str:
        return "(&" + "".join(map(str, self.children)) + ")"


class Or(_Group):
    """Some child holds; with none it is false (``(|)``)."""

    __slots__ = ()

    def matches(self, properties: Mapping[str, object]) -> bool:
        return any(child.matches(properties) for child in self.children)

    def __str__(self) -> str:
        return "(|" + "".join(map(str, self.children)) + ")"


@dataclass(frozen=True, slots=True)
class Not(Constraint):
    child: Constraint

    def __post_init__(self) -> None:
        if not isinstance(self.child, Constraint):
            raise TypeError("Not needs a Constraint")

    def matches(self, properties: Mapping[str, object]) -> bool:
        return not self.child.matches(properties)

    def __str__(self) -> str:
        return f"(!{self.child})"


@dataclass(frozen=True, slots=True)
class Present(Constraint):
    name: str

    def __post_init__(self) -> None:
        _check_name(self.name)

    def matches(self, properties: Mapping[str, object]) -> bool:
        return properties.get(self.name) is not None

    def __str__(self) -> str:
        return f"({self.name}=*)"


@dataclass(frozen=True, slots=True)
class Compare(Constraint):
    """``(name op value)``; ``value`` is the unescaped literal text."""

    name: str
    op: Op
    value: str

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.op, Op) or not isinstance(self.value, str):
            raise TypeError("Compare needs an Op and a str value")

    def matches(self, properties: Mapping[str, object]) -> bool:
        items = _items(properties.get(self.name))
        if items is None:
            return False
        if self.op is Op.NE:
            return not any(_compare(item, Op.EQ, self.value) for item in items)
        return any(_compare(item, self.op, self.value) for item in items)

    def __str__(self) -> str:
        return f"({self.name}{self.op.value}{_escape(self.value, leading=True)})"


@dataclass(frozen=True, slots=True)
class Like(Constraint):
    """``(name=a*b*c)``: ``parts`` are the literal pieces between the wildcards."""

    name: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        parts = tuple(self.parts)
        if len(parts) < 2 or not all(isinstance(part, str) for part in parts):
            raise ValueError("a wildcard pattern needs at least two string parts")
        if _is_presence(parts):
            raise ValueError(f"({self.name}=*) is a presence test: use Present")
        object.__setattr__(self, "parts", parts)

    def matches(self, properties: Mapping[str, object]) -> bool:
        items = _items(properties.get(self.name))
        return items is not None and any(
            text is not None and _glob(self.parts, text) for text in map(_text, items)
        )

    def __str__(self) -> str:
        first, *rest = self.parts
        rendered = _escape(first, leading=True) + "".join("*" + _escape(p) for p in rest)
        return f"({self.name}={rendered})"


def _is_presence(parts: tuple[str, ...]) -> bool:
    # yagna's parser takes "(x=*   )" as a presence test too, so the parse must agree.
    return len(parts) == 2 and parts[0] == "" and parts[1].strip() == ""


def _escape(value: str, leading: bool = False) -> str:
    out = value.replace("\\", "\\5c").replace("(", "\\28").replace(")", "\\29")
    out = out.replace("*", "\\2a")
    # A value starting with an operator character would re-parse as a different operator.
    if leading and out[:1] in ("=", "<", ">"):
        out = f"\\{ord(out[0]):02x}{out[1:]}"
    return out


def _glob(parts: tuple[str, ...], text: str) -> bool:
    first, *middle, last = parts
    if len(text) < len(first) + len(last) or not text.startswith(first):
        return False
    if not text.endswith(last):
        return False
    position, end = len(first), len(text) - len(last)
    # Taking the leftmost occurrence of each middle piece never loses a match.
    for piece in middle:
        found = text.find(piece, position, end)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def _items(value: object) -> tuple[object, ...] | None:
    if value is None:
        return None
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _as_number(value: object) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        # repr() gives the shortest decimal that round-trips, so 0.1 compares equal to "0.1".
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str) and _NUMBER_RE.fullmatch(value):
        try:
            # The default context refuses exponents past 999999, which a value may carry.
            with localcontext(Emax=MAX_EMAX, Emin=MIN_EMIN):
                return Decimal(value.strip())
        except InvalidOperation:
            return None
    return None


def _text(value: object) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (str, int, float, Decimal)) else None


def _compare(item: object, op: Op, literal: str) -> bool:
    if isinstance(item, bool):
        # Booleans only support equality; "true" < "false" would mean nothing.
        return op is Op.EQ and literal.strip().lower() == ("true" if item else "false")
    relation = _RELATIONS[op]
    left, right = _as_number(item), _as_number(literal)
    if left is not None and right is not None:
        return bool(relation(left, right))
    text = _text(item)
    return text is not None and bool(relation(text, literal))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, expected: str, position: int | None = None) -> ConstraintSyntaxError:
        where = self.pos if position is None else position
        return ConstraintSyntaxError(self.text, where, expected)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.fail(repr(char))
        self.pos += 1

    def parse(self) -> Constraint:
        self.skip_space()
        node = self.filter(1)
        self.skip_space()
        if self.pos != len(self.text):
            raise self.fail("end of input")
        return node

    def filter(self, depth: int) -> Constraint:
        if depth > MAX_DEPTH:
            raise self.fail(f"at most {MAX_DEPTH} levels of nesting")
        self.expect("(")
        self.skip_space()
        head = self.peek()
        if head in ("&", "|"):
            self.pos += 1
            children: list[Constraint] = []
            while True:
                self.skip_space()
                if self.peek() == ")":
                    self.pos += 1
                    return And(tuple(children)) if head == "&" else Or(tuple(children))
                if self.peek() != "(":
                    raise self.fail("'(' or ')'")
                children.append(self.filter(depth + 1))
        if head == "!":
            self.pos += 1
            self.skip_space()
            child = self.filter(depth + 1)
            self.skip_space()
            self.expect(")")
            return Not(child)
        if head == ")":
            self.pos += 1
            return And(())
        return self.clause()

    def clause(self) -> Constraint:
        found = _NAME_RE.match(self.text, self.pos)
        if found is None:
            raise self.fail("a property name or one of '&', '|', '!', ')'")
        name = found.group()
        self.pos = found.end()
        op = next((Op(o) for o in _OPS_BY_LENGTH if self.text.startswith(o, self.pos)), None)
        if op is None:
            unsupported = " ('~=' is not supported)" if self.peek() == "~" else ""
            raise self.fail(f"a comparison operator: =, <>, <, <=, >, >={unsupported}")
        self.pos += len(op.value)
        parts = self.value(op)
        self.pos += 1
        if len(parts) == 1:
            return Compare(name, op, parts[0])
        if _is_presence(parts):
            return Present(name)
        return Like(name, parts)

    def value(self, op: Op) -> tuple[str, ...]:
        """Read up to (not past) the closing ')', splitting at unescaped wildcards."""
        parts: list[str] = []
        chars: list[str] = []
        while True:
            char = self.peek()
            if char == ")":
                parts.append("".join(chars))
                return tuple(parts)
            if char == "":
                raise self.fail("')' to end the clause")
            if char == "(":
                raise self.fail("')' or a value character ('(' in a value is written \\28)")
            if char == "*":
                if op is not Op.EQ:
                    raise self.fail("a value without '*' (wildcards work only with '=')")
                parts.append("".join(chars))
                chars = []
                self.pos += 1
            elif char == "\\":
                chars.append(self.escapes())
            else:
                chars.append(char)
                self.pos += 1

    def escapes(self) -> str:
        # A multi-byte UTF-8 character arrives as a run of escapes, so decode the run whole.
        start = self.pos
        raw = bytearray()
        while self.peek() == "\\":
            digits = self.text[self.pos + 1 : self.pos + 3]
            if len(digits) != 2 or not set(digits) <= _HEX:
                raise self.fail("two hex digits after '\\'", self.pos + 1)
            raw.append(int(digits, 16))
            self.pos += 3
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("escapes that form valid UTF-8", start) from None


def parse_constraints(text: str) -> Constraint:
    """Parse a constraints string; raises :class:`ConstraintSyntaxError` on malformed input."""
    if not isinstance(text, str):
        raise TypeError(f"constraints must be a str, not {type(text).__name__}")
    return _Parser(text).parse()


def _coerce(constraint: Constraint | str) -> Constraint:
    return constraint if isinstance(constraint, Constraint) else parse_constraints(constraint)


def match(
    demand_props: Mapping[str, object],
    demand_cons: Constraint | str,
    offer_props: Mapping[str, object],
    offer_cons: Constraint | str,
) -> bool:
    """The market's two-way match: each side's constraints must hold on the other's properties."""
    return _coerce(demand_cons).matches(offer_props) and _coerce(offer_cons).matches(demand_props)


LiteralValue = str | int | float | bool | Decimal


def _literal(value: LiteralValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} cannot appear in a constraint")
        return repr(value)
    if isinstance(value, (int, Decimal, str)):
        return str(value)
    raise TypeError(f"unsupported constraint value {value!r}")


def compare(name: str, op: Op | str, value: LiteralValue) -> Compare:
    """``(name op value)`` from a Python value; a ``*`` in a str value is literal here."""
    return Compare(name, Op(op), _literal(value))


def like(name: str, pattern: str) -> Constraint:
    """``(name=pattern)`` where each ``*`` in ``pattern`` matches any run of characters."""
    parts = tuple(pattern.split("*"))
    if len(parts) == 1:
        return Compare(name, Op.EQ, pattern)
    return Present(name) if _is_presence(parts) else Like(name, parts)


class Constraints:
    """A growing list of clauses that all must hold, as a demand or offer builder collects them."""

    def __init__(self, *clauses: Constraint | str) -> None:
        self._clauses: list[Constraint] = [_coerce(clause) for clause in clauses]

    def add(self, clause: Constraint | str) -> Constraints:
        self._clauses.append(_coerce(clause))
        return self

    def build(self) -> Constraint:
        """The single clause itself, or an ``&`` of them all (``(&)`` when there are none)."""
        return self._clauses[0] if len(self._clauses) == 1 else And(tuple(self._clauses))

    def __str__(self) -> str:
        return str(self.build())
