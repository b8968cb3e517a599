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


def test_norm_is_the_per_tensor_l2_norm_and_broadcasts():
    from conformance.expr import compile_expression

    x = np.array([[3.0, 0.0], [0.0, 4.0]])
    e = compile_expression("x / norm(x)", {"x"})
    np.testing.assert_array_equal(e({"x": x}), x / 5.0)
    assert e.names == {"x"}


def test_norm_under_the_sampled_rounding_model_reduces_each_sample_apart():
    """With a leading sample axis, norm reduces the parameter's axes only; each
    sample's sum is rounded once per level of a pairwise summation, and the
    batched model gives the serial runs bit for bit."""
    from conformance.expr import ROUNDING, rounded_twin
    from conformance.tolerance import _DIRECTED, Rounding, SampledRounding

    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 3)).astype(np.float32).astype(np.float64)
    e = rounded_twin("norm(x) * 2")
    sampled = SampledRounding("float32", 5, np.random.default_rng(0))
    sampled.bind(x.shape)
    got = e({"x": np.broadcast_to(x, (5,) + x.shape).copy(), ROUNDING: sampled})
    assert got.shape == (5, 1, 1)
    for i in range(5):
        serial = Rounding("float32", None if i == 0 else _DIRECTED[i - 1])
        assert got[i, 0, 0] == e({"x": x.copy(), ROUNDING: serial})[0, 0]
    exact = 2 * np.sqrt(np.sum(x * x))
    assert np.all(np.abs(got - exact) <= 8 * 2.0 ** -24 * exact)  # 4 levels of pairwise rounding, and the sqrt
    assert len(set(got.ravel())) > 1  # the directed runs push the sum apart
