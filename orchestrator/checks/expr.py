"""A small, safe evaluator for check expressions such as `best.val_loss < 1.95`.

Expressions are parsed with `ast` and only a whitelist of node kinds is accepted: names and
dotted names (metrics), numbers, strings, comparisons (chains too), `and`/`or`/`not`,
arithmetic, unary minus, and the functions `abs`, `min`, `max`, `round`. Nothing is ever
handed to Python's `eval`, so a spec cannot run code through its checks.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_FUNCS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max, "round": round}


class CheckSyntaxError(ValueError):
    """The expression is not a valid check (raised at submit time)."""


class UnknownMetric(KeyError):
    """The expression names a metric the run does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


@dataclass(frozen=True)
class CompiledCheck:
    source: str
    tree: ast.Expression
    names: tuple[str, ...]  # dotted metric names used

    def evaluate(self, metrics: Mapping[str, Any]) -> Any:
        return _eval(self.tree.body, metrics)


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _validate(node: ast.AST, names: list[str], top: bool = False) -> None:
    if isinstance(node, (ast.Name, ast.Attribute)):
        dotted = _dotted(node)
        if dotted is None:
            raise CheckSyntaxError("only metric names like val_loss or best.val_loss may be used")
        if dotted in ("True", "False", "None"):
            return
        if any(part.startswith("_") for part in dotted.split(".")):
            raise CheckSyntaxError(f"'{dotted}': metric names cannot start with '_'")
        names.append(dotted)
        return
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float, str, bool)) or node.value is None:
            raise CheckSyntaxError(f"unsupported constant {node.value!r}")
        return
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMP:
                raise CheckSyntaxError(f"unsupported comparison {type(op).__name__}: use < <= > >= == !=")
        _validate(node.left, names)
        for c in node.comparators:
            _validate(c, names)
        return
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _validate(v, names)
        return
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
        _validate(node.operand, names)
        return
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        for side in (node.left, node.right):
            if isinstance(side, ast.Constant) and isinstance(side.value, str):
                raise CheckSyntaxError(f"arithmetic on the string {side.value!r} is not allowed")
        if isinstance(node.op, ast.Pow) and not (isinstance(node.right, ast.Constant)
                                                 and _is_num(node.right.value) and abs(node.right.value) <= 64):
            raise CheckSyntaxError("'**' needs a constant exponent of at most 64")
        _validate(node.left, names)
        _validate(node.right, names)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS or node.keywords:
            raise CheckSyntaxError(f"only the functions {', '.join(_FUNCS)} may be called")
        if not node.args:
            raise CheckSyntaxError(f"{node.func.id}() needs arguments")
        for a in node.args:
            _validate(a, names)
        return
    raise CheckSyntaxError(f"'{ast.unparse(node)}' is not allowed in a check ({type(node).__name__})")


def compile_check(source: str) -> CompiledCheck:
    """Parse and validate; raises CheckSyntaxError (a ValueError) with a clear message."""
    if not isinstance(source, str) or not source.strip():
        raise CheckSyntaxError("a check must be a non-empty expression like 'val_loss < 2.0'")
    if len(source) > 500:
        raise CheckSyntaxError("a check expression is limited to 500 characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        hint = ""
        if re.search(r"(?<![<>=!])=(?!=)", source):
            hint = "; compare with '==', not '='"
        raise CheckSyntaxError(f"cannot parse {source!r}: {exc.msg} (column {exc.offset}){hint}") from None
    names: list[str] = []
    _validate(tree.body, names, top=True)
    body = tree.body
    if not isinstance(body, (ast.Compare, ast.BoolOp)) and not (isinstance(body, ast.UnaryOp) and isinstance(body.op, ast.Not)):
        raise CheckSyntaxError(f"{source!r} is not a condition: compare a metric, e.g. 'val_loss < 2.0'")
    if not names:
        raise CheckSyntaxError(f"{source!r} names no metric")
    return CompiledCheck(source.strip(), tree, tuple(dict.fromkeys(names)))


def _eval(node: ast.AST, metrics: Mapping[str, Any]) -> Any:
    if isinstance(node, (ast.Name, ast.Attribute)):
        dotted = _dotted(node)
        assert dotted is not None
        if dotted in ("True", "False"):
            return dotted == "True"
        if dotted not in metrics:
            raise UnknownMetric(dotted)
        return metrics[dotted]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, metrics)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, metrics)
            if _is_nan(left) or _is_nan(right) or not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        vals = (_eval(v, metrics) for v in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, metrics)
        return (not v) if isinstance(node.op, ast.Not) else (-v if isinstance(node.op, ast.USub) else +v)
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, metrics), _eval(node.right, metrics)
        if not (_is_num(left) and _is_num(right)):
            raise TypeError(f"arithmetic needs numbers, got {left!r} and {right!r}")
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            raise ValueError("'**' is limited to exponents up to 64 and bases up to 1e6")
        return _BIN[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        return _FUNCS[node.func.id](*(_eval(a, metrics) for a in node.args))  # type: ignore[attr-defined]
    raise CheckSyntaxError(type(node).__name__)  # unreachable after validation


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)
