"""Compare optimizer rules on a model: `python -m keras_optx.compare`, or `compare(...)` on your own model.

With no arguments it trains a 64→64→10 MLP on scikit-learn's handwritten digits (bundled
with scikit-learn, no download) once per Flux rule, all from the same initial weights and
batch order, prints a ranked table (rule, rate, final training loss, test accuracy, ms per
step) and writes a PNG of the loss curves. Progress goes to stderr, the table to stdout.

    python -m keras_optx.compare                                   # the 14 Flux v0.12 rules, default backend
    python -m keras_optx.compare --backend jax --epochs 5 --rules adam,clipnorm+adam,torch.sgd:0.1
    python -m keras_optx.compare --tune --seeds 3                  # rates searched per rule, 3 seeds each

A rule is `NAME[:X]`: X replaces the first positional argument (the learning rate η for
most rules, ρ for ADADelta, the threshold for clipping, wd for weightdecay, η for
expdecay, γ for invdecay). `A+B+…` is the chain `Optimiser(A, B, …)`, e.g.
`clipnorm+weightdecay:1e-4+adam` or `expdecay+descent`. `lookahead[:K]+…` wraps the rest
in `Lookahead` (sync period K, default 6), e.g. `lookahead+radam`. `lion` and `rprop`
(beyond Flux v0.12) are named but not in the default run.

In Python, `compare(build_model, data, rules, loss=..., ...)` runs the same comparison on
your model and data and returns a `Comparison` (`.table()`, `.to_dicts()`, `.plot(path)`).
"""

import argparse
import importlib.util
import inspect
import math
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
    names = list(FLUX_RULES) + list(EXTRA_RULES) + list(TRANSFORMS) + ["lookahead"]
    if _torch_rules_available():
        names += list(TORCH_RULES)
    return names


def _scored_at_average(model):
    """A schedule-free rule is scored at its averaged weights x (its eval weights): `ScheduleFreeEval`
    switches to them at the end of each fit and back to y at the start of the next."""
    from .schedule_free import ScheduleFreeEval, _ScheduleFree

    return [ScheduleFreeEval()] if isinstance(model.optimizer, _ScheduleFree) else []


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
    parts = spec.split("+")
    if not spec.strip():
        raise UsageError("empty rule name: give a name such as adam, or a chain such as clipnorm+adam")
    for position, part in enumerate(parts, 1):
        if not part.strip():
            raise UsageError(
                f"empty rule name at position {position} of the chain {spec!r} (each member between '+' needs a name)"
            )
    head, _, value = parts[0].partition(":")
    if head.strip().lower() == "lookahead":  # `lookahead[:k]+<rule or chain>`: Lookahead around the rest
        if len(parts) == 1:
            raise UsageError(f"{spec!r} wraps a rule; write it before one, e.g. lookahead+adam")
        try:
            args = (float(value),) if value else ()
        except ValueError:
            raise UsageError(f"bad number {value!r} in {parts[0]!r}; write lookahead:K, e.g. lookahead:5+adam") from None
        try:
            return ox.Lookahead(build_optimizer("+".join(parts[1:])), *args)
        except (ValueError, TypeError) as error:
            raise UsageError(f"rule {spec!r}: {error}") from None
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
    names = {**FLUX_RULES, **EXTRA_RULES, "lookahead": "Lookahead", **{k: v[0] for k, v in TRANSFORMS.items()}, **{k: f"torch.{v}" for k, v in TORCH_RULES.items()}}
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


# The comparison, as a Python API ----------------------------------------------------
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")
TUNE_FACTORS = tuple(10.0 ** (k / 2) for k in range(-4, 5))  # ×0.01 … ×100 of the default rate, half-decade steps


class Row:
    """One rule's runs in a `Comparison`.

    Attributes:
        rule: its display name (`"ClipNorm+ADAM"`).
        learning_rate: the rate of the full runs (chosen by the search when tuned), or
            None when the rule has no settable rate.
        tuned: True when the rate was chosen by the search.
        note: why it was not tuned, how many seeds diverged, or that it was interrupted.
        seeds: the seeds of its finished runs.
        curves: per seed, the training loss of each epoch (Keras's mean over the epoch's batches).
        losses: per seed, the final training loss (NaN for a diverged run).
        scores: per seed, the score (`Comparison.score_name`) at the end (NaN when diverged).
        ms_per_step: median wall time of a training step over all its runs (first steps,
            which include compilation, left out).
        trials: the search's `(rate, validation loss, epochs)` triples, in the order tried.
    """

    def __init__(self, rule, learning_rate, tuned, note=""):
        self.rule, self.learning_rate, self.tuned, self.note = rule, learning_rate, tuned, note
        self.seeds, self.curves, self.losses, self.scores, self._step_times, self.trials = [], [], [], [], [], []

    @property
    def diverged_runs(self):
        """How many of its runs ended with a non-finite loss."""
        return sum(1 for value in self.losses if not math.isfinite(value))

    @property
    def diverged(self):
        """True when every run diverged (`diverged_runs` counts partial divergence)."""
        return bool(self.losses) and self.diverged_runs == len(self.losses)

    @property
    def ms_per_step(self):
        return 1000 * statistics.median(self._step_times) if self._step_times else math.nan

    def loss(self):
        """(mean, standard deviation) of the final training loss over the runs that did not diverge."""
        return _mean_std(self.losses)

    def score(self):
        """(mean, standard deviation) of the score over the runs that did not diverge."""
        return _mean_std(self.scores)

    def __repr__(self):
        mean, _ = self.score()
        return f"Row({self.rule!r}, learning_rate={self.learning_rate!r}, score={mean:.4g}, runs={len(self.losses)})"


def _mean_std(values):
    """Mean and sample standard deviation of the finite values (std 0 for one value; NaNs when none)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


class Comparison:
    """What `compare` returns: one `Row` per rule, in the order given, and how they were run.

    `table()` ranks them (best score first, diverged last), `to_dicts()` gives plain
    data, `plot(path)` draws the loss curves with a band of ± one standard deviation
    over the seeds. `str(result)` is the table.

    Attributes:
        rows: the `Row`s, in the order of `rules`.
        score_name: what `Row.scores` hold, e.g. `"test accuracy"` or `"validation loss"`.
        higher_is_better: the direction in which `table()` ranks the scores.
        seeds: the seeds run per rule.
        tuned: whether the learning rates were searched.
        interrupted: True when Ctrl-C stopped the run; `rows` hold what finished.
    """

    def __init__(self, rows, score_name, higher_is_better, seeds, tuned, interrupted=False, details=""):
        self.rows, self.score_name, self.higher_is_better = rows, score_name, higher_is_better
        self.seeds, self.tuned, self.interrupted, self.details = list(seeds), tuned, interrupted, details

    def ranked(self):
        """The rows, best score first; rows whose every run diverged last."""

        def key(row):
            mean, _ = row.score()
            if not math.isfinite(mean):
                return (1, 0.0)
            return (0, -mean if self.higher_is_better else mean)

        return sorted(self.rows, key=key)

    def _format_score(self, value):
        if "accuracy" in self.score_name and 0 <= value <= 1:
            return f"{100 * value:.1f}%"
        return f"{value:.4f}"

    def table(self):
        """A fixed-width text table, ranked: rule, η, final training loss, score, ms per step, note.

        With several seeds a cell reads `mean ± std` (sample standard deviation over the seeds).
        A rule whose every run diverged reads `diverged` in its loss and score cells.
        """
        several = len(self.seeds) > 1
        header = ["#", "rule", "η", "train loss", self.score_name, "ms/step", "note"]
        same = self.score_name == "train loss"  # the score is the loss column: shown once
        lines = []
        for rank, row in enumerate(self.ranked(), 1):
            loss, loss_std = row.loss()
            score, score_std = row.score()
            if row.diverged:
                loss_cell = score_cell = "diverged"
            else:
                loss_cell = f"{loss:.4f}" + (f" ± {loss_std:.4f}" if several else "")
                score_cell = self._format_score(score)
                if several:
                    score_cell += " ± " + (
                        f"{100 * score_std:.1f}" if score_cell.endswith("%") else f"{score_std:.4f}"
                    )
            rate = "—" if row.learning_rate is None else f"{row.learning_rate:.3g}"
            ms = "—" if math.isnan(row.ms_per_step) else f"{row.ms_per_step:.2f}"
            lines.append([str(rank), row.rule, rate, loss_cell, score_cell, ms, row.note])
        if same:
            header, lines = [c for i, c in enumerate(header) if i != 4], [[c for i, c in enumerate(r) if i != 4] for r in lines]
        right = {0, 2, 3, 4} if same else {0, 2, 3, 4, 5}
        widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]

        def fmt(cells):
            out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
            return "  ".join(out).rstrip()

        text = [fmt(header), "-" * len(fmt(header))] + [fmt(cells) for cells in lines]
        if self.details:
            text.append(self.details)
        if self.interrupted:
            text.append("interrupted (Ctrl-C): the rows above are the runs that finished")
        return "\n".join(text)

    def __str__(self):
        return self.table()

    def __repr__(self):
        return f"Comparison({len(self.rows)} rules, {len(self.seeds)} seed(s), score={self.score_name!r})"

    def to_dicts(self):
        """One plain dict per row, in the order given (means and standard deviations over the seeds)."""
        out = []
        for row in self.rows:
            loss, loss_std = row.loss()
            score, score_std = row.score()
            out.append(
                {
                    "rule": row.rule,
                    "learning_rate": row.learning_rate,
                    "tuned": row.tuned,
                    "seeds": list(row.seeds),
                    "train_loss": loss,
                    "train_loss_std": loss_std,
                    "score_name": self.score_name,
                    "score": score,
                    "score_std": score_std,
                    "ms_per_step": row.ms_per_step,
                    "diverged": row.diverged,
                    "diverged_runs": row.diverged_runs,
                    "note": row.note,
                    "curves": [list(c) for c in row.curves],
                    "trials": list(row.trials),
                }
            )
        return out

    def plot(self, path, title=None):
        """Write the training-loss curves to the PNG file `path` (needs matplotlib).

        One line per rule: the mean over the seeds of the loss after each epoch, with a shaded
        band of ± one standard deviation when there are several seeds; runs that diverged are
        left out. Returns `path`.
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        fig, ax = plt.subplots(figsize=(8, 5))
        styles = ("-", "--", ":", "-.")
        positive = True
        for i, row in enumerate(self.rows):
            curves = [c for c, final in zip(row.curves, row.losses) if math.isfinite(final)]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            values = np.array([c[:n] for c in curves], dtype="float64")
            mean = values.mean(axis=0)
            epochs = np.arange(1, n + 1)
            label = row.rule if row.learning_rate is None else f"{row.rule} (η={row.learning_rate:.3g})"
            (line,) = ax.plot(epochs, mean, styles[(i // 10) % 4], marker="o", markersize=3, label=label)
            if len(values) > 1:
                std = values.std(axis=0, ddof=1)
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            positive = positive and bool((mean - (values.std(axis=0, ddof=1) if len(values) > 1 else 0) > 0).all())
        if positive:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        band = f"; bands: ± std over {len(self.seeds)} seeds" if len(self.seeds) > 1 else ""
        ax.set_ylabel("training loss (mean over the epoch)")
        ax.set_title((title or "keras_optx rules compared") + band, fontsize="medium")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        return path


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


class _Epochs(keras.callbacks.Callback):
    """Reports each epoch of a full run."""

    def __init__(self, progress, describe, epochs):
        super().__init__()
        self.progress, self.describe, self.epochs = progress, describe, epochs

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        loss = float((logs or {}).get("loss", math.nan))
        self.progress.say(f"{self.describe}  epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  ({seconds:.2f} s)")


class _Progress:
    """Progress lines with a time estimate.

    Work is counted in epochs of two kinds, the search's (short fits, each followed by a
    validation pass) and the full runs' (each run's first epoch also compiles); the estimate
    is the epochs left of each kind times the seconds per epoch measured so far for it
    (everything included), or for the other kind before the first of its own finishes.
    """

    KINDS = ("search", "run")

    def __init__(self, report):
        self.report = report
        self.left = dict.fromkeys(self.KINDS, 0)
        self.epochs = dict.fromkeys(self.KINDS, 0)
        self.seconds = dict.fromkeys(self.KINDS, 0.0)

    def plan(self, kind, epochs):
        self.left[kind] += epochs

    def done(self, kind, epochs, seconds, planned):
        self.left[kind] -= planned
        self.epochs[kind] += epochs
        self.seconds[kind] += seconds

    def eta(self):
        if not any(self.epochs.values()):
            return "ETA …"
        rate = {k: self.seconds[k] / self.epochs[k] for k in self.KINDS if self.epochs[k]}
        fallback = sum(self.seconds.values()) / sum(self.epochs.values())
        left = sum(max(self.left[k], 0) * rate.get(k, fallback) for k in self.KINDS)
        return f"ETA {int(left // 60)}m{int(left % 60):02d}s" if left >= 60 else f"ETA {left:.0f}s"

    def say(self, line):
        if self.report is not None:
            self.report(f"{line}  [{self.eta()}]")


class _Entry:
    """A rule to compare: its name, a maker of fresh optimizers, its default rate (or why it has none)."""

    def __init__(self, label, make, default_rate, why_not, rebuild=False):
        self.label, self.make, self.default_rate, self.why_not = label, make, default_rate, why_not
        self.rebuild = rebuild  # a factory taking the rate: each rate tried needs its own optimizer


def _settable_rate(optimizer):
    """(rate, None) when `optimizer.learning_rate = r` changes its steps, else (None, the reason)."""
    rate = getattr(optimizer, "_learning_rate", None)
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        return None, "not tuned: its rate is a schedule"
    if callable(rate) and not isinstance(rate, keras.Variable):
        return None, "not tuned: its rate is a callable"
    if isinstance(optimizer, ox.Rule) and not optimizer.has_learning_rate and not optimizer._rate_variables():
        if not isinstance(optimizer, ox.Transform) or getattr(optimizer, "optimizer", None) is None:
            return None, "not tuned: no member has a learning rate"
    if not isinstance(rate, keras.Variable):
        return None, "not tuned: no settable learning rate"
    return float(keras.ops.convert_to_numpy(rate.value)), None


def _label(rule):
    """A display name for an optimizer object: `ClipNorm+ADAM`, `torch.Adam`, `keras.Adam`, `Lookahead(RADAM)`."""
    if isinstance(rule, ox.Optimiser):
        return "+".join(_label(member) for member in rule)
    name = type(rule).__name__
    inner = getattr(rule, "optimizer", None)
    if isinstance(rule, keras.optimizers.Optimizer) and isinstance(inner, keras.optimizers.Optimizer):
        return f"{name}({_label(inner)})"  # a wrapper: Lookahead(RADAM), ClipNorm(keras.Adam)
    module = type(rule).__module__
    if module.startswith("keras_optx.torch") or module.startswith("keras_optx._backends.torch"):
        return f"torch.{name}"
    if module.startswith("keras.") or module == "keras":
        return f"keras.{name}"
    return name


def _fresh(optimizer):
    """A new, unbuilt optimizer equal to `optimizer` (an optimizer trains one model)."""
    return type(optimizer).from_config(optimizer.get_config())


def _entries(rules):
    """`rules` (names, optimizers, factories; a list or a {label: rule} dict) → `_Entry`s, checked."""
    if isinstance(rules, (str, keras.optimizers.Optimizer)) or callable(rules) and not isinstance(rules, dict):
        rules = [rules]
    items = list(rules.items()) if isinstance(rules, dict) else [(None, r) for r in rules]
    if not items:
        raise ValueError("rules: give at least one rule (a name such as 'adam', an optimizer or a factory)")
    entries, seen = [], {}
    for position, (label, rule) in enumerate(items, 1):
        rebuild = False
        where = f"rules[{position - 1}]" if label is None else f"rules[{label!r}]"
        if isinstance(rule, str):
            try:
                probe = build_optimizer(rule)
            except UsageError as error:
                raise ValueError(f"{where}: {error}") from None
            make = _with_rate(lambda _spec=rule: build_optimizer(_spec))
            name = label or display_name(rule)
        elif isinstance(rule, keras.optimizers.Optimizer):
            probe = _fresh(rule)
            make = _with_rate(lambda _rule=rule: _fresh(_rule))
            name = label or _label(rule)
        elif callable(rule):
            try:
                probe = rule()
            except TypeError as error:
                raise TypeError(
                    f"{where}: a factory is called with no argument for the default rate and with the rate to "
                    f"try, e.g. `lambda lr=1e-3: Optimiser(ClipNorm(1.0), ADAM(lr))`; calling {rule!r}() "
                    f"raised: {error}"
                ) from None
            if not isinstance(probe, keras.optimizers.Optimizer):
                raise TypeError(f"{where}: the factory returned {type(probe).__name__}, not a Keras optimizer")
            takes_rate = _takes_argument(rule)
            if takes_rate:
                def make(rate=None, _factory=rule):
                    return _factory() if rate is None else _factory(rate)
            else:
                make = _with_rate(rule)

            name = label or _label(probe)
            rebuild = takes_rate
        else:
            raise TypeError(
                f"{where} must be a rule name (e.g. 'adam'), a Keras optimizer or a factory returning one; "
                f"received {rule!r} ({type(rule).__name__})"
            )
        rate, why_not = _settable_rate(probe)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name} ({seen[name]})"
        entries.append(_Entry(name, make, rate, why_not, rebuild))
    return entries


def _with_rate(factory):
    """`make(rate=None)`: a new optimizer from `factory()`, with its learning rate set to `rate` when given."""

    def make(rate=None):
        optimizer = factory()
        if rate is not None:
            optimizer.learning_rate = rate
        return optimizer

    return make


class _Trials:
    """The search's models: one model and optimizer for every rate (restored, then its rate set:
    its training step is compiled once), or, for a factory that takes the rate, a new model per rate."""

    def __init__(self, entry, new_model, seed):
        self.entry, self.new_model, self.seed = entry, new_model, seed
        self.model = self.start = None

    def prepare(self, rate, state, epoch):
        if self.entry.rebuild:
            model = state if state is not None else self.new_model(rate)
        else:
            if self.model is None:
                self.model = self.new_model(self.entry.default_rate)
                self.model.optimizer.build(self.model.trainable_variables)
                self.start = _snapshot(self.model)
            model = self.model
            _restore(model, state if state is not None else self.start)
            model.optimizer.learning_rate = rate
        return model

    def keep(self, model):
        """What `prepare` needs to continue from here."""
        return model if self.entry.rebuild else _snapshot(model)


def _snapshot(model):
    """Copies of a compiled model's weights and optimizer variables."""
    import numpy as np

    values = lambda vs: [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in vs]  # noqa: E731
    return values(model.weights), values(model.optimizer.variables)


def _restore(model, snapshot):
    weights, optimizer = snapshot
    for variable, value in zip(model.weights, weights):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, optimizer):
        variable.assign(value)


def _takes_argument(factory):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _is_arrays(data):
    """True for `(x, y)` or `(x, y, sample_weight)` of arrays/tensors (x or y may be nested)."""
    if not isinstance(data, (tuple, list)) or len(data) not in (2, 3):
        return False
    leaves = keras.tree.flatten(list(data))
    return bool(leaves) and all(hasattr(leaf, "shape") and len(leaf.shape) >= 1 for leaf in leaves)


def _order(n, seed, epoch):
    """The order of `n` examples in `epoch` of a run with `seed`: the same for every rule."""
    import numpy as np

    return np.random.default_rng([seed, epoch]).permutation(n)


def _split(data, fraction, seed=0):
    """Arrays `(x, y[, w])` → (train, held out): a seeded random `fraction` held out."""
    import numpy as np

    leaves = [keras.ops.convert_to_numpy(a) if not isinstance(a, np.ndarray) else a for a in keras.tree.flatten(list(data))]
    n = len(leaves[0])
    n_out = int(round(n * fraction))
    if not 1 <= n_out < n:
        raise ValueError(f"validation_split={fraction} of {n} examples leaves an empty training or held-out part")
    order = np.random.default_rng(seed).permutation(n)
    parts = []
    for index in (order[n_out:], order[:n_out]):
        parts.append(tuple(keras.tree.pack_sequence_as(list(data), [a[index] for a in leaves])))
    return parts[0], parts[1]


def _fresh_metrics(metrics):
    """A copy of each metric object (a metric's state belongs to one model); names stay names."""
    if metrics is None:
        return None

    def copy(metric):
        if isinstance(metric, keras.metrics.Metric):
            return type(metric).from_config(metric.get_config())
        return metric

    return keras.tree.map_structure(copy, metrics)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; received {value!r}")
    return value


def compare(
    build_model,
    data,
    rules=DEFAULT_RULES,
    *,
    loss,
    metrics=None,
    epochs=10,
    batch_size=None,
    seeds=1,
    tune=False,
    tune_epochs=3,
    tune_factors=TUNE_FACTORS,
    validation_split=0.2,
    validation_data=None,
    test_data=None,
    higher_is_better=None,
    progress=True,
):
    """Train your model with each rule and compare them: rate, final loss, score, time per step, spread.

    For every seed, each rule starts from the same initial weights and sees the batches in
    the same order (`keras.utils.set_random_seed(seed)` before building the model and
    before `fit`), so only the rule differs. With `tune=True` each rule's learning rate is
    first chosen by a short search on a held-out part of the training data (never on
    `test_data`), then the full runs use the chosen rate.

    The search is successive halving over `tune_factors` × the rule's default rate: every
    rate trains for 1 epoch (⌈`tune_epochs`/3⌉ when `tune_epochs` ≥ 3 … see below), the
    best third by validation loss continue to `tune_epochs` epochs, and the lowest
    validation loss wins; a diverged rate loses. With the default 9 factors (×0.01 … ×100,
    half-decade steps) and `tune_epochs=3`: 9 rates × 1 epoch, then 3 rates × 2 more.
    It trains from the first seed's initial weights. A chain's rate is its last
    rate-bearing member's; a rule whose rate is a schedule, or that has none, is run at
    its own settings and marked "not tuned".

    Args:
        build_model: called with no argument, returns a new uncompiled `keras.Model`.
        data: the training data: `(x, y)` or `(x, y, sample_weight)` arrays, or anything
            `model.fit` takes as `x` (a `tf.data.Dataset`, a torch `DataLoader`, a
            `keras.utils.PyDataset`).
        rules: rule names as on the command line (`"adam"`, `"adam:0.01"`,
            `"clipnorm+adam"`), optimizer objects (each run trains a fresh copy made by
            `from_config(get_config())`), or factories (callables returning an optimizer:
            called with no argument for the default rate, and with the rate when tuning if
            they take one, as `keras_optx.ADAM` or `lambda lr=1e-3: ...` do); a list, or a
            dict `{label: rule}`. Default: the 14 Flux v0.12 rules.
        loss: the loss, as for `model.compile`.
        metrics: as for `model.compile`; the first one is the score. Default: the loss.
        epochs: epochs of each full run, ≥ 1, default 10.
        batch_size: with array data, examples per step (default: Keras's 32); with a
            dataset leave it None (the dataset batches).
        seeds: runs per rule: an integer N (seeds 0 … N−1) or a list of seeds. Several
            seeds give each cell a mean ± sample standard deviation.
        tune: search each rule's learning rate first (default False).
        tune_epochs: epochs of the search's last round, ≥ 1, default 3.
        tune_factors: the rates tried, as multiples of each rule's default rate.
        validation_split: with array data and `tune=True`, the fraction of `data` held out
            for the search (a seeded random part), in (0, 1), default 0.2. The full runs
            train on all of `data`.
        validation_data: held-out data for the search instead of a split (needed with
            `tune=True` when `data` is not arrays); without `test_data` it is also where
            the score is measured.
        test_data: where the score is measured after each full run (never used by the search).
        higher_is_better: the ranking direction of the score; default: True for accuracy,
            AUC, precision, recall, F1, IoU and R², False otherwise (and for the loss).
        progress: True prints what is being tried and a time estimate to stderr; a callable
            receives each line instead; False is silent.

    Returns:
        A `Comparison`: `.rows`, `.table()`, `.to_dicts()`, `.plot(path)`. Ctrl-C
        (KeyboardInterrupt) stops the work and returns the rules that finished, with
        `.interrupted` set.

    Example:
        >>> import numpy as np, keras, keras_optx
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        >>> y = (x.sum(axis=1) > 0).astype("int32")
        >>> def build_model():
        ...     return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        >>> result = keras_optx.compare.compare(
        ...     build_model, (x, y), ["descent", keras_optx.ADAM(0.01)], epochs=1, progress=False,
        ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        >>> [row.rule for row in result.rows], result.score_name
        (['Descent', 'ADAM'], 'train accuracy')
        >>> print(result.table())  # doctest: +SKIP
        #  rule     η  train loss  train accuracy  ms/step  note
        ---------------------------------------------------------
        1  ADAM  0.01      0.6312           64.1%     0.41
        2  Descent  0.1    0.6420           62.5%     0.38

    Tuned, several seeds, a test set: `compare(build_model, (x, y), rules, loss=...,
    tune=True, seeds=3, test_data=(x_test, y_test))`. Tuning each rule's rate on a budget
    and reporting several seeds follows DeepOBS (Schneider, Balles & Hennig 2019,
    arXiv:1903.05499) and AlgoPerf (Dahl et al. 2023, arXiv:2306.07179); successive
    halving: Jamieson & Talwalkar 2016, arXiv:1502.07943.
    """
    if not callable(build_model):
        raise TypeError(f"build_model must be a callable returning a new Keras model; received {build_model!r}")
    if loss is None:
        raise ValueError("loss: give the loss, as for model.compile (e.g. 'sparse_categorical_crossentropy')")
    _check_int("epochs", epochs, 1)
    _check_int("tune_epochs", tune_epochs, 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(_check_int("seeds", seeds, 1)))
    else:
        try:
            seeds = list(seeds)
        except TypeError:
            raise ValueError(f"seeds must be an integer ≥ 1 or a list of seeds; received {seeds!r}") from None
        if not seeds:
            raise ValueError("seeds: give at least one seed")
        for s in seeds:
            _check_int("each seed", s, 0)
    if not isinstance(tune, bool):
        raise TypeError(f"tune must be True or False; received {tune!r}")
    factors = [float(f) for f in tune_factors]
    if tune and (not factors or not all(math.isfinite(f) and f > 0 for f in factors)):
        raise ValueError(f"tune_factors must be positive finite numbers; received {tune_factors!r}")
    if not (isinstance(validation_split, (int, float)) and 0 < validation_split < 1):
        raise ValueError(f"validation_split must be in (0, 1); received {validation_split!r}")
    arrays = _is_arrays(data)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
        if not arrays:
            raise ValueError("batch_size: give it only with array data; a dataset batches itself")
    if tune and not arrays and validation_data is None:
        raise ValueError(
            "tune=True with a dataset needs validation_data= (held-out training data for the search); "
            "with (x, y) arrays a validation_split of them is held out"
        )
    if callable(progress) and not isinstance(progress, bool):
        report = progress
    elif progress:
        report = _stderr_line
    else:
        report = None
    entries = _entries(rules)  # checks every rule before any training

    if tune:
        tune_train, tune_val = (data, validation_data) if validation_data is not None else _split(data, validation_split)
    stages = _halving_stages(len(factors), tune_epochs)
    search_epochs = sum(size * (reached - before) for size, reached, before in stages)
    bar = _Progress(report)
    for e in entries:
        bar.plan("run", len(seeds) * epochs)
        if tune and e.default_rate is not None:
            bar.plan("search", search_epochs)
    eval_data = test_data if test_data is not None else validation_data
    where = "test" if test_data is not None else "validation" if validation_data is not None else "train"
    metric_key = [None]  # the score's key in the logs, found at the first run

    def fit(model, train, seed, stop, describe, start=0, callbacks=()):
        """Epochs `start` … `stop − 1`; returns (losses, history). Array data is fed in the order
        `_order(n, seed, epoch)` (not Keras's shuffle, whose draws depend on the model's past)."""
        callbacks = [*callbacks, keras.callbacks.TerminateOnNaN(), *_scored_at_average(model)]
        if not _is_arrays(train):
            if describe is not None:
                callbacks.append(_Epochs(bar, describe, stop))
            keras.utils.set_random_seed(seed)  # a dataset's own shuffling, seeded
            history = model.fit(train, epochs=stop, initial_epoch=start, verbose=0, callbacks=callbacks).history
            return [float(v) for v in history.get("loss", [])], history
        x, y, *w = train
        n = len(keras.tree.flatten(x)[0])
        history = {}
        for epoch in range(start, stop):
            began = time.perf_counter()
            order = _order(n, seed, epoch)
            pick = lambda a: None if a is None else keras.tree.map_structure(lambda t: t[order], a)  # noqa: E731
            logs = model.fit(
                pick(x), pick(y), sample_weight=pick(w[0] if w else None), batch_size=batch_size, epochs=1,
                shuffle=False, verbose=0, callbacks=callbacks,
            ).history
            for key, values in logs.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            loss = history.get("loss", [math.nan])[-1]
            if describe is not None:
                bar.say(f"{describe}  epoch {epoch + 1}/{stop}  loss {loss:.4f}  ({time.perf_counter() - began:.2f} s)")
            if not math.isfinite(loss):
                break
        return history.get("loss", []), history

    def evaluate(model, held_out):
        if _is_arrays(held_out):
            x, y, *w = held_out
            return model.evaluate(
                x, y, sample_weight=w[0] if w else None, batch_size=batch_size, verbose=0, return_dict=True
            )
        return model.evaluate(held_out, verbose=0, return_dict=True)

    initial = {}

    def new_model(seed, optimizer):
        keras.utils.set_random_seed(seed)
        model = build_model()
        if not isinstance(model, keras.Model):
            raise TypeError(f"build_model() must return a keras.Model; it returned {type(model).__name__}")
        if model.built and model.weights:
            if seed in initial:
                model.set_weights(initial[seed])
            else:
                initial[seed] = [w.copy() for w in model.get_weights()]  # copies: torch's .numpy() can share memory
        model.compile(optimizer=optimizer, loss=loss, metrics=_fresh_metrics(metrics))
        return model

    def search(i, entry):
        """Successive halving, then up to two rates beyond the grid's edge; returns (rate, trials, note)."""
        trial = _Trials(entry, lambda rate: new_model(seeds[0], entry.make(rate)), seeds[0])
        rates = [entry.default_rate * f for f in factors]
        alive = rates
        trials, states, scores = [], {}, {}

        def attempt(rate, start, stop, label):
            began = time.perf_counter()
            model = trial.prepare(rate, states.get(rate), start)
            losses, _ = fit(model, tune_train, seeds[0], stop, None, start=start)
            finite = len(losses) == stop - start and all(math.isfinite(v) for v in losses)
            val = float(evaluate(model, tune_val)["loss"]) if finite else math.inf
            val = val if math.isfinite(val) else math.inf
            bar.done("search", len(losses), time.perf_counter() - began, stop - start)
            trials.append((rate, val, stop))
            bar.say(f"[{i}/{len(entries)}] {entry.label}  {label} η={rate:.3g}  " + (
                f"validation loss {val:.4f}" if math.isfinite(val) else "diverged"))
            return val, trial.keep(model)

        for stage, (_, reached, before) in enumerate(stages):
            keep = stages[stage + 1][0] if stage + 1 < len(stages) else 1
            scored = []
            for j, rate in enumerate(alive):
                val, state = attempt(rate, before, reached, f"search round {stage + 1}/{len(stages)} ({j + 1}/{len(alive)})")
                scores[rate] = val
                scored.append((val, j, rate, state))
                scored.sort(key=lambda s: (s[0], s[1]))
                # Hold only the states still in the running (a user's model may be large).
                scored = scored[:keep] + [(v, jj, r, None) for v, jj, r, _ in scored[keep:]]
            states = {rate: state for _, _, rate, state in scored[:keep]}
            alive = [rate for _, _, rate, _ in scored[:keep]]
        best = alive[0]
        if not math.isfinite(scores[best]):
            return entry.default_rate, trials, "not tuned: every rate tried diverged"
        # A best rate at an end of the grid: try up to two more half-decade steps beyond it.
        step = math.sqrt(10.0)
        for edge, direction in ((max(rates), step), (min(rates), 1 / step)):
            if best != edge:
                continue
            bar.plan("search", 2 * tune_epochs)
            for k in (1, 2):
                rate = edge * direction**k
                states = {}
                val, _ = attempt(rate, 0, tune_epochs, "beyond the grid")
                scores[rate] = val
                if val < scores[best]:
                    best = rate
                else:
                    bar.plan("search", -tune_epochs * (2 - k))
                    break
            note = "η at the edge of the search" if best == edge * direction**2 else ""
            return best, trials, note
        return best, trials, ""

    rows = []
    interrupted = False
    try:
        for i, entry in enumerate(entries, 1):
            rate, tuned, note = entry.default_rate, False, ""
            if tune:
                if entry.default_rate is None:
                    note = entry.why_not
                else:
                    bar.say(f"[{i}/{len(entries)}] {entry.label}  searching η over {len(factors)} rates "
                            f"around {entry.default_rate:.3g}")
                    rate, trials, note = search(i, entry)
                    tuned = not note.startswith("not tuned")
            row = Row(entry.label, rate, tuned, note)
            if tune and entry.default_rate is not None:
                row.trials = trials
            rows.append(row)
            for k, seed in enumerate(seeds):
                began = time.perf_counter()
                model = new_model(seed, entry.make(rate if tuned else None))
                timer = _Timer()
                describe = f"[{i}/{len(entries)}] {entry.label}" + (f" η={rate:.3g}" if rate is not None else "")
                if len(seeds) > 1:
                    describe += f"  seed {seed} ({k + 1}/{len(seeds)})"
                curve, history = fit(model, data, seed, epochs, describe, callbacks=[timer])
                diverged = not curve or not all(math.isfinite(v) for v in curve)
                if diverged:
                    score = math.nan
                elif eval_data is not None:
                    logs = evaluate(model, eval_data)
                    score = _pick_score(logs, metric_key)
                else:
                    score = _pick_score({k_: v[-1] for k_, v in history.items()}, metric_key)
                row.seeds.append(seed)
                row.curves.append(curve)
                row.losses.append(math.nan if diverged else curve[-1])
                row.scores.append(float(score))
                row._step_times += timer.times[1:] or timer.times  # the first step includes compilation
                bar.done("run", len(curve), time.perf_counter() - began, epochs)
            if row.diverged_runs:
                extra = "diverged" if row.diverged else f"diverged in {row.diverged_runs}/{len(seeds)} seeds"
                row.note = "; ".join(n for n in (row.note, extra) if n)
    except KeyboardInterrupt:
        interrupted = True
        if rows and not rows[-1].losses:
            rows.pop()
        elif rows and len(rows[-1].losses) < len(seeds):
            rows[-1].note = "; ".join(n for n in (rows[-1].note, f"interrupted: {len(rows[-1].losses)}/{len(seeds)} seeds") if n)
        if report is not None:
            report(f"interrupted: keeping the {len(rows)} rule(s) that finished")

    name = metric_key[0] or "loss"
    score_name = f"{where} {name}"
    if higher_is_better is None:
        higher_is_better = name != "loss" and any(word in name.lower() for word in _HIGHER_IS_BETTER)
    details = []
    if len(seeds) > 1:
        details.append(f"mean ± sample standard deviation over {len(seeds)} seeds ({', '.join(map(str, seeds))})")
    if tune:
        held = "validation_data" if validation_data is not None else f"a {validation_split:.0%} held-out split of the training data"
        details.append(
            f"η chosen by successive halving over ×{min(factors):.3g}…×{max(factors):.3g} the default "
            f"({len(factors)} rates, up to {tune_epochs} epochs) on {held}"
        )
    return Comparison(rows, score_name, higher_is_better, seeds, tune, interrupted, "\n".join(details))


def _pick_score(logs, key):
    """The first metric in `logs` that is not a loss (the loss when there is none); remembers its key."""
    if key[0] is None:
        names = [k for k in logs if k != "loss" and not k.startswith("val_") and not k.endswith("loss")]
        key[0] = names[0] if names else "loss"
    value = logs.get(key[0], math.nan)
    return float(keras.ops.convert_to_numpy(value)) if value is not None else math.nan


def _halving_stages(n, tune_epochs):
    """[(candidates, epochs reached, epochs before)] of successive halving (a third kept each round)."""
    sizes = [n]
    while sizes[-1] > 3:
        sizes.append(math.ceil(sizes[-1] / 3))
    rounds = len(sizes)
    reached = [max(1, round(tune_epochs / 3 ** (rounds - 1 - r))) for r in range(rounds)]
    if any(b <= a for a, b in zip(reached, reached[1:])):
        return [(n, tune_epochs, 0)]  # too few epochs to halve: a plain grid
    return list(zip(sizes, reached, [0] + reached[:-1]))


def _stderr_line(line):
    print(line, file=sys.stderr, flush=True)


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
    p.add_argument(
        "--seeds", type=_positive_int, default=1,
        help="runs per rule, seeds SEED … SEED+N−1: the table shows mean ± std, the plot a band (default 1)",
    )
    p.add_argument(
        "--tune", action="store_true",
        help="search each rule's learning rate first (successive halving over ×0.01…×100 its default, "
        "on 20%% of the training data held out; never the test set)",
    )
    p.add_argument("--tune-epochs", type=_positive_int, default=3, help="epochs of the search's last round (default 3)")
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


def _specs(text):
    """`--rules` → the list of specs; an empty entry is named by its position."""
    specs = [s.strip() for s in text.split(",")]
    for position, spec in enumerate(specs, 1):
        if not spec:
            raise UsageError(
                f"--rules: empty rule name at position {position} of {text!r} "
                "(two commas in a row, or a comma at the start or end)"
            )
        build_optimizer(spec)  # refuse bad names and values before any work
    return specs


def main(argv=None):
    """Entry point of `python -m keras_optx.compare` and the `keras-optx-compare` script.

    Returns the exit status: 0, 2 for a bad option, 130 when interrupted (Ctrl-C), after
    printing and plotting what finished.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser().parse_args(argv)
        specs = _specs(args.rules)
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

    (x, y), test = load_digits(args.seed)
    n_classes = int(max(y.max(), test[1].max())) + 1
    seeds = list(range(args.seed, args.seed + args.seeds))
    _stderr_line(
        f"{PROG}: backend {keras.backend.backend()}, digits {len(x)} train / {len(test[0])} test, "
        f"{len(specs)} rules × {args.epochs} epochs × {len(seeds)} seed(s), batch {args.batch_size}"
        + (f", rates searched ({args.tune_epochs} epochs)" if args.tune else "")
    )
    result = compare(
        lambda: make_model(x.shape[1], n_classes=n_classes),
        (x, y),
        {display_name(spec): spec for spec in specs} if len(set(map(display_name, specs))) == len(specs) else specs,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        epochs=args.epochs,
        batch_size=args.batch_size,
        seeds=seeds,
        tune=args.tune,
        tune_epochs=args.tune_epochs,
        test_data=test,
        progress=_stderr_line,
    )
    print(result.table(), flush=True)
    if result.rows:
        title = f"keras_optx rules on digits ({keras.backend.backend()}, {args.epochs} epochs"
        title += ", tuned η)" if args.tune else ")"
        result.plot(args.output, title)
        _stderr_line(f"{PROG}: wrote {args.output}")
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
