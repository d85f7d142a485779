"""Hyperparameters as state: numbers changed mid-run and schedules, eager and compiled, against the
NumPy oracle; adjust; HyperparameterScheduler in fit; saving; refusals."""

import keras
import numpy as np
import pytest
import reference as ref
from cases import PATHS
from conftest import BACKEND
from test_conformance import MODES, assert_close, compiled_apply, gradient_stream, initial_values

import keras_optx as ox
from keras_optx import _base


@pytest.fixture
def trace_count(monkeypatch):
    """How often a step's Python runs: once per step eagerly, once per trace compiled."""
    calls = []
    original = _base.Rule._update_step

    def counted(self, grads, variables):
        calls.append(1)
        return original(self, grads, variables)

    monkeypatch.setattr(_base.Rule, "_update_step", counted)
    return calls


def run(optimizer, oracle, mode, changes, steps=10):
    """Steps with `changes[n](optimizer, oracle)` applied before update n; compare every step."""
    variables = [keras.Variable(v, name=name) for v, name in zip(initial_values(), PATHS)]
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    expected = [v.astype(np.float64) for v in initial_values()]
    for n, grads in zip(range(1, steps + 1), gradient_stream()):
        if n in changes:
            changes[n](optimizer, oracle)
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        expected = [x - d for x, d in zip(expected, oracle(grads, expected, n))]
        for i, (v, x) in enumerate(zip(variables, expected)):
            assert_close(keras.ops.convert_to_numpy(v.value), x, f"variable {i} at step {n}")


def _set(path, value):
    """A change: set attribute `path` ("rho", "0.wd": member 0's wd) on optimizer and oracle alike."""

    def change(optimizer, oracle):
        *members, name = path.split(".")
        target, twin = optimizer, oracle
        for m in members:
            target, twin = target[int(m)], twin.members[int(m)]
        setattr(target, name, value)
        setattr(twin, {"epsilon": "eps", "slow_step_size": "alpha"}.get(name, name), value)

    return change


CHANGES = [
    ("Momentum.rho", lambda: ox.Momentum(0.05, 0.9), lambda: ref.Momentum(0.05, 0.9), {4: _set("rho", 0.3), 7: _set("rho", 0.0)}),
    ("ADAM.beta,epsilon", lambda: ox.ADAM(0.01), lambda: ref.ADAM(0.01),
     {3: _set("beta", (0.5, 0.9)), 6: _set("epsilon", 1e-2)}),
    ("NADAM.beta", lambda: ox.NADAM(0.01), lambda: ref.NADAM(0.01), {3: _set("beta", (0.8, 0.0)), 6: _set("beta", (0.8, 0.99))}),
    ("RMSProp.rho", lambda: ox.RMSProp(0.01), lambda: ref.RMSProp(0.01), {5: _set("rho", 0.5)}),
    ("chain[0].wd,chain[1].thresh", lambda: ox.Optimiser(ox.WeightDecay(1e-2), ox.ClipNorm(1.0), ox.Descent(0.1)),
     lambda: ref.Chain(ref.WeightDecay(1e-2), ref.ClipNorm(1.0), ref.Descent(0.1)),
     {3: _set("0.wd", 0.5), 6: _set("1.thresh", 0.1)}),
    ("Lookahead.slow_step_size", lambda: ox.Lookahead(ox.Momentum(0.05, 0.9), sync_period=2, slow_step_size=0.5),
     lambda: ref.Lookahead(ref.Momentum(0.05, 0.9), 2, 0.5), {4: _set("slow_step_size", 0.2), 7: _set("slow_step_size", 1.0)}),
    ("Rprop.ell,gamma", lambda: ox.Rprop(0.01), lambda: ref.Rprop(0.01),
     {3: _set("ell", (0.3, 1.5)), 6: _set("gamma", (1e-3, 0.015))}),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,make,oracle,changes", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_value_set_mid_run_acts_at_the_next_step(name, make, oracle, changes, mode, trace_count):
    optimizer = make()
    run(optimizer, oracle(), mode, changes)
    if mode == "compiled":
        assert len(trace_count) <= 2, f"retraced after a change: {len(trace_count)} traces"  # tf traces the first call twice


@pytest.mark.parametrize("mode", MODES)
def test_adjust_reaches_chain_and_partition_members(mode):
    optimizer = ox.Optimiser(ox.ClipValue(2.0), ox.Partition({"bias": ox.Momentum(0.05, 0.9), ".*": ox.Momentum(0.01, 0.5)}))
    oracle = ref.Chain(ref.ClipValue(2.0), ref.Partition([("bias", ref.Momentum(0.05, 0.9)), (".*", ref.Momentum(0.01, 0.5))], PATHS))

    def change(optimizer, oracle):
        ox.adjust(optimizer, rho=0.2, thresh=0.5)
        oracle.members[0].thresh = 0.5
        for _, rule in oracle.members[1].rules:
            rule.rho = 0.2

    run(optimizer, oracle, mode, {4: change})
    assert optimizer[1].rules[0].rho == optimizer[1].rules[1].rho == 0.2


def _scheduled_rho(step):
    return 0.9 * 0.8 ** (step // 2)


class _RhoSchedule(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return 0.9 * keras.ops.power(0.8, keras.ops.floor(keras.ops.cast(step, "float32") / 2))

    def get_config(self):
        return {}


@pytest.mark.parametrize("mode", MODES)
def test_a_scheduled_hyperparameter_follows_the_rates_step(mode):
    """ρ a schedule (called with the 0-based update count, as the rate's schedule) and β₁ one of a pair."""
    momentum, oracle = ox.Momentum(0.05, rho=_RhoSchedule()), ref.Momentum(0.05, 0.9)
    adam, twin = ox.ADAM(0.01, beta=(_RhoSchedule(), 0.99)), ref.ADAM(0.01, (0.9, 0.99))
    changes = {n: _follow(n) for n in range(1, 11)}
    run(momentum, oracle, mode, changes)
    run(adam, twin, mode, {n: _follow(n, pair=True) for n in range(1, 11)})


def _gamma_max(step):  # ExponentialDecay(0.02, 2, 0.5, staircase=True)
    return 0.02 * 0.5 ** (step // 2)


SCHEDULED = [  # (id, optimizer, oracle, set the oracle's values for the 0-based step s)
    ("Lookahead.slow_step_size", lambda: ox.Lookahead(ox.Momentum(0.05, 0.9), sync_period=2, slow_step_size=_RhoSchedule()),
     lambda: ref.Lookahead(ref.Momentum(0.05, 0.9), 2), lambda oracle, s: setattr(oracle, "alpha", _scheduled_rho(s))),
    ("Rprop.ell[0],gamma[1]", lambda: ox.Rprop(0.01, ell=(_RhoSchedule(), 1.2), gamma=(
        1e-6, keras.optimizers.schedules.ExponentialDecay(0.02, 2, 0.5, staircase=True))),
     lambda: ref.Rprop(0.01), lambda oracle, s: oracle.__dict__.update(ell=(_scheduled_rho(s), 1.2), gamma=(1e-6, _gamma_max(s)))),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,make,oracle,follow", SCHEDULED, ids=[c[0] for c in SCHEDULED])
def test_lookahead_and_rprop_take_schedules(name, make, oracle, follow, mode):
    """Lookahead's α and an element of each of Rprop's pairs driven by schedules, against the oracle."""
    twin = oracle()
    run(make(), twin, mode, {n: (lambda s: lambda optimizer, oracle: follow(oracle, s))(n - 1) for n in range(1, 11)})


def test_pair_elements_are_checked_by_position():
    schedule = _RhoSchedule()
    with pytest.raises(ValueError, match=r"`ell\[1\]` \(the increase factor\) must be a finite number > 1"):
        ox.Rprop(ell=(schedule, 0.9))
    with pytest.raises(ValueError, match=r"`ell\[0\]` \(the decrease factor\) must be in \(0, 1\)"):
        ox.Rprop(ell=(1.5, schedule))
    with pytest.raises(ValueError, match=r"`gamma\[0\]` must be a finite number ≥ 0"):
        ox.Rprop(gamma=(-1.0, schedule))
    with pytest.raises(ValueError, match=r"`gamma` must have 2 elements"):
        ox.Rprop(gamma=(1e-6, schedule, 1.0))
    with pytest.raises(ValueError, match=r"`slow_step_size` must be in \(0, 1\]"):
        ox.Lookahead(ox.ADAM(), slow_step_size=0.0)
    opt = ox.Rprop(0.01, gamma=(1e-6, schedule))
    opt.build([keras.Variable(np.ones(3, "float32"), name="w")])
    with pytest.raises(ValueError, match="part of the compiled step"):
        opt.gamma = (1e-6, 1.0)  # a schedule element cannot become a number once built
    opt.gamma = (1e-3, schedule)
    assert opt.gamma == (1e-3, schedule)
    decay = keras.optimizers.schedules.ExponentialDecay(0.5, 2, 0.5)
    lookahead = ox.Lookahead(ox.ADAM(), slow_step_size=decay)
    assert lookahead.slow_step_size is decay
    again = ox.Lookahead.from_config(lookahead.get_config()).slow_step_size
    assert isinstance(again, keras.optimizers.schedules.ExponentialDecay) and again.get_config() == decay.get_config()


def _follow(n, pair=False):
    def change(optimizer, oracle):
        value = _scheduled_rho(n - 1)
        if pair:
            oracle.beta = (value, 0.99)
        else:
            oracle.rho = value

    return change


def test_hyperparameter_scheduler_in_fit_matches_the_oracle():
    """fit's compiled step, ρ set per step and β per epoch by the callback, against NumPy gradients and oracle."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3)).astype("float32")
    y = rng.standard_normal((32, 1)).astype("float32")
    w0 = rng.standard_normal((3, 1)).astype("float32")
    for per, schedule, make, oracle in [
        ("step", {"rho": lambda s: 0.9 if s < 3 else 0.2}, lambda: ox.Momentum(0.05, 0.9), ref.Momentum(0.05, 0.9)),
        ("epoch", {"beta": lambda e: (0.9 - 0.3 * e, 0.99)}, lambda: ox.ADAM(0.05), ref.ADAM(0.05, (0.9, 0.99))),
    ]:
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, use_bias=False)])
        model.set_weights([w0])
        model.compile(optimizer=make(), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  callbacks=[ox.HyperparameterScheduler(schedule, per=per)])
        w, count = w0.astype(np.float64), 0
        for epoch in range(2):
            for b in range(4):
                xb, yb = x[8 * b: 8 * b + 8].astype(np.float64), y[8 * b: 8 * b + 8].astype(np.float64)
                (name, fn), = schedule.items()
                setattr(oracle, name, fn(count if per == "step" else epoch))
                count += 1
                g = 2 * xb.T @ (xb @ w - yb) / 8
                w = w - oracle([g], [w], count)[0]
        assert_close(keras.ops.convert_to_numpy(model.trainable_variables[0].value), w, f"per={per}")


def test_assigned_values_and_schedules_are_saved(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=ox.Optimiser(ox.WeightDecay(1e-3), ox.ADAM(0.01, beta=(_RhoSchedule(), 0.99))), loss="mse")
    rng = np.random.default_rng(1)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    model.optimizer.apply([rng.standard_normal(s).astype("float32") for s in shapes], model.trainable_variables)
    model.optimizer[0].wd = 0.25
    model.optimizer.adjust(epsilon=1e-3)
    path = tmp_path / "hyper.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, custom_objects={"_RhoSchedule": _RhoSchedule})
    assert loaded.optimizer[0].wd == 0.25 and loaded.optimizer[1].epsilon == 1e-3
    assert isinstance(loaded.optimizer[1].beta[0], _RhoSchedule)
    step = [rng.standard_normal(s).astype("float32") for s in shapes]
    model.optimizer.apply(step, model.trainable_variables)
    loaded.optimizer.apply(step, loaded.trainable_variables)
    for a, b in zip(loaded.trainable_variables + loaded.optimizer.variables,
                    model.trainable_variables + model.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))


def test_refusals_name_the_argument_and_write_nothing():
    opt = ox.Momentum(0.1, 0.9)
    opt.build([keras.Variable(np.ones(3, "float32"), name="w")])
    with pytest.raises(ValueError, match=r"`rho` must be in \[0, 1\)"):
        opt.rho = 1.0
    assert opt.rho == 0.9
    with pytest.raises(ValueError, match="part of the compiled step"):
        opt.rho = _RhoSchedule()
    with pytest.raises(ValueError, match=r"no rule .* has a hyperparameter `beta`"):
        ox.adjust(opt, beta=(0.9, 0.9))
    chain = ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum())
    with pytest.raises(ValueError, match="thresh"):
        chain.adjust(rho=0.5, thresh=-1.0)
    assert chain[1].rho == 0.9  # nothing set when one value is refused
    # Likewise when a built member cannot take it (its rho was a schedule at build): the first keeps its own.
    both = ox.Optimiser(ox.Momentum(0.1, 0.8), ox.Momentum(0.1, _RhoSchedule()))
    both.build([keras.Variable(np.ones(3, "float32"), name="w")])
    with pytest.raises(ValueError, match="part of the compiled step"):
        both.adjust(rho=0.5)
    assert both[0].rho == 0.8
    with pytest.raises(TypeError, match="nesterov"):
        from keras_optx.torch import SGD

        SGD(0.1, momentum=0.9, nesterov=lambda: True)
    with pytest.raises(ValueError, match="per"):
        ox.HyperparameterScheduler({"rho": lambda e: 0.5}, per="batch")
    with pytest.raises(TypeError, match="schedules"):
        ox.HyperparameterScheduler({"rho": 0.5})


def test_momentum_cannot_appear_after_build_in_torch_sgd():
    from keras_optx.torch import SGD

    opt = SGD(0.1)
    opt.build([keras.Variable(np.ones(3, "float32"), name="w")])
    with pytest.raises(ValueError, match="momentum buffer"):
        opt.momentum = 0.9
    opt = SGD(0.1, momentum=0.5)
    opt.build([keras.Variable(np.ones(3, "float32"), name="w")])
    opt.momentum = 0.9
    assert opt.momentum == 0.9
