"""The rate search: successive halving over multiples of a rule's default rate, then up to two
half-decade steps beyond the grid's edge when the best rate is on it."""

import math
import time

import keras

TUNE_FACTORS = tuple(10.0 ** (k / 2) for k in range(-4, 5))  # ×0.01 … ×100 of the default rate, half-decade steps


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


def search(run, index, total, entry, factors, tune_epochs, train, held_out, seed):
    """Successive halving, then up to two rates beyond the grid's edge; returns (rate, trials, note).

    `run` fits and evaluates (an `api._Run`); every rate trains from the same weights, optimizer
    state and random state (dropout's seeds included), on `train`, scored by its loss on `held_out`.
    """
    bar = run.bar
    trial = _Trials(entry, lambda rate: run.new_model(seed, entry.make(rate), train))
    rates = [entry.default_rate * f for f in factors]
    stages = _halving_stages(len(factors), tune_epochs)
    alive = rates
    trials, states, scores = [], {}, {}

    def attempt(rate, start, stop, label):
        began = time.perf_counter()
        model = trial.prepare(rate, states.get(rate))
        losses, _ = run.fit(model, train, seed, stop, None, start=start)
        finite = len(losses) == stop - start and all(math.isfinite(v) for v in losses)
        val = float(run.evaluate(model, held_out)["loss"]) if finite else math.inf
        val = val if math.isfinite(val) else math.inf
        bar.done("search", len(losses), time.perf_counter() - began, stop - start)
        trials.append((rate, val, stop))
        bar.say(f"[{index}/{total}] {entry.label}  {label} η={rate:.3g}  " + (
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


def search_epochs(n_factors, tune_epochs):
    """Epochs the search trains per rule, before any step beyond the grid."""
    return sum(size * (reached - before) for size, reached, before in _halving_stages(n_factors, tune_epochs))


class _Trials:
    """The search's models: one model and optimizer for every rate (restored, then its rate set:
    its training step is compiled once), or, for a factory that takes the rate, a new model per rate.

    The state every rate starts from holds the weights, the optimizer's variables and the
    layers' random state (`model.variables`: dropout's seeds), so every rate sees the same
    dropout masks. (`new_model` builds a model without `keras.Input` on a batch of the data.)
    """

    def __init__(self, entry, new_model):
        self.entry, self.new_model = entry, new_model
        self.model = self.start = None

    def prepare(self, rate, state):
        """The model to train at `rate` from `state` (None: the start)."""
        if self.entry.rebuild:
            return state if state is not None else self.new_model(rate)
        if self.model is None:
            self.model = self.new_model(self.entry.default_rate)
            self.model.optimizer.build(self.model.trainable_variables)
            self.start = _snapshot(self.model)
        _restore(self.model, state if state is not None else self.start)
        self.entry.set_rate(self.model.optimizer, rate)
        return self.model

    def keep(self, model):
        """What `prepare` needs to continue from here."""
        return model if self.entry.rebuild else _snapshot(model)


def _snapshot(model):
    """Copies of a compiled model's variables (weights and random state) and optimizer variables."""
    import numpy as np

    values = lambda vs: [np.array(keras.ops.convert_to_numpy(v.value), copy=True) for v in vs]  # noqa: E731
    return values(model.variables), values(model.optimizer.variables)


def _restore(model, snapshot):
    variables, optimizer = snapshot
    if (len(variables), len(optimizer)) != (len(model.variables), len(model.optimizer.variables)):
        # a partial restore would start a rate from another rate's state: never silently
        raise RuntimeError(
            f"compare's rate search: the model has {len(model.variables)} variables and its optimizer "
            f"{len(model.optimizer.variables)}, the start state {len(variables)} and {len(optimizer)}"
        )
    for variable, value in zip(model.variables, variables):
        variable.assign(value)
    for variable, value in zip(model.optimizer.variables, optimizer):
        variable.assign(value)
