"""Every case of tests/cases.py against its NumPy oracle, in model.fit, through config and .keras files."""

import json

import keras
import numpy as np
import pytest
from cases import CASES, PATHS, RULES
from conftest import BACKEND

import keras_optx as ox

SHAPES = [(3, 4), (5,), (), (2, 3, 2)]
STEPS = 20


def gradient_stream(seed=1):
    """Random gradients per step: ~20% exact zeros, and one variable at ~1e3 every third step."""
    rng = np.random.default_rng(seed)
    n = 0
    while True:
        n += 1
        gs = []
        for i, shape in enumerate(SHAPES):
            g = rng.standard_normal(shape) * (rng.random(shape) > 0.2)
            if n % 3 == i % 3:
                g = g * 1e3
            gs.append(np.asarray(g, "float32"))
        yield gs


def initial_values(seed=0):
    rng = np.random.default_rng(seed)
    return [np.asarray(rng.standard_normal(s), "float32") for s in SHAPES]


def assert_close(actual, expected, what):
    expected = np.asarray(expected, np.float64)
    scale = 1.0 + np.max(np.abs(expected), initial=0.0)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=2e-5, atol=2e-6 * scale, err_msg=what)


def compiled_apply(optimizer, variables):
    """One optimizer step compiled as Keras compiles it: jax.jit (stateless) or tf.function(jit_compile)."""
    if BACKEND == "jax":
        import jax

        optimizer.build(variables)
        step = jax.jit(optimizer.stateless_apply)

        def apply(grads):
            new_vars, new_opt = step([v.value for v in optimizer.variables], grads, [v.value for v in variables])
            for v, value in zip(variables, new_vars):
                v.assign(value)
            for v, value in zip(optimizer.variables, new_opt):
                v.assign(value)

        return apply
    import tensorflow as tf

    return tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=True)


MODES = ["eager", pytest.param("compiled", marks=pytest.mark.skipif(
    BACKEND == "torch", reason="torch has no graph compiler in Keras's default train step (jit_compile=False)"))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_matches_reference_step_by_step(case, mode):
    values = initial_values()
    variables = [keras.Variable(v, name=name) for v, name in zip(values, PATHS)]
    optimizer, oracle = case.make(), case.reference()
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    expected = [v.astype(np.float64) for v in values]
    for n, grads in zip(range(1, STEPS + 1), gradient_stream()):
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        expected = [x - d for x, d in zip(expected, oracle(grads, expected, n))]
        for i, (v, x) in enumerate(zip(variables, expected)):
            assert_close(keras.ops.convert_to_numpy(v.value), x, f"{case.id}: variable {i} at step {n}")
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == STEPS


def regression_data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 8)).astype("float32")
    y = (x @ rng.standard_normal((8, 1)) + 0.1 * rng.standard_normal((256, 1))).astype("float32")
    return x, y


def small_model():
    return keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])


@pytest.mark.parametrize("case", [c for c in CASES if c.fit], ids=repr)
def test_model_fit_reduces_loss(case):
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer=case.make(), loss="mse")  # the default, compiled train step
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before, f"{case.id}: loss {before} -> {after}"


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_config_round_trip(case):
    optimizer = case.make()
    config = optimizer.get_config()
    json.dumps(keras.optimizers.serialize(optimizer))  # JSON-safe, as .keras files need
    clone = type(optimizer).from_config(config)
    assert type(clone) is type(optimizer)
    assert clone.get_config() == config
    restored = keras.optimizers.deserialize(json.loads(json.dumps(keras.optimizers.serialize(optimizer))))
    assert type(restored) is type(optimizer)
    assert restored.get_config() == config


def _optimizer_state(model):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.optimizer.variables]


def _weights(model):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in model.trainable_variables]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_keras_file_save_load_resume(case, tmp_path):
    """k steps, save, load (safe mode), one more step == k + 1 steps without saving, bit for bit."""
    model = small_model()
    model.compile(optimizer=case.make(), loss="mse")
    grads = gradient_stream(seed=3)
    rng = np.random.default_rng(4)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    for _ in range(3):
        model.optimizer.apply([rng.standard_normal(s).astype("float32") for s in shapes], model.trainable_variables)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == 3
    for a, b in zip(_optimizer_state(loaded), _optimizer_state(model)):
        np.testing.assert_array_equal(a, b)
    step = [rng.standard_normal(s).astype("float32") for s in shapes]
    model.optimizer.apply(step, model.trainable_variables)
    loaded.optimizer.apply(step, loaded.trainable_variables)
    for a, b in zip(_weights(loaded), _weights(model)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_optimizer_state(loaded), _optimizer_state(model)):
        np.testing.assert_array_equal(a, b)
    del grads


BAD = [
    (lambda: ox.ADAM(-1e-3), ValueError, "learning_rate"),
    (lambda: ox.Descent("fast"), TypeError, "learning_rate"),
    (lambda: ox.ADAM(beta=(0.9, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.NADAM(beta=(-0.1, 0.999)), ValueError, r"beta\[0\]"),
    (lambda: ox.RADAM(beta=(0.9,)), ValueError, "beta.*length 2"),
    (lambda: ox.AdaMax(beta=(0.9, 0.99, 0.9)), ValueError, "beta.*length 2"),
    (lambda: ox.AMSGrad(beta=0.9), TypeError, "beta"),
    (lambda: ox.OADAM(beta=(0.5, 1.0)), ValueError, r"beta\[1\]"),
    (lambda: ox.OADAM(epsilon=-1e-8), ValueError, "epsilon"),
    (lambda: ox.AdaBelief(beta=(1.2, 0.999)), ValueError, r"beta\[0\]"),
    (lambda: ox.AdaBelief(-0.1), ValueError, "learning_rate"),
    (lambda: ox.Lion(beta=(-0.1, 0.99)), ValueError, r"beta\[0\]"),
    (lambda: ox.Rprop(ell=(0.5, 1.2, 2.0)), ValueError, "ell.*length 2"),
    (lambda: ox.Rprop(gamma=(1e-6, float("inf"))), ValueError, r"gamma\[1\]"),
    (lambda: ox.Rprop(lambda: 0.1), TypeError, "learning_rate"),
    (lambda: ox.Momentum(rho=1.0), ValueError, "rho"),
    (lambda: ox.Nesterov(rho=-0.5), ValueError, "rho"),
    (lambda: ox.RMSProp(rho=1.5), ValueError, "rho"),
    (lambda: ox.ADADelta(1.0), ValueError, "rho"),
    (lambda: ox.ADAGrad(epsilon=-1.0), ValueError, "epsilon"),
    (lambda: ox.ADAMW(decay=-0.1), ValueError, "decay"),
    (lambda: ox.WeightDecay(-1.0), ValueError, "wd"),
    (lambda: ox.ClipNorm(0), ValueError, "thresh"),
    (lambda: ox.ClipValue(-1), ValueError, "thresh"),
    (lambda: ox.ClipGlobalNorm(float("nan")), ValueError, "thresh"),
    (lambda: ox.ClipNorm(1.0, "adam"), TypeError, "optimizer"),
    (lambda: ox.ExpDecay(decay_step=0), ValueError, "decay_step"),
    (lambda: ox.ExpDecay(decay=0), ValueError, "decay"),
    (lambda: ox.InvDecay(-1.0), ValueError, "gamma"),
    (lambda: ox.Optimiser(ox.ADAM(), "adam"), TypeError, "member 1"),
    (lambda: ox.Optimiser(keras.optimizers.Adam()), TypeError, "wrap it instead"),
    (lambda: ox.Optimiser(ox.ClipNorm(1.0, keras.optimizers.SGD())), ValueError, "wraps a Keras optimizer"),
]


@pytest.mark.parametrize("make,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_hyperparameters_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize("case", RULES[::2], ids=repr)
def test_hyperparameters_are_attributes_and_config(case):
    optimizer = case.make()
    config = optimizer.get_config()
    for name in getattr(optimizer, "hyperparameters", {}):
        assert config[name] == getattr(optimizer, name)
