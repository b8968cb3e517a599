"""Every variant a spec declares is reachable, composes, and means something.

For each framework mode the declared `expect` list must compose and run; each
framework-specific variant must reduce to a known rule in its limiting case
and differ from canonical otherwise (a variant that never differs would make
a "known divergence" out of nothing).
"""

import numpy as np
import pytest

from conformance.case import SliceTerms
from conformance.kernel import run

RNG = np.random.default_rng(11)
P0 = RNG.normal(size=(3, 2))
GRADS = RNG.normal(size=(6, 3, 2))
# a 3-d tensor whose two largest axes are not its last two (Adafactor's factoring axes)
P3 = RNG.normal(size=(4, 2, 3))
GRADS3 = RNG.normal(size=(6, 4, 2, 3))


def test_every_declared_expectation_composes_and_runs(catalog):
    for spec in catalog:
        for (fw, mode), cfg in spec.modes.items():
            if cfg.unsupported_reason(spec.resolve({})) is not None:
                continue  # e.g. TF1 Adagrad needs initial_accumulator_value > 0
            traj = run(spec, {}, P0, GRADS, variants=cfg.expect, sparse_rows=[[0, 2]] * len(GRADS))
            touched = traj.params[:, [0, 2]]
            assert np.all(np.isfinite(touched)), (spec.rule, fw, mode)
            # row 1 never gets a gradient: only a rule without eps (MXNet's Adamax, no_eps)
            # divides 0 by 0 there, which is what that framework computes (NaN)
            assert np.all(np.isfinite(traj.params[:, 1])) or "no_eps" in cfg.expect, (spec.rule, fw, mode)


def test_every_variant_differs_from_canonical_somewhere(catalog):
    # hyperparameters that switch every option on, so each variant can show itself
    loud = dict(momentum=0.9, weight_decay=0.05, amsgrad=True, centered=True, eps=1e-2, lr=0.05, lr_decay=0.1,
                l1=0.01, l2=0.05, l2_shrinkage=0.02, beta=0.5, eps1=1e-2)
    # a degenerate corner some variants differ in only (FTRL's unguarded_division: 0/0 where
    # beta = l2 = 0 and a row has had no gradient)
    edge = dict(beta=0.0, l2=0.0, initial_accumulator_value=0.0)
    # every row's gradient given as two equal halves (slice_sq = g*g/2), for per_slice_square
    halves = SliceTerms(tuple(g * g / 2 for g in GRADS))

    def params(spec, hp, variants=()):
        return run(spec, hp, P0, GRADS, variants=variants, sparse_rows=[[0]] * len(GRADS), lr_schedule=[0.05, 0.01] * 3, slice_terms=halves).params

    for spec in catalog:
        sets = [{k: v for k, v in d.items() if k in spec.hyperparameters} for d in (loud, edge)]
        canonical = [params(spec, hp) for hp in sets]
        for name in spec.variants:
            if spec.variants[name].precision:
                continue  # (may only fix the order of rounding: Lion's decay_first; composed and run above)
            got = [params(spec, hp, [name]) for hp in sets]
            differs = any(not np.allclose(g, c, rtol=1e-9, atol=0) for g, c in zip(got, canonical))
            if not differs:  # dense, on a 3-d tensor, with lr 1 (above Adafactor's relative step 1/sqrt(t))
                hp = dict(sets[0], lr=1.0)
                differs = not np.allclose(run(spec, hp, P3, GRADS3, variants=[name]).params,
                                          run(spec, hp, P3, GRADS3).params, rtol=1e-9, atol=0)
            assert differs, (spec.rule, name)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_adagrad_no_eps_is_eps_inside_sqrt_with_zero_eps(catalog):
    spec = catalog.get("adagrad")
    hp = dict(eps=0.0, initial_accumulator_value=0.1)
    close(run(spec, hp, P0, GRADS, variants=["no_eps"]).params, run(spec, hp, P0, GRADS, variants=["eps_inside_sqrt"]).params)


def test_adadelta_mxnet_variants_reduce_to_canonical_at_lr_one(catalog):
    spec = catalog.get("adadelta")
    hp = dict(lr=1.0, weight_decay=0.02)
    close(
        run(spec, hp, P0, GRADS, variants=["lr_ignored", "unscaled_decoupled_weight_decay"]).params,
        run(spec, hp, P0, GRADS, variants=["decoupled_weight_decay"]).params,
    )


@pytest.mark.parametrize("rule", ["adam", "adamw"])
def test_amsgrad_corrected_max_only_matters_with_amsgrad(catalog, rule):
    spec = catalog.get(rule)
    close(run(spec, {}, P0, GRADS, variants=["amsgrad_corrected_max"]).params, run(spec, {}, P0, GRADS).params)
    shrinking = GRADS * np.linspace(1, 1e-3, len(GRADS))[:, None, None]
    a = run(spec, dict(amsgrad=True), P0, shrinking, variants=["amsgrad_corrected_max"])
    b = run(spec, dict(amsgrad=True), P0, shrinking)
    assert not np.allclose(a.params, b.params, rtol=1e-9, atol=0)
    # the stored maximum is the bias-corrected one
    t = np.arange(1, len(GRADS) + 1)[:, None, None]
    assert np.all(a.state["v_max"] >= a.state["v"] / (1 - 0.999**t) * (1 - 1e-12))


def test_ms_init_one_starts_rmsprop_average_at_one(catalog):
    spec = catalog.get("rmsprop")
    traj = run(spec, dict(rho=0.9), P0, GRADS[:1], variants=["ms_init_one"])
    close(traj.state["v"][0], 0.9 + 0.1 * GRADS[0] ** 2)
