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
# # 6. Porting a PyTorch fine-tuning setup
#
# A common PyTorch recipe for training or fine-tuning a network: AdamW, no weight decay on
# biases and normalisation parameters, a higher learning rate for the new head than for the
# body, and a linear warmup followed by a cosine decay. Then the same network with the
# 1cycle policy, which also cycles SGD's momentum. This notebook ports both to keras_optx.
#
# The PyTorch code being ported:
#
# ```python
# groups = {}  # (in the head?, decays?) -> parameters
# for name, p in model.named_parameters():
#     decays = not (name.endswith("bias") or "norm" in name)
#     groups.setdefault((name.startswith("head."), decays), []).append(p)
# opt = torch.optim.AdamW([
#     {"params": ps, "lr": (10 if head else 1) * peak, "weight_decay": 0.05 if decays else 0.0}
#     for (head, decays), ps in groups.items()
# ])
# sched = torch.optim.lr_scheduler.SequentialLR(opt, [
#     torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
#     torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup),
# ], milestones=[warmup])
# for x, y in loader:
#     opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()
# ```
#
# | PyTorch | keras_optx |
# |---|---|
# | parameter groups with their own `lr` | `keras_optx.Partition({regex on variable.path: rule})` |
# | `"weight_decay": 0.0` for biases and norms | `opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])`, for every rule inside |
# | `LinearLR` then `CosineAnnealingLR` | `keras.optimizers.schedules.CosineDecay(..., warmup_target=, warmup_steps=)` as each rule's rate |
# | `OneCycleLR(..., cycle_momentum=True)` | `keras_optx.HyperparameterScheduler({"learning_rate": …, "momentum": …}, per="step")` |
# | the loop, `sched.step()` | `model.fit` (a schedule advances with each update) |

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
# ## Data and model
#
# scikit-learn's handwritten digits (8×8 images, 10 classes). The model is a body (a dense layer
# and a layer normalisation) and a head, with named layers so that the variable paths say which
# is which.

# %%
import matplotlib.pyplot as plt
from sklearn.datasets import load_digits

import keras_optx.torch

x, y = load_digits(return_X_y=True)
order = np.random.default_rng(0).permutation(len(x))
x, y = (x[order] / 16).astype("float32"), y[order]
x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]


def build_model():
    return keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, name="body"),
            keras.layers.LayerNormalization(name="norm"),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, name="head"),
        ],
        name="net",
    )


model = build_model()
start = model.get_weights()  # both runs below start here
[v.path for v in model.trainable_variables]

# %% [markdown]
# ## AdamW, parameter groups, warmup + cosine
#
# `keras_optx.torch.AdamW` is `torch.optim.AdamW` (decoupled decay, multiplied by the rate).
# A `Partition` gives each group of variables its own rule: the first pattern that
# `re.search`es a variable's path wins, so `".*"` last catches the rest. Each rule's rate is a
# `CosineDecay` schedule with a linear warmup from a tenth of the peak; the head's peaks 10×
# higher. `exclude_from_weight_decay` on the Partition reaches the rules inside it (it also
# does for `WeightDecay` in a chain, `ADAMW`'s decay and Keras's `weight_decay=`). It matches
# `variable.name`: Keras names a normalisation's scale and offset `gamma` and `beta`.

# %%
epochs, batch_size = 8, 50
steps = epochs * (len(x_train) // batch_size)  # optimizer updates in the whole run
warmup = steps // 10
peak, head_factor, weight_decay = 3e-3, 10.0, 0.05
no_decay = ["bias", "gamma", "beta"]


def warmup_cosine(peak_rate):
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=peak_rate / 10,
        warmup_target=peak_rate,
        warmup_steps=warmup,
        decay_steps=steps - warmup,
    )


def make_optimizer():
    opt = ox.Partition(
        {
            r"head/": keras_optx.torch.AdamW(warmup_cosine(head_factor * peak), weight_decay=weight_decay),
            r".*": keras_optx.torch.AdamW(warmup_cosine(peak), weight_decay=weight_decay),
        }
    )
    opt.exclude_from_weight_decay(var_names=no_decay)
    return opt




def warmup_cosine_numpy(peak_rate, step):
    """The same schedule in NumPy: linear from peak/10 to the peak, then a half cosine to 0."""
    step = np.asarray(step, "float64")
    ramp = peak_rate / 10 + (peak_rate - peak_rate / 10) * step / warmup
    cosine = peak_rate * (1 + np.cos(np.pi * np.clip(step - warmup, 0, steps - warmup) / (steps - warmup))) / 2
    return np.where(step < warmup, ramp, cosine)


n = np.arange(steps)
head_rates, body_rates = warmup_cosine_numpy(head_factor * peak, n), warmup_cosine_numpy(peak, n)
for i in [0, warmup // 2, warmup, steps // 2, steps - 1]:  # Keras's schedule is that formula
    np.testing.assert_allclose(float(ops.convert_to_numpy(warmup_cosine(peak)(i))), body_rates[i], rtol=1e-5)
    np.testing.assert_allclose(float(ops.convert_to_numpy(warmup_cosine(head_factor * peak)(i))), head_rates[i], rtol=1e-5)
np.testing.assert_allclose(head_rates, head_factor * body_rates)  # the head's rate is 10× the body's, at every step
assert np.argmax(body_rates) == warmup and np.isclose(body_rates[0], peak / 10) and np.isclose(body_rates.max(), peak)

# %% [markdown]
# **Check: what decays, and at which rate.** With a zero gradient AdamW's Adam part moves
# nothing (its moments stay 0), so a step only decays: x ← x·(1 − ηₙ·λ), with ηₙ the rate of
# step n. A few zero-gradient steps on a copy of the model show that kernels decay, each at its
# group's scheduled rate, and that biases and the normalisation's γ, β do not move.

# %%
probe = build_model()
probe.set_weights(start)
probe_opt = make_optimizer()
variables = probe.trainable_variables
before = {v.path: ops.convert_to_numpy(v).copy() for v in variables}
zeros = [np.zeros(v.shape, "float32") for v in variables]
k = warmup + 3  # through the warmup and past the peak
for _ in range(k):
    probe_opt.apply(zeros, variables)
for v in variables:
    old, new = before[v.path], ops.convert_to_numpy(v)
    if v.name in no_decay:
        np.testing.assert_array_equal(new, old)
    else:
        rates = head_rates if "head/" in v.path else body_rates
        np.testing.assert_allclose(new, old * np.prod(1 - rates[:k] * weight_decay), rtol=1e-5)
        assert not np.allclose(new, old, rtol=1e-6)
    print(f"{v.path:>16}: decayed by {1 - np.abs(new).sum() / np.abs(old).sum():.2e}")


# %% [markdown]
# **The same with torch's param groups.** `keras_optx.torch.AdamW(..., param_groups=[...])` takes
# the PyTorch code's groups as they are: each dict's `"params"` is a regular expression searched in
# `variable.path` (or a list of variables), the first group that matches a variable wins, and the
# variables no group matches use the constructor's values (torch's defaults). One optimizer, the
# same trajectory as the `Partition` above: checked here on random gradients.

# %%
def make_grouped_optimizer():
    no_decay_path = r"(bias|gamma|beta)$"
    return keras_optx.torch.AdamW(
        warmup_cosine(peak),
        weight_decay=weight_decay,
        param_groups=[
            {"params": r"head/.*" + no_decay_path, "lr": warmup_cosine(head_factor * peak), "weight_decay": 0.0},
            {"params": r"head/", "lr": warmup_cosine(head_factor * peak)},
            {"params": no_decay_path, "weight_decay": 0.0},
        ],
    )


twins = [build_model(), build_model()]
for net in twins:
    net.set_weights(start)
optimizers = [make_optimizer(), make_grouped_optimizer()]
rng = np.random.default_rng(1)
for _ in range(k):
    grads = [rng.normal(size=v.shape).astype("float32") for v in twins[0].trainable_variables]
    for net, opt in zip(twins, optimizers):
        opt.apply(grads, net.trainable_variables)
for a, b in zip(*(net.trainable_variables for net in twins)):
    np.testing.assert_allclose(ops.convert_to_numpy(b), ops.convert_to_numpy(a), rtol=1e-5, atol=1e-7)
print(f"Partition and param_groups agree on all {len(twins[0].trainable_variables)} variables after {k} updates")


# %% [markdown]
# ## Training
#
# `fit` as usual. A callback records the loss of each step.

# %%
class StepLog(keras.callbacks.Callback):
    """The loss after each update; for an optimizer with a momentum, its `learning_rate` and `momentum` before it."""

    def on_train_begin(self, logs=None):
        self.losses, self.rates, self.momenta = [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        opt = self.model.optimizer
        if hasattr(opt, "momentum"):
            self.rates.append(float(ops.convert_to_numpy(opt.learning_rate)))
            self.momenta.append(float(ops.convert_to_numpy(opt.momentum)))

    def on_train_batch_end(self, batch, logs=None):
        self.losses.append(float(logs["loss"]))


loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile(optimizer=make_optimizer(), loss=loss_fn, metrics=["accuracy"])
adamw_log = StepLog()
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=False, callbacks=[adamw_log], verbose=0)
adamw_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"AdamW + warmup/cosine: loss {adamw_log.losses[0]:.3f} -> {adamw_log.losses[-1]:.3f}, test accuracy {adamw_accuracy:.3f}")
assert int(ops.convert_to_numpy(model.optimizer.iterations)) == steps
assert adamw_log.losses[-1] < 0.1 * adamw_log.losses[0] and adamw_accuracy > 0.9


# %% [markdown]
# ## 1cycle, momentum included
#
# PyTorch's `OneCycleLR(opt, max_lr=0.1, total_steps=steps)` on `SGD(momentum=0.9, nesterov=True)`
# raises the rate from `max_lr/25` to `max_lr` over the first 30% of the steps, then anneals it
# to `max_lr/25/10⁴`, both with cosine curves; the momentum moves the opposite way between
# 0.95 and 0.85 (Smith 2018, arXiv:1803.09820). Below are those formulas as a Python function;
# `HyperparameterScheduler(..., per="step")` sets both hyperparameters before each update, also
# inside `fit`'s compiled step (no retrace). Any keras_optx hyperparameter can be steered so, e.g.
# ADAM's `beta`.

# %%
def one_cycle(step, max_lr=0.1, pct_start=0.3, div_factor=25.0, final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95):
    """(rate, momentum) of torch.optim.lr_scheduler.OneCycleLR (cosine annealing) at update `step`."""
    top = pct_start * steps - 1
    if step <= top:
        t, rates, momenta = step / top, (max_lr / div_factor, max_lr), (max_momentum, base_momentum)
    else:
        t, rates, momenta = (step - top) / (steps - 1 - top), (max_lr, max_lr / div_factor / final_div_factor), (base_momentum, max_momentum)
    c = (1 + np.cos(np.pi * t)) / 2  # 1 -> 0
    return rates[1] + (rates[0] - rates[1]) * c, momenta[1] + (momenta[0] - momenta[1]) * c


cycle = np.array([one_cycle(i) for i in n])
scheduler = ox.HyperparameterScheduler(
    {"learning_rate": lambda i: one_cycle(i)[0], "momentum": lambda i: one_cycle(i)[1]}, per="step"
)
model.set_weights(start)
model.compile(optimizer=keras_optx.torch.SGD(lr=0.1, momentum=0.9, nesterov=True), loss=loss_fn, metrics=["accuracy"])
cycle_log = StepLog()
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, shuffle=False, callbacks=[scheduler, cycle_log], verbose=0)
cycle_accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
print(f"SGD + 1cycle: loss {cycle_log.losses[0]:.3f} -> {cycle_log.losses[-1]:.3f}, test accuracy {cycle_accuracy:.3f}")

# The optimizer's rate and momentum, read before each update, followed the cycle:
np.testing.assert_allclose(cycle_log.rates, cycle[:, 0], rtol=1e-5)
np.testing.assert_allclose(cycle_log.momenta, cycle[:, 1], rtol=1e-5)
assert min(cycle_log.momenta) < 0.851 and cycle_log.momenta[0] > 0.949 and cycle_log.momenta[-1] > 0.949
assert cycle_log.losses[-1] < 0.1 * cycle_log.losses[0] and cycle_accuracy > 0.9

# %% [markdown]
# ## The schedules and the losses

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.5))
axes[0].plot(n, head_rates, label="head")
axes[0].plot(n, body_rates, label="body")
axes[0].set(title="AdamW: warmup + cosine", xlabel="update", ylabel="learning rate", yscale="log")
axes[0].legend()
axes[1].plot(n, cycle_log.rates, color="C2")
axes[1].set(title="1cycle", xlabel="update", ylabel="learning rate")
momentum_axis = axes[1].twinx()
momentum_axis.plot(n, cycle_log.momenta, color="C3", linestyle="--")
momentum_axis.set_ylabel("momentum (dashed)")
axes[2].plot(adamw_log.losses, label="AdamW + warmup/cosine")
axes[2].plot(cycle_log.losses, label="SGD + 1cycle")
axes[2].set(title="training loss", xlabel="update", yscale="log")
axes[2].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Two details of the port:
#
# - A rule inside a `Partition` follows its schedule with the Partition's update count
#   (`opt.iterations`), as the zero-gradient check shows: the rate of update n is `schedule(n)`.
# - Exclusion matches `variable.name` with regular expressions, as Keras's
#   `exclude_from_weight_decay` does; `var_list=[...]` takes the variables themselves.
