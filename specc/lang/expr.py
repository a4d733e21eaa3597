"""Safe arithmetic expressions: ``"$width * 2"``, ``"max($c // 4, 8)"``, ``"$i == 0 and 2 or 1"``.

A string containing ``$`` is an expression. It is parsed with :mod:`ast` and evaluated by walking a
whitelist of node types; nothing is ever passed to ``eval``. ``"$name"`` alone yields the variable's
value of any type (a list, a string, ...).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from specc.errors import did_you_mean

_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_WHOLE = re.compile(r"^\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*$")
MAX_ABS = 2**62

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
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "int": int,
    "float": float,
    "round": round,
    "ceil": math.ceil,
    "floor": math.floor,
    "sqrt": math.sqrt,
    "log2": math.log2,
}


class ExprError(ValueError):
    """An expression is malformed, uses something not allowed, or names an unknown variable."""


def is_expr(value: Any) -> bool:
    return isinstance(value, str) and "$" in value


def evaluate(text: str, scope: Mapping[str, Any]) -> Any:
    """Evaluate one expression string against ``scope`` (variables, params, repeat indices)."""
    whole = _WHOLE.match(text)
    if whole:
        return _lookup(whole.group(1), scope)
    source = _VAR.sub(lambda m: m.group(1), text)
    if "$" in source:
        raise ExprError(f"bad expression {text!r}: '$' must be followed by a variable name")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError:
        raise ExprError(f"bad expression {text!r}: not valid arithmetic") from None
    variables = {m.group(1) for m in _VAR.finditer(text)}
    return _Evaluator(scope, variables, text).visit(tree.body)


def _lookup(name: str, scope: Mapping[str, Any]) -> Any:
    if name not in scope:
        raise ExprError(f"unknown variable ${name}{did_you_mean(name, scope)}")
    return scope[name]


def _check_number(value: Any, text: str) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and abs(value) > MAX_ABS:
        raise ExprError(f"expression {text!r} gives a number too large ({value:.3g})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ExprError(f"expression {text!r} does not give a finite number")
    return value


class _Evaluator:
    def __init__(self, scope: Mapping[str, Any], variables: set[str], text: str) -> None:
        self.scope = scope
        self.variables = variables
        self.text = text

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise ExprError(f"bad expression {self.text!r}: {type(node).__name__} is not allowed")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (int, float, str, bool)) or node.value is None:
            return node.value
        raise ExprError(f"bad expression {self.text!r}: constant {node.value!r} is not allowed")

    def visit_Name(self, node: ast.Name) -> Any:
        if node.id in self.variables:
            return _lookup(node.id, self.scope)
        if node.id in ("true", "True"):
            return True
        if node.id in ("false", "False"):
            return False
        raise ExprError(f"bad expression {self.text!r}: write variables as ${node.id}")

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise ExprError(f"bad expression {self.text!r}: operator not allowed")
        left, right = self.visit(node.left), self.visit(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > 64:
            raise ExprError(f"bad expression {self.text!r}: exponent too large")
        if isinstance(node.op, ast.Mult) and (
            isinstance(left, (str, list)) or isinstance(right, (str, list))
        ):
            raise ExprError(f"bad expression {self.text!r}: cannot multiply text or lists")
        try:
            return _check_number(op(left, right), self.text)
        except ZeroDivisionError:
            raise ExprError(f"expression {self.text!r} divides by zero") from None
        except (TypeError, OverflowError, ValueError) as exc:
            raise ExprError(f"bad expression {self.text!r}: {exc}") from None

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ExprError(f"bad expression {self.text!r}: sign of a non-number")
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
                raise ExprError(f"bad expression {self.text!r}: comparison not allowed")
            right = self.visit(right_node)
            try:
                if not fn(left, right):
                    return False
            except TypeError as exc:
                raise ExprError(f"bad expression {self.text!r}: {exc}") from None
            left = right
        return True

    def visit_IfExp(self, node: ast.IfExp) -> Any:
        return self.visit(node.body) if self.visit(node.test) else self.visit(node.orelse)

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise ExprError(
                f"bad expression {self.text!r}: only {', '.join(sorted(FUNCTIONS))} may be called"
            )
        args = [self.visit(a) for a in node.args]
        try:
            return _check_number(FUNCTIONS[node.func.id](*args), self.text)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ExprError(f"bad expression {self.text!r}: {exc}") from None

    def visit_List(self, node: ast.List) -> Any:
        return [self.visit(e) for e in node.elts]

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return [self.visit(e) for e in node.elts]


def substitute(value: Any, scope: Mapping[str, Any]) -> Any:
    """Evaluate every expression inside ``value`` (recursively through dicts and lists)."""
    if is_expr(value):
        return evaluate(value, scope)
    if isinstance(value, dict):
        out = type(value)() if type(value) is not dict else {}
        for k, v in value.items():
            out[k] = substitute(v, scope)
        _copy_locs(value, out)
        return out
    if isinstance(value, list):
        items = [substitute(v, scope) for v in value]
        out_list = type(value)(items) if type(value) is not list else items
        _copy_locs(value, out_list)
        return out_list
    return value


def _copy_locs(src: Any, dst: Any) -> None:
    for attr in ("loc", "key_locs", "val_locs", "item_locs"):
        if hasattr(src, attr):
            setattr(dst, attr, getattr(src, attr))
