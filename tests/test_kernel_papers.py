"""The kernel reproduces the published algorithms, written out literally here.

Each reference below is an independent transcription of the paper's
pseudo-code (not of our specs), run in float64 on the same inputs; the
kernel must agree to float64 rounding. A few steps are also checked against
numbers worked out by hand.
"""

import math

import numpy as np
import pytest

from conformance.kernel import run

RNG = np.random.default_rng(20261121)


def close(a, b, rtol=1e-13, atol=1e-300):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def inputs(steps=6, shape=(3, 4)):
    p0 = RNG.normal(size=shape)
    grads = RNG.normal(size=(steps,) + shape) * RNG.choice([1e-3, 1.0, 10.0], size=(steps,) + shape)
    return p0, grads


# --------------------------------------------------------------- Adam


def adam_algorithm1(p, grads, alpha, b1, b2, eps):
    """Kingma & Ba 2015, Algorithm 1, line by line."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - alpha * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return np.array(out)


def adam_section2(p, grads, alpha, b1, b2, eps_hat):
    """Kingma & Ba 2015, Section 2, last paragraph: the alpha_t / epsilon-hat form."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        alpha_t = alpha * math.sqrt(1 - b2**t) / (1 - b1**t)
        p = p - alpha_t * m / (np.sqrt(v) + eps_hat)
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("hp", [dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8), dict(lr=0.3, beta1=0.5, beta2=0.9, eps=0.1)])
def test_adam_is_algorithm_1(catalog, hp):
    p0, grads = inputs()
    got = run(catalog.get("adam"), hp, p0, grads).params
    close(got, adam_algorithm1(p0, grads, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"]))


@pytest.mark.parametrize("hp", [dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8), dict(lr=0.3, beta1=0.5, beta2=0.9, eps=0.1)])
def test_adam_epsilon_hat_is_section_2_form(catalog, hp):
    p0, grads = inputs()
    got = run(catalog.get("adam"), hp, p0, grads, variants=["epsilon_hat"]).params
    close(got, adam_section2(p0, grads, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"]))
    # and it really differs from Algorithm 1 when eps matters
    canonical = run(catalog.get("adam"), hp, p0, grads).params
    assert not np.allclose(got, canonical, rtol=1e-9, atol=0)


def test_adam_first_step_by_hand(catalog):
    # m1 = (1-b1) g, v1 = (1-b2) g^2, so m_hat = g, v_hat = g^2 and
    # p1 = p0 - lr * g / (|g| + eps).
    got = run(catalog.get("adam"), dict(lr=0.1, eps=1e-8), np.array([1.0, -2.0]), np.array([[2.0, -0.5]])).params
    close(got[0], [1.0 - 0.1 * 2.0 / (2.0 + 1e-8), -2.0 + 0.1 * 0.5 / (0.5 + 1e-8)], rtol=1e-15)


def test_amsgrad_uses_running_max_of_v(catalog):
    """Reddi et al. 2018 Algorithm 2's max, with PyTorch's bias correction of that max."""
    p0, grads = inputs(steps=8)
    grads[4:] *= 1e-3  # shrinking gradients make v fall, so the max matters
    b1, b2, lr, eps = 0.9, 0.99, 0.01, 1e-8
    p = p0
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    v_max = np.zeros_like(p)
    want = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = np.maximum(v_max, v)
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v_max / (1 - b2**t)) + eps)
        want.append(p)
    traj = run(catalog.get("adam"), dict(lr=lr, beta1=b1, beta2=b2, eps=eps, amsgrad=True), p0, grads)
    close(traj.params, want)
    close(traj.state["v_max"][-1], v_max)
    plain = run(catalog.get("adam"), dict(lr=lr, beta1=b1, beta2=b2, eps=eps), p0, grads).params
    assert not np.allclose(plain[-1], traj.params[-1], rtol=1e-6, atol=0)


# --------------------------------------------------------------- AdamW


def adamw_algorithm2(p, grads, alpha, b1, b2, eps, lam, etas):
    """Loshchilov & Hutter 2019, Algorithm 2 (Adam with decoupled weight decay)."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, (g, eta) in enumerate(zip(grads, etas), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        p = p - eta * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * p)
        out.append(p)
    return np.array(out)


def test_adamw_is_algorithm_2(catalog):
    # The paper separates alpha from the schedule multiplier eta_t; the
    # PyTorch form takes lr = eta_t*alpha and weight_decay = lambda/alpha.
    p0, grads = inputs(steps=7)
    alpha, lam, b1, b2, eps = 0.01, 0.002, 0.9, 0.999, 1e-8
    etas = [1.0, 0.9, 0.8, 0.5, 0.5, 0.25, 0.1]
    want = adamw_algorithm2(p0, grads, alpha, b1, b2, eps, lam, etas)
    got = run(
        catalog.get("adamw"),
        dict(beta1=b1, beta2=b2, eps=eps, weight_decay=lam / alpha),
        p0,
        grads,
        lr_schedule=[eta * alpha for eta in etas],
    ).params
    close(got, want, rtol=1e-12)


# --------------------------------------------------------------- Adadelta


def adadelta_algorithm1(x, grads, rho, eps):
    """Zeiler 2012, Algorithm 1."""
    eg2 = np.zeros_like(x)
    edx2 = np.zeros_like(x)
    out = []
    for g in grads:
        eg2 = rho * eg2 + (1 - rho) * g**2
        dx = -np.sqrt(edx2 + eps) / np.sqrt(eg2 + eps) * g
        edx2 = rho * edx2 + (1 - rho) * dx**2
        x = x + dx
        out.append(x)
    return np.array(out)


@pytest.mark.parametrize("rho,eps", [(0.95, 1e-6), (0.9, 1e-2)])
def test_adadelta_is_algorithm_1(catalog, rho, eps):
    p0, grads = inputs()
    got = run(catalog.get("adadelta"), dict(lr=1.0, rho=rho, eps=eps), p0, grads).params
    close(got, adadelta_algorithm1(p0, grads, rho, eps))


# --------------------------------------------------------------- SGD / momentum


def sutskever_momentum(theta, grads, lrs, mu, nesterov=False):
    """Sutskever et al. 2013, Eq. 1-2 (classical momentum) and its Nesterov form as
    rewritten for the look-ahead-free parameter (Bengio et al. 2013, Eq. 7)."""
    v = np.zeros_like(theta)
    out = []
    for g, eps in zip(grads, lrs):
        v_new = mu * v - eps * g
        theta = theta + (mu * v_new - eps * g if nesterov else v_new)
        v = v_new
        out.append(theta)
    return np.array(out)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_velocity_momentum_is_sutskever(catalog, nesterov):
    p0, grads = inputs(steps=8)
    lrs = [0.1, 0.1, 0.05, 0.05, 0.2, 0.01, 0.01, 0.3]
    got = run(
        catalog.get("sgd"), dict(momentum=0.9, nesterov=nesterov), p0, grads, variants=["velocity_momentum"], lr_schedule=lrs
    ).params
    close(got, sutskever_momentum(p0, grads, lrs, 0.9, nesterov))


def test_sgd_momentum_by_hand(catalog):
    # PyTorch form: b1 = g = 1, b2 = 0.9 + 1 = 1.9, b3 = 1.71 + 1 = 2.71;
    # p = 1 - 0.1*1, then - 0.1*1.9, then - 0.1*2.71.
    traj = run(catalog.get("sgd"), dict(lr=0.1, momentum=0.9), np.array(1.0), np.ones(3))
    close(traj.state["b"], [1.0, 1.9, 2.71], rtol=1e-15)
    close(traj.params, [0.9, 0.71, 0.439], rtol=1e-14)
    # dampening applies from the second step on: b2 = 0.9*1 + 0.5*1
    damp = run(catalog.get("sgd"), dict(lr=0.1, momentum=0.9, dampening=0.5), np.array(1.0), np.ones(2))
    close(damp.state["b"], [1.0, 1.4], rtol=1e-15)


# --------------------------------------------------------------- Adagrad


def adagrad_duchi(x, grads, eta, delta, s0=0.0):
    """Duchi, Hazan & Singer 2011, Figure 1 (diagonal), composite-mirror form with
    H_t = delta*I + diag(||g_{1:t,i}||_2): x <- x - eta * g / (delta + sqrt(sum g^2))."""
    s = np.full_like(x, s0)
    out = []
    for g in grads:
        s = s + g * g
        x = x - eta * g / (delta + np.sqrt(s))
        out.append(x)
    return np.array(out)


def test_adagrad_is_duchi_diagonal(catalog):
    p0, grads = inputs()
    got = run(catalog.get("adagrad"), dict(lr=0.05, eps=1e-10), p0, grads).params
    close(got, adagrad_duchi(p0, grads, 0.05, 1e-10))


def test_adagrad_lr_decay_and_initial_accumulator_by_hand(catalog):
    # s = 0.1 + 4 = 4.1; clr1 = 0.5; p1 = 1 - 0.5*2/sqrt(4.1)
    # s = 4.1 + 4 = 8.1; clr2 = 0.5/(1+0.5) ; p2 = p1 - clr2*2/sqrt(8.1)
    traj = run(
        catalog.get("adagrad"),
        dict(lr=0.5, lr_decay=0.5, initial_accumulator_value=0.1, eps=0.0),
        np.array([1.0]),
        np.array([[2.0], [2.0]]),
    )
    p1 = 1 - 0.5 * 2 / math.sqrt(4.1)
    p2 = p1 - (0.5 / 1.5) * 2 / math.sqrt(8.1)
    close(traj.params[:, 0], [p1, p2], rtol=1e-15)
    close(traj.state["s"][:, 0], [4.1, 8.1], rtol=1e-15)


# --------------------------------------------------------------- RMSprop


def test_rmsprop_by_hand(catalog):
    # Tieleman & Hinton: v = rho*v + (1-rho) g^2; p -= lr*g/(sqrt(v)+eps)
    traj = run(catalog.get("rmsprop"), dict(lr=0.01, rho=0.9, eps=0.0), np.array([0.0]), np.array([[3.0], [3.0]]))
    v1, v2 = 0.1 * 9, 0.9 * 0.9 + 0.1 * 9
    p1 = -0.01 * 3 / math.sqrt(v1)
    close(traj.params[:, 0], [p1, p1 - 0.01 * 3 / math.sqrt(v2)], rtol=1e-15)


def graves_centered(p, grads, lr, rho, eps, mom):
    """Graves 2013, Eq. 38-45 with PyTorch's placement of eps and lr."""
    n = np.zeros_like(p)
    gbar = np.zeros_like(p)
    b = np.zeros_like(p)
    out = []
    for g in grads:
        n = rho * n + (1 - rho) * g * g
        gbar = rho * gbar + (1 - rho) * g
        b = mom * b + g / (np.sqrt(n - gbar * gbar) + eps)
        p = p - lr * b
        out.append(p)
    return np.array(out)


def test_rmsprop_centered_momentum(catalog):
    p0, grads = inputs()
    got = run(catalog.get("rmsprop"), dict(lr=0.01, rho=0.95, eps=1e-4, momentum=0.9, centered=True), p0, grads).params
    close(got, graves_centered(p0, grads, 0.01, 0.95, 1e-4, 0.9), rtol=1e-12)


# --------------------------------------------------------------- Adamax


def adamax_algorithm2(p, grads, alpha, b1, b2):
    """Kingma & Ba 2015, Algorithm 2 (AdaMax), line by line (no epsilon)."""
    m = np.zeros_like(p)
    u = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g))
        p = p - (alpha / (1 - b1**t)) * m / u
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("hp", [dict(lr=0.002, beta1=0.9, beta2=0.999), dict(lr=0.3, beta1=0.5, beta2=0.6)])
def test_adamax_with_eps_0_is_algorithm_2_and_each_eps_placement_differs(catalog, hp):
    p0, grads = inputs()
    spec = catalog.get("adamax")
    close(run(spec, dict(hp, eps=0.0), p0, grads).params, adamax_algorithm2(p0, grads, hp["lr"], hp["beta1"], hp["beta2"]))
    close(run(spec, dict(hp, eps=1e-8), p0, grads, variants=["no_eps"]).params, adamax_algorithm2(p0, grads, hp["lr"], hp["beta1"], hp["beta2"]))
    inside = run(spec, dict(hp, eps=0.5), p0, grads).params
    outside = run(spec, dict(hp, eps=0.5), p0, grads, variants=["eps_outside_max"]).params
    assert not np.allclose(inside, outside, rtol=1e-6, atol=0)


def test_adamax_first_step_by_hand(catalog):
    # m1 = (1-b1) g, u1 = |g| + eps, so p1 = p0 - lr * g / (|g| + eps) (inside the max) or
    # p0 - lr * g / (|g| + eps) (outside: u1 = |g|, then + eps): equal at step 1
    got = run(catalog.get("adamax"), dict(lr=0.1, eps=0.5), np.array([1.0]), np.array([[2.0], [0.0]])).params
    close(got[0], [1.0 - 0.1 * 2.0 / 2.5], rtol=1e-15)
    # step 2, zero gradient: m2 = 0.9*0.2, u2 = max(0.999*2.5, 0.5) = 2.4975
    close(got[1], [got[0][0] - 0.1 / (1 - 0.81) * (0.9 * 0.2) / 2.4975], rtol=1e-14)


# --------------------------------------------------------------- LAMB


def lamb_algorithm2(p, grads, lr, b1, b2, eps, wd):
    """You et al. 2020, Algorithm 2 (LAMB), one layer, phi the identity; the
    trust ratio is 1 where a norm is 0 (the paper leaves that case open)."""
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    out = []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        r = m_hat / (np.sqrt(v_hat) + eps)
        d = r + wd * p
        x_norm, d_norm = np.sqrt(np.sum(p**2)), np.sqrt(np.sum(d**2))
        ratio = x_norm / d_norm if x_norm > 0 and d_norm > 0 else 1.0
        p = p - lr * ratio * d
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("hp", [dict(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-6, weight_decay=0.0),
                                dict(lr=0.05, beta1=0.5, beta2=0.9, eps=1e-2, weight_decay=0.1)])
def test_lamb_is_algorithm_2(catalog, hp):
    p0, grads = inputs()
    got = run(catalog.get("lamb"), hp, p0, grads).params
    close(got, lamb_algorithm2(p0, grads, hp["lr"], hp["beta1"], hp["beta2"], hp["eps"], hp["weight_decay"]), rtol=1e-12)


def test_lamb_zero_parameter_takes_the_unnormalised_step_by_hand(catalog):
    # p = 0: ||p|| = 0, ratio 1; at t = 1, m_hat = g and v_hat = g^2, so the step is -lr*g/(|g| + eps)
    got = run(catalog.get("lamb"), dict(lr=0.1, beta1=0.9, beta2=0.999, eps=0.5, weight_decay=0.0),
              np.zeros(2), np.array([[2.0, -1.0]])).params
    close(got[0], [-0.1 * 2.0 / 2.5, 0.1 * 1.0 / 1.5], rtol=1e-15)
    # a nonzero parameter: the step's length is lr*||p|| (ratio ||p||/||d||)
    p0 = np.array([3.0, 4.0])
    got = run(catalog.get("lamb"), dict(lr=0.1, beta1=0.9, beta2=0.999, eps=0.0, weight_decay=0.0), p0, np.array([[2.0, -1.0]])).params
    close(np.linalg.norm(got[0] - p0), 0.1 * 5.0, rtol=1e-15)


# --------------------------------------------------------------- Adafactor


def adafactor_algorithms_4_5(p, grads, rho_max, decay=-0.8, eps1=1e-30, eps2=1e-3, d=1.0):
    """Shazeer & Stern 2018, Algorithm 4 (a weight matrix, here each matrix of
    the last two axes: R and C are row and column *sums*, V = R C / (1^T R))
    and Algorithm 5 (a vector), with rho_t = min(rho_max, 1/sqrt(t)) and
    beta2hat_t = 1 - t^decay (Sections 7.2 and 9)."""
    factored = p.ndim >= 2
    R = np.zeros(p.shape[:-1] + (1,)) if factored else None
    C = np.zeros(p.shape[:-2] + (1,) + p.shape[-1:]) if factored else None
    V = np.zeros_like(p)
    out = []
    for t, G in enumerate(grads, start=1):
        rho = min(rho_max, 1 / math.sqrt(t))
        alpha = max(eps2, math.sqrt(np.mean(p**2))) * rho
        beta2 = 1 - t**decay
        if factored:
            R = beta2 * R + (1 - beta2) * np.sum(G**2 + eps1, axis=-1, keepdims=True)   # (G^2 + eps1 1 1^T) 1_m
            C = beta2 * C + (1 - beta2) * np.sum(G**2 + eps1, axis=-2, keepdims=True)   # 1_n^T (G^2 + eps1 1 1^T)
            V_hat = R * C / np.sum(R, axis=-2, keepdims=True)                              # R C / 1_n^T R
        else:
            V = beta2 * V + (1 - beta2) * (G**2 + eps1)
            V_hat = V
        U = G / np.sqrt(V_hat)
        U_hat = U / max(1.0, math.sqrt(np.mean(U**2)) / d)
        p = p - alpha * U_hat
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("shape", [(3, 4), (5,), (2, 3, 4), ()])
@pytest.mark.parametrize("hp", [dict(lr=0.01), dict(lr=1.0, beta2_decay=-0.5, eps1=1e-3, eps2=0.05, clip_threshold=2.0)])
def test_adafactor_is_algorithms_4_and_5(catalog, shape, hp):
    p0, grads = inputs(steps=6, shape=shape)
    got = run(catalog.get("adafactor"), hp, p0, grads).params
    want = adafactor_algorithms_4_5(p0, grads, hp["lr"], hp.get("beta2_decay", -0.8), hp.get("eps1", 1e-30),
                                    hp.get("eps2", 1e-3), hp.get("clip_threshold", 1.0))
    close(got, want, rtol=1e-12)


def test_adafactor_first_step_by_hand(catalog):
    spec = catalog.get("adafactor")
    # a vector at t = 1: beta2hat = 0, so V = G^2 (eps1 = 0) and U = sign(G), RMS(U) = 1 (no
    # clipping); alpha = max(eps2, RMS(p)) * min(lr, 1): p1 = p0 - RMS(p0)*lr*sign(G)
    p0 = np.array([3.0, 4.0, 0.0, 0.0])  # RMS 2.5
    got = run(spec, dict(lr=0.1, eps1=0.0), p0, np.array([[2.0, -1.0, 0.5, -4.0]])).params
    close(got[0], p0 - 0.25 * np.array([1.0, -1.0, 1.0, -1.0]), rtol=1e-15)
    # the same numbers as a matrix: R = row means of G^2 = [2.5, 8.125], C = column means =
    # [2.125, 8.5], mean(R) = 5.3125, so V = R C / mean(R) = [[1, 4], [3.25, 13]] (not G^2)
    g = np.array([[2.0, -1.0], [0.5, -4.0]])
    got = run(spec, dict(lr=0.1, eps1=0.0), p0.reshape(2, 2), g[None]).params
    u = g / np.sqrt([[1.0, 4.0], [3.25, 13.0]])
    close(got[0], p0.reshape(2, 2) - 0.25 * u / math.sqrt(np.mean(u**2)), rtol=1e-15)  # RMS(U) = 1.18: clipped to 1


def test_adafactor_keras_golden_values(catalog):
    """keras/src/optimizers/adafactor_test.py (Keras 3.15): its expected values,
    reproduced by the rule with the variants the spec declares for Keras."""
    spec = catalog.get("adafactor")
    keras = ["scale_after_decay"]
    # test_single_step_1d and test_single_step_2d: learning_rate 0.5, one step
    got = run(spec, dict(lr=0.5), np.array([1.0, 2.0, 3.0, 4.0]), np.array([[1.0, 6.0, 7.0, 2.0]]), variants=keras).params
    close(got[0], [-0.3693, 0.6307, 1.6307, 2.6307], rtol=0, atol=1e-4)
    got = run(spec, dict(lr=0.5), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[[1.0, 6.0], [7.0, 2.0]]]), variants=keras).params
    close(got[0], [[0.7007, -0.0081], [1.2492, 3.4407]], rtol=0, atol=1e-4)
    # test_weight_decay: a zero gradient, learning_rate 1, weight_decay 0.004, three steps of fresh optimizers
    p = np.array(2.0)
    for _ in range(3):
        p = run(spec, dict(lr=1.0, weight_decay=0.004), p, np.zeros((1,)), variants=keras).params[0]
    assert abs(float(p) - 1.9760959) < 1e-6
    # test_correctness_with_golden, relative_step=False: Keras still takes rho_t = min(lr, 1/sqrt(t))
    # (keras/src/optimizers/adafactor.py update_step computes rho_t unconditionally); the golden values
    # follow that: with rho_t = lr (constant_step_size) the fifth step is off by 4.4e-3
    hp = dict(lr=0.5, beta2_decay=-0.65, eps1=1e-15, eps2=1e-4, clip_threshold=0.9)
    grads = np.array([np.full(10, 0.01)] + [np.arange(0.1, 1.1, 0.1)] * 4)
    golden = np.array([
        [0.55] * 10,
        [0.3031, 0.3026, 0.3025, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024, 0.3024],
        [0.1671, 0.1665, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663, 0.1663],
        [0.0923, 0.0916, 0.0915, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914, 0.0914],
        [0.0554, 0.0548, 0.0546, 0.0546, 0.0546, 0.0546, 0.0546, 0.0545, 0.0545, 0.0545]])
    close(run(spec, hp, np.ones(10), grads, variants=keras).params, golden, rtol=0, atol=5e-4)
    constant = run(spec, hp, np.ones(10), grads, variants=keras + ["constant_step_size"]).params
    assert np.abs(constant[4] - golden[4]).max() > 4e-3


def test_adafactor_factoring_axes(catalog):
    spec = catalog.get("adafactor")
    # a matrix: the two largest axes are its two axes, so optax's choice gives the same V
    for shape in [(3, 5), (5, 3), (4, 4)]:
        p0, grads = inputs(steps=4, shape=shape)
        close(run(spec, {}, p0, grads, variants=["factor_two_largest_dims"]).params, run(spec, {}, p0, grads).params, rtol=1e-14)
    # 4x2x3: the largest axes are 0 and 2, not the last two; V and the steps differ
    p0, grads = inputs(steps=4, shape=(4, 2, 3))
    other = run(spec, {}, p0, grads, variants=["factor_two_largest_dims"]).params
    assert not np.allclose(other, run(spec, {}, p0, grads).params, rtol=1e-6, atol=0)
    # ... and equal the canonical rule on the tensor with those axes moved last
    moved = run(spec, {}, np.moveaxis(p0, 1, 0), np.moveaxis(grads, 2, 1)).params
    close(np.moveaxis(moved, 1, 2), other, rtol=1e-13)


# --------------------------------------------------------------- Muon


def newtonschulz5(G, steps=5, eps=1e-7):
    """Jordan et al. 2024 (the Muon post's zeropower_via_newtonschulz5), in float64."""
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G / (np.linalg.norm(G) + eps)
    if G.shape[0] > G.shape[1]:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.shape[0] > G.shape[1]:
        X = X.T
    return X


def muon_reference(p, grads, lr, momentum=0.95, nesterov=True, weight_decay=0.0):
    """The post's Muon: B = mu B + G, NS5 of G + mu B (Nesterov) or of B; the update scaled by
    sqrt(max(1, rows/cols)) and a decoupled decay, as in KellerJordan/Muon muon.py."""
    B = np.zeros_like(p)
    out = []
    for G in grads:
        B = momentum * B + G
        O = newtonschulz5(G + momentum * B if nesterov else B)
        p = p * (1 - lr * weight_decay) - lr * math.sqrt(max(1, p.shape[0] / p.shape[1])) * O
        out.append(p)
    return np.array(out)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (3, 3), (1, 4)])
@pytest.mark.parametrize("hp", [dict(lr=0.02), dict(lr=0.1, momentum=0.5, nesterov=False, weight_decay=0.1)])
def test_muon_is_the_posts_algorithm(catalog, shape, hp):
    p0, grads = inputs(steps=5, shape=shape)
    got = run(catalog.get("muon"), hp, p0, grads).params
    # (the kernel never transposes: f(X^T)^T = f(X) for the quintic, so tall matrices agree to rounding)
    close(got, muon_reference(p0, grads, **hp), rtol=1e-10)


def test_muon_one_element_by_hand(catalog):
    # a 1x1 gradient: B = g = 2, the Nesterov d = g + 0.95 B = 3.9, X0 = d/(|d| + eps), about
    # sign(d); each Newton-Schulz step is x <- a x + b x^3 + c x^5
    x = 3.9 / (3.9 + 1e-7)
    for _ in range(5):
        x = 3.4445 * x - 4.7750 * x**3 + 2.0315 * x**5
    got = run(catalog.get("muon"), dict(lr=0.1), np.array([[1.0]]), np.array([[[2.0]]])).params
    close(got[0], [[1.0 - 0.1 * x]], rtol=1e-15)
    assert 0.68 < x < 1.2  # the iteration leaves the singular value near, not at, 1


def test_muon_update_is_nearly_orthogonal(catalog):
    # the post: NS5 gives U S' V^T with S' roughly in [0.5, 1.5], for a full-rank matrix
    g = RNG.normal(size=(1, 6, 4))
    step = (np.zeros((6, 4)) - run(catalog.get("muon"), dict(lr=1.0), np.zeros((6, 4)), g).params[0]) / math.sqrt(6 / 4)
    s = np.linalg.svd(step, compute_uv=False)
    assert np.all((s > 0.5) & (s < 1.5)), s


def test_muon_keras_golden_values(catalog):
    """keras/src/optimizers/muon_test.py (Keras 3.15): its expected values, reproduced by the
    rule (test_Newton_Schulz: the iteration alone; test_muon_single_step: rms_rate 0.2)."""
    spec = catalog.get("muon")
    g = np.array([[0.2499, 0.9105], [0.2655, 0.8824]])
    # the iteration alone: momentum 0 without Nesterov, lr 1 and a square matrix (scale 1) from 0
    got = run(spec, dict(lr=1.0, momentum=0.0, nesterov=False), np.zeros((2, 2)), g[None]).params[0]
    close(-got, [[-0.4422, 0.6457], [0.7285, 0.2968]], rtol=0, atol=1e-3)  # (3.4e-4: Keras' 4 digits)
    got = run(spec, dict(lr=0.5), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[[1.0, 6.0], [7.0, 2.0]]]),
              variants=["rms_matched_scale"]).params[0]
    close(got, [[0.988775, 1.887053], [2.873428, 3.97035]], rtol=0, atol=1e-6)  # (3.5e-7; Keras' test allows 1e-2)


# ------------------------------------------------- Keras' own golden values

_KERAS_GOLDEN = {
    # keras/src/optimizers/<rule>_test.py test_correctness_with_golden (Keras 3.15): x = ones(10),
    # one step with gradient 0.01, then arange(0.1, 1.1, 0.1); golden[i] after step i + 1
    "nadam": (dict(lr=0.5, beta1=0.5, beta2=0.67, eps=1e-5), [
        [0.4281] * 10,
        [-0.1738, -0.1731, -0.1726, -0.1723, -0.1721, -0.172, -0.1719, -0.1718, -0.1718, -0.1717],
        [-0.7115, -0.7103, -0.7096, -0.7092, -0.709, -0.7088, -0.7086, -0.7085, -0.7085, -0.7084],
        [-1.2335, -1.2322, -1.2313, -1.2309, -1.2306, -1.2304, -1.2302, -1.2301, -1.23, -1.2299],
        [-1.7492, -1.7478, -1.7469, -1.7464, -1.7461, -1.7459, -1.7457, -1.7456, -1.7455, -1.7454]]),
    "lion": ({}, [[0.999] * 10, [0.998] * 10, [0.997] * 10, [0.996] * 10, [0.995] * 10]),
    "adamax": (dict(lr=0.2, beta1=0.85, beta2=0.95, eps=1e-6), [
        [0.8] * 10,
        [0.6827, 0.6873, 0.6888, 0.6896, 0.6901, 0.6904, 0.6906, 0.6908, 0.6909, 0.691],
        [0.5333, 0.5407, 0.5431, 0.5444, 0.5451, 0.5456, 0.546, 0.5462, 0.5464, 0.5466],
        [0.368, 0.3773, 0.3804, 0.382, 0.3829, 0.3835, 0.384, 0.3843, 0.3846, 0.3848],
        [0.1933, 0.204, 0.2076, 0.2094, 0.2105, 0.2112, 0.2117, 0.2121, 0.2124, 0.2126]]),
    "lamb": ({}, [[0.999] * 10, [0.9982] * 10, [0.9974] * 10, [0.9965] * 10, [0.9955] * 10]),
    "ftrl": (dict(lr=0.05, lr_power=-0.2, initial_accumulator_value=0.4, l1=0.05, l2=0.15, l2_shrinkage=0.01, beta=0.3), [
        [0.0] * 10,
        [-0.0034, -0.0077, -0.0118, -0.0157, -0.0194, -0.023, -0.0263, -0.0294, -0.0325, -0.0354],
        [-0.0078, -0.0162, -0.0242, -0.0317, -0.0387, -0.0454, -0.0516, -0.0575, -0.0631, -0.0685],
        [-0.0121, -0.0246, -0.0363, -0.0472, -0.0573, -0.0668, -0.0757, -0.0842, -0.0922, -0.0999],
        [-0.0164, -0.0328, -0.0481, -0.0623, -0.0753, -0.0875, -0.099, -0.1098, -0.1201, -0.1299]]),
}


@pytest.mark.parametrize("rule", sorted(_KERAS_GOLDEN))
def test_keras_golden_values_follow_the_variants_declared_for_keras(catalog, rule):
    """Keras' own expected trajectories, reproduced by the rule with exactly the variants
    the spec declares for Keras (its native defaults for what the test leaves out), to the
    test's own criterion (assertAllClose rtol 5e-4, atol 5e-4). LAMB's golden values are
    6e-4 from what Keras 3.15 itself computes at steps 4 and 5 (0.9959039, 0.9948956 where
    they say 0.9965, 0.9955); the rule gives Keras' values (0.9959038, 0.9948955)."""
    spec = catalog.get(rule)
    mode = spec.mode("tensorflow", "eager")
    given, golden = _KERAS_GOLDEN[rule]
    hp = {**{k: v for k, v in mode.defaults.items() if k in spec.hyperparameters}, **given}
    grads = np.array([np.full(10, 0.01)] + [np.arange(0.1, 1.1, 0.1)] * 4)
    got = run(spec, hp, np.ones(10), grads, variants=mode.expect).params
    close(got, golden, rtol=5e-4, atol=5e-4)
