"""Rules that step by the gradient's sign: Lion and Rprop."""

import numbers

import keras

from . import _checks as check
from ._base import Rule

_register = keras.saving.register_keras_serializable(package="keras_optx")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


@_register
class Lion(Rule):
    """Lion, "evolved sign momentum": the sign of an interpolation of momentum and gradient.

    Δ = η·sign(β₁·m + (1−β₁)·g);  m ← β₂·m + (1−β₂)·g

    Args:
        learning_rate: η, default 0.001 (Keras's default; the paper advises a rate 3–10x
            smaller than AdamW's, as each coordinate moves by η every step).
        beta: (β₁, β₂), each in [0, 1), default (0.9, 0.99) (the paper's).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Lion(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # steps of η·sign(…)
        [0.8 2.2]

    The same rule as `keras.optimizers.Lion(learning_rate=η, beta_1=β₁, beta_2=β₂)` and
    `optax.lion(η, b1=β₁, b2=β₂)`; unlike them it is a keras_optx rule, so it can be a member
    of an `Optimiser` chain (`Optimiser(ClipNorm(1.0), Lion(1e-4), WeightDecay(1e-5))`).
    The paper's decoupled weight decay η·λ·x is Keras's `weight_decay=λ` keyword (as for every
    keras_optx rule). Keras refuses β₁ = 0 (accepted here: signSGD with momentum β₂ only
    feeding later steps) and accepts β₁ = 1. torch.optim has no Lion.
    Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675.
    """

    hyperparameters = {"beta": check.betas}
    slots = {"m": 0.0}
    low_precision_slots = {"m": ("bfloat16", "float16")}

    def __init__(self, learning_rate=0.001, beta=(0.9, 0.99), **kwargs):
        super().__init__(learning_rate, beta=beta, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        return lr * ops.sign(b1 * s.m + (1 - b1) * g), {"m": b2 * s.m + (1 - b2) * g}


def _decrease(name, value):
    """ℓ₋ ∈ (0, 1)."""
    value = check._number(name, value)
    if not 0 < value < 1:
        raise ValueError(f"`{name}` (the decrease factor) must be in (0, 1); received {name}={value}.")
    return value


def _increase(name, value):
    """ℓ₊ > 1, finite."""
    value = check._number(name, value)
    if not 1 < value < float("inf"):
        raise ValueError(f"`{name}` (the increase factor) must be a finite number > 1; received {name}={value}.")
    return value


def _factors(name, value):
    """Rprop's (ℓ₋, ℓ₊) with 0 < ℓ₋ < 1 < ℓ₊ (torch.optim.Rprop's range)."""
    low, high = _pair(name, value, "(ℓ₋, ℓ₊)")
    return _decrease(f"{name}[0]", low), _increase(f"{name}[1]", high)


def _bounds(name, value):
    """Rprop's step-size bounds (Γ₋, Γ₊) with 0 ≤ Γ₋ ≤ Γ₊, both finite."""
    low, high = _pair(name, value, "(Γ₋, Γ₊)")
    low, high = check.nonnegative(f"{name}[0]", low), check.nonnegative(f"{name}[1]", high)
    if low > high:
        raise ValueError(f"`{name}` must be (Γ₋, Γ₊) with Γ₋ ≤ Γ₊; received {name}=({low}, {high}).")
    return low, high


# Each element may be a schedule or callable (keras_optx/_hyper.py); the numbers among them are
# checked by their position's check (Γ₋ ≤ Γ₊ only when both are numbers).
_factors.element = (_decrease, _increase)
_bounds.element = (check.nonnegative, check.nonnegative)


def _pair(name, value, what):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a pair {what}; received {value!r}.")
    if len(value) != 2:
        raise ValueError(f"`{name}` must be a pair {what} of length 2; received {name}={tuple(value)}.")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"`{name}[{i}]` must be a real number; received {v!r}.")
    return tuple(float(v) for v in value)


@_register
class Rprop(Rule):
    """Rprop, resilient backpropagation (Optimisers.jl `Rprop(η, ℓ, Γ)`), exactly as `torch.optim.Rprop`.

    Each coordinate keeps its own step size η and its last (kept) gradient p, both 0-started
    except η, which starts at the learning rate:

    q = sign(g·p);  η ← clip(η·ℓ₊, Γ₋, Γ₊) where q > 0, clip(η·ℓ₋, Γ₋, Γ₊) where q < 0,
    clip(η, Γ₋, Γ₊) where q = 0;  g ← 0 where q < 0 (the sign flipped: no step, and the next
    step's q is 0);  Δ = η·sign(g);  p ← g

    Args:
        learning_rate: the initial step size η₀ (a number ≥ 0), default 0.001. It only seeds
            the step sizes, at the first update (as torch's `lr`): Rprop takes no schedule or
            callable, and a rate set after the first update changes nothing.
        ell: (ℓ₋, ℓ₊), the decrease and increase factors, 0 < ℓ₋ < 1 < ℓ₊, default (0.5, 1.2).
        gamma: (Γ₋, Γ₊), the step-size bounds, 0 ≤ Γ₋ ≤ Γ₊, default (1e-6, 50.0).
            Each element of `ell` and `gamma` is a number, a `LearningRateSchedule` (called
            with the 0-based update count) or a callable, like every hyperparameter; a pair set
            later (`opt.gamma = (1e-6, 1.0)`, `adjust`) acts at the next update. The numbers
            are checked as above; a schedule's values are not (nor Γ₋ ≤ Γ₊ when one bound is
            a schedule).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Rprop(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # steps 0.1, then 0.1·1.2 (same sign)
        [0.78 2.22]

    Equals `torch.optim.Rprop(lr=η₀, etas=ℓ, step_sizes=Γ)` step by step. Optimisers.jl's
    `Rprop` clamps only in the direction of the change (a step size started outside Γ stays
    there until it moves); the two agree whenever η₀ lies in [Γ₋, Γ₊]. `optax.rprop` (0.2.8)
    is another trajectory: its first update is zero and each later one is the step this rule
    took one update earlier, where the sign has not flipped (a witness test shows it). Keras has none. Meant for full-batch training: the
    gradient's sign must be meaningful from step to step.
    Riedmiller & Braun 1993, "A direct adaptive method for faster backpropagation learning:
    the RPROP algorithm" (this is the variant without weight backtracking, "Rprop⁻").
    """

    hyperparameters = {"ell": _factors, "gamma": _bounds}
    slots = {"prev": 0.0, "step": 0.0}
    # bfloat16 keeps float32's range: the step sizes down to Γ₋ = 1e-6 and prev's sign (float16 does not)
    low_precision_slots = {"prev": ("bfloat16",), "step": ("bfloat16",)}
    low_precision_refusal = (
        "its step sizes go down to Γ₋ (1e-6 by default), below float16's normal range (from 6.1e-5), where they "
        "would lose their precision or flush to zero; use 'bfloat16', which keeps float32's range"
    )

    def __init__(self, learning_rate=0.001, ell=(0.5, 1.2), gamma=(1e-6, 50.0), **kwargs):
        if isinstance(learning_rate, _Schedule) or callable(learning_rate):
            raise TypeError(
                "`learning_rate` of Rprop is the initial step size η₀, read at the first update only; "
                f"pass a number ≥ 0, not a schedule or callable (received {learning_rate!r})."
            )
        super().__init__(learning_rate, ell=ell, gamma=gamma, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        low, high = self.ell
        q = ops.sign(g * s.prev)
        grow = ops.maximum(q, 0.0)  # 1 where the sign held, else 0
        shrink = ops.maximum(-q, 0.0)  # 1 where it flipped, else 0
        # Exactly ℓ₊, ℓ₋ or 1 (a sum of one factor and zeros), as torch's in-place selection.
        factor = grow * high + shrink * low + (1.0 - grow - shrink)
        step = ops.where(t == 1, lr, s.step)  # the step sizes start at η₀
        step = ops.clip(step * factor, *self.gamma)
        kept = g * (1.0 - shrink)
        return step * ops.sign(kept), {"prev": kept, "step": step}
