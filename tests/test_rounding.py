"""`rounding=` ("nearest", "kahan", "stochastic"): the write of float16/bfloat16 variables, step by step
against a NumPy emulation of its rounding, eager and compiled; statistics of stochastic rounding;
torch-optimi's Kahan-summed AdamW as a witness; config, refusals, saving and exact resume.

The emulation takes Δ from the backend itself, exactly: a float32 twin of each low-precision variable,
set to 0 before every step, holds −Δ after it (0 − Δ is exact, and these rules' Δ does not depend on x).
What is emulated is then precisely the write: x' = ⌊x − Δ⌉ with x − Δ in float32, and its modes.
"""

import os

import keras
import ml_dtypes
import numpy as np
import pytest
from conftest import BACKEND
from test_conformance import compiled_apply

import keras_optx as ox
from keras_optx import _rounding

STEPS = 20
SIZE = 64
NUMPY_DTYPE = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
MODES = ["eager", pytest.param("compiled", marks=pytest.mark.skipif(
    BACKEND == "torch", reason="torch has no graph compiler in Keras's default train step (jit_compile=False)"))]


# The NumPy emulation ------------------------------------------------------------------
def low(y, dtype):
    """float32 `y` rounded to nearest (ties to even) in `dtype`, back as float32."""
    return np.asarray(y, np.float32).astype(NUMPY_DTYPE[dtype]).astype(np.float32)


def stochastic(y, dtype, bits):
    """Stochastic rounding of float32 `y` to `dtype` with the integers `bits` (as `_rounding`'s docstring)."""
    y = np.asarray(y, np.float32)
    with np.errstate(over="ignore"):
        if dtype == "bfloat16":
            out = ((y.view(np.int32) + bits) & np.int32(-(1 << 16))).view(np.float32)
        else:
            size, smallest = np.abs(y), np.float32(2.0**-14)
            tiny = size < smallest
            wide = np.where(tiny, size + smallest, size).astype(np.float32)
            out = ((wide.view(np.int32) + bits) & np.int32(-(1 << 13))).view(np.float32)
            out = np.where(tiny, out - smallest, out)
            out = np.where(y < 0, -out, out)
    out = np.where(np.isnan(y), y, out)
    assert np.array_equal(low(out, dtype), out, equal_nan=True)  # nothing left for the final cast to round
    return out


def kahan(x, c, delta, dtype):
    """torch-optimi's compensated add (optimi/adam.py, kahan_sum) of −Δ, each operation rounded to `dtype`."""
    carried = low(c - delta, dtype)
    new_x = low(x + carried, dtype)
    new_c = low(carried + low(x - new_x, dtype), dtype)
    unmoved = delta == 0
    return np.where(unmoved, x, new_x), np.where(unmoved, c, new_c)


def numpy_of(value):
    return np.asarray(keras.ops.convert_to_numpy(keras.ops.cast(value, "float32")), np.float32)


def drawn_bits(optimizer, shape, dtype):
    """The bits the next write of a `dtype` variable of `shape` draws (a copy of the optimizer's seed state)."""
    generator = keras.random.SeedGenerator(0)
    generator.state.assign(optimizer._rounding_seed.state.value)
    return np.asarray(keras.ops.convert_to_numpy(_rounding.random_bits(shape, dtype, generator)), np.int32)


# Rules whose Δ does not depend on x (so the float32 twin at 0 gives it exactly).
RULES = {
    "Descent": lambda **kw: ox.Descent(0.01, **kw),
    "ADAM": lambda **kw: ox.ADAM(0.01, **kw),
    "OADAM": lambda **kw: ox.OADAM(0.01, **kw),
    "chain": lambda **kw: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(0.01), **kw),
    "Partition": lambda **kw: ox.Partition({"kernel": ox.ADAM(0.01), "twin": ox.ADAM(0.01)}, **kw),
    "torch.Adam": lambda **kw: ox.torch.Adam(0.01, **kw),
}


def _data(dtype, seed=0):
    rng = np.random.default_rng(seed)
    # Magnitudes from 1e-3 to 1 (and a few float16 subnormals): Δ is often a sizeable part of a unit in the last place.
    x = (rng.standard_normal(SIZE) * 10.0 ** rng.uniform(-3, 0, SIZE)).astype(np.float32)
    if dtype == "float16":
        x[:4] = [3e-6, -2e-7, 6e-8, 0.0]
    grads = [low(rng.standard_normal(SIZE), dtype) for _ in range(STEPS)]
    return low(x, dtype), grads


@pytest.mark.parametrize("rounding", _rounding.MODES)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("mode", MODES)
def test_write_matches_numpy_emulation(rule, dtype, rounding, mode):
    x0, grads = _data(dtype)
    x = keras.Variable(x0, dtype=dtype, name="kernel")
    twin = keras.Variable(np.zeros(SIZE, np.float32), name="twin")
    optimizer = RULES[rule](rounding=rounding)
    optimizer.build([x, twin])
    apply = (lambda g: optimizer.apply(g, [x, twin])) if mode == "eager" else compiled_apply(optimizer, [x, twin])
    expected, c = x0.copy(), np.zeros(SIZE, np.float32)
    twice_differs = False  # the write before this fix: Δ rounded to the dtype, then subtracted and rounded again
    for n, g in enumerate(grads, 1):
        twin.assign(np.zeros(SIZE, np.float32))
        bits = drawn_bits(optimizer, (SIZE,), dtype) if rounding == "stochastic" else None
        apply([keras.ops.convert_to_tensor(g, dtype), keras.ops.convert_to_tensor(g, "float32")])
        delta = -numpy_of(twin.value)
        assert np.any(delta != 0), "Δ must move the variable for the test to say anything"
        twice_differs |= bool(np.any(low(expected - low(delta, dtype), dtype) != low(expected - delta, dtype)))
        if rounding == "nearest":
            expected = low(expected - delta, dtype)
        elif rounding == "kahan":
            expected, c = kahan(expected, c, delta, dtype)
            np.testing.assert_array_equal(numpy_of(optimizer._compensation[0].value), c, err_msg=f"compensation at step {n}")
        else:
            expected = stochastic(expected - delta, dtype, bits)
        actual = numpy_of(x.value)
        mismatch = np.flatnonzero(actual != expected)
        assert mismatch.size == 0, f"step {n}: {mismatch.size} elements differ, e.g. {actual[mismatch[:3]]} vs {expected[mismatch[:3]]}"
    assert twice_differs, "rounding Δ first would give other values here: the test can tell one rounding from two"


def test_float32_variables_are_untouched_by_rounding():
    values = []
    for rounding in _rounding.MODES:
        x = keras.Variable(np.linspace(-1, 1, 7, dtype=np.float32))
        optimizer = ox.ADAM(0.01, rounding=rounding)
        for _ in range(3):
            optimizer.apply([np.linspace(1, 2, 7, dtype=np.float32)], [x])
        values.append(numpy_of(x.value))
        assert optimizer._compensation is None and optimizer._rounding_seed is None  # no state for float32 models
    for other in values[1:]:
        np.testing.assert_array_equal(other, values[0])


# Stochastic rounding: statistics and reproducibility ----------------------------------------------
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_rounding_is_unbiased_between_the_two_neighbours(dtype):
    draws = 40000
    ulp = 2.0**-7 if dtype == "bfloat16" else 2.0**-10  # at 1 ≤ y < 2
    points = {"normal": (1.0, ulp), "negative": (-1.0, -ulp)}
    if dtype == "float16":
        points["subnormal"] = (2.0**-20, 2.0**-24)
    generator = keras.random.SeedGenerator(7)
    for where, (base, step) in points.items():
        for fraction in (0.1, 0.5, 0.93):
            y = np.float32(base + fraction * step)
            bits = _rounding.random_bits((draws,), dtype, generator)
            out = numpy_of(_rounding.round_stochastic(keras.ops.full((draws,), y), dtype, bits))
            down, up = sorted([np.float32(base), np.float32(base + step)])
            assert set(np.unique(out)) <= {down, up}, f"{where}: values other than the two neighbours"
            share_up = np.mean(out == up)
            p = (y - down) / (up - down)
            sigma = np.sqrt(p * (1 - p) / draws)
            assert abs(share_up - p) < 5 * sigma, f"{where} {fraction}: rounded up {share_up:.4f} of the time, expected {p:.4f}"


def test_stochastic_rounding_keeps_exact_values_nan_and_inf():
    for dtype in ("bfloat16", "float16"):
        y = np.array([1.0, -2.5, 0.0, np.inf, -np.inf, np.nan, 0.125], np.float32)
        bits = keras.ops.full((7,), 2 ** (16 if dtype == "bfloat16" else 13) - 1, "int32")
        out = numpy_of(_rounding.round_stochastic(keras.ops.convert_to_tensor(y), dtype, bits))
        np.testing.assert_array_equal(out, y)


def _train(rounding, steps, **kwargs):
    keras.utils.set_random_seed(3)
    x0, grads = _data("bfloat16")
    x = keras.Variable(x0, dtype="bfloat16")
    optimizer = ox.ADAM(1e-3, rounding=rounding, **kwargs)
    for g in grads[:steps]:
        optimizer.apply([keras.ops.convert_to_tensor(g, "bfloat16")], [x])
    return numpy_of(x.value)


def test_stochastic_rounding_is_reproducible_from_the_seed():
    np.testing.assert_array_equal(_train("stochastic", 10), _train("stochastic", 10))
    assert np.any(_train("stochastic", 10) != _train("nearest", 10))


# Refusals and config ----------------------------------------------------------------------------
def test_bad_rounding_is_refused_naming_the_modes():
    with pytest.raises(ValueError, match=r"`rounding` must be one of \['nearest', 'kahan', 'stochastic'\]; received rounding='up'"):
        ox.ADAM(rounding="up")
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        ox.torch.AdamW(rounding=None)


def test_rounding_set_later_is_checked_and_refused_once_built():
    opt = ox.ADAM(0.01)
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        opt.rounding = "up"
    opt.rounding = "kahan"  # before build: acts (its state is made at build)
    x = keras.Variable(np.ones(3), dtype="bfloat16")
    opt.build([x])
    assert [v for v in opt.variables if "compensation" in v.path or "kahan" in v.path]
    with pytest.raises(ValueError, match="`rounding` of .* cannot change once"):
        opt.rounding = "stochastic"
    assert opt.rounding == "kahan" and opt.get_config()["rounding"] == "kahan"


def test_a_member_refuses_rounding_the_chain_takes_it():
    with pytest.raises(ValueError, match=r"rounding='kahan'.*Optimiser\(\.\.\., rounding='kahan'\)"):
        ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(rounding="kahan"))
    with pytest.raises(ValueError, match=r"rounding='stochastic'"):
        ox.Partition({".*": ox.ADAM(rounding="stochastic")})
    with pytest.raises(ValueError, match="does not write the variables"):
        ox.ClipNorm(1.0, keras.optimizers.Adam(), rounding="kahan")
    with pytest.raises(ValueError, match="set it on the wrapped optimizer"):
        ox.SkipNonFinite(ox.ADAM(), rounding="kahan")
    chain = ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(), rounding="kahan")
    x = keras.Variable(np.ones(3, np.float32), dtype="bfloat16")
    chain.apply([np.ones(3, np.float32)], [x])
    kahan_slots = [v for v in chain.variables if v.path.endswith("_kahan")]
    assert len(kahan_slots) == 1 and kahan_slots[0].dtype == "bfloat16"  # one slot per variable, the chain's


@pytest.mark.parametrize("make", [
    lambda: ox.ADAM(rounding="kahan"),
    lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(), rounding="stochastic"),
    lambda: ox.Partition({".*": ox.ADAM()}, rounding="kahan"),
    lambda: ox.torch.AdamW(1e-3, rounding="stochastic"),
], ids=["ADAM", "chain", "Partition", "torch.AdamW"])
def test_config_keeps_rounding_and_old_configs_load_as_nearest(make):
    optimizer = make()
    config = optimizer.get_config()
    restored = type(optimizer).from_config(config)
    assert restored.rounding == optimizer.rounding and restored.get_config() == config
    old = {k: v for k, v in config.items() if k != "rounding"}  # saved before the keyword existed
    assert type(optimizer).from_config(old).rounding == "nearest"


# Resume and the Keras keywords ------------------------------------------------------------------
def _model():
    keras.utils.set_random_seed(1)
    return keras.Sequential([
        keras.Input((8,)), keras.layers.Dense(16, activation="tanh", dtype="bfloat16"), keras.layers.Dense(1, dtype="bfloat16"),
    ])


def _fit_data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    return x, (x @ rng.standard_normal((8, 1))).astype("float32")


SETTINGS = {
    "plain": {},
    "ema+accumulation+state_dtype": {"use_ema": True, "gradient_accumulation_steps": 2, "state_dtype": "bfloat16"},
}


@pytest.mark.parametrize("settings", list(SETTINGS))
@pytest.mark.parametrize("rounding", _rounding.MODES)
def test_resume_from_keras_file_is_exact(rounding, settings, tmp_path):
    x, y = _fit_data()

    def fit(model, epochs):  # compiled train steps, without `fit`'s final EMA write (and a second `fit` with EMA fails on jax in Keras 3.15)
        for _ in range(epochs):
            for i in range(0, len(x), 16):
                model.train_on_batch(x[i : i + 16], y[i : i + 16])

    def make():
        model = _model()
        model.compile(optimizer=ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(1e-3), rounding=rounding, **SETTINGS[settings]), loss="mse")
        return model

    whole = make()
    fit(whole, 4)
    first = make()
    fit(first, 2)
    first.save(tmp_path / "mid.keras")
    resumed = keras.models.load_model(tmp_path / "mid.keras")
    assert resumed.optimizer.rounding == rounding
    fit(resumed, 2)
    for a, b in zip(whole.weights + whole.optimizer.variables, resumed.weights + resumed.optimizer.variables):
        np.testing.assert_array_equal(numpy_of(b.value), numpy_of(a.value), err_msg=a.path)
    moved = [not np.array_equal(numpy_of(a.value), numpy_of(b.value)) for a, b in zip(whole.weights, _model().weights)]
    assert all(moved), "training must move every weight for the comparison to say anything"


def test_shard_state_without_distribution_keeps_the_compensation_like_the_slots():
    x = keras.Variable(np.ones((4, 2), np.float32), dtype="bfloat16")
    with pytest.warns(UserWarning):
        optimizer = ox.ADAM(1e-3, rounding="kahan", shard_state=True)
        optimizer.apply([np.ones((4, 2), np.float32)], [x])
    assert optimizer._compensation[0].shape == (4, 2) and optimizer._compensation[0].dtype == "bfloat16"


# torch-optimi's AdamW(kahan_sum=True), the witness ---------------------------------------------
@pytest.mark.skipif(BACKEND != "torch", reason="torch-optimi is a torch optimizer")
def test_kahan_follows_torch_optimi_adamw():
    import optimi
    import torch

    rng = np.random.default_rng(0)
    start = low(rng.standard_normal(SIZE) * 10.0 ** rng.uniform(-2, 0, SIZE), "bfloat16")
    grads = [low(rng.standard_normal(SIZE) + 0.5, "bfloat16") for _ in range(200)]
    # optimi's defaults for betas and eps, set on both. No weight decay: optimi multiplies x by 1 − lr·λ
    # outside its compensation (lost in bfloat16 at lr·λ < 2⁻⁹), keras_optx's decay is part of Δ.
    lr, betas, eps = 1e-4, (0.9, 0.99), 1e-6
    ours, nearest = keras.Variable(start, dtype="bfloat16"), keras.Variable(start, dtype="bfloat16")
    optimizer = ox.torch.AdamW(lr, betas=betas, eps=eps, weight_decay=0.0, rounding="kahan")
    plain = ox.torch.AdamW(lr, betas=betas, eps=eps, weight_decay=0.0)
    theirs = torch.nn.Parameter(torch.tensor(start, dtype=torch.bfloat16))
    reference = optimi.AdamW([theirs], lr=lr, betas=betas, eps=eps, weight_decay=0.0, kahan_sum=True, foreach=False)
    for g in grads:
        optimizer.apply([keras.ops.convert_to_tensor(g, "bfloat16")], [ours])
        plain.apply([keras.ops.convert_to_tensor(g, "bfloat16")], [nearest])
        theirs.grad = torch.tensor(g, dtype=torch.bfloat16)
        reference.step()
    ours, theirs, nearest = numpy_of(ours.value), theirs.detach().float().numpy(), numpy_of(nearest.value)
    moved = np.abs(theirs - start).max()
    assert moved > 0.01  # 200 steps of ~1e-4
    # optimi keeps its moments in bfloat16, keras_optx in float32: most elements equal, none off by a tenth of the way.
    assert np.mean(ours == theirs) > 0.5
    assert np.abs(ours - theirs).max() < 0.1 * moved
    # Without compensation the steps (below half a unit in the last place) are lost.
    assert np.abs(nearest - theirs).max() > 0.5 * moved
