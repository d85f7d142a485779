"""Gradient descent and its momentum variants (Flux's Descent, Momentum, Nesterov)."""

import keras

from . import _checks as check
from ._base import Rule

_register = keras.saving.register_keras_serializable(package="keras_optx")


@_register
class Descent(Rule):
    """Classic gradient descent (Flux `Descent(η)`): Δ = η·g.

    Args:
        learning_rate: η, default 0.1 (a float, a `LearningRateSchedule` or a callable).
        **kwargs: any `keras.optimizers.Optimizer` keyword (`clipnorm`, `use_ema`, …).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Descent(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # x − 2·0.1·g
        [0.8 2.2]

    Same as `keras.optimizers.SGD(learning_rate)` without momentum, but with Flux's
    default rate 0.1 (Keras's is 0.01). Robbins & Monro 1951.
    """

    def __init__(self, learning_rate=0.1, **kwargs):
        super().__init__(learning_rate, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return lr * g, {}


@_register
class Momentum(Rule):
    """Gradient descent with momentum (Flux `Momentum(η, ρ)`).

    v ← ρ·v − η·g;  Δ = −v

    Args:
        learning_rate: η, default 0.01.
        rho: ρ ∈ [0, 1), default 0.9.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Momentum(0.1, 0.9)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # v = −0.1·g, then −0.19·g
        [0.71 2.29]

    With a constant rate this equals `keras.optimizers.SGD(η, momentum=ρ)` and
    `torch.optim.SGD(lr=η, momentum=ρ)`; unlike them, the velocity carries η, so a
    changed rate only affects new gradients. Polyak 1964; Sutskever et al. 2013.
    """

    hyperparameters = {"rho": check.unit}
    slots = {"velocity": 0.0}
    low_precision_slots = {"velocity": ("bfloat16", "float16")}

    def __init__(self, learning_rate=0.01, rho=0.9, **kwargs):
        super().__init__(learning_rate, rho=rho, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        v = self.rho * s.velocity - lr * g
        return -v, {"velocity": v}


@_register
class Nesterov(Rule):
    """Gradient descent with Nesterov momentum (Flux `Nesterov(η, ρ)`).

    d = ρ²·v − (1+ρ)·η·g;  v ← ρ·v − η·g;  Δ = −d

    Args:
        learning_rate: η, default 0.001.
        rho: ρ ∈ [0, 1), default 0.9.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Nesterov(0.1, 0.9)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # d = −0.19·g, then −0.271·g
        [0.539 2.461]

    With a constant rate this equals `keras.optimizers.SGD(η, momentum=ρ, nesterov=True)`
    and torch's `SGD(nesterov=True)`. Nesterov 1983; Sutskever et al. 2013.
    """

    hyperparameters = {"rho": check.unit}
    slots = {"velocity": 0.0}
    low_precision_slots = {"velocity": ("bfloat16", "float16")}

    def __init__(self, learning_rate=0.001, rho=0.9, **kwargs):
        super().__init__(learning_rate, rho=rho, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        v = self.rho * s.velocity - lr * g
        # Flux's d = ρ²v − (1+ρ)ηg, written through the new v (= ρ·v_new − ηg): then Δ needs no
        # old velocity, so XLA updates it in place instead of copying it first.
        d = self.rho * v - lr * g
        return -d, {"velocity": v}


