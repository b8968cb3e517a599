"""Equivalences between variants that must hold exactly (to float64 rounding).

These are properties of the rules themselves, checked with hypothesis over
random inputs and hyperparameters:
- epsilon_hat equals canonical Adam/AdamW when eps = 0;
- velocity_momentum equals canonical momentum when lr is constant;
- lazy equals dense when every row is present in every step;
- SGD's weight decay equals an L2 term added to the loss;
- a weight-decay variant equals canonical when weight_decay = 0.
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conformance.kernel import run

SETTINGS = settings(max_examples=60, deadline=None)

finite = st.floats(-10.0, 10.0, allow_nan=False, allow_infinity=False, width=64)
nonzero = finite.filter(lambda x: abs(x) > 1e-3)


@st.composite
def trajectories(draw, min_rows=1):
    rows = draw(st.integers(min_rows, 4))
    cols = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 8))
    p0 = draw(arrays(np.float64, (rows, cols), elements=finite))
    grads = draw(arrays(np.float64, (steps, rows, cols), elements=nonzero))
    return p0, grads


def close(a, b, rtol=1e-10, atol=1e-12):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@SETTINGS
@given(
    data=trajectories(),
    rule=st.sampled_from(["adam", "adamw"]),
    amsgrad=st.booleans(),
    lr=st.floats(1e-4, 0.5),
    beta1=st.floats(0.0, 0.99),
    beta2=st.floats(0.5, 0.999),
)
def test_epsilon_hat_equals_canonical_when_eps_is_zero(catalog, data, rule, amsgrad, lr, beta1, beta2):
    p0, grads = data
    hp = dict(lr=lr, beta1=beta1, beta2=beta2, eps=0.0, amsgrad=amsgrad)
    spec = catalog.get(rule)
    close(run(spec, hp, p0, grads, variants=["epsilon_hat"]).params, run(spec, hp, p0, grads).params)


@SETTINGS
@given(
    data=trajectories(),
    lr=st.floats(1e-3, 0.5),
    momentum=st.floats(0.0, 0.95),
    nesterov=st.booleans(),
    weight_decay=st.sampled_from([0.0, 0.01]),
)
def test_sgd_velocity_momentum_equals_canonical_for_constant_lr(catalog, data, lr, momentum, nesterov, weight_decay):
    p0, grads = data
    hp = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    spec = catalog.get("sgd")
    velocity = run(spec, hp, p0, grads, variants=["velocity_momentum"])
    canonical = run(spec, hp, p0, grads)
    close(velocity.params, canonical.params)
    if momentum != 0:  # the velocity is -lr times the buffer
        close(velocity.state["b"], -lr * canonical.state["b"])


@SETTINGS
@given(data=trajectories(), momentum=st.floats(0.1, 0.95), centered=st.booleans())
def test_rmsprop_velocity_momentum_equals_canonical_for_constant_lr(catalog, data, momentum, centered):
    p0, grads = data
    hp = dict(lr=0.01, momentum=momentum, centered=centered, eps=1e-3)
    spec = catalog.get("rmsprop")
    close(run(spec, hp, p0, grads, variants=["velocity_momentum"]).params, run(spec, hp, p0, grads).params)


def test_velocity_momentum_differs_when_lr_changes(catalog):
    spec = catalog.get("sgd")
    hp = dict(momentum=0.9)
    p0, grads = np.array([1.0]), np.ones((3, 1))
    lrs = [0.1, 0.01, 0.01]
    a = run(spec, hp, p0, grads, lr_schedule=lrs, variants=["velocity_momentum"]).params
    b = run(spec, hp, p0, grads, lr_schedule=lrs).params
    # canonical: b2 = 1.9, p2 = 0.9 - 0.019; velocity: v2 = -0.09 - 0.01, p2 = 0.9 - 0.1
    close(b[1], [0.9 - 0.019])
    close(a[1], [0.8])


@SETTINGS
@given(data=trajectories(), rule=st.sampled_from(["sgd", "rmsprop", "adadelta", "adagrad", "adam", "adamw"]), wd=st.sampled_from([0.0, 0.05]))
def test_lazy_equals_dense_when_every_row_is_present(catalog, data, rule, wd):
    p0, grads = data
    spec = catalog.get(rule)
    hp = dict(weight_decay=wd, **({"momentum": 0.9} if "momentum" in spec.hyperparameters else {}))
    rows = [list(range(p0.shape[0]))] * grads.shape[0]
    lazy = run(spec, hp, p0, grads, variants=["lazy"], sparse_rows=rows)
    dense = run(spec, hp, p0, grads)
    np.testing.assert_array_equal(lazy.params, dense.params)
    for name in dense.state:
        np.testing.assert_array_equal(lazy.state[name], dense.state[name])


def test_lazy_keeps_untouched_rows_and_dense_moves_them(catalog):
    spec = catalog.get("adam")
    p0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[[0.5, 0.5], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]])
    rows = [[0], [1]]
    lazy = run(spec, {}, p0, grads, variants=["lazy"], sparse_rows=rows)
    dense = run(spec, {}, p0, grads, sparse_rows=rows)
    np.testing.assert_array_equal(lazy.params[0, 1], p0[1])  # row 1 untouched in step 1
    np.testing.assert_array_equal(lazy.params[1, 0], lazy.params[0, 0])  # row 0 untouched in step 2
    np.testing.assert_array_equal(lazy.state["m"][1, 0], lazy.state["m"][0, 0])
    # dense: row 0's momentum keeps moving it in step 2 with a zero gradient
    assert np.all(dense.params[1, 0] != dense.params[0, 0])
    assert np.all(dense.state["m"][1, 0] == 0.9 * dense.state["m"][0, 0])


@SETTINGS
@given(data=trajectories(), wd=st.floats(1e-4, 0.5), lr=st.floats(1e-3, 0.5), momentum=st.sampled_from([0.0, 0.9]))
def test_sgd_weight_decay_is_l2_added_to_the_loss(catalog, data, wd, lr, momentum):
    """Loss L(p) + wd/2*|p|^2 has gradient g + wd*p: stepping with the raw
    gradient and weight_decay equals stepping with that gradient and none."""
    p0, grads = data
    spec = catalog.get("sgd")
    with_wd = run(spec, dict(lr=lr, weight_decay=wd, momentum=momentum), p0, grads)
    # closed loop: the L2 gradient depends on the parameter of each step
    p, b = p0, None
    for i, g in enumerate(grads):
        l2_grad = g + wd * p
        step = run(spec, dict(lr=lr, momentum=momentum), p, l2_grad[None])
        if momentum:  # carry the momentum buffer: t > 1 means b = momentum*b + g
            b = l2_grad if b is None else momentum * b + l2_grad
            p = p - lr * b
        else:
            p = step.params[0]
        close(with_wd.params[i], p)


@SETTINGS
@given(data=trajectories(), rule=st.sampled_from(["sgd", "rmsprop", "adadelta", "adagrad", "adam"]))
def test_decoupled_weight_decay_equals_canonical_without_decay(catalog, data, rule):
    p0, grads = data
    spec = catalog.get(rule)
    hp = dict(weight_decay=0.0)
    np.testing.assert_array_equal(
        run(spec, hp, p0, grads, variants=["decoupled_weight_decay"]).params, run(spec, hp, p0, grads).params
    )


@SETTINGS
@given(data=trajectories())
def test_adamw_coupled_equals_adam(catalog, data):
    p0, grads = data
    hp = dict(weight_decay=0.03, lr=0.01)
    close(
        run(catalog.get("adamw"), hp, p0, grads, variants=["coupled_weight_decay"]).params,
        run(catalog.get("adam"), hp, p0, grads).params,
    )
    close(
        run(catalog.get("adam"), hp, p0, grads, variants=["decoupled_weight_decay"]).params,
        run(catalog.get("adamw"), hp, p0, grads).params,
    )


@SETTINGS
@given(data=trajectories(), rule=st.sampled_from(["rmsprop", "adagrad"]))
def test_eps_inside_sqrt_equals_canonical_when_eps_is_zero(catalog, data, rule):
    p0, grads = data
    spec = catalog.get(rule)
    hp = dict(eps=0.0)
    close(run(spec, hp, p0, grads, variants=["eps_inside_sqrt"]).params, run(spec, hp, p0, grads).params)
