"""Builds the tutorial notebooks from the cell text below: `python tutorials/_build.py`.

The notebooks are generated so that their source stays reviewable as plain Python and
is committed without outputs; `tests/test_tutorials.py` executes them on each backend.
"""

import copy
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).parent


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


SETUP = code(
    """
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # quieter TensorFlow start-up

import numpy as np
import keras
from keras import ops
import keras_optx as ox

keras.utils.set_random_seed(0)
print("Keras backend:", keras.backend.backend())
"""
)

BACKEND_NOTE = md(
    """
The notebook runs unchanged on the JAX, PyTorch and TensorFlow backends: choose one with
the environment variable `KERAS_BACKEND` before starting Jupyter (`KERAS_BACKEND=jax jupyter lab`).
"""
)

# 01 ---------------------------------------------------------------------------------
LINEAR_REGRESSION = [
    md(
        """
# 1. Linear regression by hand, then with an optimiser

This retells the opening of Flux's *Optimisers* page in Keras. We create dummy data,
compute a loss, take gradients for the parameters `W` and `b`, update them by hand, and
then let an optimiser do the same.
"""
    ),
    BACKEND_NOTE,
    SETUP,
    md(
        """
The model is `W·x .+ b` with `W` a 2×5 matrix and `b` a 2-vector, and the loss is the summed
squared error. Parameters are `keras.Variable`s; `loss` reads them, as a Flux closure does.
"""
    ),
    code(
        """
W = keras.Variable(keras.random.uniform((2, 5)), name="W")
b = keras.Variable(keras.random.uniform((2,)), name="b")


def predict(x):
    return ops.matmul(W, x) + b


def loss(x, y):
    return ops.sum((predict(x) - y) ** 2)


x, y = keras.random.uniform((5,)), keras.random.uniform((2,))  # dummy data
l = float(ops.convert_to_numpy(loss(x, y)))
l
"""
    ),
    md(
        """
`keras_optx.gradient(loss_fn, θ)` is Flux's `gradient(() -> loss(x, y), θ)`: it calls the
function of no arguments and returns one gradient per variable, on any backend.
"""
    ),
    code(
        """
θ = [W, b]
grads = ox.gradient(lambda: loss(x, y), θ)
[tuple(g.shape) for g in grads]
"""
    ),
    md(
        """
## By hand: `x .-= η .* Δ`

Gradient descent subtracts η times the gradient from each parameter. We keep a copy of the
starting point so we can replay the same step with an optimiser.
"""
    ),
    code(
        """
η = 0.1  # learning rate
start = [p.numpy().copy() for p in θ]  # copy: on torch, .numpy() shares memory with the variable
for p, g in zip(θ, grads):
    p.assign(p - η * g)
by_hand = [p.numpy().copy() for p in θ]
l_hand = float(ops.convert_to_numpy(loss(x, y)))
print(f"loss {l:.4f} -> {l_hand:.4f}")
assert l_hand < l  # the step went downhill
"""
    ),
    md(
        """
## The same step with `Descent(0.1)`

An optimiser's `apply(grads, variables)` is Flux's `update!(opt, θ, grads)`. `Descent(η)` is
exactly the hand-written update, so from the same starting point it gives the same numbers.
"""
    ),
    code(
        """
for p, value in zip(θ, start):
    p.assign(value)  # rewind

opt = ox.Descent(0.1)
opt.apply(grads, θ)
for p, expected in zip(θ, by_hand):
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6, atol=1e-7)
print("Descent(0.1) took the same step as the hand update")
"""
    ),
    md(
        """
## A training loop, and swapping in ADAM

A loop repeats: gradient, update. Replacing `Descent` by a more elaborate rule such as
`ADAM` is a one-word change. Here both start from the same parameters and take 60 steps.
"""
    ),
    code(
        """
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
"""
    ),
    code(
        """
for name, losses in curves.items():
    assert losses[-1] < 1e-2 * losses[0], name  # both drive the loss down a hundredfold
"""
    ),
]

# 02 ---------------------------------------------------------------------------------
PYTORCH_LOOP = [
    md(
        """
# 2. A PyTorch training step, in Keras

This follows a classic PyTorch notebook on optimisers: a 3→10→1 network, binary
cross-entropy, 20 points, one step of `optim.SGD(lr=1e-2)`. `keras_optx.torch.SGD` takes
PyTorch's names and arguments (minus `params`) and produces PyTorch's trajectory, as a
Keras optimizer on any backend.

| PyTorch | Keras + keras_optx |
|---|---|
| `nn.Sequential(nn.Linear(3,10), nn.ReLU(), nn.Linear(10,1), nn.Sigmoid())` | `keras.Sequential([Dense(10, "relu"), Dense(1, "sigmoid")])` |
| `optim.SGD(model.parameters(), lr=1e-2)` | `keras_optx.torch.SGD(lr=1e-2)` |
| `loss_fn(preds, targets)` | `loss_fn(targets, preds)` (Keras puts the truth first) |
| `opt.zero_grad(); loss.backward()` | `grads = keras_optx.gradient(...)` |
| `opt.step()` | `opt.apply(grads, model.trainable_variables)` |
"""
    ),
    BACKEND_NOTE,
    SETUP,
    code(
        """
from keras import layers
from keras_optx.torch import SGD

model = keras.Sequential([keras.Input((3,)), layers.Dense(10, activation="relu"), layers.Dense(1, activation="sigmoid")])
{v.path: tuple(v.shape) for v in model.weights}  # PyTorch's state_dict()
"""
    ),
    md(
        """
Twenty points: the second half is shifted by 0.25 and labelled 1.
"""
    ),
    code(
        """
rng = np.random.default_rng(0)
inputs = rng.standard_normal((20, 3)).astype("float32")
inputs[10:] += 0.25
targets = np.zeros((20, 1), "float32")
targets[10:] = 1

loss_fn = keras.losses.BinaryCrossentropy()
preds = model(inputs)
float(ops.convert_to_numpy(loss_fn(targets, preds)))
"""
    ),
    md(
        """
## Gradients

PyTorch accumulates gradients into `.grad`, hence `zero_grad()` before `backward()`. In
Keras a gradient is a value returned by a function, so there is nothing to zero.
"""
    ),
    code(
        """
weights = model.trainable_variables
loss, grads = ox.value_and_gradient(lambda: loss_fn(targets, model(inputs)), weights)
print("loss", float(ops.convert_to_numpy(loss)))
ops.convert_to_numpy(grads[0])[:, :3]  # first kernel, a few columns
"""
    ),
    md(
        """
## One optimizer step

Plain SGD moves every parameter by exactly `lr · grad` (to float32 rounding).
"""
    ),
    code(
        """
lr = 1e-2
opt = SGD(lr=lr)
before = [w.numpy().copy() for w in weights]  # copies: on torch .numpy() is a view
opt.apply(grads, weights)  # opt.step()
after = [w.numpy().copy() for w in weights]

for b0, b1, g in zip(before, after, grads):
    np.testing.assert_allclose(b1, b0 - lr * ops.convert_to_numpy(g), rtol=1e-6, atol=1e-7)
print("kernel[0, :3] before", before[0][0, :3], "after", after[0][0, :3])
"""
    ),
    md(
        """
## The same step with `model.fit`

Compiling the model with the optimizer and fitting one full batch for one epoch takes the
same step from the same starting point.
"""
    ),
    code(
        """
for w, value in zip(weights, before):
    w.assign(value)  # rewind

model.compile(optimizer=SGD(lr=lr), loss=loss_fn)
model.fit(inputs, targets, batch_size=20, epochs=1, shuffle=False, verbose=0)
for w, expected in zip(weights, after):
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-7)
print("model.fit took the same step")
"""
    ),
    md(
        """
Training for longer is the usual `fit`; here with momentum, as `optim.SGD(..., momentum=0.9)`.
"""
    ),
    code(
        """
model.compile(optimizer=SGD(lr=0.1, momentum=0.9), loss=loss_fn, metrics=["accuracy"])
history = model.fit(inputs, targets, batch_size=20, epochs=40, verbose=0)
losses = history.history["loss"]
print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {history.history['accuracy'][-1]:.2f}")
assert losses[-1] < losses[0]
"""
    ),
]

# 03 ---------------------------------------------------------------------------------
CUSTOM_RULE = [
    md(
        """
# 3. Writing your own rule

Flux's *Optimiser Interface* builds a Momentum optimiser by hand: parameters as fields, a
velocity per parameter as state, and an `apply!` that computes the update:

v = ρ·v − η·Δ;  Δ = −v

In keras_optx a rule is a `keras_optx.Rule` subclass: its hyperparameters (with a check
each), its slots (per-variable state with an initial value) and `delta`, which returns the
update Δ for `x ← x − Δ` and the new slot values. `g`, `x` and `s.velocity` hold every
variable at once and support ordinary arithmetic, so the rule reads like the formula.
"""
    ),
    BACKEND_NOTE,
    SETUP,
    code(
        """
@keras.saving.register_keras_serializable(package="tutorial")
class MyMomentum(ox.Rule):
    \"\"\"Flux's interface example: v ← ρ·v − η·g; Δ = −v.\"\"\"

    hyperparameters = {"rho": ox.checks.unit}  # ρ in [0, 1), checked
    slots = {"velocity": 0.0}

    def __init__(self, learning_rate=0.01, rho=0.9, **kwargs):
        super().__init__(learning_rate, rho=rho, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        v = self.rho * s.velocity - lr * g
        return -v, {"velocity": v}
"""
    ),
    md(
        """
Hyperparameters are checked, stored as attributes and saved in the config:
"""
    ),
    code(
        """
print(MyMomentum(0.01, 0.99).get_config()["rho"])
try:
    MyMomentum(rho=1.5)
except ValueError as error:
    print("refused:", error)
"""
    ),
    md(
        """
## Same numbers as the built-in `Momentum`

Apply both to identical copies of some parameters, with the gradients of the same loss, for a
few steps.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
## In a chain

A custom rule composes like any other. `Optimiser(ClipNorm(1.0), MyMomentum())` first clips
each gradient to norm 1, then applies momentum; so on the first step, whatever the
gradient's size, each variable moves by exactly η·1.
"""
    ),
    code(
        """
w = keras.Variable(start)
before = w.numpy().copy()
chain = ox.Optimiser(ox.ClipNorm(1.0), MyMomentum(0.01))
grads = ox.gradient(lambda: 100.0 * ops.sum((w - target) ** 2), [w])  # a large gradient
chain.apply(grads, [w])
step = np.linalg.norm(before - w.numpy())
print("gradient norm", float(ops.convert_to_numpy(ops.norm(grads[0]))), "-> step norm", step)
assert float(ops.convert_to_numpy(ops.norm(grads[0]))) > 1.0
np.testing.assert_allclose(step, 0.01 * 1.0, rtol=1e-5)
"""
    ),
    md(
        """
## In `model.fit`, saved and loaded

The chain is a Keras optimizer: compile with it, fit, save to a `.keras` file. Loading
brings back the chain, the custom rule with its hyperparameters, and its velocities, so
training resumes where it stopped.
"""
    ),
    code(
        """
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
"""
    ),
    code(
        """
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
"""
    ),
]

# 04 ---------------------------------------------------------------------------------
COMPOSING = [
    md(
        """
# 4. Composing optimisers

Flux's `Optimiser(r₁, r₂, …)` feeds the gradient through each member in turn: each produces a
modified gradient for the next, and the last one's output is the update. keras_optx has the
same `Optimiser`; schedules (`ExpDecay`, `InvDecay`), `WeightDecay` and clipping are members
like any rule.

Flux's example fits `w` to `w1` (two random 10×10 matrices) through the loss
`mse(w·x, w1·x)` on random `x`, with `Optimiser(ExpDecay(0.001, 0.1, 1000, 1e-4), Descent())`
for 10⁵ steps, and the loss falls from about 9 to about 0.9. We keep the shape of the example
but take a batch of 16 random `x` per step and larger rates, so that 150 steps take seconds.
"""
    ),
    BACKEND_NOTE,
    SETUP,
    code(
        """
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
    \"\"\"Rewind w and w1, take `steps` updates; return the loss of every step.\"\"\"
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
"""
    ),
    md(
        """
## Exponential decay, then descent

`ExpDecay(η, decay, decay_step, clip)` multiplies the step by η·decay^⌊n/decay_step⌋ (never below
`clip`). Here the step starts at 1.0·0.3 and halves every 50 steps.
"""
    ),
    code(
        """
schedule = ox.ExpDecay(1.0, 0.5, 50, 1e-2)
decayed = fit(ox.Optimiser(schedule, ox.Descent(0.3)))
rates = [0.3 * float(schedule(n)) for n in range(len(decayed))]
after = float(ops.convert_to_numpy(loss(probe)))
print(f"loss {before:.3f} -> {after:.3f}")
assert after < 0.1 * before  # at least tenfold, as in Flux
"""
    ),
    md(
        """
The same schedule can also be the `learning_rate` of the rule: `Descent(ExpDecay(0.3, 0.5, 50, 3e-3))`
scales η directly and gives the same trajectory.
"""
    ),
    code(
        """
as_rate = fit(ox.Descent(ox.ExpDecay(0.3, 0.5, 50, 3e-3)), steps=60)
np.testing.assert_allclose(as_rate, decayed[:60], rtol=1e-4)
"""
    ),
    md(
        """
## Weight decay in a chain

`WeightDecay(wd)` adds `wd·x` to the gradient. The loss only sees `w − w1`, so their gradients
cancel in the sum: without decay `w + w1` never changes, and with
`Optimiser(WeightDecay(wd), Descent(η))` it shrinks by exactly (1 − η·wd) per step.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
## Clipping, then ADAM

Flux's gradient-clipping example is `Optimiser(ClipValue(1e-3), ADAM(1e-3))`: every gradient
entry is clamped to ±10⁻³ before ADAM sees it. ADAM divides by a running root-mean-square of
the gradient, so it hardly notices the clamp; clipping guards against rare huge gradients
rather than setting the step size.
"""
    ),
    code(
        """
clipped = fit(ox.Optimiser(ox.ClipValue(1e-3), ox.ADAM(1e-3)))
clipped_after = float(ops.convert_to_numpy(loss(probe)))
adam = fit(ox.ADAM(1e-3))
adam_after = float(ops.convert_to_numpy(loss(probe)))
print(f"loss {before:.3f} -> ADAM {adam_after:.3f}, ClipValue + ADAM {clipped_after:.3f}")
assert clipped_after < 0.9 * before
assert abs(clipped_after - adam_after) < 0.1 * (before - adam_after)  # the clamp changes little
"""
    ),
    md(
        """
## The learning rate and the losses, plotted
"""
    ),
    code(
        """
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
    assert f.read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
"""
    ),
]

# 05 ---------------------------------------------------------------------------------
CHOOSING = [
    md(
        """
# 5. Choosing a rule

Which rule should you use? Try several on *your* model and data. `keras_optx.compare.compare`
does it fairly: for each seed, every rule starts from the same initial weights and sees the
batches in the same order, so only the rule differs. It returns a table (rate, final loss,
score, time per step) and draws the loss curves.

Here: a small network on scikit-learn's handwritten digits (8×8 images, 10 classes, shipped
with scikit-learn). The same comparison on the full data, from the command line:
`python -m keras_optx.compare --tune --seeds 2` (see `--help`).
"""
    ),
    BACKEND_NOTE,
    SETUP,
    code(
        """
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
"""
    ),
    md(
        """
## Each rule at its default rate

Rules are given by name (as on the command line: `"adam"`, `"adam:0.01"`, `"clipnorm+adam"`),
as optimizer objects, or as factories. Here four of Flux's rules, Flux v0.12's OADAM and
AdaBelief, and Lion and Rprop.
"""
    ),
    code(
        """
rules = ["descent", "nesterov", "adam", "adagrad", "oadam", "adabelief", "lion", "rprop"]
defaults = compare(build_model, (x_train, y_train), rules, **settings)
print(defaults.table())
"""
    ),
    md(
        """
With its default settings Nesterov (η = 0.001) is far behind Descent and ADAGrad (η = 0.1):
such a table ranks default rates more than rules.

## Tuned rates, several seeds

`tune=True` first searches each rule's learning rate (successive halving over ×0.01 … ×100
its default, a few epochs each) on a held-out 20% of the *training* data, never on the test
set, then trains at the chosen rate. `seeds=2` runs each rule twice: each cell shows the
mean ± standard deviation over the seeds, and the plot a band.
"""
    ),
    code(
        """
tuned = compare(build_model, (x_train, y_train), ["descent", "nesterov", "adam", "lion"], tune=True, tune_epochs=2, seeds=2, **settings)
print(tuned.table())

png = tuned.plot(os.path.join(tempfile.mkdtemp(), "tuned.png"), title="digits, tuned rates")
display(Image(filename=png))
"""
    ),
    code(
        """
before = {row.rule: row.score()[0] for row in defaults.rows}
after = {row.rule: row.score()[0] for row in tuned.rows}
print({rule: f"{before[rule]:.1%} → {after[rule]:.1%}" for rule in after})
assert all(row.tuned for row in tuned.rows)
assert after["Nesterov"] > before["Nesterov"] + 0.2  # tuning mattered more than the rule
assert min(after.values()) > 0.85
"""
    ),
    md(
        """
Once tuned, the rules are close; pick by what else matters (time per step, memory, how
wide the good range of rates is — `row.trials` lists every rate tried with its validation
loss).

## Your own rules

Chains, wrappers such as `Lookahead`, `Partition`, `keras_optx.torch` optimizers, Keras's own
optimizers and factories work alike. A chain's rate is its last rate-bearing member's, a
wrapper's the wrapped optimizer's; a factory is called with no argument for its
default, and with the rate to try when it takes one.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
Ranger trails here: in six short epochs RADAM's warm-up and Lookahead's half-way steps
both slow the start. `tune=True` gives it (and every rule) a fair rate before judging.
"""
    ),
]

# 06 ---------------------------------------------------------------------------------
FINE_TUNING = [
    md(
        """
# 6. Porting a PyTorch fine-tuning setup

A common PyTorch recipe for training or fine-tuning a network: AdamW, no weight decay on
biases and normalisation parameters, a higher learning rate for the new head than for the
body, and a linear warmup followed by a cosine decay. Then the same network with the
1cycle policy, which also cycles SGD's momentum. This notebook ports both to keras_optx.

The PyTorch code being ported:

```python
groups = {}  # (in the head?, decays?) -> parameters
for name, p in model.named_parameters():
    decays = not (name.endswith("bias") or "norm" in name)
    groups.setdefault((name.startswith("head."), decays), []).append(p)
opt = torch.optim.AdamW([
    {"params": ps, "lr": (10 if head else 1) * peak, "weight_decay": 0.05 if decays else 0.0}
    for (head, decays), ps in groups.items()
])
sched = torch.optim.lr_scheduler.SequentialLR(opt, [
    torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=warmup),
    torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup),
], milestones=[warmup])
for x, y in loader:
    opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(); sched.step()
```

| PyTorch | keras_optx |
|---|---|
| parameter groups with their own `lr` | `keras_optx.Partition({regex on variable.path: rule})` |
| `"weight_decay": 0.0` for biases and norms | `opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])`, for every rule inside |
| `LinearLR` then `CosineAnnealingLR` | `keras.optimizers.schedules.CosineDecay(..., warmup_target=, warmup_steps=)` as each rule's rate |
| `OneCycleLR(..., cycle_momentum=True)` | `keras_optx.HyperparameterScheduler({"learning_rate": …, "momentum": …}, per="step")` |
| the loop, `sched.step()` | `model.fit` (a schedule advances with each update) |
"""
    ),
    BACKEND_NOTE,
    SETUP,
    md(
        """
## Data and model

scikit-learn's handwritten digits (8×8 images, 10 classes). The model is a body (a dense layer
and a layer normalisation) and a head, with named layers so that the variable paths say which
is which.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
## AdamW, parameter groups, warmup + cosine

`keras_optx.torch.AdamW` is `torch.optim.AdamW` (decoupled decay, multiplied by the rate).
A `Partition` gives each group of variables its own rule: the first pattern that
`re.search`es a variable's path wins, so `".*"` last catches the rest. Each rule's rate is a
`CosineDecay` schedule with a linear warmup from a tenth of the peak; the head's peaks 10×
higher. `exclude_from_weight_decay` on the Partition reaches the rules inside it (it also
does for `WeightDecay` in a chain, `ADAMW`'s decay and Keras's `weight_decay=`). It matches
`variable.name`: Keras names a normalisation's scale and offset `gamma` and `beta`.
"""
    ),
    code(
        """
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
    \"\"\"The same schedule in NumPy: linear from peak/10 to the peak, then a half cosine to 0.\"\"\"
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
"""
    ),
    md(
        """
**Check: what decays, and at which rate.** With a zero gradient AdamW's Adam part moves
nothing (its moments stay 0), so a step only decays: x ← x·(1 − ηₙ·λ), with ηₙ the rate of
step n. A few zero-gradient steps on a copy of the model show that kernels decay, each at its
group's scheduled rate, and that biases and the normalisation's γ, β do not move.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
**The same with torch's param groups.** `keras_optx.torch.AdamW(..., param_groups=[...])` takes
the PyTorch code's groups as they are: each dict's `"params"` is a regular expression searched in
`variable.path` (or a list of variables), the first group that matches a variable wins, and the
variables no group matches use the constructor's values (torch's defaults). One optimizer, the
same trajectory as the `Partition` above: checked here on random gradients.
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
## Training

`fit` as usual. A callback records the loss of each step.
"""
    ),
    code(
        """
class StepLog(keras.callbacks.Callback):
    \"\"\"The loss after each update; for an optimizer with a momentum, its `learning_rate` and `momentum` before it.\"\"\"

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
"""
    ),
    md(
        """
## 1cycle, momentum included

PyTorch's `OneCycleLR(opt, max_lr=0.1, total_steps=steps)` on `SGD(momentum=0.9, nesterov=True)`
raises the rate from `max_lr/25` to `max_lr` over the first 30% of the steps, then anneals it
to `max_lr/25/10⁴`, both with cosine curves; the momentum moves the opposite way between
0.95 and 0.85 (Smith 2018, arXiv:1803.09820). Below are those formulas as a Python function;
`HyperparameterScheduler(..., per="step")` sets both hyperparameters before each update, also
inside `fit`'s compiled step (no retrace). Any keras_optx hyperparameter can be steered so, e.g.
ADAM's `beta`.
"""
    ),
    code(
        """
def one_cycle(step, max_lr=0.1, pct_start=0.3, div_factor=25.0, final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95):
    \"\"\"(rate, momentum) of torch.optim.lr_scheduler.OneCycleLR (cosine annealing) at update `step`.\"\"\"
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
"""
    ),
    md(
        """
## The schedules and the losses
"""
    ),
    code(
        """
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
"""
    ),
    md(
        """
Two details of the port:

- A rule inside a `Partition` follows its schedule with the Partition's update count
  (`opt.iterations`), as the zero-gradient check shows: the rate of update n is `schedule(n)`.
- Exclusion matches `variable.name` with regular expressions, as Keras's
  `exclude_from_weight_decay` does; `var_list=[...]` takes the variables themselves.
"""
    ),
]

NOTEBOOKS = {
    "01_linear_regression.ipynb": LINEAR_REGRESSION,
    "02_pytorch_loop_in_keras.ipynb": PYTORCH_LOOP,
    "03_custom_rule.ipynb": CUSTOM_RULE,
    "04_composing.ipynb": COMPOSING,
    "05_choosing_a_rule.ipynb": CHOOSING,
    "06_fine_tuning.ipynb": FINE_TUNING,
}


def build():
    for name, cells in NOTEBOOKS.items():
        cells = [copy.deepcopy(c) for c in cells]
        for i, cell in enumerate(cells):
            cell.id = f"{name[:2]}-{i:02d}"  # stable ids: a rebuild gives no spurious diff
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build()
