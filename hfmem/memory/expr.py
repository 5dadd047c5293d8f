"""Formulas over plain numbers *or* named symbols: one body gives the plan its bytes and ``--explain`` its story.

A memory formula in `hfmem.memory` is written once, with Python operators and the helpers below, over values that
are either ``int``/``float`` or `Expr` nodes. Called with numbers (the plan, sweeps) it is ordinary integer
arithmetic at full speed: every helper returns a plain number when its inputs are plain numbers. Called with
`Var` operands (``--explain``) the same body builds an expression tree, whose `Expr.value` is the number the plan
reports (the same operations in the same order) and which renders as a formula in symbols
(``w × ⌈Ψ_T / N⌉``) and with the values put in (``2 × ⌈6,738,415,616 / 8⌉``).

Citations live on the leaves: a `Var` or `Const` may carry the source of its value (a paper, a framework file),
and `Expr.sources` collects them, so a component's sources are derived from the formula that computes it.

Notation: ``×`` multiplication, ``⌈a / b⌉`` integer division rounded up, ``⌊a / b⌋`` rounded down, ``⌊x⌋`` an
``int()`` truncation, ``⌈x⌉`` ``math.ceil``, ``min``/``max``; integers render with thousands separators.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import ClassVar

__all__ = [
    "Expr",
    "Var",
    "Const",
    "Sum",
    "Product",
    "Div",
    "CeilDiv",
    "FloorDiv",
    "Round",
    "Call",
    "Value",
    "Number",
    "ceil_div",
    "floor_div",
    "minimum",
    "maximum",
    "trunc",
    "ceil",
    "total",
    "value_of",
    "cite",
    "is_symbolic",
]

Number = int | float


def _num(value: Number) -> str:
    if isinstance(value, float):
        return f"{int(value):,}" if value.is_integer() else repr(value)
    return f"{value:,}"


class Expr:
    """A node of a formula. ``prec``: binding strength (1 sums, 2 products, 3 atoms), for parentheses."""

    __slots__ = ()
    prec: ClassVar[int] = 3

    def value(self) -> Number:
        raise NotImplementedError

    def render(self, substituted: bool) -> str:
        raise NotImplementedError

    def children(self) -> tuple[Expr, ...]:
        return ()

    def variables(self) -> Iterator[Var]:
        for child in self.children():
            yield from child.variables()

    def leaves(self) -> Iterator[Var | Const]:
        for child in self.children():
            yield from child.leaves()

    def sources(self) -> tuple[str, ...]:
        """The citations of every operand and constant, in order of first appearance, each once."""
        seen: dict[str, None] = {}
        for leaf in self.leaves():
            if leaf.source:
                seen.setdefault(leaf.source)
        return tuple(seen)

    @property
    def formula(self) -> str:
        return self.render(False)

    @property
    def substituted(self) -> str:
        return self.render(True)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.formula} = {self.value()!r}>"

    def __bool__(self) -> bool:
        """Truth follows the value, so a formula's ``if term:`` branches alike on both paths."""
        return bool(self.value())

    # Python operators: an int or float operand becomes a `Const`; adding a literal 0 changes nothing.
    def __add__(self, other: Value) -> Expr:
        return _add(self, other)

    def __radd__(self, other: Value) -> Expr:
        return _add(other, self)

    def __sub__(self, other: Value) -> Expr:
        return _sub(self, other)

    def __rsub__(self, other: Value) -> Expr:
        return _sub(other, self)

    def __mul__(self, other: Value) -> Value:
        return _mul(self, other)

    def __rmul__(self, other: Value) -> Value:
        return _mul(other, self)

    def __floordiv__(self, other: Value) -> Expr:
        return FloorDiv(lift(self), lift(other))

    def __rfloordiv__(self, other: Value) -> Expr:
        return FloorDiv(lift(other), lift(self))

    def __truediv__(self, other: Value) -> Expr:
        return Div(lift(self), lift(other))

    def __rtruediv__(self, other: Value) -> Expr:
        return Div(lift(other), lift(self))


Value = int | float | Expr


def _wrap(child: Expr, substituted: bool, need: int) -> str:
    text = child.render(substituted)
    return f"({text})" if child.prec < need else text


class Var(Expr):
    """A named operand: ``symbol`` in the formula, ``number`` in the substituted one; ``meaning`` says what it is,
    ``source`` where its value comes from (optional)."""

    __slots__ = ("symbol", "number", "meaning", "source")

    def __init__(self, symbol: str, number: Number, meaning: str, source: str | None = None) -> None:
        self.symbol = symbol
        self.number = number
        self.meaning = meaning
        self.source = source

    def value(self) -> Number:
        return self.number

    def render(self, substituted: bool) -> str:
        return _num(self.number) if substituted else self.symbol

    def variables(self) -> Iterator[Var]:
        yield self

    def leaves(self) -> Iterator[Var | Const]:
        yield self


class Const(Expr):
    """A literal number, the same in both renderings (2 moments, 4 bytes of fp32…), with its source if cited."""

    __slots__ = ("number", "source")

    def __init__(self, number: Number, source: str | None = None) -> None:
        self.number = number
        self.source = source

    def value(self) -> Number:
        return self.number

    def render(self, substituted: bool) -> str:
        return _num(self.number)

    def leaves(self) -> Iterator[Var | Const]:
        yield self


class Sum(Expr):
    """``a + b − c``: terms with signs (+1 / −1), added left to right."""

    __slots__ = ("terms",)
    prec: ClassVar[int] = 1

    def __init__(self, terms: tuple[tuple[int, Expr], ...]) -> None:
        self.terms = terms

    def children(self) -> tuple[Expr, ...]:
        return tuple(term for _, term in self.terms)

    def value(self) -> Number:
        total_: Number = 0
        for sign, term in self.terms:
            total_ = total_ + term.value() if sign > 0 else total_ - term.value()
        return total_

    def render(self, substituted: bool) -> str:
        out = ""
        for i, (sign, term) in enumerate(self.terms):
            text = _wrap(term, substituted, 2 if sign < 0 else 1)
            if i == 0:
                out = text if sign > 0 else f"−{text}"
            else:
                out += f" {'+' if sign > 0 else '−'} {text}"
        return out


class Product(Expr):
    """``a × b × c``, multiplied left to right (as the code does, which matters for floats)."""

    __slots__ = ("factors",)
    prec: ClassVar[int] = 2

    def __init__(self, factors: tuple[Expr, ...]) -> None:
        self.factors = factors

    def children(self) -> tuple[Expr, ...]:
        return self.factors

    def value(self) -> Number:
        result: Number = 1
        for factor in self.factors:
            result = result * factor.value()
        return result

    def render(self, substituted: bool) -> str:
        return " × ".join(_wrap(f, substituted, 3 if isinstance(f, Div) else 2) for f in self.factors)


class _Binary(Expr):
    __slots__ = ("a", "b")

    def __init__(self, a: Expr, b: Expr) -> None:
        self.a = a
        self.b = b

    def children(self) -> tuple[Expr, ...]:
        return (self.a, self.b)


class Div(_Binary):
    """``a / b``: true division (a float), as ``int(4 * p / n)`` or a micro-batch fraction computes it."""

    __slots__ = ()
    prec: ClassVar[int] = 2

    def value(self) -> Number:
        return self.a.value() / self.b.value()

    def render(self, substituted: bool) -> str:
        return f"{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}"


class CeilDiv(_Binary):
    """``⌈a / b⌉``: exact integer division rounded up (a shard)."""

    __slots__ = ()

    def value(self) -> Number:
        a, b = self.a.value(), self.b.value()
        if isinstance(a, int) and isinstance(b, int):
            return -(-a // b)
        return math.ceil(a / b)

    def render(self, substituted: bool) -> str:
        return f"⌈{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}⌉"


class FloorDiv(_Binary):
    """``⌊a / b⌋``: exact integer division rounded down."""

    __slots__ = ()

    def value(self) -> Number:
        return self.a.value() // self.b.value()

    def render(self, substituted: bool) -> str:
        return f"⌊{_wrap(self.a, substituted, 2)} / {_wrap(self.b, substituted, 3)}⌋"


class Round(Expr):
    """``⌈x⌉`` (``up``: ``math.ceil``) or ``⌊x⌋`` (``int()``, which truncates; every rounded value here is ≥ 0)."""

    __slots__ = ("x", "up")

    def __init__(self, x: Expr, up: bool) -> None:
        self.x = x
        self.up = up

    def children(self) -> tuple[Expr, ...]:
        return (self.x,)

    def value(self) -> Number:
        return math.ceil(self.x.value()) if self.up else int(self.x.value())

    def render(self, substituted: bool) -> str:
        inner = self.x.render(substituted)
        return f"⌈{inner}⌉" if self.up else f"⌊{inner}⌋"


class Call(Expr):
    """``min(a, b)`` / ``max(a, b)``."""

    __slots__ = ("name", "args")

    def __init__(self, name: str, args: tuple[Expr, ...]) -> None:
        self.name = name
        self.args = args

    def children(self) -> tuple[Expr, ...]:
        return self.args

    def value(self) -> Number:
        values = [a.value() for a in self.args]
        return min(values) if self.name == "min" else max(values)

    def render(self, substituted: bool) -> str:
        return f"{self.name}({', '.join(a.render(substituted) for a in self.args)})"


# ---------------------------------------------------------------------------------------------------------------
# Building nodes


def lift(x: Value) -> Expr:
    """``x`` as a node: a number becomes a `Const`."""
    return x if isinstance(x, Expr) else Const(x)


def _terms(x: Value, sign: int) -> list[tuple[int, Expr]]:
    if isinstance(x, Sum):
        return [(s * sign, t) for s, t in x.terms] if sign < 0 else list(x.terms)
    return [(sign, lift(x))]


def _add(a: Value, b: Value) -> Value:
    if not isinstance(a, Expr) and a == 0:
        return b
    if not isinstance(b, Expr) and b == 0:
        return a
    return Sum(tuple(_terms(a, 1) + _terms(b, 1)))


def _sub(a: Value, b: Value) -> Expr:
    if not isinstance(b, Expr) and b == 0:
        return lift(a)
    # A subtracted sum keeps its parentheses (its terms are not sign-flipped), so the tree mirrors the code.
    return Sum(tuple(_terms(a, 1) + [(-1, lift(b))]))


def _mul(a: Value, b: Value) -> Value:
    if (not isinstance(a, Expr) and a == 0) or (not isinstance(b, Expr) and b == 0):
        return 0  # a term that is 0 whatever the symbols say (an absent state, a layer with no cache)
    if not isinstance(a, Expr) and a == 1:
        return lift(b)
    if not isinstance(b, Expr) and b == 1:
        return lift(a)
    left = list(a.factors) if isinstance(a, Product) else [lift(a)]
    right = list(b.factors) if isinstance(b, Product) else [lift(b)]
    return Product(tuple(left + right))


# ---------------------------------------------------------------------------------------------------------------
# Helpers the formulas call: plain numbers in, plain numbers out; a node in, a node out.


def is_symbolic(*xs: object) -> bool:
    """Whether any of ``xs`` is an expression (the ``--explain`` path)."""
    for x in xs:
        if isinstance(x, Expr):
            return True
    return False


def value_of(x: Value) -> Number:
    """The number ``x`` stands for (for a formula's branches, which follow the values)."""
    return x.value() if isinstance(x, Expr) else x


def ceil_div(a: Value, b: Value) -> Value:
    """``⌈a / b⌉`` of integers: ``-(-a // b)``."""
    if a.__class__ is int and b.__class__ is int:  # the plan's path, first
        return -(-a // b)  # type: ignore[operator]
    if isinstance(a, Expr) or isinstance(b, Expr):
        if not isinstance(b, Expr) and b == 1:
            return a
        if not isinstance(a, Expr) and a == 0:
            return 0
        return CeilDiv(lift(a), lift(b))
    return -(-a // b)


def floor_div(a: Value, b: Value) -> Value:
    """``⌊a / b⌋`` of integers: ``a // b``."""
    if a.__class__ is int and b.__class__ is int:  # the plan's path, first
        return a // b  # type: ignore[operator]
    if isinstance(a, Expr) or isinstance(b, Expr):
        if not isinstance(b, Expr) and b == 1:
            return a
        if not isinstance(a, Expr) and a == 0:
            return 0
        return FloorDiv(lift(a), lift(b))
    return a // b


def minimum(*xs: Value) -> Value:
    """``min`` of numbers, or a ``min(…)`` node (repeated arguments once; one argument is itself)."""
    if len(xs) == 2 and xs[0].__class__ is int and xs[1].__class__ is int:  # the plan's path, first
        return xs[0] if xs[0] <= xs[1] else xs[1]  # type: ignore[operator]
    if is_symbolic(*xs):
        return _call("min", xs)
    return min(xs)  # type: ignore[type-var]


def maximum(*xs: Value) -> Value:
    """``max`` of numbers, or a ``max(…)`` node (repeated arguments once; one argument is itself)."""
    if len(xs) == 2 and xs[0].__class__ is int and xs[1].__class__ is int:  # the plan's path, first
        return xs[0] if xs[0] >= xs[1] else xs[1]  # type: ignore[operator]
    if is_symbolic(*xs):
        return _call("max", xs)
    return max(xs)  # type: ignore[type-var]


def _call(name: str, xs: tuple[Value, ...]) -> Expr:
    unique: dict[tuple[str, str], Expr] = {}
    for x in xs:
        node = lift(x)
        unique.setdefault((node.formula, node.substituted), node)
    args = tuple(unique.values())
    return args[0] if len(args) == 1 else Call(name, args)


def trunc(x: Value) -> Value:
    """``int(x)``: a float rounded toward zero."""
    if isinstance(x, Expr):
        return Round(x, up=False)
    return int(x)


def ceil(x: Value) -> Value:
    """``math.ceil(x)``."""
    if isinstance(x, Expr):
        return Round(x, up=True)
    return math.ceil(x)


def total(xs: Iterable[Value]) -> Value:
    """The sum of ``xs``, left to right; in a symbolic sum, ``k`` identical terms become ``k × term`` (the layers of
    a model, alike but for their index), in order of first appearance."""
    items = list(xs)
    if not is_symbolic(*items):
        out: Value = 0
        for x in items:
            out = out + x
        return out
    groups: dict[tuple[str, str], list[Value]] = {}
    numbers: Value = 0  # plain numbers add up to one constant, last
    for x in items:
        if isinstance(x, Expr):
            groups.setdefault((x.formula, x.substituted), [0, x])[0] += 1  # type: ignore[operator]
        else:
            numbers = numbers + x
    result: Value = 0
    for count, term in groups.values():
        result = result + (count * term if count != 1 else term)
    return result + numbers


def cite(number: Number, source: str, *inputs: object) -> Value:
    """A constant with its source: the plain ``number`` on the integer path, a cited `Const` when any of
    ``inputs`` is an expression (so ``--explain`` lists the source)."""
    for x in inputs:
        if isinstance(x, Expr):
            return Const(number, source)
    return number
