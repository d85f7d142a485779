"""Train one small network with every rule and compare them: `python -m keras_optx.compare`.

With no arguments it trains a 64→64→10 MLP on scikit-learn's handwritten digits (bundled
with scikit-learn, no download) once per Flux rule, all from the same initial weights and
batch order, prints a table (rule, final training loss, test accuracy, ms per step) and
writes a PNG of the loss curves. Progress goes to stderr, the table to stdout.

    python -m keras_optx.compare                                   # the 14 Flux v0.12 rules, default backend
    python -m keras_optx.compare --backend jax --epochs 5 --rules adam,clipnorm+adam,torch.sgd:0.1

A rule is `NAME[:X]`: X replaces the first positional argument (the learning rate η for
most rules, ρ for ADADelta, the threshold for clipping, wd for weightdecay, γ for
invdecay). `A+B+…` is the chain `Optimiser(A, B, …)`, e.g. `clipnorm+weightdecay:1e-4+adam`.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import keras

import keras_optx as ox
from keras_optx._catalog import EXTRA_RULES, FLUX_RULES, TORCH_RULES, TRANSFORMS  # every rule by name: one list

PROG = "keras-optx-compare"
BACKENDS = ("jax", "torch", "tensorflow")
_REEXEC_FLAG = "KERAS_OPTX_COMPARE_REEXEC"

DEFAULT_RULES = tuple(FLUX_RULES)


class UsageError(Exception):
    """A bad command-line value: reported in one line, exit status 2."""


def _torch_rules_available():
    return importlib.util.find_spec("keras_optx.torch") is not None


def known_names():
    """Every name `--rules` accepts (besides `+` chains of them)."""
    names = list(FLUX_RULES) + list(EXTRA_RULES) + list(TRANSFORMS)
    if _torch_rules_available():
        names += list(TORCH_RULES)
    return names


def _member(part):
    """One `NAME[:X]` → a keras_optx object (rule, transform, torch rule or schedule)."""
    name, _, value = part.partition(":")
    key = name.strip().lower()
    args = ()
    if value:
        try:
            args = (float(value),)
        except ValueError:
            raise UsageError(f"bad number {value!r} in rule {part!r}; write NAME:X, e.g. adam:0.01") from None
    if key in FLUX_RULES or key in EXTRA_RULES:
        return getattr(ox, {**FLUX_RULES, **EXTRA_RULES}[key])(*args)
    if key in TRANSFORMS:
        cls, default = TRANSFORMS[key]
        return getattr(ox, cls)(*(args or (default,)))
    if key in TORCH_RULES and _torch_rules_available():
        import keras_optx.torch as ox_torch

        return getattr(ox_torch, TORCH_RULES[key])(*args)
    raise UsageError(f"unknown rule {name.strip()!r}; choose from {', '.join(known_names())} (chains as a+b)")


def build_optimizer(spec):
    """The Keras optimizer named by `spec` (`adam`, `adam:0.01`, `clipnorm+adam`, …).

    Raises `UsageError` (one line) for an unknown name, a bad number or a value the
    rule refuses (e.g. `adadelta:1.5`).
    """
    parts = [p for p in spec.split("+")]
    if not spec.strip() or any(not p.strip() for p in parts):
        raise UsageError(f"empty rule name in {spec!r}")
    try:
        members = [_member(p) for p in parts]
        if len(members) == 1:
            if isinstance(members[0], keras.optimizers.schedules.LearningRateSchedule):
                raise UsageError(f"{spec!r} is a schedule; chain it with a rule, e.g. {spec}+descent")
            if isinstance(members[0], ox.Transform):
                raise UsageError(f"{spec!r} only transforms gradients; chain it with a rule, e.g. {spec}+adam")
            return members[0]
        return ox.Optimiser(*members)
    except (ValueError, TypeError) as error:
        raise UsageError(f"rule {spec!r}: {error}") from None


def display_name(spec):
    """`clipnorm+adam:0.01` → `ClipNorm+ADAM(0.01)`."""
    names = {**FLUX_RULES, **EXTRA_RULES, **{k: v[0] for k, v in TRANSFORMS.items()}, **{k: f"torch.{v}" for k, v in TORCH_RULES.items()}}
    out = []
    for part in spec.split("+"):
        name, _, value = part.partition(":")
        shown = names.get(name.strip().lower(), name.strip())
        out.append(f"{shown}({value})" if value else shown)
    return "+".join(out)


# Data and model --------------------------------------------------------------------
def load_digits(seed=0, test_fraction=0.2):
    """scikit-learn's 8×8 digits, scaled to [0, 1], split train/test by a seeded shuffle."""
    import numpy as np
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order].astype("int32")
    n_test = int(round(len(x) * test_fraction))
    return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def make_model(n_inputs=64, hidden=64, n_classes=10):
    """A two-layer MLP producing logits."""
    return keras.Sequential(
        [
            keras.Input((n_inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(n_classes),
        ]
    )


class Result:
    """One rule's run: `losses[k]` is the full training-set loss after k epochs (k = 0 is the start)."""

    def __init__(self, name, losses, accuracy, ms_per_step):
        self.name, self.losses, self.accuracy, self.ms_per_step = name, losses, accuracy, ms_per_step

    def __repr__(self):
        return f"Result({self.name!r}, final_loss={self.losses[-1]:.4g}, accuracy={self.accuracy:.3f})"


class _Timer(keras.callbacks.Callback):
    """Wall time of each training step; the loss is read back so async backends finish the step."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            float(keras.ops.convert_to_numpy(logs["loss"]))
        self.times.append(time.perf_counter() - self._start)


class _Curve(keras.callbacks.Callback):
    """Records the full training-set loss after each epoch and reports progress."""

    def __init__(self, loss_of, report, label, epochs):
        super().__init__()
        self.loss_of, self.report, self.label, self.epochs = loss_of, report, label, epochs
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        self.losses.append(self.loss_of(self.model))
        self.report(f"{self.label}  epoch {epoch + 1}/{self.epochs}  loss {self.losses[-1]:.4f}  ({seconds:.2f} s)")


def run(specs=DEFAULT_RULES, epochs=20, batch_size=64, seed=0, data=None, report=None):
    """Train the same MLP with each rule; return a list of `Result`.

    Every rule starts from the same initial weights and sees the batches in the same
    order (both seeded by `seed`), so only the rule differs. The loss curve is the
    full training-set loss after each epoch, starting with the shared initial loss.

    Args:
        specs: rule names as on the command line (`"adam"`, `"clipnorm+adam"`, `"adam:0.01"`).
        epochs: passes over the training data, ≥ 1.
        batch_size: examples per step.
        seed: seeds the initial weights, the batch order and the train/test split.
        data: `((x_train, y_train), (x_test, y_test))`, default `load_digits(seed)`.
        report: called with one progress line per rule and epoch (default: silent).

    Example:
        >>> results = keras_optx.compare.run(["adam", "descent"], epochs=2)
        >>> print(keras_optx.compare.table(results))
    """
    report = report or (lambda line: None)
    (x, y), (x_test, y_test) = data if data is not None else load_digits(seed)
    keras.utils.set_random_seed(seed)
    model = make_model(x.shape[1], n_classes=int(max(y.max(), y_test.max())) + 1)
    initial = [w.copy() for w in model.get_weights()]  # copies: torch's .numpy() can share memory
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # One eager forward pass each: cheaper than compiling an evaluation step per rule.
    def loss_of(model):
        return float(keras.ops.convert_to_numpy(loss(y, model(x, training=False))))

    def accuracy_of(model):
        logits = keras.ops.convert_to_numpy(model(x_test, training=False))
        return float((logits.argmax(axis=1) == y_test).mean())

    start_loss = loss_of(model)
    results = []
    width = len(str(len(specs)))
    for i, spec in enumerate(specs):
        optimizer = build_optimizer(spec)
        label = f"[{i + 1:>{width}}/{len(specs)}] {display_name(spec)}"
        model.set_weights(initial)
        model.compile(optimizer=optimizer, loss=loss)
        keras.utils.set_random_seed(seed)  # the same batch order for every rule
        timer, curve = _Timer(), _Curve(loss_of, report, label, epochs)
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, callbacks=[timer, curve], verbose=0)
        steps = timer.times[1:] or timer.times  # the first step includes compilation
        results.append(
            Result(display_name(spec), [start_loss] + curve.losses, accuracy_of(model), 1000 * statistics.median(steps))
        )
    return results


def table(results):
    """A fixed-width text table: rule, final training loss, test accuracy, median ms per step."""
    width = max([len("rule")] + [len(r.name) for r in results])
    lines = [f"{'rule':<{width}}  {'final loss':>10}  {'test acc':>8}  {'ms/step':>8}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(f"{r.name:<{width}}  {r.losses[-1]:>10.4f}  {100 * r.accuracy:>7.1f}%  {r.ms_per_step:>8.2f}")
    return "\n".join(lines)


def plot(results, path, title=None):
    """Write the loss curves (log scale, one line per rule) to the PNG file `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ("-", "--", ":", "-.")
    for i, r in enumerate(results):
        ax.plot(range(len(r.losses)), r.losses, styles[(i // 10) % 4], marker="o", markersize=3, label=r.name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(title or "keras_optx rules on scikit-learn digits")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


# Command line ----------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _int_at_least(low, words):
    """An argparse type: an integer ≥ `low`, with `words` naming it in the error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {words}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "an integer ≥ 0")


def parser():
    """The argument parser of `python -m keras_optx.compare`."""
    p = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=BACKENDS, help="Keras backend (default: KERAS_BACKEND or Keras's default)")
    p.add_argument(
        "--rules",
        default=",".join(DEFAULT_RULES),
        help="comma-separated NAME[:X] or chains A+B (default: the 14 Flux v0.12 rules); names: " + ", ".join(known_names()),
    )
    p.add_argument("--epochs", type=_positive_int, default=20, help="epochs per rule (default 20)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="examples per step (default 64)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of weights, batch order and split (default 0)")
    p.add_argument("--output", default="keras_optx_compare.png", help="PNG file for the loss curves")
    return p


def _reexec(backend, argv):
    """Keras fixes its backend at import (already done by `import keras_optx`): restart under `backend`."""
    if os.environ.get(_REEXEC_FLAG):
        raise UsageError(f"could not switch Keras to the {backend} backend (is it installed?)")
    env = dict(os.environ, KERAS_BACKEND=backend, **{_REEXEC_FLAG: "1"})
    command = [sys.executable, "-m", "keras_optx.compare", *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(sys.executable, command, env)
    import subprocess

    sys.exit(subprocess.call(command, env=env))


def main(argv=None):
    """Entry point of `python -m keras_optx.compare` and the `keras-optx-compare` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        specs = [s.strip() for s in args.rules.split(",")]
        for spec in specs:
            build_optimizer(spec)  # refuse bad names and values before any work
        if not args.output.lower().endswith(".png"):
            raise UsageError(f"--output must name a .png file; received {args.output!r}")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(out_dir):
            raise UsageError(f"--output: directory {out_dir!r} does not exist")
        if args.backend and args.backend != keras.backend.backend():
            _reexec(args.backend, argv)
        for module in ("sklearn", "matplotlib"):
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"{PROG} needs {module}: pip install 'keras-optx[compare]'")
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2

    def report(line):
        print(line, file=sys.stderr, flush=True)

    (x, y), test = load_digits(args.seed)
    report(
        f"{PROG}: backend {keras.backend.backend()}, digits {len(x)} train / {len(test[0])} test, "
        f"{len(specs)} rules × {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}"
    )
    results = run(specs, args.epochs, args.batch_size, args.seed, ((x, y), test), report)
    print(table(results), flush=True)
    plot(results, args.output, f"keras_optx rules on digits ({keras.backend.backend()}, {args.epochs} epochs)")
    report(f"{PROG}: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
