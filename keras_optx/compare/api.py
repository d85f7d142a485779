"""`compare(build_model, data, rules, ...)`: train a model with each rule and compare them."""

import math
import time

import keras

from .data import _check_data, _fresh_metrics, _is_arrays, _is_factory, _order, _seed_every_library, _split
from .progress import _Epochs, _Progress, _stderr_line, _Timer
from .report import Comparison, Row
from .rules import DEFAULT_RULES, _entries
from .search import TUNE_FACTORS, search, search_epochs

_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "iou", "r2")



def _scored_at_average(model):
    """A schedule-free rule is scored at its averaged weights x (its eval weights): `ScheduleFreeEval`
    switches to them at the end of each fit and back to y at the start of the next."""
    from ..schedule_free import ScheduleFreeEval, _ScheduleFree

    return [ScheduleFreeEval()] if isinstance(model.optimizer, _ScheduleFree) else []

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
    the same order (`keras.utils.set_random_seed(seed)` before building the model, before
    `fit` and when training begins, so unseeded dropout draws alike too), so only the rule
    differs. With `tune=True` each rule's learning rate is
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
        build_model: a function of no argument returning a new uncompiled `keras.Model`
            (not a model: each run needs its own).
        data: the training data: `(x, y)` or `(x, y, sample_weight)` arrays, or anything
            `model.fit` takes as `x` (a `tf.data.Dataset`, a torch `DataLoader`, a
            `keras.utils.PyDataset`), or a function of no argument returning one. A
            `tf.data.Dataset` that reshuffles on each pass (`shuffle(...)` with
            `reshuffle_each_iteration=True`, its default) would give each rule another order:
            it is refused; pass `lambda: make_dataset()` instead (each run builds its own after
            `keras.utils.set_random_seed(seed)`, so every rule sees the same order).
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
        seeds: runs per rule: an integer N (seeds 0 … N−1) or a list of distinct seeds ≥ 0. Several
            seeds give each cell a mean ± sample standard deviation.
        tune: search each rule's learning rate first (default False).
        tune_epochs: epochs of the search's last round, ≥ 1, default 3.
        tune_factors: the rates tried, as multiples of each rule's default rate: a
            non-empty sequence of positive finite numbers, default ×0.01 … ×100 in
            half-decade steps.
        validation_split: with array data and `tune=True`, the fraction of `data` held out
            for the search (a seeded random part), in (0, 1), default 0.2. The full runs
            train on all of `data`.
        validation_data: held-out data for the search instead of a split (needed with
            `tune=True` when `data` is not arrays); without `test_data` it is also where
            the score is measured. Arrays, a dataset, or a function returning one.
        test_data: where the score is measured after each full run (never used by the search).
            Arrays, a dataset, or a function returning one.
        higher_is_better: True, False or None, the ranking direction of the score; None
            (default): True for accuracy,
            AUC, precision, recall, F1, IoU and R², False otherwise (and for the loss).
        progress: True prints what is being tried and a time estimate to stderr; a callable
            receives each line instead; False is silent.

    Returns:
        A `Comparison`: `.rows`, `.table()`, `.markdown()`, `.to_dicts()`, `.plot(path)`. Ctrl-C
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
    if isinstance(build_model, keras.Model) or not callable(build_model):
        raise TypeError(
            "build_model must be a function of no argument returning a new Keras model (each run trains its "
            f"own), e.g. `lambda: keras.Sequential([...])`; received {build_model!r}"
        )
    if loss is None:
        raise ValueError("loss: give the loss, as for model.compile (e.g. 'sparse_categorical_crossentropy')")
    _check_int("epochs", epochs, 1)
    _check_int("tune_epochs", tune_epochs, 1)
    seeds = _checked_seeds(seeds)
    if not isinstance(tune, bool):
        raise TypeError(f"tune must be True or False; received {tune!r}")
    factors = _checked_factors(tune_factors)
    if higher_is_better is not None and not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be True, False or None (decided by the metric); received {higher_is_better!r}")
    if isinstance(validation_split, bool) or not (isinstance(validation_split, (int, float)) and 0 < validation_split < 1):
        raise ValueError(f"validation_split must be in (0, 1); received {validation_split!r}")
    for name, value in (("data", data), ("validation_data", validation_data), ("test_data", test_data)):
        if value is not None:
            _check_data(name, value)
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
    bar = _Progress(report)
    for e in entries:
        bar.plan("run", len(seeds) * epochs)
        if tune and e.default_rate is not None:
            bar.plan("search", search_epochs(len(factors), tune_epochs))
    eval_data = test_data if test_data is not None else validation_data
    where = "test" if test_data is not None else "validation" if validation_data is not None else "train"
    run = _Run(build_model, loss, metrics, batch_size, bar)

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
                    rate, trials, note = search(run, i, len(entries), entry, factors, tune_epochs, tune_train, tune_val, seeds[0])
                    tuned = not note.startswith("not tuned")
            row = Row(entry.label, rate, tuned, note)
            if tune and entry.default_rate is not None:
                row.trials = trials
            rows.append(row)
            for k, seed in enumerate(seeds):
                began = time.perf_counter()
                model = run.new_model(seed, entry.make(rate if tuned else None), data)
                timer = _Timer()
                describe = f"[{i}/{len(entries)}] {entry.label}" + (f" η={rate:.3g}" if rate is not None else "")
                if len(seeds) > 1:
                    describe += f"  seed {seed} ({k + 1}/{len(seeds)})"
                curve, history = run.fit(model, data, seed, epochs, describe, callbacks=[timer])
                diverged = not curve or not all(math.isfinite(v) for v in curve)
                if diverged:
                    score = math.nan
                elif eval_data is not None:
                    score = run.pick_score(run.evaluate(model, eval_data))
                else:
                    score = run.pick_score({k_: v[-1] for k_, v in history.items()})
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

    name = run.metric_key or "loss"
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


class _Run:
    """What every run of one comparison shares: fitting, evaluating, fresh models from the same weights."""

    def __init__(self, build_model, loss, metrics, batch_size, bar):
        self.build_model, self.loss, self.metrics, self.batch_size, self.bar = build_model, loss, metrics, batch_size, bar
        self.initial = {}  # seed → the initial weights of every rule's model
        self.metric_key = None  # the score's key in the logs, found at the first run

    def new_model(self, seed, optimizer, data):
        """`build_model()` after seeding, built (on a batch of `data` when it has no `keras.Input`),
        with the seed's initial weights, compiled with `optimizer`."""
        keras.utils.set_random_seed(seed)
        model = self.build_model()
        if not isinstance(model, keras.Model):
            raise TypeError(f"build_model() must return a keras.Model; it returned {type(model).__name__}")
        if not model.built:
            model(_first_inputs(data), training=False)  # its weights, drawn now: the same for every rule
        if model.built and model.weights:
            if seed in self.initial:
                model.set_weights(self.initial[seed])
            else:
                self.initial[seed] = [w.copy() for w in model.get_weights()]  # copies: torch's .numpy() can share memory
        model.compile(optimizer=optimizer, loss=self.loss, metrics=_fresh_metrics(self.metrics))
        return model

    def fit(self, model, train, seed, stop, describe, start=0, callbacks=()):
        """Epochs `start` … `stop − 1`; returns (losses, history). Array data is fed in the order
        `_order(n, seed, epoch)` (not Keras's shuffle, whose draws depend on the model's past).

        Every fit starts from the seed's global random state, set before `fit` (a dataset built
        by a function seeds its shuffles then) and again when training begins (after Keras's
        first symbolic pass, which draws from it on torch): a dataset's own shuffling and the
        draws of layers without a seed of their own (torch's unseeded dropout uses torch's global
        generator) are then the same for every rule and every rate the search tries."""
        callbacks = [*callbacks, _SeedAtTrainBegin(seed), keras.callbacks.TerminateOnNaN(), *_scored_at_average(model)]
        _seed_every_library(seed)
        if not _is_arrays(train):
            if describe is not None:
                callbacks.append(_Epochs(self.bar, describe, stop))
            # A function returning the dataset: a new one per run, its shuffles seeded the same way.
            # (A search round resumed at epoch `start` replays the first epochs' order: the same for every rate.)
            dataset = train() if _is_factory(train) else train
            history = model.fit(dataset, epochs=stop, initial_epoch=start, verbose=0, callbacks=callbacks).history
            return [float(v) for v in history.get("loss", [])], history
        x, y, *w = train
        n = len(keras.tree.flatten(x)[0])
        history = {}
        for epoch in range(start, stop):
            began = time.perf_counter()
            order = _order(n, seed, epoch)
            pick = lambda a: None if a is None else keras.tree.map_structure(lambda t: t[order], a)  # noqa: E731
            logs = model.fit(
                pick(x), pick(y), sample_weight=pick(w[0] if w else None), batch_size=self.batch_size, epochs=1,
                shuffle=False, verbose=0, callbacks=callbacks,
            ).history
            for key, values in logs.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            loss = history.get("loss", [math.nan])[-1]
            if describe is not None:
                self.bar.say(f"{describe}  epoch {epoch + 1}/{stop}  loss {loss:.4f}  ({time.perf_counter() - began:.2f} s)")
            if not math.isfinite(loss):
                break
        return history.get("loss", []), history

    def evaluate(self, model, held_out):
        if _is_arrays(held_out):
            x, y, *w = held_out
            return model.evaluate(
                x, y, sample_weight=w[0] if w else None, batch_size=self.batch_size, verbose=0, return_dict=True
            )
        return model.evaluate(held_out() if _is_factory(held_out) else held_out, verbose=0, return_dict=True)

    def pick_score(self, logs):
        """The first metric in `logs` that is not a loss (the loss when there is none); remembers its key."""
        if self.metric_key is None:
            names = [k for k in logs if k != "loss" and not k.startswith("val_") and not k.endswith("loss")]
            self.metric_key = names[0] if names else "loss"
        value = logs.get(self.metric_key, math.nan)
        return float(keras.ops.convert_to_numpy(value)) if value is not None else math.nan


def _first_inputs(data):
    """The inputs of one batch of `data` (one example of arrays), as NumPy."""
    import numpy as np

    if _is_arrays(data):
        x = keras.tree.map_structure(lambda a: a[:1], data[0])
    else:
        dataset = data() if _is_factory(data) else data
        batch = dataset[0] if isinstance(dataset, keras.utils.PyDataset) else next(iter(dataset))
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return keras.tree.map_structure(np.asarray, x)


class _SeedAtTrainBegin(keras.callbacks.Callback):
    def __init__(self, seed):
        super().__init__()
        self.seed = seed

    def on_train_begin(self, logs=None):
        _seed_every_library(self.seed)


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer ≥ {low}; received {value!r}")
    return value


def _checked_seeds(seeds):
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return list(range(_check_int("seeds", seeds, 1)))
    if isinstance(seeds, str):
        raise TypeError(f"seeds must be an integer ≥ 1 or a list of seeds; received {seeds!r}")
    try:
        seeds = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be an integer ≥ 1 or a list of seeds; received {seeds!r}") from None
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    for s in seeds:
        _check_int("each seed", s, 0)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must be distinct (a repeated seed repeats the same run); {repeated} repeated in {seeds!r}")
    return seeds


def _checked_factors(tune_factors):
    """`tune_factors` as a list of floats, refused (naming it) unless a non-empty sequence of positive finite numbers."""
    wanted = "a non-empty sequence of positive finite numbers (multiples of the default rate), e.g. [0.1, 1, 10]"
    if isinstance(tune_factors, (str, bytes)) or not hasattr(tune_factors, "__iter__"):
        raise TypeError(f"tune_factors must be {wanted}; received {tune_factors!r}")
    factors = list(tune_factors)
    if not factors or not all(isinstance(f, (int, float)) and not isinstance(f, bool) for f in factors):
        raise ValueError(f"tune_factors must be {wanted}; received {tune_factors!r}")
    factors = [float(f) for f in factors]
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"tune_factors must be {wanted}; received {tune_factors!r}")
    return factors
