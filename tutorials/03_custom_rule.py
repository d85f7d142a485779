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
# # 3. Writing your own rule
#
# Flux's *Optimiser Interface* builds a Momentum optimiser by hand: parameters as fields, a
# velocity per parameter as state, and an `apply!` that computes the update:
#
# v = ρ·v − η·Δ;  Δ = −v
#
# In keras_optx a rule is a `keras_optx.Rule` subclass: its hyperparameters (with a check
# each), its slots (per-variable state with an initial value) and `delta`, which returns the
# update Δ for `x ← x − Δ` and the new slot values. `g`, `x` and `s.velocity` hold every
# variable at once and support ordinary arithmetic, so the rule reads like the formula.

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
@keras.saving.register_keras_serializable(package="tutorial")
class MyMomentum(ox.Rule):
    """Flux's interface example: v ← ρ·v − η·g; Δ = −v."""

    hyperparameters = {"rho": ox.checks.unit}  # ρ in [0, 1), checked
    slots = {"velocity": 0.0}

    def __init__(self, learning_rate=0.01, rho=0.9, **kwargs):
        super().__init__(learning_rate, rho=rho, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        v = self.rho * s.velocity - lr * g
        return -v, {"velocity": v}


# %% [markdown]
# Hyperparameters are checked, stored as attributes and saved in the config:

# %%
print(MyMomentum(0.01, 0.99).get_config()["rho"])
try:
    MyMomentum(rho=1.5)
except ValueError as error:
    print("refused:", error)

# %% [markdown]
# ## Same numbers as the built-in `Momentum`
#
# Apply both to identical copies of some parameters, with the gradients of the same loss, for a
# few steps.

# %%
target = ops.convert_to_numpy(keras.random.normal((4, 3)))
start = ops.convert_to_numpy(keras.random.normal((4, 3)))


def run(opt, steps=5):
    w = keras.Variable(start)
    for _ in range(steps):
        grads = ox.gradient(lambda: ops.sum((w - target) ** 2), [w])
        opt.apply(grads, [w])
    return w.numpy().copy()


mine, builtin = run(MyMomentum(0.01, 0.9)), run(ox.Momentum(0.01, 0.9))
np.testing.assert_allclose(mine, builtin, rtol=1e-6, atol=1e-7)
print("MyMomentum matches keras_optx.Momentum:", np.abs(mine - builtin).max())

# %% [markdown]
# ## In a chain
#
# A custom rule composes like any other. `Optimiser(ClipNorm(1.0), MyMomentum())` first clips
# each gradient to norm 1, then applies momentum; so on the first step, whatever the
# gradient's size, each variable moves by exactly η·1.

# %%
w = keras.Variable(start)
before = w.numpy().copy()
chain = ox.Optimiser(ox.ClipNorm(1.0), MyMomentum(0.01))
grads = ox.gradient(lambda: 100.0 * ops.sum((w - target) ** 2), [w])  # a large gradient
chain.apply(grads, [w])
step = np.linalg.norm(before - w.numpy())
print("gradient norm", float(ops.convert_to_numpy(ops.norm(grads[0]))), "-> step norm", step)
assert float(ops.convert_to_numpy(ops.norm(grads[0]))) > 1.0
np.testing.assert_allclose(step, 0.01 * 1.0, rtol=1e-5)

# %% [markdown]
# ## In `model.fit`, saved and loaded
#
# The chain is a Keras optimizer: compile with it, fit, save to a `.keras` file. Loading
# brings back the chain, the custom rule with its hyperparameters, and its velocities, so
# training resumes where it stopped.

# %%
import tempfile

rng = np.random.default_rng(0)
features = rng.standard_normal((64, 4)).astype("float32")
labels = features @ np.array([[1.0], [-2.0], [0.5], [0.0]], "float32") + 0.1

model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer=ox.Optimiser(ox.ClipNorm(1.0), MyMomentum(0.05)), loss="mse")
history = model.fit(features, labels, batch_size=16, epochs=8, shuffle=False, verbose=0)
losses = history.history["loss"]
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
assert losses[-1] < 0.5 * losses[0]

path = os.path.join(tempfile.mkdtemp(), "custom_rule.keras")
model.save(path)
loaded = keras.saving.load_model(path)
print(loaded.optimizer)

# %%
member = loaded.optimizer[1]
assert isinstance(member, MyMomentum) and member.rho == 0.9
for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
    np.testing.assert_array_equal(ops.convert_to_numpy(saved), ops.convert_to_numpy(restored))

# One more epoch on each: the restored model continues the same trajectory.
model.fit(features, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
loaded.fit(features, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
for a, b in zip(model.get_weights(), loaded.get_weights()):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
print("the loaded model resumes the same trajectory")
