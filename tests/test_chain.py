"""Flux composition: what `Optimiser(...)`, the transforms and the decays promise beyond oracle parity."""

import keras
import numpy as np
import pytest
from test_conformance import gradient_stream, initial_values

import keras_optx as ox


def trajectory(optimizer, steps=12):
    variables = [keras.Variable(v) for v in initial_values()]
    out = []
    for _, grads in zip(range(steps), gradient_stream()):
        optimizer.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
        out.append([np.array(keras.ops.convert_to_numpy(v.value)) for v in variables])
    return out


def assert_same_trajectory(a, b, exact=False):
    for step_a, step_b in zip(a, b):
        for x, y in zip(step_a, step_b):
            if exact:
                np.testing.assert_array_equal(x, y)
            else:  # float32 rounding of steps of ~1e3 against values of ~1e2
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6 * (1 + np.max(np.abs(y), initial=0)))


def test_adamw_is_exactly_adam_then_weight_decay():
    adamw = ox.ADAMW(0.01, (0.9, 0.99), 0.1)
    chain = ox.Optimiser(ox.ADAM(0.01, (0.9, 0.99)), ox.WeightDecay(0.1))
    # Equal to float32 rounding: on torch ADAMW may run a fused kernel where the chain runs the fold.
    assert_same_trajectory(trajectory(adamw), trajectory(chain))
    assert isinstance(adamw, ox.Optimiser) and isinstance(adamw[0], ox.ADAM) and adamw[1].wd == 0.1


def test_exp_decay_as_learning_rate_equals_exp_decay_as_member():
    as_rate = ox.Descent(ox.ExpDecay(0.5, 0.5, 3, 0.05))
    as_member = ox.Optimiser(ox.ExpDecay(0.5, 0.5, 3, 0.05), ox.Descent(1.0))
    assert_same_trajectory(trajectory(as_rate, 20), trajectory(as_member, 20))


def test_inv_decay_as_learning_rate_equals_inv_decay_as_member():
    as_rate = ox.Momentum(ox.InvDecay(0.1, learning_rate=0.05))
    as_member = ox.Optimiser(ox.InvDecay(0.1), ox.Momentum(0.05))
    assert_same_trajectory(trajectory(as_rate), trajectory(as_member))


def test_weight_decay_position_matters():
    before = trajectory(ox.Optimiser(ox.WeightDecay(0.1), ox.ADAM(0.01)))
    after = trajectory(ox.Optimiser(ox.ADAM(0.01), ox.WeightDecay(0.1)))
    assert not np.allclose(before[-1][0], after[-1][0], rtol=1e-3)


def test_schedule_values_follow_spec():
    schedule = ox.ExpDecay(1.0, 0.5, 3, 0.1, start=0)
    # n = step + 1; k = ⌊n/3⌋; floor 0.1 reached once 0.5^k < 0.1 (k = 4, n = 12)
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(15)]
    expected = [max(0.5 ** ((step + 1) // 3), 0.1) for step in range(15)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    inv = ox.InvDecay(0.5, learning_rate=2.0)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(inv(0))), 2.0 / 1.5, rtol=1e-6)


def test_chain_is_a_sequence_and_slices_copy():
    clip, decay, adam = ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM(1e-3)
    chain = ox.Optimiser(clip, decay, adam)
    assert len(chain) == 3 and chain[0] is clip and chain[-1] is adam and list(chain) == [clip, decay, adam]
    tail = chain[1:]
    assert isinstance(tail, ox.Optimiser) and len(tail) == 2
    assert tail[0] is not decay and tail[0].get_config()["wd"] == decay.wd
    assert tail[1].get_config()["beta"] == adam.beta


def test_chain_learning_rate_is_its_main_rule():
    adam = ox.ADAM(1e-3)
    chain = ox.Optimiser(ox.ClipNorm(1.0), adam)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(chain.learning_rate)), 1e-3, rtol=1e-6)
    chain.learning_rate = 0.5  # what ReduceLROnPlateau / LearningRateScheduler do
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(adam.learning_rate)), 0.5, rtol=1e-6)
    assert sum(v is adam._learning_rate for v in chain.variables) == 1  # saved once


def test_reduce_lr_on_plateau_steers_a_chain():
    x = np.zeros((32, 2), "float32")
    y = np.ones((32, 1), "float32")  # constant loss: zero input, kernel gradient-free bias only
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    chain = ox.Optimiser(ox.ClipNorm(1.0), ox.Descent(0.1))
    model.compile(optimizer=chain, loss="mse")
    cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1.0)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[cb])
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(chain[1].learning_rate)), 0.1 * 0.5**2, rtol=1e-5)  # epochs 2 and 3


def test_a_member_belongs_to_one_chain():
    adam = ox.ADAM()
    first = ox.Optimiser(ox.ClipNorm(1.0), adam)
    with pytest.raises(ValueError, match="already a member"):
        ox.Optimiser(ox.WeightDecay(1e-4), adam)
    assert first[1] is adam


def test_nested_chain_round_trips_with_its_members():
    chain = ox.Optimiser(ox.ClipValue(2.0), ox.Optimiser(ox.ExpDecay(1.0, 0.5, 2), ox.Nesterov(0.01, 0.8)))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(chain))
    assert isinstance(restored[1], ox.Optimiser) and isinstance(restored[1][0], ox.ExpDecay)
    assert restored[1][1].rho == 0.8
    assert_same_trajectory(trajectory(chain), trajectory(restored))


def test_wrapped_keras_optimizer_is_built_and_saved_with_the_wrapper():
    inner = keras.optimizers.Adam(1e-3)
    wrapper = ox.ClipNorm(1.0, inner)
    trajectory(wrapper, 2)
    assert all(any(v is w for w in wrapper.variables) for v in inner.variables)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(wrapper.learning_rate)), 1e-3, rtol=1e-6)


def test_flux_composed_example_loss_drops_tenfold():
    """Flux docs: w, w1 = randn(10, 10); loss(x) = mse(w·x, w1·x); Optimiser(ExpDecay(...), Descent()).

    Flux runs 10⁵ steps at rate 1e-4; the same composition at a larger rate shows the drop in 300.
    """
    rng = np.random.default_rng(0)
    w = keras.Variable(rng.standard_normal((10, 10)).astype("float32"))
    w1 = rng.standard_normal((10, 10)).astype("float32")
    opt = ox.Optimiser(ox.ExpDecay(1.0, 0.1, 200, 1e-2), ox.Descent(0.1))
    probe = rng.random((256, 10)).astype("float32")

    def mean_loss():
        wv = np.array(w.numpy())
        return float(np.mean((probe @ wv.T - probe @ w1.T) ** 2))

    before = mean_loss()
    for x in rng.random((300, 10)).astype("float32"):
        target = keras.ops.convert_to_tensor(w1 @ x)
        loss = lambda: keras.ops.mean((keras.ops.matmul(w.value, x) - target) ** 2)  # noqa: E731
        opt.apply(ox.gradient(loss, [w]), [w])
    assert mean_loss() < before / 10
