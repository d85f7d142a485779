"""Second witnesses for the 2024 rules (keras_optx/recent.py, prodigy.py), and the differences between
their references, each shown rather than stated.

keras_optx on this backend (eager, and compiled where Keras compiles) against the maintained
packages, step by step, on test_conformance's gradient stream (exact zeros, one variable at ~1e3
every third step), at test_witnesses' float32 tolerance:

- `ADOPT` = `pytorch_optimizer.ADOPT` (the authors' t^¼ clip); `optax.contrib.adopt` clips at
  (t−1)^¼: it equals the oracle with that clip, and differs from ADOPT.
- `AdEMAMix` = `pytorch_optimizer.AdEMAMix` and `optax.contrib.ademamix`; with the warm-up
  schedules = `pytorch_optimizer.AdEMAMix(t_alpha_beta3=T)`.
- `Cautious(ADOPT())`, `Cautious(Lion())` = pytorch_optimizer's `cautious=True`;
  `pytorch_optimizer.AdEMAMix(cautious=True)` masks only the fast EMA: it equals that oracle and
  differs from `Cautious(AdEMAMix())`, which masks the whole update as the paper defines.
- `Prodigy` = `prodigyopt.Prodigy` (float32, its decoupled `weight_decay` as ours; its coupled one as
  `Optimiser(WeightDecay(λ), Prodigy())`).
"""

import keras
import numpy as np
import pytest
import reference as ref
from test_conformance import MODES, SHAPES, gradient_stream, initial_values
from test_witnesses import ATOL, STEPS, _assert_same_trajectory, _optax_run, _run, _torch_run

import keras_optx as ox


def _oracle_run(oracle, steps=STEPS):
    xs = [v.astype(np.float64) for v in initial_values()]
    trajectory = []
    for n, grads in zip(range(1, steps + 1), gradient_stream()):
        xs = [x - d for x, d in zip(xs, oracle(grads, xs, n))]
        trajectory.append([x.copy() for x in xs])
    return trajectory


def _differs(actual, expected, at_least):
    """The largest difference between two trajectories, relative to the values, is at least `at_least`
    (10x the float32 tolerance: a difference of formula, not of rounding)."""
    worst = max(
        np.max(np.abs(x - y)) / (1.0 + np.max(np.abs(y))) for xs, ys in zip(actual, expected) for x, y in zip(xs, ys)
    )
    assert worst >= at_least, worst


# ADOPT -------------------------------------------------------------------------------------
ADOPT_SETTINGS = [(0.001, (0.9, 0.9999), 1e-6), (0.01, (0.8, 0.99), 1e-3)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eta,beta,eps", ADOPT_SETTINGS)
def test_adopt_is_pytorch_optimizer_adopt(eta, beta, eps, mode):
    import pytorch_optimizer

    expected = _torch_run(lambda p: pytorch_optimizer.ADOPT(p, lr=eta, betas=beta, eps=eps))
    _assert_same_trajectory(_run(ox.ADOPT(eta, beta, eps), mode), expected, "ADOPT")


@pytest.mark.parametrize("eta,beta,eps", ADOPT_SETTINGS)
def test_optax_adopt_clips_at_t_minus_one(eta, beta, eps):
    """optax's count starts at 0, so its clip is (t−1)^¼: the oracle with that clip equals optax, and
    ADOPT (t^¼, the authors' code) differs from optax where the clip bites (the ~1e3 gradients)."""
    import optax

    theirs = _optax_run(optax.contrib.adopt(eta, b1=beta[0], b2=beta[1], eps=eps))
    _assert_same_trajectory(theirs, _oracle_run(ref.ADOPT(eta, beta, eps, clip_offset=-1)), "optax adopt")
    _differs(_run(ox.ADOPT(eta, beta, eps), "eager"), theirs, at_least=10 * ATOL)


# AdEMAMix ----------------------------------------------------------------------------------
AdEMAMix_SETTINGS = [(0.001, (0.9, 0.999, 0.9999), 5.0, 1e-8), (0.01, (0.8, 0.99, 0.995), 2.0, 1e-6)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eta,beta,alpha,eps", AdEMAMix_SETTINGS)
def test_ademamix_is_pytorch_optimizer_and_optax(eta, beta, alpha, eps, mode):
    import optax
    import pytorch_optimizer

    ours = _run(ox.AdEMAMix(eta, beta, alpha, eps), mode)
    _assert_same_trajectory(ours, _torch_run(lambda p: pytorch_optimizer.AdEMAMix(p, lr=eta, betas=beta, alpha=alpha, eps=eps)),
                            "pytorch_optimizer.AdEMAMix")
    _assert_same_trajectory(ours, _optax_run(optax.contrib.ademamix(eta, *beta, alpha=alpha, eps=eps)), "optax ademamix")


@pytest.mark.parametrize("mode", MODES)
def test_ademamix_warmup_schedules_are_pytorch_optimizer_t_alpha_beta3(mode):
    import pytorch_optimizer

    warmup = 8  # both ramps end within the 20 steps
    opt = ox.AdEMAMix(0.01, (0.9, 0.999, ox.AdEMAMixBeta3Warmup(0.9, 0.999, warmup)), ox.AdEMAMixAlphaWarmup(5.0, warmup))
    expected = _torch_run(lambda p: pytorch_optimizer.AdEMAMix(p, lr=0.01, betas=(0.9, 0.999, 0.999), t_alpha_beta3=warmup))
    _assert_same_trajectory(_run(opt, mode), expected, "AdEMAMix warm-ups")


# Cautious ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["ADOPT", "Lion"])
def test_cautious_is_pytorch_optimizer_cautious(name, mode):
    import pytorch_optimizer

    eta = 0.01 if name == "ADOPT" else 0.003
    expected = _torch_run(lambda p: getattr(pytorch_optimizer, name)(p, lr=eta, cautious=True))
    _assert_same_trajectory(_run(ox.Cautious(getattr(ox, name)(eta)), mode), expected, f"Cautious({name})")


def test_pytorch_optimizer_cautious_ademamix_masks_only_the_fast_ema():
    import pytorch_optimizer

    theirs = _torch_run(lambda p: pytorch_optimizer.AdEMAMix(p, lr=0.01, cautious=True))
    _assert_same_trajectory(theirs, _oracle_run(ref.AdEMAMix(0.01, cautious_fast=True)), "pytorch_optimizer cautious AdEMAMix")
    ours = _run(ox.Cautious(ox.AdEMAMix(0.01)), "eager")
    _assert_same_trajectory(ours, _oracle_run(ref.Cautious(ref.AdEMAMix(0.01))), "Cautious(AdEMAMix)")
    _differs(ours, theirs, at_least=10 * ATOL)


# Prodigy -----------------------------------------------------------------------------------
PRODIGY_SETTINGS = [
    {},
    dict(lr=0.5, betas=(0.8, 0.99), beta3=0.98, eps=1e-6, d0=1e-4, d_coef=2.0, growth_rate=1.5,
         use_bias_correction=True, safeguard_warmup=True, weight_decay=0.01),
    dict(betas=(0.0, 0.999), d0=1e-4),
]


def _ours(settings):
    kw = dict(settings)
    if "lr" in kw:
        kw["learning_rate"] = kw.pop("lr")
    if "betas" in kw:
        kw["beta"] = kw.pop("betas")
    if "eps" in kw:
        kw["epsilon"] = kw.pop("eps")
    return ox.Prodigy(**kw)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("settings", PRODIGY_SETTINGS, ids=lambda s: ",".join(s) or "defaults")
def test_prodigy_is_prodigyopt(settings, mode):
    import prodigyopt

    expected = _torch_run(lambda p: prodigyopt.Prodigy(p, **settings))
    _assert_same_trajectory(_run(_ours(settings), mode), expected, f"Prodigy({settings})")


def test_prodigy_coupled_decay_is_weight_decay_before_it():
    import prodigyopt

    expected = _torch_run(lambda p: prodigyopt.Prodigy(p, d0=1e-4, weight_decay=0.1, decouple=False))
    _assert_same_trajectory(_run(ox.Optimiser(ox.WeightDecay(0.1), ox.Prodigy(d0=1e-4)), "eager"), expected,
                            "Optimiser(WeightDecay, Prodigy)")


def test_prodigy_estimate_is_per_partition_group():
    """Inside a Partition each Prodigy sums over its own variables: its d is that of a Prodigy given
    only them, and differs from the d of one Prodigy over all."""
    values, paths = initial_values(), ("kernel", "bias", "scale", "conv_kernel")
    routed = ox.Partition({"kernel": ox.Prodigy(d0=1e-4), ".*": ox.Prodigy(d0=1e-4)})
    alone, whole = ox.Prodigy(d0=1e-4), ox.Prodigy(d0=1e-4)
    a = [keras.Variable(v, name=p) for v, p in zip(values, paths)]
    b = [keras.Variable(v, name=p) for v, p in zip(values, paths) if "kernel" in p]
    c = [keras.Variable(v, name=p) for v, p in zip(values, paths)]
    kernels = [i for i, p in enumerate(paths) if "kernel" in p]
    for _, grads in zip(range(STEPS), gradient_stream()):
        routed.apply(grads, a)
        alone.apply([grads[i] for i in kernels], b)
        whole.apply(grads, c)
    d = lambda opt: float(keras.ops.convert_to_numpy(opt.d))  # noqa: E731
    np.testing.assert_allclose(d(routed.rules[0]), d(alone), rtol=1e-5)
    assert abs(d(routed.rules[0]) - d(whole)) > 1e-3 * d(whole)
    assert len(SHAPES) == len(values)


def test_prodigy_exclude_from_weight_decay_is_a_prodigyopt_group_without_decay():
    """`exclude_from_weight_decay` leaves variable 1 undecayed: prodigyopt's second parameter group with
    weight_decay = 0 (one d for both groups, as here)."""
    import prodigyopt

    opt = ox.Prodigy(d0=1e-3, weight_decay=0.5)
    variables = [keras.Variable(v) for v in initial_values()]
    opt.exclude_from_weight_decay(var_list=[variables[1]])
    ours = []
    for _, grads in zip(range(STEPS), gradient_stream()):
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        ours.append([np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in variables])
    expected = _torch_run(lambda p: prodigyopt.Prodigy(
        [{"params": [p[0], p[2], p[3]]}, {"params": [p[1]], "weight_decay": 0.0}], d0=1e-3, weight_decay=0.5))
    _assert_same_trajectory(ours, expected, "Prodigy with variable 1 excluded from decay")
    decayed = _torch_run(lambda p: prodigyopt.Prodigy(p, d0=1e-3, weight_decay=0.5))
    _differs([[xs[1]] for xs in ours], [[xs[1]] for xs in decayed], at_least=10 * ATOL)
