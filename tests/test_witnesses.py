"""Second witnesses for rules another library implements as the same formula.

keras_optx on this backend (eager, and compiled where Keras compiles) against the other
library's own optimizer, step by step, on the gradient stream of test_conformance (exact
zeros, and one variable at ~1e3 every third step):

- `OADAM` = `optax.optimistic_adam_v2(η, b1, b2, nesterov=False)` (run in jax here) after the
  first step: optax takes Δ₀ = Δ₁ there (a step of Δ₁, Flux's 2Δ₁ − 0), so Flux's trajectory is
  optax's shifted by one more Δ₁ = y₀ − y₁: xₙ = yₙ + y₁ − y₀.
- `Lion` = `keras.optimizers.Lion` (on this backend, eager and compiled alike).
- `Rprop` = `torch.optim.Rprop` (float32, the real torch.optim on CPU, whatever the backend).
"""

import keras
import numpy as np
import pytest
from test_conformance import MODES, SHAPES, compiled_apply, gradient_stream, initial_values

import keras_optx as ox

STEPS = 20
RTOL, ATOL = 2e-5, 2e-6  # float32 on both sides


def _run(optimizer, mode, steps=STEPS):
    """The variables after each of `steps` updates of `optimizer` (keras_optx or Keras)."""
    variables = [keras.Variable(v) for v in initial_values()]
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    trajectory = []
    for _, grads in zip(range(steps), gradient_stream()):
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        trajectory.append([np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in variables])
    return trajectory


def _optax_run(transformation, steps=STEPS):
    import jax.numpy as jnp
    import optax

    params = [jnp.asarray(v) for v in initial_values()]
    state = transformation.init(params)
    trajectory = []
    for _, grads in zip(range(steps), gradient_stream()):
        updates, state = transformation.update([jnp.asarray(g) for g in grads], state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append([np.array(p, np.float64) for p in params])
    return trajectory


def _assert_same_trajectory(actual, expected, what):
    for n, (xs, ys) in enumerate(zip(actual, expected), 1):
        for i, (x, y) in enumerate(zip(xs, ys)):
            scale = 1.0 + np.max(np.abs(y), initial=0.0)
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL * scale, err_msg=f"{what}: variable {i} at step {n}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eta,beta", [(0.001, (0.5, 0.9)), (0.01, (0.9, 0.995))])
def test_oadam_is_optax_optimistic_adam(eta, beta, mode):
    import optax

    y0 = [np.asarray(v, np.float64) for v in initial_values()]
    ys = _optax_run(optax.optimistic_adam_v2(eta, b1=beta[0], b2=beta[1], nesterov=False))
    expected = [[yn + y1 - y00 for yn, y1, y00 in zip(y, ys[0], y0)] for y in ys]
    _assert_same_trajectory(_run(ox.OADAM(eta, beta), mode), expected, f"OADAM({eta}, {beta})")
    assert len(SHAPES) == len(expected[0])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eta,beta", [(0.001, (0.9, 0.99)), (3e-4, (0.95, 0.98))])
def test_lion_is_keras_lion(eta, beta, mode):
    expected = _run(keras.optimizers.Lion(learning_rate=eta, beta_1=beta[0], beta_2=beta[1]), mode)
    _assert_same_trajectory(_run(ox.Lion(eta, beta), mode), expected, f"Lion({eta}, {beta})")


RPROP_SETTINGS = [
    (0.001, (0.5, 1.2), (1e-6, 50.0)),  # the defaults
    (0.01, (0.3, 2.0), (1e-4, 0.05)),  # reaches both bounds within the test
    (1e-7, (0.5, 1.2), (1e-6, 50.0)),  # η₀ below Γ₋: torch clamps it up at the first step
]


def _torch_run(make, steps=STEPS):
    """The trajectory of a torch optimizer `make(params)` in float32 on CPU (the real package)."""
    import torch

    params = [torch.nn.Parameter(torch.tensor(v)) for v in initial_values()]
    optimizer = make(params)
    trajectory = []
    for _, grads in zip(range(steps), gradient_stream()):
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        optimizer.step()
        trajectory.append([p.detach().numpy().astype(np.float64) for p in params])
    return trajectory


def _torch_rprop(eta, ell, gamma, steps=STEPS):
    import torch

    return _torch_run(lambda params: torch.optim.Rprop(params, lr=eta, etas=ell, step_sizes=gamma), steps)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("eta,ell,gamma", RPROP_SETTINGS)
def test_rprop_is_torch_rprop(eta, ell, gamma, mode):
    expected = _torch_rprop(eta, ell, gamma)
    _assert_same_trajectory(_run(ox.Rprop(eta, ell, gamma), mode), expected, f"Rprop({eta}, {ell}, {gamma})")


def test_optax_rprop_lags_one_update_behind():
    """optax 0.2.8's rprop is not this rule: its first update is zero, and where the gradient's sign
    holds over two updates its step at update k + 1 is ours at update k (the README once said they agree)."""
    import optax

    ours = _run(ox.Rprop(0.01), "eager")
    theirs = _optax_run(optax.rprop(0.01))
    x0 = [v.astype(np.float64) for v in initial_values()]
    step = lambda run, k: [a - b for a, b in zip(run[k], run[k - 1] if k else x0)]  # noqa: E731
    assert all(np.all(d == 0) for d in step(theirs, 0)) and not all(np.all(d == 0) for d in step(ours, 0))
    grads = list(zip(range(3), gradient_stream()))
    held = [np.sign(a) == np.sign(b) for a, b in zip(grads[0][1], grads[1][1])]  # no flip between updates 0 and 1
    for mine, late, keep in zip(step(ours, 0), step(theirs, 1), held):
        np.testing.assert_allclose(late[keep], mine[keep], rtol=1e-5, atol=1e-7)
    with pytest.raises(AssertionError):
        _assert_same_trajectory(theirs, ours, "optax.rprop")

