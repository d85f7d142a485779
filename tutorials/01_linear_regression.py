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
# # 1. Linear regression by hand, then with an optimiser
#
# This retells the opening of Flux's *Optimisers* page in Keras. We create dummy data,
# compute a loss, take gradients for the parameters `W` and `b`, update them by hand, and
# then let an optimiser do the same.

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
# The model is `W·x .+ b` with `W` a 2×5 matrix and `b` a 2-vector, and the loss is the summed
# squared error. Parameters are `keras.Variable`s; `loss` reads them, as a Flux closure does.

# %%
W = keras.Variable(keras.random.uniform((2, 5)), name="W")
b = keras.Variable(keras.random.uniform((2,)), name="b")


def predict(x):
    return ops.matmul(W, x) + b


def loss(x, y):
    return ops.sum((predict(x) - y) ** 2)


x, y = keras.random.uniform((5,)), keras.random.uniform((2,))  # dummy data
l = float(ops.convert_to_numpy(loss(x, y)))
l

# %% [markdown]
# `keras_optx.gradient(loss_fn, θ)` is Flux's `gradient(() -> loss(x, y), θ)`: it calls the
# function of no arguments and returns one gradient per variable, on any backend.

# %%
θ = [W, b]
grads = ox.gradient(lambda: loss(x, y), θ)
[tuple(g.shape) for g in grads]

# %% [markdown]
# ## By hand: `x .-= η .* Δ`
#
# Gradient descent subtracts η times the gradient from each parameter. We keep a copy of the
# starting point so we can replay the same step with an optimiser.

# %%
η = 0.1  # learning rate
start = [p.numpy().copy() for p in θ]  # copy: on torch, .numpy() shares memory with the variable
for p, g in zip(θ, grads):
    p.assign(p - η * g)
by_hand = [p.numpy().copy() for p in θ]
l_hand = float(ops.convert_to_numpy(loss(x, y)))
print(f"loss {l:.4f} -> {l_hand:.4f}")
assert l_hand < l  # the step went downhill

# %% [markdown]
# ## The same step with `Descent(0.1)`
#
# An optimiser's `apply(grads, variables)` is Flux's `update!(opt, θ, grads)`. `Descent(η)` is
# exactly the hand-written update, so from the same starting point it gives the same numbers.

# %%
for p, value in zip(θ, start):
    p.assign(value)  # rewind

opt = ox.Descent(0.1)
opt.apply(grads, θ)
for p, expected in zip(θ, by_hand):
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6, atol=1e-7)
print("Descent(0.1) took the same step as the hand update")


# %% [markdown]
# ## A training loop, and swapping in ADAM
#
# A loop repeats: gradient, update. Replacing `Descent` by a more elaborate rule such as
# `ADAM` is a one-word change. Here both start from the same parameters and take 60 steps.

# %%
def train(opt, steps=60):
    for p, value in zip(θ, start):
        p.assign(value)
    losses = []
    for _ in range(steps):
        value, grads = ox.value_and_gradient(lambda: loss(x, y), θ)
        opt.apply(grads, θ)
        losses.append(float(ops.convert_to_numpy(value)))
    losses.append(float(ops.convert_to_numpy(loss(x, y))))
    return losses


curves = {"Descent(0.1)": train(ox.Descent(0.1)), "ADAM(0.05)": train(ox.ADAM(0.05))}
for name, losses in curves.items():
    print(f"{name:>12}: " + "  ".join(f"{v:.2e}" for v in losses[::10]))

# %%
for name, losses in curves.items():
    assert losses[-1] < 1e-2 * losses[0], name  # both drive the loss down a hundredfold
