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
# # 2. A PyTorch training step, in Keras
#
# This follows a classic PyTorch notebook on optimisers: a 3→10→1 network, binary
# cross-entropy, 20 points, one step of `optim.SGD(lr=1e-2)`. `keras_optx.torch.SGD` takes
# PyTorch's names and arguments (minus `params`) and produces PyTorch's trajectory, as a
# Keras optimizer on any backend.
#
# | PyTorch | Keras + keras_optx |
# |---|---|
# | `nn.Sequential(nn.Linear(3,10), nn.ReLU(), nn.Linear(10,1), nn.Sigmoid())` | `keras.Sequential([Dense(10, "relu"), Dense(1, "sigmoid")])` |
# | `optim.SGD(model.parameters(), lr=1e-2)` | `keras_optx.torch.SGD(lr=1e-2)` |
# | `loss_fn(preds, targets)` | `loss_fn(targets, preds)` (Keras puts the truth first) |
# | `opt.zero_grad(); loss.backward()` | `grads = keras_optx.gradient(...)` |
# | `opt.step()` | `opt.apply(grads, model.trainable_variables)` |

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
from keras import layers
from keras_optx.torch import SGD

model = keras.Sequential([keras.Input((3,)), layers.Dense(10, activation="relu"), layers.Dense(1, activation="sigmoid")])
{v.path: tuple(v.shape) for v in model.weights}  # PyTorch's state_dict()

# %% [markdown]
# Twenty points: the second half is shifted by 0.25 and labelled 1.

# %%
rng = np.random.default_rng(0)
inputs = rng.standard_normal((20, 3)).astype("float32")
inputs[10:] += 0.25
targets = np.zeros((20, 1), "float32")
targets[10:] = 1

loss_fn = keras.losses.BinaryCrossentropy()
preds = model(inputs)
float(ops.convert_to_numpy(loss_fn(targets, preds)))

# %% [markdown]
# ## Gradients
#
# PyTorch accumulates gradients into `.grad`, hence `zero_grad()` before `backward()`. In
# Keras a gradient is a value returned by a function, so there is nothing to zero.

# %%
weights = model.trainable_variables
loss, grads = ox.value_and_gradient(lambda: loss_fn(targets, model(inputs)), weights)
print("loss", float(ops.convert_to_numpy(loss)))
ops.convert_to_numpy(grads[0])[:, :3]  # first kernel, a few columns

# %% [markdown]
# ## One optimizer step
#
# Plain SGD moves every parameter by exactly `lr · grad` (to float32 rounding).

# %%
lr = 1e-2
opt = SGD(lr=lr)
before = [w.numpy().copy() for w in weights]  # copies: on torch .numpy() is a view
opt.apply(grads, weights)  # opt.step()
after = [w.numpy().copy() for w in weights]

for b0, b1, g in zip(before, after, grads):
    np.testing.assert_allclose(b1, b0 - lr * ops.convert_to_numpy(g), rtol=1e-6, atol=1e-7)
print("kernel[0, :3] before", before[0][0, :3], "after", after[0][0, :3])

# %% [markdown]
# ## The same step with `model.fit`
#
# Compiling the model with the optimizer and fitting one full batch for one epoch takes the
# same step from the same starting point.

# %%
for w, value in zip(weights, before):
    w.assign(value)  # rewind

model.compile(optimizer=SGD(lr=lr), loss=loss_fn)
model.fit(inputs, targets, batch_size=20, epochs=1, shuffle=False, verbose=0)
for w, expected in zip(weights, after):
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-7)
print("model.fit took the same step")

# %% [markdown]
# Training for longer is the usual `fit`; here with momentum, as `optim.SGD(..., momentum=0.9)`.

# %%
model.compile(optimizer=SGD(lr=0.1, momentum=0.9), loss=loss_fn, metrics=["accuracy"])
history = model.fit(inputs, targets, batch_size=20, epochs=40, verbose=0)
losses = history.history["loss"]
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {history.history['accuracy'][-1]:.2f}")
assert losses[-1] < losses[0]
