"""Flux's decays as Keras learning-rate schedules (and, in `Optimiser`, as chain members)."""

import keras
from keras import ops

from . import _checks as check

_register = keras.saving.register_keras_serializable(package="keras_optx")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


@_register
class ExpDecay(_Schedule):
    """Step-wise exponential decay with a floor (Flux `ExpDecay(η, decay, decay_step, clip, start)`).

    At the n-th update (n = 1, 2, …) the rate is max(η·decay^k, clip),
    k = max(0, ⌊n/decay_step⌋ − ⌊start/decay_step⌋).

    Args:
        learning_rate: η, default 0.001.
        decay: the factor applied every `decay_step` updates, > 0, default 0.1.
        decay_step: updates between two decays, an integer ≥ 1, default 1000.
        clip: the smallest rate, ≥ 0, default 1e-4.
        start: updates before decay begins, an integer ≥ 0, default 0.

    Example:
        >>> schedule = keras_optx.ExpDecay(0.1, 0.5, 100)
        >>> [round(float(schedule(step)), 4) for step in (0, 99, 199)]  # updates n = 1, 100, 200
        [0.1, 0.05, 0.025]
        >>> opt = keras_optx.Descent(schedule)  # as a rate; or a chain member: Optimiser(schedule, Descent(1.0))

    Both give the same trajectory. Unlike `keras.optimizers.schedules.ExponentialDecay`
    it counts updates from 1, decays in whole steps and never goes below `clip`. Step decay as
    in Krizhevsky, Sutskever & Hinton 2012; Flux.jl (Innes 2018, arXiv:1811.01457).
    """

    def __init__(self, learning_rate=0.001, decay=0.1, decay_step=1000, clip=1e-4, start=0):
        self.learning_rate = check.nonnegative("learning_rate", learning_rate)
        self.decay = check.positive("decay", decay)
        self.decay_step = check.positive_int("decay_step", decay_step)
        self.clip = check.nonnegative("clip", clip)
        self.start = check.nonnegative_int("start", start)

    def __call__(self, step):
        n = ops.cast(step, "int32") + 1
        k = ops.maximum(n // self.decay_step - self.start // self.decay_step, 0)
        return ops.maximum(self.learning_rate * ops.power(self.decay, ops.cast(k, "float32")), self.clip)

    def get_config(self):
        return {k: getattr(self, k) for k in ("learning_rate", "decay", "decay_step", "clip", "start")}

    def __repr__(self):
        return f"ExpDecay({self.learning_rate}, {self.decay}, {self.decay_step}, {self.clip}, {self.start})"


@_register
class InvDecay(_Schedule):
    """Inverse-time decay (Flux `InvDecay(γ)`): at the n-th update (n = 1, 2, …) the step is scaled by 1/(1 + γn).

    Args:
        gamma: γ ≥ 0, default 0.001.
        learning_rate: the rate at n = 0, default 1.0, so that as a chain member it only
            scales (Flux); as a `learning_rate` give the base rate here.

    Example:
        >>> schedule = keras_optx.InvDecay(0.01, learning_rate=0.1)
        >>> [round(float(schedule(step)), 4) for step in (0, 99)]  # 0.1/(1 + 0.01·n), n = 1, 100
        [0.099, 0.05]
        >>> opt = keras_optx.Momentum(schedule)  # the same as Optimiser(InvDecay(0.01), Momentum(0.1))

    Like `keras.optimizers.schedules.InverseTimeDecay(η, 1, γ)`, but counting updates from 1.
    The 1/n-type rate of stochastic approximation: Robbins & Monro 1951; Flux.jl (Innes 2018,
    arXiv:1811.01457).
    """

    def __init__(self, gamma=0.001, learning_rate=1.0):
        self.gamma = check.nonnegative("gamma", gamma)
        self.learning_rate = check.nonnegative("learning_rate", learning_rate)

    def __call__(self, step):
        n = ops.cast(step, "float32") + 1
        return self.learning_rate / (1 + self.gamma * n)

    def get_config(self):
        return {"gamma": self.gamma, "learning_rate": self.learning_rate}

    def __repr__(self):
        return f"InvDecay({self.gamma}, learning_rate={self.learning_rate})"
