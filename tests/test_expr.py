"""The expression compiler evaluates the whitelist and refuses everything else."""

import numpy as np
import pytest

from conformance.expr import ExprError, compile_expression, parse_equation


@pytest.mark.parametrize(
    "source,env,want",
    [
        ("beta1 * m + (1 - beta1) * g", dict(beta1=0.9, m=1.0, g=2.0), 0.9 + 0.2),
        ("sqrt(v) + eps", dict(v=4.0, eps=1e-8), 2.0 + 1e-8),
        ("-g if maximize else g", dict(g=3.0, maximize=True), -3.0),
        ("g + 1 if t == 1 else g", dict(g=3.0, t=2), 3.0),
        ("maximum(a, b)", dict(a=1.0, b=2.0), 2.0),
        ("where(a > 0, a, 0)", dict(a=-1.0), 0.0),
        ("beta2 ** t", dict(beta2=0.5, t=3), 0.125),
        ("not flag or x > 1", dict(flag=True, x=2.0), True),
    ],
)
def test_evaluates(source, env, want):
    assert compile_expression(source, set(env))(env) == pytest.approx(want, rel=1e-15)


@pytest.mark.parametrize(
    "source,message",
    [
        ("__import__('os')", "calling '__import__'"),
        ("g.real", "Attribute is not allowed"),
        ("g[0]", "Subscript is not allowed"),
        ("(lambda: 1)()", "not allowed"),
        ("[x for x in g]", "not allowed"),
        ("'text'", "constant 'text'"),
        ("sqrt(g, out=g)", "keyword argument"),
        ("sqrt(g, g)", "takes 1 argument"),
        ("1 < g < 2", "chained comparison"),
        ("g // 2", "FloorDiv"),
        ("open('x')", "calling 'open'"),
        ("gamma * g", "unknown name 'gamma'"),
        ("g +", "syntax error"),
        ("sqrt", "used as a value"),
    ],
)
def test_refuses(source, message):
    with pytest.raises(ExprError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        compile_expression(source, {"g"})


def test_array_condition_needs_where():
    fn = compile_expression("a if a > 0 else 0", {"a"})
    with pytest.raises(ExprError, match="where"):
        fn({"a": np.array([1.0, -1.0])})


def test_names_are_recorded():
    assert compile_expression("beta1 * m + g", None).names == {"beta1", "m", "g"}


@pytest.mark.parametrize("text", ["x == 1", "x <= 1", "= 1", "x =", "sqrt = 1", "1x = 2"])
def test_parse_equation_refuses(text):
    with pytest.raises(ExprError):
        parse_equation(text)
