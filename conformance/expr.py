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
import functools
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .dtypes import numpy_dtype

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
    # in_dtype(x): x rounded to the case's dtype, as a framework that casts a
    # hyperparameter to the parameter's dtype before using it sees it
    # (keras/src/optimizers/adam.py: ops.power(ops.cast(self.beta_2, dtype), t)).
    # The kernel supplies the rounding (env[CASE_DTYPE]); identity without one.
    "in_dtype": (None, 1),  # type: ignore[dict-item]
    # float32(x): x rounded to float32 (kept in the compute dtype), e.g. a
    # Python float that TensorFlow's tf.cast turns into a float32 tensor first.
    "float32": (lambda x: x.astype(np.float32).astype(x.dtype) if isinstance(x, np.ndarray) else type(x)(np.float32(x)), 1),
    # norm(x): the L2 norm of x over the whole parameter tensor (LAMB's trust
    # ratio), one value per tensor that broadcasts against it. Under a rounding
    # model each square is rounded, and the sum gets one rounding per level of a
    # pairwise summation (ceil(log2 n) + 1 of them), the order frameworks' vectorized
    # reductions follow; then the square root (Rounding.reduction).
    "norm": (None, 1),  # type: ignore[dict-item]
    # Reductions over the parameter's axes (never a rounding model's leading
    # sample axis), kept as size-1 axes so that they broadcast against it:
    # mean(x) over the whole tensor, rms(x) = sqrt(mean(x*x)) (Adafactor's
    # RMS), row_mean(x) over the last axis (one value per row), col_mean(x)
    # over the second-to-last (one per column; x must have two axes), and
    # mean_axis(x, a) over axis a (negative, counted from the end). Under a
    # rounding model a mean is its exact sum rounded as a pairwise summation
    # is (Rounding.reduction; for terms of mixed sign, the error is sized by
    # the sum of their magnitudes), then the division by the count.
    "mean": (None, 1),  # type: ignore[dict-item]
    "rms": (None, 1),  # type: ignore[dict-item]
    "row_mean": (None, 1),  # type: ignore[dict-item]
    "col_mean": (None, 1),  # type: ignore[dict-item]
    "mean_axis": (None, 2),  # type: ignore[dict-item]
    # ndim(x): the number of the parameter's axes (a 0-d parameter counts as
    # a vector: the kernel holds it as one); for a scalar test such as
    # Adafactor's `... if ndim(p) >= 2 else ...` (factored or not).
    "ndim": (None, 1),  # type: ignore[dict-item]
    # axis_by_size(x, k): the axis (negative) at position k of x's axes
    # sorted by size, ties in axis order; -1 is the largest axis, -2 the
    # second largest (optax factors Adafactor's moments over those two).
    "axis_by_size": (None, 2),  # type: ignore[dict-item]
    # size(x, a): the number of elements along axis a (negative) of x.
    "size": (None, 2),  # type: ignore[dict-item]
    # Matrices (the last two axes; Muon): transpose(x) swaps them, matmul(a, b)
    # is the matrix product. Under a rounding model the product is exact,
    # then perturbed by the error of a pairwise sum of its terms, sized by
    # |a| @ |b| (terms of either sign), and rounded.
    "transpose": (None, 1),  # type: ignore[dict-item]
    "matmul": (None, 2),  # type: ignore[dict-item]
    # bfloat16(x): x computed in bfloat16 whatever the case's dtype (torch's
    # Muon orthogonalises in bfloat16): rounded to bfloat16 and held in the
    # compute dtype; under a rounding model jittered by bfloat16's unit
    # roundoff first (Rounding.narrow), as the case dtype's operations are.
    "bfloat16": (None, 1),  # type: ignore[dict-item]
}

#: Reductions whose result is one value per tensor, row or column (see FUNCTIONS).
REDUCTIONS = frozenset({"norm", "mean", "rms", "row_mean", "col_mean", "mean_axis"})

#: Key of the case-dtype rounding function in an expression's environment.
CASE_DTYPE = "__case_dtype__"

# Arithmetic as numpy ufuncs, so a temporary that only this expression holds
# can receive the result in place (what numpy's own temporary elision does
# for ordinary Python expressions, lost once values pass through closures).
_BINOPS: dict[type, np.ufunc] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
}
_UNARY: dict[type, np.ufunc] = {ast.USub: np.negative, ast.UAdd: np.positive}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_PY_BINOPS: dict[np.ufunc, Callable[[Any, Any], Any]] = {
    np.add: operator.add,
    np.subtract: operator.sub,
    np.multiply: operator.mul,
    np.true_divide: operator.truediv,
    np.power: operator.pow,
}

class SampleScalar(np.ndarray):
    """A scalar of the rule (arithmetic on hyperparameters: `1 - beta2 ** t`)
    with one value per sample of a sampled rounding model
    (`conformance.tolerance.SampledRounding`): shape (samples, 1, ...), so it
    broadcasts against the samples' arrays. It is treated as a scalar
    wherever a scalar is (rounded as scalar arithmetic, given to an array
    operation in the framework's hyperparameter precision); a result that
    involves a real array is a plain array."""

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        plain = [x.view(np.ndarray) if isinstance(x, SampleScalar) else x for x in inputs]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, SampleScalar) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        scalar_only = all(isinstance(x, SampleScalar) or np.ndim(x) == 0 for x in inputs)
        if out is None and scalar_only and isinstance(result, np.ndarray):
            return result.view(SampleScalar)
        return result


def _is_scalar(x: Any) -> bool:
    return isinstance(x, (np.floating, SampleScalar))


# A node evaluates to (value, fresh): fresh means an ndarray that this
# evaluation allocated and nobody else references, safe to overwrite.
Node = Callable[[Env], tuple[Any, bool]]


def _apply2(ufunc: np.ufunc, a: Any, fa: bool, b: Any, fb: bool) -> tuple[Any, bool]:
    if ufunc is np.add:
        # `x + 0` with the literal integer 0 (a term switched off by a
        # condition, like weight decay when weight_decay == 0) adds nothing,
        # as the frameworks' `if weight_decay != 0:` guards do; it also keeps
        # the sign of a -0.0.
        if type(b) is int and b == 0:
            return a, fa
        if type(a) is int and a == 0:
            return b, fb
    a_arr, b_arr = type(a) is np.ndarray, type(b) is np.ndarray
    if not (a_arr or b_arr):
        return _PY_BINOPS[ufunc](a, b), False
    for out, fresh in ((a, fa), (b, fb)):
        if fresh and out.shape == np.broadcast_shapes(np.shape(a), np.shape(b)) and out.dtype == np.result_type(a, b):
            return ufunc(a, b, out=out), True
    result = ufunc(a, b)
    return result, type(result) is np.ndarray


def _apply1(ufunc: np.ufunc, a: Any, fa: bool) -> tuple[Any, bool]:
    if type(a) is not np.ndarray:
        return ufunc(a), False
    if fa:
        return ufunc(a, out=a), True
    return ufunc(a), True


@dataclass(frozen=True)
class Expression:
    """A compiled expression and the names it reads."""

    source: str
    names: frozenset[str]
    fn: Compiled = field(repr=False, compare=False)

    def __call__(self, env: Env) -> Any:
        return self.fn(env)


def _scalar_truth(value: Any, source: str) -> bool:
    if isinstance(value, SampleScalar):
        # a condition on rounded scalar arithmetic: the samples must agree
        first = bool(value.flat[0])
        if any(bool(v) != first for v in value.flat):
            raise ExprError(f"condition in {source!r} differs between the samples of the rounding model")
        return first
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise ExprError(f"condition in {source!r} is an array; use where(cond, a, b) for elementwise choice")
    return bool(value)


#: Key of the rounding function in the environment of a `rounded` expression.
ROUNDING = "__rounding__"


def _lead(x: np.ndarray, env: Env, rounded: bool) -> int:
    """1 where `x` carries a sampled rounding model's leading sample axis, else 0."""
    rounding = env.get(ROUNDING) if rounded else None
    return 1 if rounding is not None and rounding.samples and x.ndim == rounding.full_ndim else 0


def _is_int(k: Any) -> bool:
    """An integer argument (an axis or a position), not a bool."""
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _param_axes(x: np.ndarray, lead: int, name: str, axis: Any, source: str) -> tuple[int, ...]:
    """The axes (non-negative) that reduction `name` reduces of x (a sample axis excluded)."""
    own = x.ndim - lead
    if name in ("norm", "mean", "rms"):
        return tuple(range(lead, x.ndim))
    if name == "row_mean":
        wanted = -1
    elif name == "col_mean":
        wanted = -2
    else:
        if not _is_int(axis):
            raise ExprError(f"mean_axis() takes an integer axis in {source!r}, got {axis!r}")
        wanted = int(axis)
    if not -own <= wanted < 0:
        raise ExprError(
            f"{name}() in {source!r} reduces axis {wanted} of a tensor with {own} axes"
            " (guard it with `... if ndim(p) >= 2 else ...`)"
        )
    return (x.ndim + wanted,)


def _reduction_node(name: str, args: list[Node], rounded: bool, source: str) -> Node:
    """norm, mean, rms, row_mean, col_mean, mean_axis (FUNCTIONS): reduced over
    the parameter's axes, kept as size-1 axes to broadcast against it."""
    arg = args[0]
    axis_of = args[1] if len(args) > 1 else None

    def run(env: Env) -> tuple[Any, bool]:
        x = arg(env)[0]
        if type(x) is not np.ndarray:
            value = np.abs(x) if name in ("norm", "rms") else x
            return value, False
        lead = _lead(x, env, rounded)
        axes = _param_axes(x, lead, name, axis_of(env)[0] if axis_of is not None else None, source)
        n = int(np.prod([x.shape[a] for a in axes])) if axes else 1
        squares = name in ("norm", "rms")
        rounding = env.get(ROUNDING) if rounded else None
        if rounding is None:
            terms = np.square(x) if squares else x
            total = np.sum(terms, axis=axes, keepdims=True)
        else:
            terms = rounding(np.square(x)) if squares else x
            total = np.sum(terms, axis=axes, keepdims=True)
            if squares or not np.any(terms < 0):
                total = rounding.reduction(total, n)
            else:
                # a sum of mixed signs: its rounding error is sized by the sum of magnitudes
                size = np.sum(np.abs(terms), axis=axes, keepdims=True)
                total = rounding(total + (rounding.reduction(size, n) - size))
        if name == "norm":
            out = np.sqrt(total)
        else:
            out = total / x.dtype.type(n)
            if rounding is not None and n > 1:
                out = rounding(out)
            if name == "rms":
                out = np.sqrt(out)
        return (rounding(out) if rounding is not None and name in ("norm", "rms") else out), True

    return run


def _matrix_node(name: str, args: list[Node], rounded: bool, source: str) -> Node:
    """transpose(x) and matmul(a, b) over the last two axes (FUNCTIONS)."""

    def run(env: Env) -> tuple[Any, bool]:
        values = [a(env)[0] for a in args]
        for v in values:
            if type(v) is not np.ndarray or v.ndim - _lead(v, env, rounded) < 2:
                raise ExprError(f"{name}() in {source!r} needs matrices (two axes or more), got shape {np.shape(v)}")
        if name == "transpose":
            return np.swapaxes(values[0], -1, -2), False
        a, b = values
        product = np.matmul(a, b)
        rounding = env.get(ROUNDING) if rounded else None
        if rounding is None:
            return product, True
        size = np.matmul(np.abs(a), np.abs(b))
        n = a.shape[-1]
        return rounding(product + (rounding.reduction(size, n) - size)), True

    return run


def _narrow_node(dtype: str, arg: Node, rounded: bool) -> Node:
    """bfloat16(x) (FUNCTIONS): x rounded to a dtype narrower than the case's."""
    low = numpy_dtype(dtype)

    def run(env: Env) -> tuple[Any, bool]:
        x = arg(env)[0]
        rounding = env.get(ROUNDING) if rounded else None
        if type(x) is np.ndarray:
            if rounding is not None:
                return rounding.narrow(x, dtype), True
            return x.astype(low).astype(x.dtype), True
        if isinstance(x, SampleScalar):
            return x.astype(low).astype(x.dtype).view(SampleScalar), False
        return type(x)(low.type(x)) if isinstance(x, np.floating) else float(low.type(x)), False

    return run


def _shape_node(name: str, args: list[Node], rounded: bool, source: str) -> Node:
    """ndim(x) and axis_by_size(x, k) (FUNCTIONS): integers read off the parameter's shape."""

    def run(env: Env) -> tuple[Any, bool]:
        x = args[0](env)[0]
        shape = np.shape(x)
        if type(x) is np.ndarray:
            shape = shape[_lead(x, env, rounded):]
        if name == "ndim":
            return len(shape), False
        k = args[1](env)[0]
        if name == "size":
            if not _is_int(k) or not -len(shape) <= k < 0:
                raise ExprError(f"size() in {source!r}: axis {k!r} of a tensor with {len(shape)} axes (axes are negative)")
            return int(shape[k]), False
        if not _is_int(k) or not -len(shape) <= k < len(shape):
            raise ExprError(f"axis_by_size() in {source!r}: position {k!r} of a tensor with {len(shape)} axes")
        order = np.argsort(np.asarray(shape), kind="stable")
        return int(order[k]) - len(shape), False

    return run


def _rounded_node(node: Node) -> Node:
    def run(env: Env) -> tuple[Any, bool]:
        value, fresh = node(env)
        if type(value) is np.ndarray:
            return env[ROUNDING](value), True
        if _is_scalar(value):
            return env[ROUNDING].scalar(value), False
        return value, fresh

    return run


def compile_expression(
    source: str, known: set[str] | frozenset[str] | None = None, *, rounded: bool = False, allow_none: bool = False
) -> Expression:
    """Parse and compile `source`; names not in `known` are an error (if given).

    With `rounded`, the result of every arithmetic operation and function on
    arrays passes through `env[ROUNDING]` (the tolerance's model of a
    framework that rounds after each operation), and every scalar result
    (arithmetic on hyperparameters) through `env[ROUNDING].scalar`.
    """
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

    def build(node: ast.AST) -> Node:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or (isinstance(value, (int, float)) and not isinstance(value, complex)):
                return lambda env, v=value: (v, False)
            if value is None and allow_none:
                # a framework argument's "off" (optax momentum=None); never in a step
                return lambda env: (None, False)
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
            return lambda env, n=node.id: (env[n], False)
        if isinstance(node, ast.BinOp):
            ufunc = _BINOPS.get(type(node.op))
            if ufunc is None:
                raise fail(node, f"operator {type(node.op).__name__}")
            left, right = build(node.left), build(node.right)
            if not rounded:
                return lambda env: _apply2(ufunc, *left(env), *right(env))

            def mixed(env: Env) -> tuple[Any, bool]:
                # A scalar meeting an array is given in the framework's
                # hyperparameter precision (ROUNDING.operand).
                (a, fa), (b, fb) = left(env), right(env)
                if type(a) is np.ndarray and _is_scalar(b):
                    b = env[ROUNDING].operand(b)
                elif type(b) is np.ndarray and _is_scalar(a):
                    a = env[ROUNDING].operand(a)
                return _apply2(ufunc, a, fa, b, fb)

            return _rounded_node(mixed)
        if isinstance(node, ast.UnaryOp):
            operand = build(node.operand)
            if isinstance(node.op, ast.Not):
                return lambda env: (not _scalar_truth(operand(env)[0], source), False)
            uop = _UNARY.get(type(node.op))
            if uop is None:
                raise fail(node, f"operator {type(node.op).__name__}")
            return lambda env: _apply1(uop, *operand(env))
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: (all(_scalar_truth(p(env)[0], source) for p in parts), False)
            return lambda env: (any(_scalar_truth(p(env)[0], source) for p in parts), False)
        if isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise fail(node, "a chained comparison")
            cmp = _COMPARE.get(type(node.ops[0]))
            if cmp is None:
                raise fail(node, f"comparison {type(node.ops[0]).__name__}")
            left, right = build(node.left), build(node.comparators[0])
            if not rounded:
                return lambda env: (cmp(left(env)[0], right(env)[0]), False)

            def compare(env: Env) -> tuple[Any, bool]:
                a, b = left(env)[0], right(env)[0]
                if type(a) is np.ndarray or type(b) is np.ndarray:
                    # a test on the tensors (LAMB's zero norm): can rounding take
                    # its difference across 0, and the rule to the other branch?
                    with np.errstate(all="ignore"):
                        env[ROUNDING].edge_argument("sign", np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
                return cmp(a, b), False

            return compare
        if isinstance(node, ast.IfExp):
            test, body, orelse = build(node.test), build(node.body), build(node.orelse)
            return lambda env: body(env) if _scalar_truth(test(env)[0], source) else orelse(env)
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
            if node.func.id in REDUCTIONS:
                return _reduction_node(node.func.id, args, rounded, source)
            if node.func.id in ("ndim", "axis_by_size", "size"):
                return _shape_node(node.func.id, args, rounded, source)
            if node.func.id in ("matmul", "transpose"):
                return _matrix_node(node.func.id, args, rounded, source)
            if node.func.id == "bfloat16":
                return _narrow_node("bfloat16", args[0], rounded)
            if fn is None:  # in_dtype
                only_arg = args[0]

                def cast(env: Env) -> tuple[Any, bool]:
                    value = only_arg(env)[0]
                    to_dtype = env.get(CASE_DTYPE)
                    return (value if to_dtype is None else to_dtype(value)), False

                return cast
            if arity == 1 and isinstance(fn, np.ufunc):
                only = args[0]
                unary: Node = lambda env: _apply1(fn, *only(env))
                if rounded and fn in (np.sqrt, np.sign):
                    kind = fn.__name__

                    def edge(env: Env) -> tuple[Any, bool]:
                        value, fresh = only(env)
                        if type(value) is np.ndarray:
                            # can rounding take it across 0 (NaN, or the other sign)? (a copy: fn may write in place)
                            env[ROUNDING].edge_argument(kind, value.copy())
                        return _apply1(fn, value, fresh)

                    return _rounded_node(edge)
                return _rounded_node(unary) if rounded else unary

            def call(env: Env) -> tuple[Any, bool]:
                values = [a(env)[0] for a in args]
                result = fn(*values)
                if (type(result) is np.ndarray and any(isinstance(v, SampleScalar) for v in values)
                        and all(isinstance(v, SampleScalar) or np.ndim(v) == 0 for v in values)):
                    # (where() of per-sample scalars, RAdam's rectification test: still a scalar of the rule)
                    result = result.view(SampleScalar)
                elif type(result) is np.ndarray and result.ndim == 0:
                    result = result[()]  # (where() of scalars: a scalar, as in the sampled model)
                return result, False

            return _rounded_node(call) if rounded else call
        raise fail(node, type(node).__name__)

    root = build(tree.body)
    return Expression(source.strip(), frozenset(names), lambda env: root(env)[0])


@functools.lru_cache(maxsize=None)
def rounded_twin(source: str) -> Expression:
    """`source` compiled with rounding after every array operation (cached)."""
    return compile_expression(source, None, rounded=True)


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
