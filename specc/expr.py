"""Safe arithmetic expressions: ``"$width * 2"``, ``"max($c // 4, 8)"``, ``"$in.channels * $expand"``.

A string containing ``$`` is an expression. It is parsed with :mod:`ast` and evaluated by walking a
whitelist of node types; nothing is ever passed to ``eval``. ``"$name"`` alone yields the variable's
value of any type (a list, a string, ...).

``$in`` is a read-only view of the type of the current sequence's input (inside a block: the
block's input): ``$in.shape`` (a list; symbolic axes are names), ``$in.shape[0]``,
``$in.shape[-1]``, ``$in.shape[1:]``, ``$in.rank``, ``$in.channels`` (``shape[0]``) and
``$in.dtype``. Attribute and subscript access exist for this value only.

Every expression runs under budgets, so no spec can make it spin or allocate: the text is at most
:data:`MAX_CHARS` characters and :data:`MAX_NODES` syntax nodes nested at most :data:`MAX_DEPTH` deep;
integers stay within ``±2**62`` (checked before a power is computed); text and lists are at most
:data:`MAX_LEN` long and a nested list value holds at most :data:`MAX_SIZE` items in all (shared
sub-lists counted each time, so ``[$v, $v]`` chains cannot grow a billion-laughs); ``round`` takes at
most 64 digits; ``%`` formats no text and ``*`` repeats no text or list.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from specc.errors import did_you_mean

_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE = re.compile(r"^\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*$")
IN = "in"
"""The scope key of the input view (``$in``); ``in`` is a keyword, so no variable can take the name."""
_IN_NAME = "__in__"

MAX_ABS = 2**62
MAX_CHARS = 2000
MAX_NODES = 500
MAX_DEPTH = 100
MAX_LEN = 10_000
MAX_SIZE = 100_000
MAX_EXPONENT = 64
MAX_ROUND_DIGITS = 64


class ExprError(ValueError):
    """An expression is malformed, uses something not allowed, names an unknown variable or is over a budget."""


class ValueProblem(ExprError):
    """An expression is well formed but the values it gets make it fail (too large, divides by
    zero, wrong type): the error is the variables' doing, so it names where they were written."""


class UnknownValue(ExprError):
    """A value that is unknown because of an earlier error was read (a variable whose expression
    failed, ``$in`` after a failed item): no error of its own, the first one is reported."""


class _Unknown:
    def __repr__(self) -> str:
        return "<unknown>"


UNKNOWN: Any = _Unknown()
"""The value of a variable whose own expression failed."""


@dataclass(frozen=True)
class InputView:
    """What ``$in`` exposes: the shape (one sample, batch implicit) and dtype of a sequence's input."""

    shape: tuple[int | str, ...] | None  # None: unknown (the item producing it failed)
    dtype: str = "float32"

    def attribute(self, name: str, text: str) -> Any:
        if self.shape is None:
            raise UnknownValue(f"the input of {text!r} is unknown")
        if name == "shape":
            return list(self.shape)
        if name == "rank":
            return len(self.shape)
        if name == "dtype":
            return self.dtype
        if name == "channels":
            if not self.shape:
                raise ExprError(f"bad expression {text!r}: $in.channels of a 0-d input")
            return self.shape[0]
        raise ExprError(
            f"bad expression {text!r}: $in has shape, rank, channels and dtype, not {name!r}"
            f"{did_you_mean(name, ['shape', 'rank', 'channels', 'dtype'])}"
        )


_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _round(x: Any, ndigits: Any = None) -> Any:
    if ndigits is None:
        return round(x)
    if isinstance(ndigits, bool) or not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ValueError(f"round's digits must be an int between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return round(x, ndigits)


def _number_or_text(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def wrapped(x: Any) -> Any:
        if isinstance(x, list):
            raise TypeError(f"{fn.__name__}() of a list")
        return fn(x)

    wrapped.__name__ = fn.__name__
    return wrapped


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": _number_or_text(int),
    "float": _number_or_text(float),
    "round": _round,
    "ceil": math.ceil,
    "floor": math.floor,
    "sqrt": math.sqrt,
    "log2": math.log2,
}


def is_expr(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


@dataclass(frozen=True)
class _Parsed:
    tree: ast.expr | None  # None: the whole text is one variable
    variables: frozenset[str]
    whole: str | None = None


@functools.lru_cache(maxsize=8192)
def _parse(text: str) -> _Parsed:
    """Parse once per distinct text (specs repeat the same expressions in every block instance)."""
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression is longer than {MAX_CHARS} characters ({len(text)})")
    whole = _WHOLE.match(text)
    if whole:
        return _Parsed(None, frozenset([whole.group(1)]), whole.group(1))
    source = _VAR.sub(lambda m: _IN_NAME if m.group(1) == IN else m.group(1), text)
    if "$" in source:
        raise ExprError(f"bad expression {text!r}: '$' must be followed by a variable name")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"bad expression {text!r}: not valid arithmetic") from None
    except (RecursionError, MemoryError):
        raise ExprError(f"bad expression {_short(text)}: nested too deeply") from None
    _check_size(tree.body, text)
    return _Parsed(tree.body, frozenset(m.group(1) for m in _VAR.finditer(text)))


def _check_size(root: ast.AST, text: str) -> None:
    count = 0
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ExprError(f"bad expression {_short(text)}: more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise ExprError(f"bad expression {_short(text)}: nested deeper than {MAX_DEPTH}")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _short(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def referenced(text: str) -> frozenset[str]:
    """The variable names an expression mentions (``in`` included); empty if it does not parse."""
    try:
        return _parse(text).variables
    except ExprError:
        return frozenset(m.group(1) for m in _VAR.finditer(text[:MAX_CHARS]))


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate one expression string against ``scope`` (variables, params, repeat indices, ``in``)."""
    parsed = _parse(text)
    if parsed.whole is not None:
        if parsed.whole == IN:
            _lookup(IN, scope)
            raise ExprError(f"bad expression {text!r}: use $in.shape, $in.channels, $in.rank or $in.dtype")
        return _lookup(parsed.whole, scope)
    assert parsed.tree is not None
    return _Evaluator(scope, parsed.variables, text).visit(parsed.tree)


def _lookup(name: str, scope: Mapping[str, Any]) -> Any:
    if name not in scope:
        if name == IN:
            raise ExprError("$in (the input's shape) exists only inside layers, blocks and their arguments")
        visible = [k for k in scope if k != IN]
        raise ExprError(f"unknown variable ${name}{did_you_mean(name, visible)}")
    value = scope[name]
    if value is UNKNOWN:
        raise UnknownValue(f"${name} is unknown")
    return value


def value_size(value: Any, limit: int = MAX_SIZE) -> int:
    """Items in a (nested) list value, shared sub-lists counted each time; stops counting past ``limit``."""
    count = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            count += len(item)
            if count > limit:
                return count
            stack.extend(v for v in item if isinstance(v, (list, tuple, dict)))
        elif isinstance(item, dict):
            count += len(item)
            if count > limit:
                return count
            stack.extend(v for v in item.values() if isinstance(v, (list, tuple, dict)))
    return count


def _check_value(value: Any, text: str) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_ABS:
            raise ValueProblem(f"expression {_short(text)} gives a number too large (more than 2**62)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem(f"expression {_short(text)} does not give a finite number")
    elif isinstance(value, str):
        if len(value) > MAX_LEN:
            raise ValueProblem(f"expression {_short(text)} gives text longer than {MAX_LEN} characters")
    elif isinstance(value, list):
        if len(value) > MAX_LEN:
            raise ValueProblem(f"expression {_short(text)} gives a list longer than {MAX_LEN} items")
        if value_size(value) > MAX_SIZE:
            raise ValueProblem(
                f"expression {_short(text)} gives nested lists of more than {MAX_SIZE} items in all"
            )
    return value


class _Evaluator:
    def __init__(self, scope: Mapping[str, Any], variables: frozenset[str], text: str) -> None:
        self.scope = scope
        self.variables = variables
        self.text = text

    def bad(self, why: str) -> ExprError:
        return ExprError(f"bad expression {_short(self.text)}: {why}")

    def failed(self, why: str) -> ValueProblem:
        return ValueProblem(f"bad expression {_short(self.text)}: {why}")

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            return self.refuse(node)
        return method(node)

    def refuse(self, node: ast.AST) -> Any:
        raise self.bad(f"{type(node).__name__} is not allowed")

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, float, str, bool)) or node.value is None:
            return _check_value(node.value, self.text)
        raise self.bad(f"constant {node.value!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id == _IN_NAME and IN in self.variables:
            return _lookup(IN, self.scope)
        if node.id in self.variables:
            return _lookup(node.id, self.scope)
        if node.id in ("true", "True"):
            return True
        if node.id in ("false", "False"):
            return False
        raise self.bad(f"write variables as ${node.id}")

    def visit_Attribute(self, node: ast.Attribute) -> Any:
        if not (isinstance(node.value, ast.Name) and node.value.id == _IN_NAME and IN in self.variables):
            return self.refuse(node)
        view = self.visit(node.value)
        if not isinstance(view, InputView):
            raise self.bad("only $in has attributes")
        return view.attribute(node.attr, self.text)

    def visit_Subscript(self, node: ast.Subscript) -> Any:
        target = node.value
        if not (
            isinstance(target, ast.Attribute)
            and target.attr == "shape"
            and isinstance(target.value, ast.Name)
            and target.value.id == _IN_NAME
        ):
            raise self.bad("only $in.shape can be indexed ($in.shape[0], $in.shape[-1], $in.shape[1:])")
        shape = self.visit(target)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else self.index(p) for p in (node.slice.lower, node.slice.upper)]
            if node.slice.step is not None:
                raise self.bad("a step in a slice of $in.shape is not allowed")
            return shape[parts[0] : parts[1]]
        index = self.index(node.slice)
        if not -len(shape) <= index < len(shape):
            raise self.failed(f"$in.shape[{index}] is out of range: the input has {len(shape)} axes {shape}")
        return shape[index]

    def index(self, node: ast.AST) -> int:
        value = self.visit(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.failed(f"an index must be an int, got {value!r}")
        return value

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise self.bad("operator not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        self.check_operands(node.op, left, right)
        try:
            return _check_value(op(left, right), self.text)
        except ZeroDivisionError:
            raise ValueProblem(f"expression {_short(self.text)} divides by zero") from None
        except (TypeError, OverflowError, ValueError) as exc:
            raise self.failed(str(exc)) from None

    def check_operands(self, op: ast.operator, left: Any, right: Any) -> None:
        """Refuse, before computing, what would be slow or large: text/list repetition or
        formatting, powers beyond the integer budget, concatenations beyond the length budget."""
        texts = isinstance(left, (str, list)) or isinstance(right, (str, list))
        if isinstance(op, ast.Mult) and texts:
            raise self.bad("cannot multiply text or lists")
        if isinstance(op, ast.Mod) and texts:
            raise self.bad("% on text or lists is not allowed (no string formatting)")
        if isinstance(op, ast.Add) and isinstance(left, (str, list)) and isinstance(right, (str, list)):
            if len(left) + len(right) > MAX_LEN:
                raise self.failed(f"the result would be longer than {MAX_LEN}")
        if isinstance(op, ast.Pow) and isinstance(right, (int, float)) and not isinstance(right, bool):
            if abs(right) > MAX_EXPONENT:
                raise self.failed("exponent too large")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if (abs(left).bit_length() - 1) * right > 62:
                    raise ValueProblem(
                        f"expression {_short(self.text)} gives a number too large (more than 2**62)"
                    )

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(node.op, ast.Invert):
            raise self.bad("operator not allowed")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.failed("sign of a non-number")
        return -value if isinstance(node.op, ast.USub) else value

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        values = [self.visit(v) for v in node.values]
        result = values[0]
        for v in values[1:]:
            result = (result and v) if isinstance(node.op, ast.And) else (result or v)
        return result

    def visit_Compare(self, node: ast.Compare) -> Any:
        left = self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            fn = _CMPOPS.get(type(op))
            if fn is None:
                raise self.bad("comparison not allowed")
            right = self.visit(right_node)
            try:
                if not fn(left, right):
                    return False
            except TypeError as exc:
                raise self.failed(str(exc)) from None
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise self.bad(f"only {', '.join(sorted(FUNCTIONS))} may be called")
        args = [self.visit(a) for a in node.args]
        try:
            return _check_value(FUNCTIONS[node.func.id](*args), self.text)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self.failed(str(exc)) from None

    def visit_List(self, node: ast.List) -> Any:
        return _check_value([self.visit(e) for e in node.elts], self.text)

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return _check_value([self.visit(e) for e in node.elts], self.text)


def substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """Evaluate every expression inside ``value`` (recursively through dicts and lists).

    The result is held to :data:`MAX_SIZE` items in all, so YAML lists of variables that hold lists
    (``v2: [$v1, $v1]``) cannot double their way past the budget either.
    """
    out = _substitute(value, scope)
    if out is not value and isinstance(out, (list, dict)) and value_size(out) > MAX_SIZE:
        raise ValueProblem(f"the value holds more than {MAX_SIZE} items in all (nested lists)")
    return out


def _substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    if is_expr(value):
        return evaluate(value, scope)
    if isinstance(value, dict):
        out = type(value)() if type(value) is not dict else {}
        for k, v in value.items():
            out[k] = _substitute(v, scope)
        _copy_locs(value, out)
        return out
    if isinstance(value, list):
        items = [_substitute(v, scope) for v in value]
        out_list = type(value)(items) if type(value) is not list else items
        _copy_locs(value, out_list)
        return out_list
    return value


def expressions_in(value: Any) -> list[str]:
    """Every expression string inside ``value`` (dicts and lists walked)."""
    if is_expr(value):
        return [value]
    if isinstance(value, dict):
        return [e for v in value.values() for e in expressions_in(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions_in(v)]
    return []


def _copy_locs(src: Any, dst: Any) -> None:
    for attr in ("loc", "key_locs", "val_locs", "item_locs"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))
