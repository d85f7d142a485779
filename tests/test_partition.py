"""Partition: routing by path, rules on their subsets, Frozen, freeze/thaw by mask (eager and compiled)."""

import keras
import numpy as np
import pytest
import reference as ref
from cases import PATHS
from conftest import BACKEND
from test_conformance import MODES, assert_close, compiled_apply, gradient_stream, initial_values, regression_data

import keras_optx as ox


def named_variables():
    return [keras.Variable(v, name=name) for v, name in zip(initial_values(), PATHS)]


def values(variables):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


@pytest.mark.parametrize("in_chain", [False, True], ids=["alone", "in_chain"])
def test_partition_equals_its_rules_on_their_subsets(in_chain):
    """Each rule of a Partition, run by itself on its variables only, gives the very same values."""
    variables, alone = named_variables(), named_variables()
    rules = {"bias": ox.Momentum(0.05, 0.5), "kernel": ox.ADAM(0.01), ".*": ox.RMSProp(0.01)}
    optimizer = ox.Partition(rules)
    if in_chain:
        optimizer = ox.Optimiser(ox.ClipValue(0.5), optimizer)
    groups = {1: ox.Momentum(0.05, 0.5), 0: ox.ADAM(0.01), 2: ox.RMSProp(0.01)}  # bias, kernel+conv_kernel, scale
    subsets = {1: [1], 0: [0, 3], 2: [2]}
    separate = {k: ox.Optimiser(ox.ClipValue(0.5), r) if in_chain else r for k, r in groups.items()}
    for _, grads in zip(range(6), gradient_stream()):
        grads = [keras.ops.convert_to_tensor(g) for g in grads]
        optimizer.apply(grads, variables)
        for k, positions in subsets.items():
            separate[k].apply([grads[i] for i in positions], [alone[i] for i in positions])
    for i, (a, b) in enumerate(zip(values(variables), values(alone))):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {PATHS[i]}")


def test_each_rule_keeps_state_for_its_variables_only():
    variables = named_variables()
    optimizer = ox.Partition({"bias": ox.Frozen(), "kernel": ox.ADAM(0.01), ".*": ox.Momentum()})
    optimizer.build(variables)
    slots = sorted(v.path.split("/")[-1] for v in optimizer.variables if "_m" in v.path or "_v" in v.path)
    assert slots == ["conv_kernel_1_m", "conv_kernel_1_v", "kernel_1_m", "kernel_1_v", "scale_2_velocity"]
    assert not any("bias" in v.path for v in optimizer.variables)


def test_unmatched_variable_is_refused_by_name_at_build():
    optimizer = ox.Partition({"kernel": ox.ADAM()})
    with pytest.raises(ValueError, match=r"\['bias', 'scale'\].*catch-all"):
        optimizer.build(named_variables())
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=ox.Partition({"kernel": ox.ADAM()}), loss="mse")
    x, y = regression_data()
    with pytest.raises(ValueError, match="dense/bias"):
        model.fit(x, y, epochs=1, verbose=0)


BAD = [
    (lambda: ox.Partition({}), ValueError, "at least one"),
    (lambda: ox.Partition({"(": ox.ADAM()}), ValueError, "not a valid regular expression"),
    (lambda: ox.Partition({1: ox.ADAM()}), TypeError, "patterns must be strings"),
    (lambda: ox.Partition({".*": "adam"}), TypeError, "must be a keras_optx rule"),
    (lambda: ox.Partition({".*": keras.optimizers.Adam()}), TypeError, "must be a keras_optx rule"),
    (lambda: ox.Partition({".*": ox.ClipNorm(1.0, keras.optimizers.SGD())}), ValueError, "wraps a Keras optimizer"),
    (lambda: ox.Partition(["adam"]), TypeError, "list of \\(pattern, rule\\) pairs"),
    (lambda: ox.Partition({".*": ox.ADAM()}).freeze("("), ValueError, "not a valid regular expression"),
    (lambda: ox.Partition({".*": ox.ADAM()}).freeze(3), TypeError, "pattern"),
]


@pytest.mark.parametrize("make,error,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_a_rule_belongs_to_one_partition_and_freeze_must_match():
    rule = ox.ADAM()
    first = ox.Partition({".*": rule})  # noqa: F841  (kept alive: the rule's owner)
    with pytest.raises(ValueError, match="already a member"):
        ox.Partition({".*": rule})
    optimizer = ox.Partition({".*": ox.ADAM()})
    optimizer.build(named_variables())
    with pytest.raises(ValueError, match="matches no variable"):
        optimizer.freeze("decoder")


def test_learning_rate_is_the_last_rules_and_callbacks_steer_it():
    head, rest = ox.ADAM(0.01), ox.Descent(0.1)
    optimizer = ox.Partition({"dense_1": head, ".*": rest})
    assert float(keras.ops.convert_to_numpy(optimizer.learning_rate)) == pytest.approx(0.1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.LearningRateScheduler(lambda e, lr: 0.05 / (e + 1))])
    assert float(keras.ops.convert_to_numpy(rest.learning_rate)) == pytest.approx(0.025)
    assert float(keras.ops.convert_to_numpy(head.learning_rate)) == pytest.approx(0.01)  # its own rate, untouched


def _head_rate(step):  # ExponentialDecay(0.05, 3, 0.5, staircase=True) as a formula of the 0-based step
    return 0.05 * 0.5 ** (step // 3)


def _rest_rate(step):  # InverseTimeDecay(0.01, 1, 0.5)
    return 0.01 / (1 + 0.5 * step)


def _scheduled():
    """(the two rate schedules, and their formulas)."""
    return (keras.optimizers.schedules.ExponentialDecay(0.05, 3, 0.5, staircase=True),
            keras.optimizers.schedules.InverseTimeDecay(0.01, 1, 0.5))


def _rate(rate):
    return float(keras.ops.convert_to_numpy(rate))


SCHEDULED = {  # optimizer, its Partition (whose rules carry the two schedules), the oracle
    "partition": lambda head, rest: (lambda p: (p, p))(ox.Partition({"bias": ox.Momentum(head, 0.5), ".*": ox.ADAM(rest)})),
    "chain": lambda head, rest: (lambda p: (ox.Optimiser(ox.ClipGlobalNorm(1e6), p), p))(
        ox.Partition({"bias": ox.Momentum(head, 0.5), ".*": ox.ADAM(rest)})),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", SCHEDULED)
def test_scheduled_rates_read_at_the_update_count(kind, mode):
    """With schedules as the rules' rates, `learning_rate` (the last rule's, as callbacks read it) and each
    rule's read the schedule at the update count, the rate of the next update; the updates follow the oracle."""
    optimizer, partition = SCHEDULED[kind](*_scheduled())
    oracle = ref.Partition([("bias", ref.Momentum(lambda n: _head_rate(n - 1), 0.5)),
                            (".*", ref.ADAM(lambda n: _rest_rate(n - 1)))], PATHS)
    variables = named_variables()
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    expected = [v.astype(np.float64) for v in initial_values()]
    assert _rate(optimizer.learning_rate) == pytest.approx(_rest_rate(0))
    for n, grads in zip(range(1, 8), gradient_stream()):
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        expected = [x - d for x, d in zip(expected, oracle(grads, expected, n))]
        for i, (v, x) in enumerate(zip(variables, expected)):
            assert_close(keras.ops.convert_to_numpy(v.value), x, f"{PATHS[i]} at step {n}")
        for rate, formula in [(optimizer.learning_rate, _rest_rate), (partition.learning_rate, _rest_rate),
                              (partition.rules[1].learning_rate, _rest_rate), (partition.rules[0].learning_rate, _head_rate)]:
            assert _rate(rate) == pytest.approx(formula(n), rel=1e-6), f"after {n} updates"


@pytest.mark.parametrize("kind", ["partition", "chain", "torch_groups"])
def test_fit_logs_the_scheduled_rate(kind):
    """The `learning_rate` a callback logs in fit's History (ReduceLROnPlateau logs it each epoch) is the last
    rule's schedule at the update count; for torch param groups, the constructor's `lr`."""
    from keras_optx.torch import AdamW

    head, rest = _scheduled()
    if kind == "torch_groups":
        optimizer = AdamW(rest, param_groups=[{"params": "bias", "lr": head}])
        members = optimizer._partition.rules
    else:
        optimizer, partition = SCHEDULED[kind](head, rest)
        members = partition.rules
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    x, y = regression_data()
    never = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=100)  # logs the rate, never changes it
    history = model.fit(x[:64], y[:64], batch_size=16, epochs=3, verbose=0, callbacks=[never])
    np.testing.assert_allclose(history.history["learning_rate"], [_rest_rate(4 * e) for e in (1, 2, 3)], rtol=1e-6)
    assert _rate(optimizer.learning_rate) == pytest.approx(_rest_rate(12), rel=1e-6)
    assert _rate(members[0].learning_rate) == pytest.approx(_head_rate(12), rel=1e-6)
    assert _rate(members[-1].learning_rate) == pytest.approx(_rest_rate(12), rel=1e-6)


FREEZE = {  # update n → the variable positions frozen at that update (freeze before 3, thaw 1 before 6)
    n: (1, 3) if 3 <= n < 6 else (3,) if n >= 6 else () for n in range(1, 10)
}


@pytest.mark.parametrize("mode", MODES)
def test_freeze_and_thaw_mid_run_match_the_oracle(mode):
    """Freezing and thawing between compiled steps acts at the next step, with no retrace."""
    variables = named_variables()
    traces = []

    class Counting(ox.ADAM):
        def _transform(self, *args):
            traces.append(1)
            return super()._transform(*args)

    optimizer = ox.Partition({"bias": ox.Momentum(0.05, 0.5), ".*": Counting(0.01)})
    oracle = ref.Partition([("bias", ref.Momentum(0.05, 0.5)), (".*", ref.ADAM(0.01))], PATHS, lambda n: FREEZE[n])
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    expected = [v.astype(np.float64) for v in initial_values()]
    for n, grads in zip(range(1, 10), gradient_stream()):
        if n == 3:
            before = len(traces)  # tf.function may trace twice on its first call (it creates the slots)
            optimizer.freeze("bias|conv")
        if n == 6:
            optimizer.thaw("bias")
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        expected = [x - d for x, d in zip(expected, oracle(grads, expected, n))]
        for i, (v, x) in enumerate(zip(variables, expected)):
            assert_close(keras.ops.convert_to_numpy(v.value), x, f"{PATHS[i]} at step {n}")
    assert optimizer.frozen == ["conv_kernel"]
    if mode == "compiled":
        assert len(traces) == before, f"retraced after freeze/thaw: {len(traces)} traces, {before} before"


def test_freeze_in_fit_and_resume_from_keras_file(tmp_path):
    """A callback freezes the first layer mid-fit (compiled step); the mask is saved and restored."""
    x, y = regression_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head")])
    model.compile(optimizer=ox.Partition({"bias": ox.Descent(0.01), ".*": ox.ADAM(0.01)}), loss="mse")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    model.optimizer.freeze("/body/")
    body = values(model.layers[0].weights)
    head = values(model.layers[1].weights)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    for a, b in zip(values(model.layers[0].weights), body):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(values(model.layers[1].weights)[0], head[0])
    path = tmp_path / "frozen.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    # A loaded Sequential's paths lack the model's name ("body/kernel"): match layer names, not prefixes.
    assert [p.split("/")[-2:] for p in loaded.optimizer.frozen] == [["body", "kernel"], ["body", "bias"]]
    rng = np.random.default_rng(0)
    step = [rng.standard_normal(v.shape).astype("float32") for v in model.trainable_variables]
    model.optimizer.apply(step, model.trainable_variables)
    loaded.optimizer.apply(step, loaded.trainable_variables)
    for a, b in zip(values(loaded.trainable_variables), values(model.trainable_variables)):
        np.testing.assert_array_equal(a, b)
    loaded.optimizer.thaw("body")
    loaded.optimizer.apply(step, loaded.trainable_variables)
    assert not np.array_equal(values(loaded.layers[0].weights)[0], body[0])


def test_reduce_lr_on_plateau_steers_the_catch_all_rate():
    head, rest = ox.ADAM(0.01), ox.Descent(0.1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=ox.Partition({"dense_1": head, ".*": rest}), loss="mse")
    x, y = regression_data()
    # min_delta larger than any improvement: every epoch after the first counts as a plateau.
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[plateau])
    assert float(keras.ops.convert_to_numpy(rest.learning_rate)) == pytest.approx(0.025)
    assert float(keras.ops.convert_to_numpy(head.learning_rate)) == pytest.approx(0.01)


@pytest.mark.skipif(not hasattr(keras.optimizers, "MultiOptimizer"), reason="this Keras has no MultiOptimizer (3.15+)")
def test_rules_inside_keras_multi_optimizer_equal_a_partition():
    """keras_optx rules as MultiOptimizer's sub-optimizers: the same values as a Partition of them."""
    from keras.src.optimizers.multi_optimizer import OptimizerMap

    variables, twins = named_variables(), named_variables()
    multi = keras.optimizers.MultiOptimizer(OptimizerMap(ox.ADAM(0.01), {"bias": ox.Momentum(0.05, 0.5)}))
    partition = ox.Partition({"bias": ox.Momentum(0.05, 0.5), ".*": ox.ADAM(0.01)})
    for _, grads in zip(range(5), gradient_stream()):
        grads = [keras.ops.convert_to_tensor(g) for g in grads]
        multi.apply(grads, variables)
        partition.apply(grads, twins)
    for i, (a, b) in enumerate(zip(values(variables), values(twins))):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=PATHS[i])
    x, y = regression_data()
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.MultiOptimizer(OptimizerMap(ox.ADAM(0.01), {"bias": ox.Descent(0.01)})),
                  loss="mse")
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=2, verbose=0)
    assert model.evaluate(x, y, verbose=0) < before
