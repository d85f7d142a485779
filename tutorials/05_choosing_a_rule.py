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
# # 5. Choosing a rule
#
# Which rule should you use? Try several on *your* model and data. `keras_optx.compare.compare`
# does it fairly: for each seed, every rule starts from the same initial weights and sees the
# batches in the same order, so only the rule differs. It returns a table (rate, final loss,
# score, time per step) and draws the loss curves.
#
# Here: a small network on scikit-learn's handwritten digits (8×8 images, 10 classes, shipped
# with scikit-learn). The same comparison on the full data, from the command line:
# `python -m keras_optx.compare --tune --seeds 2` (see `--help`).

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

from IPython.display import Image, display
from sklearn.datasets import load_digits

from keras_optx.compare import compare

x, y = load_digits(return_X_y=True)
order = np.random.default_rng(0).permutation(len(x))
x, y = (x[order] / 16).astype("float32"), y[order]
x_train, y_train, x_test, y_test = x[:800], y[:800], x[800:1200], y[800:1200]  # a subsample: fast


def build_model():
    # Called once per run: a new, uncompiled model (compare sets the same initial weights per seed).
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


settings = dict(
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
    epochs=6,
    batch_size=50,
    test_data=(x_test, y_test),
    progress=False,  # True prints each step of the work and a time estimate to stderr
)

# %% [markdown]
# ## Each rule at its default rate
#
# Rules are given by name (as on the command line: `"adam"`, `"adam:0.01"`, `"clipnorm+adam"`),
# as optimizer objects, or as factories. Here four of Flux's rules, Flux v0.12's OADAM and
# AdaBelief, and Lion and Rprop.

# %%
rules = ["descent", "nesterov", "adam", "adagrad", "oadam", "adabelief", "lion", "rprop"]
defaults = compare(build_model, (x_train, y_train), rules, **settings)
print(defaults.table())

# %% [markdown]
# With its default settings Nesterov (η = 0.001) is far behind Descent and ADAGrad (η = 0.1):
# such a table ranks default rates more than rules.
#
# ## Tuned rates, several seeds
#
# `tune=True` first searches each rule's learning rate (successive halving over ×0.01 … ×100
# its default, a few epochs each) on a held-out 20% of the *training* data, never on the test
# set, then trains at the chosen rate. `seeds=2` runs each rule twice: each cell shows the
# mean ± standard deviation over the seeds, and the plot a band.

# %%
tuned = compare(build_model, (x_train, y_train), ["descent", "nesterov", "adam", "lion"], tune=True, tune_epochs=2, seeds=2, **settings)
print(tuned.table())

png = tuned.plot(os.path.join(tempfile.mkdtemp(), "tuned.png"), title="digits, tuned rates")
display(Image(filename=png))

# %%
before = {row.rule: row.score()[0] for row in defaults.rows}
after = {row.rule: row.score()[0] for row in tuned.rows}
print({rule: f"{before[rule]:.1%} → {after[rule]:.1%}" for rule in after})
assert all(row.tuned for row in tuned.rows)
assert after["Nesterov"] > before["Nesterov"] + 0.2  # tuning mattered more than the rule
assert min(after.values()) > 0.85

# %% [markdown]
# Once tuned, the rules are close; pick by what else matters (time per step, memory, how
# wide the good range of rates is — `row.trials` lists every rate tried with its validation
# loss).
#
# ## Your own rules
#
# Chains, wrappers such as `Lookahead`, `Partition`, `keras_optx.torch` optimizers, Keras's own
# optimizers and factories work alike. A chain's rate is its last rate-bearing member's, a
# wrapper's the wrapped optimizer's; a factory is called with no argument for its
# default, and with the rate to try when it takes one.

# %%
import keras_optx.torch

mine = {
    "clip + ADAM": ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(0.01)),
    "torch SGD": keras_optx.torch.SGD(0.1, momentum=0.9),
    "decayed Momentum": lambda lr=0.05: ox.Optimiser(ox.InvDecay(0.01), ox.Momentum(lr)),
    "Ranger": ox.Lookahead(ox.RADAM(0.01)),  # Lookahead around RADAM: its rate is RADAM's
}
result = compare(build_model, (x_train, y_train), mine, **settings)
print(result.table())
for row in result.to_dicts():
    assert row["curves"][0][-1] < row["curves"][0][0], row  # every one trains
    assert row["rule"] == "Ranger" or row["score"] > 0.8, row

# %% [markdown]
# Ranger trails here: in six short epochs RADAM's warm-up and Lookahead's half-way steps
# both slow the start. `tune=True` gives it (and every rule) a fair rate before judging.
