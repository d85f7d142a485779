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
# # 4. Composing optimisers
#
# Flux's `Optimiser(r₁, r₂, …)` feeds the gradient through each member in turn: each produces a
# modified gradient for the next, and the last one's output is the update. keras_optx has the
# same `Optimiser`; schedules (`ExpDecay`, `InvDecay`), `WeightDecay` and clipping are members
# like any rule.
#
# Flux's example fits `w` to `w1` (two random 10×10 matrices) through the loss
# `mse(w·x, w1·x)` on random `x`, with `Optimiser(ExpDecay(0.001, 0.1, 1000, 1e-4), Descent())`
# for 10⁵ steps, and the loss falls from about 9 to about 0.9. We keep the shape of the example
# but take a batch of 16 random `x` per step and larger rates, so that 150 steps take seconds.

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

# %%
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from IPython.display import Image, display

# NumPy copies of the starting point: on torch a Variable built from a tensor shares its memory.
start_w = ops.convert_to_numpy(keras.random.normal((10, 10), seed=1))
start_w1 = ops.convert_to_numpy(keras.random.normal((10, 10), seed=2))
w, w1 = keras.Variable(start_w), keras.Variable(start_w1)
θ = [w, w1]
probe = keras.random.uniform((10, 1000), seed=3)  # a fixed large sample of x, to measure the loss


def loss(x):  # x: 10×batch
    return ops.mean((ops.matmul(w, x) - ops.matmul(w1, x)) ** 2)  # Flux.mse


def fit(opt, steps=150, batch=16, seed=0):
    """Rewind w and w1, take `steps` updates; return the loss of every step."""
    for p, value in zip(θ, (start_w, start_w1)):
        p.assign(value)
    gen = keras.random.SeedGenerator(seed)  # the same x for every optimiser
    losses = []
    for _ in range(steps):
        x = keras.random.uniform((10, batch), seed=gen)
        value, grads = ox.value_and_gradient(lambda: loss(x), θ)
        opt.apply(grads, θ)
        losses.append(float(ops.convert_to_numpy(value)))
    return np.array(losses)


before = float(ops.convert_to_numpy(loss(probe)))
before

# %% [markdown]
# ## Exponential decay, then descent
#
# `ExpDecay(η, decay, decay_step, clip)` multiplies the step by η·decay^⌊n/decay_step⌋ (never below
# `clip`). Here the step starts at 1.0·0.3 and halves every 50 steps.

# %%
schedule = ox.ExpDecay(1.0, 0.5, 50, 1e-2)
decayed = fit(ox.Optimiser(schedule, ox.Descent(0.3)))
rates = [0.3 * float(schedule(n)) for n in range(len(decayed))]
after = float(ops.convert_to_numpy(loss(probe)))
print(f"loss {before:.3f} -> {after:.3f}")
assert after < 0.1 * before  # at least tenfold, as in Flux

# %% [markdown]
# The same schedule can also be the `learning_rate` of the rule: `Descent(ExpDecay(0.3, 0.5, 50, 3e-3))`
# scales η directly and gives the same trajectory.

# %%
as_rate = fit(ox.Descent(ox.ExpDecay(0.3, 0.5, 50, 3e-3)), steps=60)
np.testing.assert_allclose(as_rate, decayed[:60], rtol=1e-4)

# %% [markdown]
# ## Weight decay in a chain
#
# `WeightDecay(wd)` adds `wd·x` to the gradient. The loss only sees `w − w1`, so their gradients
# cancel in the sum: without decay `w + w1` never changes, and with
# `Optimiser(WeightDecay(wd), Descent(η))` it shrinks by exactly (1 − η·wd) per step.

# %%
wd, η, steps = 0.05, 0.1, 50
fit(ox.Descent(η), steps=steps)
plain_sum = ops.convert_to_numpy(w + w1)
fit(ox.Optimiser(ox.WeightDecay(wd), ox.Descent(η)), steps=steps)
decay_sum = ops.convert_to_numpy(w + w1)
start_sum = start_w + start_w1

np.testing.assert_allclose(plain_sum, start_sum, rtol=1e-4, atol=1e-4)
np.testing.assert_allclose(decay_sum, start_sum * (1 - η * wd) ** steps, rtol=1e-3, atol=1e-4)
print(f"|w + w1|: start {np.linalg.norm(start_sum):.3f}, no decay {np.linalg.norm(plain_sum):.3f}, "
      f"decay {np.linalg.norm(decay_sum):.3f}")

# %% [markdown]
# ## Clipping, then ADAM
#
# Flux's gradient-clipping example is `Optimiser(ClipValue(1e-3), ADAM(1e-3))`: every gradient
# entry is clamped to ±10⁻³ before ADAM sees it. ADAM divides by a running root-mean-square of
# the gradient, so it hardly notices the clamp; clipping guards against rare huge gradients
# rather than setting the step size.

# %%
clipped = fit(ox.Optimiser(ox.ClipValue(1e-3), ox.ADAM(1e-3)))
clipped_after = float(ops.convert_to_numpy(loss(probe)))
adam = fit(ox.ADAM(1e-3))
adam_after = float(ops.convert_to_numpy(loss(probe)))
print(f"loss {before:.3f} -> ADAM {adam_after:.3f}, ClipValue + ADAM {clipped_after:.3f}")
assert clipped_after < 0.9 * before
assert abs(clipped_after - adam_after) < 0.1 * (before - adam_after)  # the clamp changes little

# %% [markdown]
# ## The learning rate and the losses, plotted

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
left.plot(rates)
left.set(title="ExpDecay(1.0, 0.5, 50) then Descent(0.3): step size", xlabel="step", ylabel="η", yscale="log")
for name, curve in [("ExpDecay + Descent", decayed), ("ADAM(1e-3)", adam), ("ClipValue + ADAM", clipped)]:
    right.plot(np.convolve(curve, np.ones(10) / 10, mode="valid"), label=name)  # 10-step average
right.set(title="loss", xlabel="step", yscale="log")
right.legend()
fig.tight_layout()

png = os.path.join(tempfile.mkdtemp(), "composing.png")
fig.savefig(png)
plt.close(fig)
display(Image(filename=png))
with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
