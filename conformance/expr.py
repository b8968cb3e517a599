"""Spec expressions: parsed by an AST whitelist, compiled to closures, never eval'd.

A spec's update equations (`m = beta1*m + (1 - beta1)*g`), its argument
mappings and its `when` conditions are small numpy-like expressions. They are
data, so they are parsed with `ast.parse` (parsing runs nothing), checked
against a whitelist of node types, operators and functions, and compiled into
a tree of Python closures over numpy functions. Attribute access, subscripts,
lambdas, comprehensions, keyword arguments and any name the caller did not
declare are rejected with the column where they occur.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

Env = dict[str, Any]
Compiled = Callable[[Env], Any]


class ExprError(ValueError):
    """An expression outside the whitelist, or referring to an unknown name."""


#: Functions an expression may call, with the number of arguments they take.
FUNCTIONS: dict[str, tuple[Callable[..., Any], int]] = {
    "sqrt": (np.sqrt, 1),
    "abs": (np.abs, 1),
    "square": (np.square, 1),
    "sign": (np.sign, 1),
    "exp": (np.exp, 1),
    "log": (np.log, 1),
    "maximum": (np.maximum, 2),
    "minimum": (np.minimum, 2),
    "where": (np.where, 3),
    "clip": (np.clip, 3),
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


@dataclass(frozen=True)
class Expression:
    """A compiled expression and the names it reads."""

    source: str
    names: frozenset[str]
    fn: Compiled = field(repr=False, compare=False)

    def __call__(self, env: Env) -> Any:
        return self.fn(env)


def _scalar_truth(value: Any, source: str) -> bool:
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise ExprError(f"condition in {source!r} is an array; use where(cond, a, b) for elementwise choice")
    return bool(value)


def compile_expression(source: str, known: set[str] | frozenset[str] | None = None) -> Expression:
    """Parse and compile `source`; names not in `known` are an error (if given)."""
    if not isinstance(source, str):
        raise ExprError(f"expected an expression string, got {type(source).__name__}")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error in {source!r} at column {exc.offset}: {exc.msg}") from None
    names: set[str] = set()

    def fail(node: ast.AST, what: str) -> ExprError:
        col = getattr(node, "col_offset", None)
        at = f" at column {col + 1}" if col is not None else ""
        return ExprError(f"{what} is not allowed in {source!r}{at}")

    def build(node: ast.AST) -> Compiled:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, complex)):
                return lambda env, v=value: v
            raise fail(node, f"constant {value!r}")
        if isinstance(node, ast.Name):
            if node.id in FUNCTIONS:
                raise fail(node, f"function {node.id!r} used as a value")
            if known is not None and node.id not in known:
                raise ExprError(
                    f"unknown name {node.id!r} in {source!r} at column {node.col_offset + 1}"
                    f" (known: {', '.join(sorted(known))})"
                )
            names.add(node.id)
            return lambda env, n=node.id: env[n]
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise fail(node, f"operator {type(node.op).__name__}")
            left, right = build(node.left), build(node.right)
            return lambda env: op(left(env), right(env))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                operand = build(node.operand)
                return lambda env: not _scalar_truth(operand(env), source)
            uop = _UNARY.get(type(node.op))
            if uop is None:
                raise fail(node, f"operator {type(node.op).__name__}")
            operand = build(node.operand)
            return lambda env: uop(operand(env))
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: all(_scalar_truth(p(env), source) for p in parts)
            return lambda env: any(_scalar_truth(p(env), source) for p in parts)
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise fail(node, "a chained comparison")
            cmp = _COMPARE.get(type(node.ops[0]))
            if cmp is None:
                raise fail(node, f"comparison {type(node.ops[0]).__name__}")
            left, right = build(node.left), build(node.comparators[0])
            return lambda env: cmp(left(env), right(env))
        if isinstance(node, ast.IfExp):
            test, body, orelse = build(node.test), build(node.body), build(node.orelse)
            return lambda env: body(env) if _scalar_truth(test(env), source) else orelse(env)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                callee = node.func.id if isinstance(node.func, ast.Name) else "this call"
                raise fail(node, f"calling {callee!r} (allowed: {', '.join(sorted(FUNCTIONS))})")
            if node.keywords:
                raise fail(node, "a keyword argument")
            fn, arity = FUNCTIONS[node.func.id]
            if len(node.args) != arity or any(isinstance(a, ast.Starred) for a in node.args):
                raise ExprError(f"{node.func.id}() takes {arity} argument(s) in {source!r}")
            args = [build(a) for a in node.args]
            return lambda env: fn(*(a(env) for a in args))
        raise fail(node, type(node).__name__)

    fn = build(tree.body)
    return Expression(source.strip(), frozenset(names), fn)


@dataclass(frozen=True)
class Equation:
    """`target = expression`, one line of an update rule."""

    target: str
    expr: Expression

    @property
    def source(self) -> str:
        return f"{self.target} = {self.expr.source}"


def parse_equation(text: str) -> tuple[str, str]:
    """Split `name = expr` into its target and right-hand side (not compiled yet)."""
    if not isinstance(text, str):
        raise ExprError(f"an equation must be a string 'name = expression', got {type(text).__name__}")
    target, sep, rhs = text.partition("=")
    target = target.strip()
    if not sep or rhs.startswith("=") or not target.isidentifier() or not rhs.strip():
        raise ExprError(f"expected 'name = expression', got {text!r}")
    if target in FUNCTIONS:
        raise ExprError(f"{target!r} is a function name and cannot be assigned in {text!r}")
    return target, rhs.strip()
