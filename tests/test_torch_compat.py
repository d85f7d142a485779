"""keras_optx.torch: SGD, Adam and AdamW against torch.optim (float64) and dtorch's formulas.

The configurations are tests/cases.py's `COMPAT` table. Every case runs 30 steps of a fixed
random gradient sequence on several variables (matrix, vector, 3-d, scalar; exact zeros included)
and compares every step. torch is installed in every backend's test environment; it is only the
reference here (tests/_torch_optim.py).
"""

import keras
import numpy as np
import pytest
from _torch_optim import torch_optim_trajectory
from cases import COMPAT, TORCH_CLASSES
from conftest import BACKEND
from test_conformance import compiled_apply

import keras_optx as ox
from keras_optx.torch import SGD, Adam, AdamW


STEPS = 30
SHAPES = [(3, 4), (5,), (2, 1, 3), ()]
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # conftest's fixture minus its gc.collect() (free_memory=False): ~1 s per test with
    # jax, torch and tensorflow loaded, which would put this file over its time budget.
    keras.utils.clear_session(free_memory=False)
    keras.config.disable_interactive_logging()
    keras.utils.set_random_seed(0)
    yield


# The problem --------------------------------------------------------------------
def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x0 = [rng.normal(size=s).astype("float32") for s in SHAPES]
    grads = []
    for step in range(STEPS):
        gs = []
        for s in SHAPES:
            g = rng.normal(size=s) * (rng.random(size=s) > 0.25)  # a quarter exact zeros
            gs.append(np.asarray(g, "float32"))
        grads.append(gs)
    for step, gs in enumerate(grads):
        gs[0][:, 0] = 0.0  # a column that never moves (without weight decay)
        if step % 3 == 2:
            gs[2] *= 1e3  # sudden large gradients on one variable
    grads[4][3] = np.zeros((), "float32")  # a whole variable with a zero gradient
    return x0, grads


# References ---------------------------------------------------------------------
def _dtorch_sgd(x0, grads, lr, momentum=0.0, **_):
    """dtorch SGD: p ← p − lr·g; with momentum m: v ← m·v + (1−m)·g, p ← p − lr·v (v₀ = 0)."""
    x = [np.float64(a) for a in x0]
    v = [np.zeros_like(a) for a in x]
    out = []
    for gs in grads:
        for i, g in enumerate(gs):
            if momentum:
                v[i] = momentum * v[i] + (1 - momentum) * g
                x[i] = x[i] - lr * v[i]
            else:
                x[i] = x[i] - lr * g
        out.append([a.copy() for a in x])
    return out


def _dtorch_adam(x0, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, **_):
    """dtorch Adam: g ← g + wd·p; m, v moments; p ← p − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + eps)."""
    b1, b2 = betas
    x = [np.float64(a) for a in x0]
    m = [np.zeros_like(a) for a in x]
    v = [np.zeros_like(a) for a in x]
    out = []
    for t, gs in enumerate(grads, start=1):
        for i, g in enumerate(gs):
            g = g + weight_decay * x[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            x[i] = x[i] - lr * (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
        out.append([a.copy() for a in x])
    return out


def _reference(case, x0, grads):
    if case.reference == "torch":
        return torch_optim_trajectory(case.name, case.reference_kwargs, x0, grads)
    return {"SGD": _dtorch_sgd, "Adam": _dtorch_adam}[case.name](x0, grads, **case.reference_kwargs)


# Running keras_optx -------------------------------------------------------------
def _trajectory(opt, x0, grads, compiled=False, lr_drop=None):
    variables = [keras.Variable(x) for x in x0]
    grads = [[keras.ops.convert_to_tensor(g) for g in gs] for gs in grads]
    step = compiled_apply(opt, variables) if compiled else (lambda gs: opt.apply(gs, variables))
    out = []
    for i, gs in enumerate(grads):
        if lr_drop and i == lr_drop[0]:
            opt.learning_rate = lr_drop[1]  # what LearningRateScheduler/ReduceLROnPlateau do
        step(gs)
        out.append([keras.ops.convert_to_numpy(v.value) for v in variables])
    return out


def _assert_same(ours, reference, what="", rtol=RTOL, atol=ATOL):
    # float32 tolerance: relative per element, absolute relative to the variable's scale
    # (an element near 0 inside a variable of size 1e3 carries that variable's rounding).
    assert len(ours) == len(reference)
    for t, (xs, refs) in enumerate(zip(ours, reference), start=1):
        for i, (x, r) in enumerate(zip(xs, refs)):
            scaled = atol * max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(x, r, rtol=rtol, atol=scaled, err_msg=f"{what} step {t}, variable {i}")


# Tests --------------------------------------------------------------------------
@pytest.mark.parametrize("case", COMPAT, ids=repr)
def test_matches_reference_step_by_step(case):
    x0, grads = _problem()
    ours = _trajectory(case.make(), x0, grads)
    reference = _reference(case, x0, grads)
    _assert_same(ours, reference, f"{case.name}({case.kwargs}) vs {case.reference}")
    # The problem is not trivial: the variables moved well beyond the tolerance.
    assert np.abs(reference[-1][1] - x0[1]).max() > 100 * ATOL


@pytest.mark.skipif(BACKEND == "torch", reason="torch runs the rule eagerly (t is a Python int): the eager test is its only path")
@pytest.mark.parametrize("case", [c for c in COMPAT if c.compiled], ids=repr)
def test_matches_reference_compiled(case):
    x0, grads = _problem(seed=1)
    ours = _trajectory(case.make(), x0, grads, compiled=True)
    reference = _reference(case, x0, grads)
    _assert_same(ours, reference, f"compiled {case.name}({case.kwargs}) vs {case.reference}")


@pytest.mark.parametrize(
    "name, kwargs",
    [("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1)), ("AdamW", dict(lr=0.05, weight_decay=0.1))],
    ids=["SGD", "AdamW"],
)
def test_learning_rate_set_mid_training_as_torch(name, kwargs):
    # Callbacks set optimizer.learning_rate; torch's buffer holds gradients, so the new
    # rate rescales the whole step (and AdamW's decay) from then on.
    x0, grads = _problem(seed=2)
    drop = (10, kwargs["lr"] / 10)
    ours = _trajectory(TORCH_CLASSES[name](**kwargs), x0, grads, lr_drop=drop)
    _assert_same(ours, torch_optim_trajectory(name, kwargs, x0, grads, lr_drop=drop), name)


def test_dtorch_sgd_is_not_torch_dampening():
    # Why `dampen_first_step` exists: torch skips dampening on step 1.
    x0, grads = _problem()
    torch_style = _trajectory(SGD(0.1, momentum=0.9, dampening=0.9), x0, grads[:1])
    dtorch = _dtorch_sgd(x0, grads[:1], lr=0.1, momentum=0.9)
    assert not np.allclose(torch_style[0][1], dtorch[0][1], rtol=RTOL, atol=ATOL)


EQUIVALENCES = [
    ("SGD=Momentum", lambda: SGD(0.1, momentum=0.9), lambda: ox.Momentum(0.1, 0.9)),
    ("SGD=keras.SGD", lambda: SGD(0.1, momentum=0.9), lambda: keras.optimizers.SGD(0.1, momentum=0.9)),
    ("SGD(nesterov)=Nesterov", lambda: SGD(0.1, momentum=0.9, nesterov=True), lambda: ox.Nesterov(0.1, 0.9)),
    (
        "SGD(wd)=WeightDecay,Momentum",
        lambda: SGD(0.1, momentum=0.9, weight_decay=0.1),
        lambda: ox.Optimiser(ox.WeightDecay(0.1), ox.Momentum(0.1, 0.9)),
    ),
    ("Adam=ADAM", lambda: Adam(0.05, (0.8, 0.99), 1e-6), lambda: ox.ADAM(0.05, (0.8, 0.99), 1e-6)),
    (
        "Adam(wd)=WeightDecay,ADAM",
        lambda: Adam(0.05, weight_decay=0.1),
        lambda: ox.Optimiser(ox.WeightDecay(0.1), ox.ADAM(0.05)),
    ),
    ("AdamW=ADAMW(decay=lr*wd)", lambda: AdamW(0.05, weight_decay=0.5), lambda: ox.ADAMW(0.05, decay=0.05 * 0.5)),
]


@pytest.mark.parametrize("make, make_flux", [e[1:] for e in EQUIVALENCES], ids=[e[0] for e in EQUIVALENCES])
def test_documented_equivalences_with_flux_rules(make, make_flux):
    # Two float32 implementations of the same math. On jax/tf the Flux ADAM computes
    # 1 − βᵗ in float32 (~1e-5 relative error in its bias correction; ours and torch's
    # are exact), measured ≤ 3.2e-6·scale apart here: hence 1e-5·scale. A misplaced
    # or unscaled decay differs by orders of magnitude more.
    x0, grads = _problem(seed=3)
    _assert_same(_trajectory(make(), x0, grads), _trajectory(make_flux(), x0, grads), rtol=1e-4, atol=1e-5)


FIT = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)),
    ("Adam", dict(lr=0.01, weight_decay=1e-3, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("name, kwargs", FIT, ids=[f[0] for f in FIT])
def test_fit_then_save_load_resumes(name, kwargs, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1)) + 0.5).astype("float32")

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=TORCH_CLASSES[name](**kwargs), loss="mse")
    def loss():  # eager, to avoid compiling an evaluate function
        return float(np.mean((keras.ops.convert_to_numpy(model(x)) - y) ** 2))

    before = loss()
    model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert loss() < 0.7 * before

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.weight_decay == kwargs["weight_decay"]  # torch's λ (Keras's own decay never runs)
    assert loaded.optimizer.torch_weight_decay == kwargs["weight_decay"]

    # Resuming continues the exact trajectory: state and step count came back.
    for m in (model, loaded):
        m.train_on_batch(x[:16], y[:16])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a), rtol=1e-6, atol=1e-7)


SERIALIZE = {
    "SGD(dtorch,clipnorm)": lambda: SGD(0.2, 0.8, 0.1, 1e-3, maximize=True, dampen_first_step=True, clipnorm=1.0),
    "SGD(nesterov)": lambda: SGD(0.2, 0.8, 0.0, 1e-3, True),
    "Adam(amsgrad)": lambda: Adam(0.01, (0.8, 0.9), 1e-6, 1e-2, True),
    "AdamW(schedule)": lambda: AdamW(keras.optimizers.schedules.ExponentialDecay(0.01, 100, 0.5), weight_decay=0.05),
}


@pytest.mark.parametrize("make", SERIALIZE.values(), ids=SERIALIZE.keys())
def test_config_round_trip_under_torch_names(make):
    opt = make()
    config = opt.get_config()
    assert "weight_decay" in config and config["weight_decay"] == opt.weight_decay  # torch's λ
    again = type(opt).from_config(dict(config))  # Keras's from_config edits its argument
    assert again.get_config() == config
    serialized = keras.optimizers.serialize(opt)
    # Distinct from the Flux rules (ADAM, ADAMW) and from Keras's own SGD/Adam/AdamW.
    assert serialized["registered_name"] == f"keras_optx>torch.{type(opt).__name__}"
    restored = keras.optimizers.deserialize(serialized)
    assert type(restored) is type(opt)
    assert restored.get_config() == config


def test_learning_rate_alias_and_keras_attributes():
    opt = Adam(learning_rate=0.02, weight_decay=0.1)
    assert float(opt.learning_rate) == pytest.approx(0.02)
    assert opt.weight_decay == opt.torch_weight_decay == 0.1  # torch's λ, also under its earlier name
    opt.learning_rate = 0.5
    assert float(opt.learning_rate) == pytest.approx(0.5)
    assert SGD(0.1).slots == {} and set(SGD(0.1, 0.9).slots) == {"momentum_buffer"}
    assert set(Adam(amsgrad=True).slots) == {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert AdamW().torch_weight_decay == 1e-2  # torch's default
    assert repr(SGD(0.5, 0.9)) == (
        "SGD(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, dampen_first_step=False)"
    )
