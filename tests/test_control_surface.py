"""One home per hyperparameter (issue 26): every writer (attribute, `adjust`, a torch `param_groups`
dict, `set_weights`/`load_weights`, a mid-epoch callback, `HyperparameterScheduler` through a Keras
wrapper) goes through one checked write that acts at the next step; every reader (`opt.rho`,
`get_config`, `param_groups`, the step) sees it. Each trajectory is compared with a run that set the
same value by a path already known to act (a fresh optimizer, `train_on_batch` steps, torch.optim)."""

import keras
import numpy as np
import pytest
from conftest import BACKEND
from test_torch_param_groups import NAMES, STEPS, _follow, _problem, _torch_trajectory, _variables

import keras_optx as ox
from keras_optx.torch import SGD, Adam, AdamW

JIT = [False] if BACKEND == "torch" else [False, True]  # torch: Keras's default train step is eager (jit_compile=False)


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype("float32")
    return x, (x @ rng.normal(size=(3, 1))).astype("float32")


def _model(optimizer, jit_compile=False, seed=1):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return model


def _assert_same_weights(a, b, what):
    for i, (u, v) in enumerate(zip(a.get_weights(), b.get_weights())):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7, err_msg=f"{what}: weight {i}")


# Item 3: a restored hyperparameter vector is the value the step and the attribute use ----------------
@pytest.mark.parametrize("jit_compile", JIT)
def test_load_weights_restores_the_value_the_step_and_attribute_use(tmp_path, jit_compile):
    x, y = _data()
    saved = _model(ox.Momentum(0.05, 0.5), jit_compile)
    saved.train_on_batch(x[:16], y[:16])
    saved.save_weights(tmp_path / "m.weights.h5")
    other = _model(ox.Momentum(0.05, 0.9), jit_compile)
    other.train_on_batch(x[:16], y[:16])  # built with ρ = 0.9
    other.load_weights(tmp_path / "m.weights.h5")
    assert other.optimizer.rho == 0.5 and other.optimizer.get_config()["rho"] == 0.5
    assert "rho=0.5" in repr(other.optimizer)
    for m in (saved, other):
        m.train_on_batch(x[16:], y[16:])
    _assert_same_weights(saved, other, "resumed from load_weights")


def test_set_weights_restores_or_refuses_before_any_write():
    x = keras.Variable(np.ones(3, "float32"), name="w")
    optimizer = ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1, 0.9))
    optimizer.build([x])
    weights = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
    which = [i for i, v in enumerate(optimizer.variables) if getattr(v, "_keras_optx_hyperparameters", False)]
    rho_at = next(i for i in which if weights[i].shape == (1,) and np.isclose(weights[i][0], 0.9))
    weights[rho_at] = np.array([0.25], "float32")
    optimizer.set_weights(weights)
    assert optimizer[1].rho == 0.25 and optimizer.get_config()["rules"][1]["config"]["rho"] == 0.25
    g = np.array([1.0, -1.0, 0.5], "float32")
    optimizer.apply([g], [x])
    optimizer.apply([g], [x])
    twin = keras.Variable(np.ones(3, "float32"), name="w")
    fresh = ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1, 0.25))
    fresh.apply([g], [twin])
    fresh.apply([g], [twin])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(twin), rtol=1e-6)

    bad = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
    bad[rho_at] = np.array([5.0], "float32")
    bad[0] = bad[0] + 7  # would be written first
    before = [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables]
    with pytest.raises(ValueError, match="rho"):
        optimizer.set_weights(bad)
    for a, v in zip(before, optimizer.variables):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(v))
    assert optimizer[1].rho == 0.25


# Item 4: a value set mid-epoch by a callback holding its own reference acts at the next step ---------
class _AtBatch(keras.callbacks.Callback):
    """Calls `act()` after batch `batch` of each epoch, never touching `self.model` (no state sync)."""

    def __init__(self, batch, act):
        super().__init__()
        self.batch, self.act = batch, act

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.act()


@pytest.mark.parametrize("jit_compile", JIT)
def test_an_assignment_mid_epoch_acts_at_the_next_step(jit_compile):
    x, y = _data()
    optimizer = ox.Momentum(0.05, 0.9)
    model = _model(optimizer, jit_compile)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[_AtBatch(1, lambda: setattr(optimizer, "rho", 0.0))])
    assert optimizer.rho == 0.0
    twin = _model(ox.Momentum(0.05, 0.9), jit_compile)  # the same steps, the value set between train_on_batch calls
    for n in range(4):
        twin.train_on_batch(x[8 * n:8 * n + 8], y[8 * n:8 * n + 8])
        if n == 1:
            twin.optimizer.rho = 0.0
    _assert_same_weights(model, twin, "rho set mid-epoch")
    unchanged = _model(ox.Momentum(0.05, 0.9), jit_compile)
    unchanged.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), unchanged.get_weights())) > 1e-4


@pytest.mark.parametrize("jit_compile", JIT)
def test_freeze_mid_epoch_acts_and_frozen_reads(jit_compile):
    x, y = _data()
    part = ox.Partition({"bias": ox.Descent(0.05), ".*": ox.Descent(0.05)})
    model = _model(part, jit_compile)
    seen = []
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
              callbacks=[_AtBatch(1, lambda: (part.freeze("bias"), seen.append(part.frozen)))])
    assert seen[0] and all("bias" in p for p in seen[0])
    twin = _model(ox.Partition({"bias": ox.Descent(0.05), ".*": ox.Descent(0.05)}), jit_compile)
    for n in range(4):
        twin.train_on_batch(x[8 * n:8 * n + 8], y[8 * n:8 * n + 8])
        if n == 1:
            twin.optimizer.freeze("bias")
    _assert_same_weights(model, twin, "frozen mid-epoch")


# Item 5: torch param groups are live views --------------------------------------------------------
GROUP_EDITS = {  # class, kwargs, groups, {step: {key: factor or value}} applied to every group, as torch scripts do
    "SGD": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), [{"params": "bias", "weight_decay": 1e-3}],
            {2: {"lr": 0.1}, 4: {"weight_decay": 0.5, "momentum": 0.5}}),
    "Adam": ("Adam", dict(lr=0.01, weight_decay=1e-3), [{"params": [2], "lr": 0.05}],
             {2: {"lr": 0.1, "eps": 1e-2}, 4: {"betas": (0.5, 0.9)}}),
    "AdamW": ("AdamW", dict(lr=0.01, weight_decay=0.1), [{"params": "bias", "weight_decay": 1e-3}],
              {3: {"lr": 0.1, "weight_decay": 0.5}}),
}


def _edit(edits):
    """`group[key] *= factor` for "lr", `group[key] = value` otherwise, on every group (torch's loop)."""

    def change(t, groups):
        for key, value in edits.get(t, {}).items():
            for group in groups:
                group[key] = group[key] * value if key == "lr" else value

    return change


@pytest.mark.parametrize("mode", ["eager", pytest.param("compiled", marks=pytest.mark.skipif(
    BACKEND == "torch", reason="torch has no graph compiler in Keras's default train step (jit_compile=False)"))])
@pytest.mark.parametrize("case", GROUP_EDITS)
def test_param_group_edits_act_at_the_next_step_as_in_torch(case, mode):
    name, kwargs, groups, edits = GROUP_EDITS[case]
    x0, grads = _problem()
    variables = _variables(x0)
    keras_groups = [dict(g, params=g["params"] if isinstance(g["params"], str) else [variables[i] for i in g["params"]]) for g in groups]
    opt = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}[name](param_groups=keras_groups, **kwargs)
    reference = _torch_trajectory(name, kwargs, groups, x0, grads, lr_drop=None, change=_edit(edits))
    edit = _edit(edits)
    _follow(opt, variables, grads, reference, mode, lambda t, o: edit(t, o.param_groups), case)
    last = {k: v for step in edits.values() for k, v in step.items() if k != "lr"}
    for group in opt.param_groups:
        for key, value in last.items():
            assert group[key] == value
    unchanged = _torch_trajectory(name, kwargs, groups, x0, grads, lr_drop=None)
    assert max(np.abs(a - b).max() for a, b in zip(unchanged[-1], reference[-1])) > 1e-4  # the edits mattered


@pytest.mark.parametrize("jit_compile", JIT)
def test_param_group_edits_mid_epoch_in_fit_act_at_the_next_step(jit_compile):
    """torch's hand-written scheduler, run by a callback holding the optimizer, inside `fit`."""
    x, y = _data()

    def make():
        return AdamW(0.01, weight_decay=0.1, param_groups=[{"params": "bias", "weight_decay": 1e-3}])

    def decay(opt):
        for group in opt.param_groups:
            group["lr"] *= 0.1
            group["weight_decay"] = 0.5

    opt = make()
    model = _model(opt, jit_compile)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[_AtBatch(1, lambda: decay(opt))])
    twin = _model(make(), jit_compile)
    for n in range(4):
        twin.train_on_batch(x[8 * n:8 * n + 8], y[8 * n:8 * n + 8])
        if n == 1:
            decay(twin.optimizer)
    _assert_same_weights(model, twin, "param groups edited mid-epoch")
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.001]
    unchanged = _model(make(), jit_compile)
    unchanged.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), unchanged.get_weights())) > 1e-5


def test_param_groups_always_exist_refuse_bad_values_and_are_saved(tmp_path):
    opt = SGD(0.1, momentum=0.9)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.lr = 0.5  # torch's name of the rate
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == 0.5 and float(keras.ops.convert_to_numpy(opt.lr)) == 0.5
    opt.param_groups[0]["momentum"] = 0.5
    assert opt.momentum == 0.5
    for key, value in (("lr", -1.0), ("momentum", -0.5), ("dampening", 2.0)):
        with pytest.raises(ValueError, match=key if key != "lr" else "learning_rate"):
            opt.param_groups[0][key] = value
    with pytest.raises(KeyError):
        opt.param_groups[0]["initial_lr"] = 0.1
    with pytest.raises(TypeError, match="params"):
        opt.param_groups[0]["params"] = "bias"
    assert opt.momentum == 0.5 and float(keras.ops.convert_to_numpy(opt.learning_rate)) == 0.5

    x, y = _data()
    opt = AdamW(0.01, weight_decay=0.1, param_groups=[{"params": "bias", "weight_decay": 0.0}])
    model = _model(opt)
    model.train_on_batch(x[:16], y[:16])
    opt.param_groups[0]["lr"] = 0.03
    opt.param_groups[0]["eps"] = 1e-3
    opt.param_groups[1]["weight_decay"] = 0.2
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.param_groups == opt.param_groups
    assert loaded.optimizer.param_groups[0]["lr"] == 0.03 and loaded.optimizer.param_groups[0]["eps"] == 1e-3
    for m in (model, loaded):
        m.train_on_batch(x[16:], y[16:])
    _assert_same_weights(model, loaded, "reloaded after param_groups edits")


def test_format_3_grouped_file_loads_its_rates_from_the_config():
    """Files of format ≤ 3 saved no rate per group: each group takes its config's."""
    w, b = keras.Variable(np.ones((2, 2), "float32"), name="kernel"), keras.Variable(np.ones(2, "float32"), name="bias")
    opt = AdamW(0.01, param_groups=[{"params": "bias", "lr": 0.05}])
    opt.build([w, b])
    old = [keras.ops.convert_to_numpy(v) for v in opt.variables if not getattr(v, "_keras_optx_added_in", 0)]
    assert len(old) == len(opt.variables) - 2
    opt._saved_format_version = 3
    opt.load_own_variables({str(i): a for i, a in enumerate(old)})
    assert [group["lr"] for group in opt.param_groups] == [0.05, 0.01]


# Item 6: adjust checks everything before writing anything, and refuses what it cannot set -------------
def test_adjust_checks_everything_first_and_refuses_scheduled_rates():
    opt = ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1, 0.9))
    with pytest.raises(ValueError, match="learning_rate"):
        ox.adjust(opt, rho=0.5, learning_rate=-1.0)
    assert opt[1].rho == 0.9 and float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.1)
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    part = ox.Partition({"bias": ox.Momentum(decay, 0.9, name="scheduled"), ".*": ox.Momentum(0.1, 0.9)})
    with pytest.raises(ValueError, match="scheduled"):
        ox.adjust(part, learning_rate=0.5, rho=0.5)
    assert [r.rho for r in part.rules] == [0.9, 0.9]
    assert float(keras.ops.convert_to_numpy(part.rules[1].learning_rate)) == pytest.approx(0.1)


# Item 8: adjust and HyperparameterScheduler reach through LossScaleOptimizer ---------------------------
@pytest.mark.parametrize("jit_compile", JIT)
def test_scheduler_reaches_through_loss_scale_optimizer(jit_compile):
    x, y = _data()
    cycle = lambda step: 0.9 - 0.1 * step  # noqa: E731
    wrapped = keras.optimizers.LossScaleOptimizer(ox.Momentum(0.05, 0.9))
    model = _model(wrapped, jit_compile)
    scheduler = ox.HyperparameterScheduler({"rho": cycle}, per="step")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0, callbacks=[scheduler])
    assert wrapped.inner_optimizer.rho == pytest.approx(cycle(3))
    twin = _model(keras.optimizers.LossScaleOptimizer(ox.Momentum(0.05, 0.9)), jit_compile)
    for n in range(4):
        ox.adjust(twin.optimizer, rho=cycle(n))
        twin.train_on_batch(x[8 * n:8 * n + 8], y[8 * n:8 * n + 8])
    _assert_same_weights(model, twin, "scheduled through LossScaleOptimizer")
    ox.adjust(wrapped, rho=0.3, learning_rate=0.2)
    assert wrapped.inner_optimizer.rho == 0.3
    assert float(keras.ops.convert_to_numpy(wrapped.inner_optimizer.learning_rate)) == pytest.approx(0.2)


# Item 11: state_dtype and shard_state set after construction ------------------------------------------
def test_state_dtype_and_shard_state_checked_and_refused_after_build():
    opt = ox.ADAM()
    with pytest.raises(ValueError, match="state_dtype"):
        opt.state_dtype = "int8"
    with pytest.raises(TypeError, match="shard_state"):
        opt.shard_state = "yes"
    adagrad = ox.ADAGrad()
    with pytest.raises(ValueError, match="ADAGrad"):
        adagrad.state_dtype = "float16"
    assert adagrad.state_dtype is None
    chain = ox.Optimiser(ox.ClipNorm(1.0), ox.ADAGrad())
    with pytest.raises(ValueError, match="ADAGrad"):
        chain.state_dtype = "bfloat16"
    with pytest.raises(ValueError, match="shard_state"):
        chain[1].shard_state = True
    opt.state_dtype = "bfloat16"  # before build: as the constructor
    opt.build([keras.Variable(np.ones(2, "float32"))])
    assert keras.backend.standardize_dtype(opt._slot_variables["m"][0].dtype) == "bfloat16"
    with pytest.raises(ValueError, match="built"):
        opt.state_dtype = None
    with pytest.raises(ValueError, match="built"):
        opt.shard_state = True
    assert opt.get_config()["state_dtype"] == "bfloat16" and opt.get_config()["shard_state"] is False


# Item 2: param groups given as variables survive a `.keras` reload ----------------------------------
@pytest.mark.parametrize("make", [
    lambda layers: SGD(0.1, momentum=0.9, param_groups=[{"params": layers[0].weights, "lr": 0.0}]),
    lambda layers: AdamW(0.01, weight_decay=0.1, param_groups=[{"params": [layers[1].bias], "weight_decay": 0.0, "lr": 0.05}]),
], ids=["SGD", "AdamW"])
def test_variable_groups_survive_a_keras_reload(tmp_path, make):
    x, y = _data()
    keras.utils.set_random_seed(1)
    layers = [keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)]
    model = keras.Sequential([keras.Input((3,)), *layers])
    model.compile(optimizer=make(layers), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    _assert_same_weights(model, loaded, "continued after reload")
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
