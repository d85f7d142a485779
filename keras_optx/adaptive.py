"""Per-coordinate adaptive rates without momentum (Flux's RMSProp, ADAGrad, ADADelta)."""

import keras

from . import _checks as check
from ._base import EPSILON, Rule

_register = keras.saving.register_keras_serializable(package="keras_optx")


@_register
class RMSProp(Rule):
    """RMSProp (Flux `RMSProp(η, ρ)`).

    a ← ρ·a + (1−ρ)·g²;  Δ = η·g / (√a + ϵ)

    Args:
        learning_rate: η, default 0.001.
        rho: ρ ∈ [0, 1), default 0.9.
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.RMSProp(0.01, 0.9)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # steps 0.01/√0.1, 0.01/√0.19
        [0.945 2.055]

    Differs from `keras.optimizers.RMSprop`: Keras adds ϵ inside the square root
    (√(a + ϵ)) with ϵ = 1e-7; Flux and torch add it outside. Tieleman & Hinton 2012.
    """

    hyperparameters = {"rho": check.unit, "epsilon": check.nonnegative}
    slots = {"acc": 0.0}
    low_precision_slots = {"acc": ("bfloat16",)}

    def __init__(self, learning_rate=0.001, rho=0.9, epsilon=EPSILON, **kwargs):
        super().__init__(learning_rate, rho=rho, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        a = self.rho * s.acc + (1 - self.rho) * g**2
        return lr * g / (ops.sqrt(a) + self.epsilon), {"acc": a}


class _StartsAtEpsilon:
    """Flux starts ADAGrad's and AMSGrad's accumulators at ϵ, not zero."""

    @property
    def slots(self):
        return dict.fromkeys(self.state_names, self._static("epsilon"))


@_register
class ADAGrad(_StartsAtEpsilon, Rule):
    """ADAGrad (Flux `ADAGrad(η)`).

    a ← a + g² (a starts at ϵ);  Δ = η·g / (√a + ϵ)

    Args:
        learning_rate: η, default 0.1.
        epsilon: ϵ, default 1e-8 (also the accumulator's start).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ADAGrad(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # steps 0.1/√1, 0.1/√2
        [0.829 2.171]

    Equals `torch.optim.Adagrad(lr=η, initial_accumulator_value=ϵ, eps=ϵ)`. Differs from
    `keras.optimizers.Adagrad` (accumulator starts at 0.1, ϵ inside √, rate 0.001).
    Duchi, Hazan & Singer 2011.
    """

    hyperparameters = {"epsilon": check.nonnegative}
    state_names = ("acc",)
    low_precision_refusal = (
        "its accumulator a ← a + g² only grows, and with 8 significant bits (bfloat16) an increment "
        "below a/256 is lost: it would stop accumulating"
    )

    def __init__(self, learning_rate=0.1, epsilon=EPSILON, **kwargs):
        super().__init__(learning_rate, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        a = s.acc + g**2
        return lr * g / (ops.sqrt(a) + self.epsilon), {"acc": a}


@_register
class ADADelta(Rule):
    """ADADelta (Flux `ADADelta(ρ)`): an ADAGrad whose step needs no learning rate.

    a ← ρ·a + (1−ρ)·g²;  Δ = g·√(d + ϵ)/√(a + ϵ);  d ← ρ·d + (1−ρ)·Δ²

    Args:
        rho: ρ ∈ [0, 1), default 0.9.
        epsilon: ϵ, default 1e-8.
        learning_rate: a multiplier of Δ (keyword only), default 1.0 as in Flux and the
            paper; it exists so Keras callbacks and schedules can scale the step.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ADADelta(0.9, 1e-4)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 4))  # no rate: steps of order √ϵ
        [0.936 2.064]

    `keras.optimizers.Adadelta` defaults to rate 0.001 and ρ = 0.95, ϵ = 1e-7.
    Zeiler 2012, arXiv:1212.5701.
    """

    hyperparameters = {"rho": check.unit, "epsilon": check.nonnegative}
    slots = {"acc": 0.0, "acc_delta": 0.0}
    low_precision_slots = {"acc": ("bfloat16",), "acc_delta": ("bfloat16",)}

    def __init__(self, rho=0.9, epsilon=EPSILON, *, learning_rate=1.0, **kwargs):
        super().__init__(learning_rate, rho=rho, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        rho, eps = self.rho, self.epsilon
        a = rho * s.acc + (1 - rho) * g**2
        step = g * ops.sqrt(s.acc_delta + eps) / ops.sqrt(a + eps)
        d = rho * s.acc_delta + (1 - rho) * step**2
        return lr * step, {"acc": a, "acc_delta": d}


