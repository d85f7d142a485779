# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 7. Training in bfloat16 without losing the small updates
#
# Weights and optimizer state are much of a training run's memory. Keras's mixed precision
# (`"mixed_bfloat16"`) computes in bfloat16 but keeps the weights in float32. Giving the layers
# `dtype="bfloat16"` stores the weights themselves in bfloat16 and halves them, but a bfloat16
# number has only 8 significant bits. With a small learning rate most updates are rounded away
# and training stalls.
#
# keras_optx's `rounding=` keyword (on every rule, chain, `Partition` and `keras_optx.torch`
# optimizer) chooses how the update is written into a bfloat16 or float16 weight:
#
# | `rounding=` | the write x ← x − Δ | extra state |
# |---|---|---|
# | `"nearest"` (default) | rounded to the nearest bfloat16 | none |
# | `"kahan"` | compensated: a slot c keeps what the rounding dropped and adds it to the next write | one slot per weight, in bfloat16 |
# | `"stochastic"` | rounded up or down at random, with probability by distance, so E[x'] = x − Δ | one seed |
#
# This notebook trains the same small network four times: in float32, and in bfloat16 with each
# mode, and compares the losses (after `benchmarks/bench_bf16.py`; see also
# `docs/low-precision.md`).

# %% [markdown]
# The notebook runs unchanged on the JAX, PyTorch and TensorFlow backends: choose one with
# the environment variable `KERAS_BACKEND` before starting Jupyter (`KERAS_BACKEND=jax jupyter lab`).

# %%
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quieter TensorFlow start-up

import numpy as np
import keras
from keras import ops
import keras_optx as ox

keras.utils.set_random_seed(0)
print("Keras backend:", keras.backend.backend())

# %% [markdown]
# ## The task
#
# Regression onto a fixed random "teacher" network: 512 samples of 16 features, a
# 16 → 64 → 64 → 1 tanh MLP, batches of 64 for 50 epochs (400 steps), ADAM at rate 3·10⁻⁴.
#
# Every run starts from the same weights, drawn with NumPy (so the same on every backend) and
# rounded to bfloat16 (so the float32 run starts exactly where the bfloat16 runs do), and sees the
# same batches. The loss we compare is the training-set mean squared error of the weights
# evaluated in float32: it measures what the optimizer kept, not the noise of a bfloat16 forward
# pass.

# %%
import matplotlib.pyplot as plt

rng = np.random.default_rng(0)
x = rng.standard_normal((512, 16)).astype("float32")
teacher = [rng.standard_normal(shape) / np.sqrt(shape[0]) for shape in ((16, 64), (64, 64), (64, 1))]
y = (np.tanh(np.tanh(x @ teacher[0]) @ teacher[1]) @ teacher[2]).astype("float32")


def mlp(dtype):
    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="tanh", dtype=dtype),
        keras.layers.Dense(64, activation="tanh", dtype=dtype),
        keras.layers.Dense(1, dtype=dtype),
    ])


def to_bfloat16(a):
    """float32 `a` rounded to the nearest bfloat16 (returned as float32 values)."""
    return ops.convert_to_numpy(ops.cast(ops.cast(a, "bfloat16"), "float32"))


judge = mlp("float32")  # evaluates any weights in float32
start = [  # Glorot-uniform kernels, zero biases
    to_bfloat16(rng.uniform(-1, 1, w.shape).astype("float32") * np.sqrt(6 / sum(w.shape))) if w.ndim == 2
    else np.zeros(w.shape, "float32")
    for w in judge.get_weights()
]


def float32_loss(weights):
    judge.set_weights([np.asarray(w, "float32") for w in weights])
    return float(np.mean((ops.convert_to_numpy(judge(x)) - y) ** 2))


print(f"{sum(w.size for w in start)} parameters, initial loss {float32_loss(start):.4f}")

# %% [markdown]
# ## Why rounding to nearest stalls
#
# bfloat16 keeps 8 significant bits: between 2ᵉ and 2ᵉ⁺¹ its numbers are 2ᵉ⁻⁷ apart, from 2⁻⁸
# to 2⁻⁷ of the value. Rounding x − Δ to the nearest of them gives back x whenever |Δ| is below
# half that spacing, 2⁻⁹ to 2⁻⁸ of |x|. ADAM's step is at most about the learning rate,
# 3·10⁻⁴: it is lost, every step, on every weight larger than 3·10⁻⁴ · 2⁹ ≈ 0.15 (and on some
# down to 3·10⁻⁴ · 2⁸ ≈ 0.08). Float32, with 24 significant bits, would lose it only on weights
# larger than about 3·10⁻⁴ · 2²⁵ ≈ 10⁴.

# %%
rate = 3e-4
print(f"1 − {rate} rounded to bfloat16: {to_bfloat16(np.float32(1 - rate))}")
assert to_bfloat16(np.float32(1 - rate)) == 1.0

kernels = np.concatenate([w.ravel() for w in start if w.ndim == 2])
half_spacing = 2.0 ** (np.floor(np.log2(np.abs(kernels))) - 8)  # half a bfloat16 unit at each weight
lost = np.mean(rate < half_spacing)
print(f"a step of {rate} is rounded away on {lost:.0%} of the starting kernel weights")
assert lost > 0.3

# %% [markdown]
# ## Four runs
#
# The float32 run, then the bfloat16 model with `ADAM(3e-4, rounding=...)` in each mode. The
# optimizer computes the update in float32 in every mode (its moments are float32 here) and
# rounds x − Δ once; only that rounding differs. A callback records the float32 loss after each
# epoch.

# %%
epochs = 50


class Float32Loss(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.losses = [float32_loss(self.model.get_weights())]

    def on_epoch_end(self, epoch, logs=None):
        self.losses.append(float32_loss(self.model.get_weights()))


runs = {}
for name, dtype, rounding in [
    ("float32", "float32", "nearest"),
    ("bfloat16, nearest", "bfloat16", "nearest"),
    ("bfloat16, kahan", "bfloat16", "kahan"),
    ("bfloat16, stochastic", "bfloat16", "stochastic"),
]:
    keras.utils.set_random_seed(0)  # the stochastic rounding's seed
    model = mlp(dtype)
    model.set_weights(start)
    model.compile(optimizer=ox.ADAM(rate, rounding=rounding), loss="mse")
    log = Float32Loss()
    model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0, callbacks=[log])
    runs[name] = {"model": model, "losses": np.array(log.losses)}

final = {name: run["losses"][-1] for name, run in runs.items()}
for name, loss in final.items():
    print(f"{name:>22}: final loss {loss:.5f}, {loss / final['float32']:.3f} × float32's")

# %%
assert all(runs[name]["model"].weights[0].dtype == "bfloat16" for name in runs if name != "float32")
assert final["bfloat16, nearest"] > 1.2 * final["float32"]  # stalled: clearly above float32
assert abs(final["bfloat16, kahan"] / final["float32"] - 1) < 0.01  # within 1% of float32
assert abs(final["bfloat16, stochastic"] / final["float32"] - 1) < 0.03  # within 3%

# %% [markdown]
# To nearest, the kernel weights on which a step of the rate is below half a unit (found above)
# never moved from where they started; with compensation or stochastic rounding nearly all did:

# %%
def unmoved(model):
    """Whether each kernel weight still equals its start (concatenated as `kernels`)."""
    ends = [ops.convert_to_numpy(ops.cast(w.value, "float32")) for w in model.weights]
    return np.concatenate([(end == begin).ravel() for end, begin in zip(ends, start) if begin.ndim == 2])


small_step = rate < half_spacing
for name in runs:
    stuck = unmoved(runs[name]["model"])
    print(f"{name:>22}: {stuck.mean():.0%} of the kernel weights unmoved after {epochs * 8} steps, "
          f"{stuck[small_step].mean():.0%} of those where a step is below half a unit")
assert unmoved(runs["bfloat16, nearest"]["model"])[small_step].mean() > 0.9
assert unmoved(runs["bfloat16, kahan"]["model"]).mean() < 0.1
assert unmoved(runs["bfloat16, stochastic"]["model"]).mean() < 0.1


# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
styles = {"float32": dict(color="black", linewidth=5, alpha=0.25), "bfloat16, nearest": dict(color="tab:orange"),
          "bfloat16, kahan": dict(color="tab:green"), "bfloat16, stochastic": dict(color="tab:red", linestyle=":")}
for name, run in runs.items():
    ax.plot(np.arange(epochs + 1) * 8, run["losses"], label=name, **styles[name])
ax.set(title=f"16→64→64→1 MLP, ADAM({rate})", xlabel="step", ylabel="training loss (weights evaluated in float32)",
       yscale="log")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The kahan and stochastic curves lie on the float32 one (the wide grey line: within a few
# percent at every epoch); the nearest one falls more slowly from the start, then flattens out.

# %%
curves = {name: run["losses"] for name, run in runs.items()}
for name in ["bfloat16, kahan", "bfloat16, stochastic"]:
    gap = np.max(np.abs(curves[name] / curves["float32"] - 1))
    print(f"{name:>22}: at most {gap:.2%} from the float32 curve")
    assert gap < 0.05
assert np.all(curves["bfloat16, nearest"][1:] > curves["float32"][1:])
fell = {name: 1 - curve[-1] / curve[epochs // 2] for name, curve in curves.items()}
for name, fraction in fell.items():
    print(f"{name:>22}: the loss fell by {fraction:.0%} in the last {epochs // 2 * 8} steps")
assert fell["bfloat16, nearest"] < 0.5 * fell["float32"]

# %% [markdown]
# ## What Kahan compensation keeps, and what it costs
#
# With `rounding="kahan"` each bfloat16 weight x has a compensation slot c, also bfloat16. A
# write first adds the step to c (c ← c − Δ); c accumulates the steps that are too small for x until they amount to
# a unit of x, and x' = x + c rounded takes them; what that rounding dropped, x + c − x', goes
# back into c. No update is lost, so the run follows the float32 one (torch-optimi's `kahan_sum`,
# Zamirai et al. 2020).
#
# The slot costs 2 bytes per parameter. With the optimizer's moments also in bfloat16
# (`state_dtype="bfloat16"`), ADAM trains a bfloat16 model in 2 (weights) + 4 (moments) + 2
# (compensation) = 8 bytes per parameter, against 4 + 8 = 12 in float32 (gradients aside).
# Counted from the variables:

# %%
def bytes_per_parameter(model):
    size = {"bfloat16": 2, "float16": 2}
    variables = list(model.weights) + list(model.optimizer.variables)
    total = sum(np.prod(v.shape) * size.get(v.dtype, np.dtype(v.dtype).itemsize) for v in variables)
    return total / model.count_params()


budget = {}
for name, dtype, options in [
    ("float32", "float32", {}),
    ("bfloat16, bfloat16 state, kahan", "bfloat16", {"state_dtype": "bfloat16", "rounding": "kahan"}),
]:
    model = mlp(dtype)
    model.compile(optimizer=ox.ADAM(rate, **options), loss="mse")
    model.optimizer.build(model.trainable_variables)
    budget[name] = bytes_per_parameter(model)
    kahan = [v for v in model.optimizer.variables if v.path.endswith("_kahan")]
    print(f"{name:>32}: {budget[name]:.2f} bytes per parameter; {len(kahan)} compensation slots "
          f"{sorted({v.dtype for v in kahan})}")
assert round(budget["float32"]) == 12 and round(budget["bfloat16, bfloat16 state, kahan"]) == 8

# %% [markdown]
# The runs above kept the moments in float32 to compare the roundings alone:
# `state_dtype="bfloat16"` rounds the moments too, an error of its own that compensating the
# weights does not remove; measure it on your own model before relying on it.
#
# ## What stochastic rounding does
#
# `rounding="stochastic"` needs no slot: it rounds x − Δ up or down with probability by
# distance, so that on average the weight is the float32 one (Gupta et al. 2015). A step of a
# quarter of a unit moves the weight by a whole unit a quarter of the time. The random bits come
# from a seed held as optimizer state: the run is reproducible under
# `keras.utils.set_random_seed`, and a saved model resumes with its seed where it stopped.
#
# One step of a quarter unit (bfloat16's unit just below 1 is 2⁻⁸) on 10 000 weights equal to 1:

# %%
def quarter_step(seed):
    keras.utils.set_random_seed(seed)
    w = keras.Variable(np.ones(10_000, "float32"), dtype="bfloat16")
    ox.Descent(2.0**-10, rounding="stochastic").apply([np.ones(10_000, "float32")], [w])  # Δ = 2⁻¹⁰
    return ops.convert_to_numpy(ops.cast(w.value, "float32"))


after = quarter_step(seed=0)
print(f"moved by a unit: {np.mean(after == 1 - 2.0**-8):.1%}, unchanged: {np.mean(after == 1):.1%}")
assert np.all((after == 1) | (after == 1 - 2.0**-8)) and abs(np.mean(after < 1) - 0.25) < 0.02
np.testing.assert_array_equal(quarter_step(seed=0), after)  # the same seed, the same rounding
assert not np.array_equal(quarter_step(seed=1), after)

# %% [markdown]
# ## Summary
#
# - `dtype="bfloat16"` layers with the default `rounding="nearest"` lose every update below about
#   2⁻⁹ of a weight; at a small rate the loss stalls well above float32's.
# - `rounding="kahan"` follows the float32 run (here within 1%) for 2 bytes per parameter.
# - `rounding="stochastic"` is unbiased and stateless but for a seed; its loss is within a few
#   percent of float32's.
