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


def test_reductions_per_tensor_row_and_column_broadcast_against_the_tensor():
    from conformance.expr import compile_expression

    x = np.arange(6.0).reshape(2, 3)
    env = {"x": x}
    def ev(src):
        return compile_expression(src, {"x"})(env)
    np.testing.assert_array_equal(ev("row_mean(x)"), [[1.0], [4.0]])
    np.testing.assert_array_equal(ev("col_mean(x)"), [[1.5, 2.5, 3.5]])
    np.testing.assert_array_equal(ev("mean_axis(x, -2)"), ev("col_mean(x)"))
    np.testing.assert_array_equal(ev("mean(x)"), [[2.5]])
    np.testing.assert_allclose(ev("rms(x)"), [[np.sqrt(55.0 / 6)]], rtol=1e-15)
    # Adafactor's V = R C / mean(R): broadcast back to the full shape
    assert ev("row_mean(x) * col_mean(x) / col_mean(row_mean(x))").shape == (2, 3)
    assert ev("ndim(x)") == 2
    # 3x5 -> the largest axis is the last; 5x3 -> the first; ties keep axis order
    assert compile_expression("axis_by_size(x, -1)", {"x"})({"x": np.zeros((5, 3))}) == -2
    assert compile_expression("axis_by_size(x, -1)", {"x"})({"x": np.zeros((3, 3))}) == -1
    assert compile_expression("axis_by_size(x, -2)", {"x"})({"x": np.zeros((4, 2, 3))}) == -1


def test_a_column_mean_of_a_vector_is_an_error_that_says_how_to_guard_it():
    from conformance.expr import compile_expression

    with pytest.raises(ExprError, match=r"col_mean\(\) .* reduces axis -2 of a tensor with 1 axes .*ndim\(p\) >= 2"):
        compile_expression("col_mean(x)", {"x"})({"x": np.ones(3)})
    # guarded, the branch is never evaluated
    e = compile_expression("col_mean(x) if ndim(x) >= 2 else x", {"x"})
    np.testing.assert_array_equal(e({"x": np.ones(3)}), np.ones(3))
    with pytest.raises(ExprError, match="takes 2 argument"):
        compile_expression("mean_axis(x)", {"x"})


def test_row_means_under_the_sampled_rounding_model_leave_the_sample_axis_alone():
    """The sample axis of a rounding model is never reduced and never counted by
    ndim; each sample's mean is its rounded pairwise sum over the row, divided."""
    from conformance.expr import ROUNDING, rounded_twin
    from conformance.tolerance import _DIRECTED, Rounding, SampledRounding

    rng = np.random.default_rng(4)
    x = rng.uniform(0.5, 2.0, size=(3, 4)).astype(np.float32).astype(np.float64)
    sampled = SampledRounding("float32", 5, np.random.default_rng(0))
    sampled.bind(x.shape)
    batch = np.broadcast_to(x, (5,) + x.shape).copy()
    assert rounded_twin("ndim(x)")({"x": batch, ROUNDING: sampled}) == 2
    for src, shape in (("row_mean(x)", (5, 3, 1)), ("col_mean(x)", (5, 1, 4)), ("rms(x)", (5, 1, 1))):
        got = rounded_twin(src)({"x": batch, ROUNDING: sampled})
        assert got.shape == shape, src
        for i in range(5):
            serial = Rounding("float32", None if i == 0 else _DIRECTED[i - 1])
            np.testing.assert_array_equal(got[i], rounded_twin(src)({"x": x.copy(), ROUNDING: serial}), err_msg=src)
    exact = x.mean(axis=-1, keepdims=True)
    got = rounded_twin("row_mean(x)")({"x": batch, ROUNDING: sampled})
    assert np.all(np.abs(got - exact) <= 8 * 2.0 ** -24 * exact)  # 3 levels of pairwise rounding and the division, each up to an ulp
    assert len(set(got[:, 0, 0])) > 1


def test_matrix_products_transposes_and_sizes():
    from conformance.expr import compile_expression

    x = np.arange(6.0).reshape(2, 3)
    env = {"x": x}
    np.testing.assert_array_equal(compile_expression("matmul(x, transpose(x))", {"x"})(env), x @ x.T)
    assert compile_expression("size(x, -2)", {"x"})(env) == 2 and compile_expression("size(x, -1)", {"x"})(env) == 3
    with pytest.raises(ExprError, match="needs matrices"):
        compile_expression("transpose(x)", {"x"})({"x": np.ones(3)})
    with pytest.raises(ExprError, match="axes are negative"):
        compile_expression("size(x, 0)", {"x"})(env)


def test_bfloat16_rounds_exactly_and_jitters_under_the_rounding_model():
    from conformance.expr import ROUNDING, compile_expression, rounded_twin
    from conformance.tolerance import SampledRounding

    x = np.array([[1.0 / 3.0, 1.0 + 2.0**-9]])
    # bfloat16 keeps 8 significant bits: 1/3 -> 0.333984375, 1 + 2^-9 -> 1 (ties to even)
    np.testing.assert_array_equal(compile_expression("bfloat16(x)", {"x"})({"x": x}), [[0.333984375, 1.0]])
    sampled = SampledRounding("float32", 5, np.random.default_rng(0))
    sampled.bind(x.shape)
    got = rounded_twin("bfloat16(x)")({"x": np.broadcast_to(x, (5,) + x.shape).copy(), ROUNDING: sampled})
    assert got.shape == (5, 1, 2)
    np.testing.assert_array_equal(got[0], [[0.333984375, 1.0]])  # the nearest run is the exact rounding
    assert len(set(got[:, 0, 0])) > 1  # the directed runs push by up to bfloat16's unit roundoff
    assert np.all(np.abs(got - x) <= 2.0 ** -7 * np.abs(x))


def test_a_matrix_product_is_rounded_as_a_sum_of_its_terms():
    from conformance.expr import ROUNDING, rounded_twin
    from conformance.tolerance import SampledRounding

    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 4)).astype(np.float32).astype(np.float64)
    sampled = SampledRounding("float32", 5, np.random.default_rng(0))
    sampled.bind(a.shape)
    got = rounded_twin("matmul(x, transpose(x))")({"x": np.broadcast_to(a, (5,) + a.shape).copy(), ROUNDING: sampled})
    assert got.shape == (5, 3, 3)
    size = np.abs(a) @ np.abs(a).T
    # 4 terms: 3 levels of pairwise rounding, then the result's own rounding, each up to an ulp
    assert np.all(np.abs(got - a @ a.T) <= 8 * 2.0**-24 * size)
    assert len({float(v) for v in got[:, 0, 1]}) > 1
