"""Rules of 2024: ADOPT, AdEMAMix (with its warm-up schedules) and the `Cautious` mask."""

import math

import keras

from . import _checks as check
from ._base import EPSILON, Rule
from .chain import Optimiser
from ._tensors import Many

_register = keras.saving.register_keras_serializable(package="keras_optx")
_Schedule = keras.optimizers.schedules.LearningRateSchedule


@_register
class ADOPT(Rule):
    """ADOPT: ADAM with the second moment of the steps before, and the gradient normalised before momentum.

    At t = 1: v ← g², no step. At t ≥ 2:
    n = clip(g / max(√v, ϵ), −t^¼, t^¼);  m ← β₁·m + (1−β₁)·n;  Δ = η·m;  v ← β₂·v + (1−β₂)·g²
    (v is updated after the step, so the step is normalised by the gradients before this one).

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), each in [0, 1), default (0.9, 0.9999) (the paper's).
        epsilon: ϵ > 0, default 1e-6, a floor on √v (not added to it).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ADOPT(0.1)
        >>> for _ in range(3): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # no step at t = 1; then η·m, m = 0.1, 0.19
        [0.971 2.029]

    Equals `pytorch_optimizer.ADOPT` (its default `clip_lambda`, t^¼) and the authors' code
    step by step. `optax.contrib.adopt` clips at (t−1)^¼ instead (its step count starts at 0;
    tests/test_recent_witnesses.py shows the difference); every other detail is the same.
    Keras's `weight_decay=` keyword is decoupled decay x ← x − η·λ·x at every step (the first
    included), as `pytorch_optimizer.ADOPT(weight_decouple=True)`. Keras has no ADOPT.
    Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any β₂ with the Optimal
    Rate", arXiv:2411.02853 (the clipped version of Nov. 2024).
    """

    hyperparameters = {"beta": check.betas, "epsilon": check.positive}
    slots = {"m": 0.0, "v": 0.0}
    # float16 for the first moment only: v = g² underflows in float16 for |g| < 2.4e-4.
    low_precision_slots = {"m": ("bfloat16", "float16"), "v": ("bfloat16",)}

    def __init__(self, learning_rate=0.001, beta=(0.9, 0.9999), epsilon=1e-6, **kwargs):
        super().__init__(learning_rate, beta=beta, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        first = t == 1
        # At t = 1 the moments take b₁ = 1 (m stays 0: Δ = 0) and b₂ = 0 (v = g²).
        b1 = ops.where(first, 1.0, b1)
        b2 = ops.where(first, 0.0, b2)
        bound = t**0.25
        n = ops.clip(g / ops.maximum(ops.sqrt(s.v), self.epsilon), -bound, bound)
        m = b1 * s.m + (1 - b1) * n
        return lr * m, {"m": m, "v": b2 * s.v + (1 - b2) * g**2}


def _betas3(name, value):
    """(β₁, β₂, β₃), each in [0, 1)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a triple (β₁, β₂, β₃); received {value!r}.")
    if len(value) != 3:
        raise ValueError(f"`{name}` must be a triple (β₁, β₂, β₃) of length 3; received {name}={tuple(value)}.")
    return tuple(check.unit(f"{name}[{i}]", b) for i, b in enumerate(value))


_betas3.element = (check.unit, check.unit, check.unit)  # any of them may be a schedule (β₃'s warm-up)


@_register
class AdEMAMix(Rule):
    """AdEMAMix: ADAM whose step adds a slow EMA of the gradients, weighted α, to the fast one.

    m₁ ← β₁·m₁ + (1−β₁)·g;  m₂ ← β₃·m₂ + (1−β₃)·g;  v ← β₂·v + (1−β₂)·g²;
    Δ = η·(m₁/(1−β₁ᵗ) + α·m₂) / (√(v/(1−β₂ᵗ)) + ϵ)   (m₂ is not bias-corrected)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂, β₃), each in [0, 1), default (0.9, 0.999, 0.9999).
        alpha: α ≥ 0, default 5.0.
        epsilon: ϵ ≥ 0, default 1e-8.

    α and β₃ take schedules, as every hyperparameter does: the paper's warm-ups over T steps
    are `AdEMAMixAlphaWarmup(α, T)` and `AdEMAMixBeta3Warmup(β₁, β₃, T)`
    (`pytorch_optimizer.AdEMAMix(t_alpha_beta3=T)`; the paper's Algorithm 1):

        >>> T = 1000
        >>> opt = keras_optx.AdEMAMix(1e-3, beta=(0.9, 0.999, keras_optx.AdEMAMixBeta3Warmup(0.9, 0.9999, T)),
        ...                           alpha=keras_optx.AdEMAMixAlphaWarmup(5.0, T))

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.AdEMAMix(0.1, alpha=5.0)
        >>> opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 5))  # η·(1 + α·(1−β₃))·sign(g) at t = 1
        [0.89995 2.10005]

    Equals `optax.contrib.ademamix` and `pytorch_optimizer.AdEMAMix` step by step (optax calls
    a schedule with the 0-based step, as keras_optx does; pytorch_optimizer's warm-up counts
    from 1, as the warm-up schedules here do). Keras's `weight_decay=` keyword is their
    decoupled decay (optax's `weight_decay`, pytorch_optimizer's `weight_decouple=True`).
    Keras has no AdEMAMix. Pagliardini, Ablin & Grangier 2024, "The AdEMAMix Optimizer:
    Better, Faster, Older", arXiv:2409.03137.
    """

    hyperparameters = {"beta": _betas3, "alpha": check.nonnegative, "epsilon": check.nonnegative}
    slots = {"m": 0.0, "slow": 0.0, "v": 0.0}
    low_precision_slots = {"m": ("bfloat16", "float16"), "slow": ("bfloat16", "float16"), "v": ("bfloat16",)}

    def __init__(self, learning_rate=0.001, beta=(0.9, 0.999, 0.9999), alpha=5.0, epsilon=EPSILON, **kwargs):
        super().__init__(learning_rate, beta=beta, alpha=alpha, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2, b3 = self.beta
        m = b1 * s.m + (1 - b1) * g
        slow = b3 * s.slow + (1 - b3) * g
        v = b2 * s.v + (1 - b2) * g**2
        # (m/(1−β₁ᵗ) + α·m₂)/(√v/c + ϵ) = c·(…)/(√v + ϵ·c), c = √(1−β₂ᵗ): the corrections stay scalars.
        c = ops.sqrt(ops.one_minus_pow(b2, t))
        mix = m * (1 / ops.one_minus_pow(b1, t)) + self.alpha * slow
        return (lr * c) * mix / (ops.sqrt(v) + self.epsilon * c), {"m": m, "slow": slow, "v": v}


@_register
class AdEMAMixAlphaWarmup(_Schedule):
    """AdEMAMix's α warm-up, a schedule for its `alpha`: α(t) = min(t·α/T, α), t = step + 1.

    Args:
        alpha: the final α ≥ 0.
        warmup_steps: T, an integer ≥ 1.

    Example:
        >>> schedule = keras_optx.AdEMAMixAlphaWarmup(5.0, 100)
        >>> [round(float(schedule(step)), 3) for step in (0, 49, 99, 500)]  # updates t = 1, 50, 100, 501
        [0.05, 2.5, 5.0, 5.0]

    `pytorch_optimizer.AdEMAMix(t_alpha_beta3=T)`'s α (the paper's Algorithm 1, counting updates
    from 1). Pagliardini, Ablin & Grangier 2024, arXiv:2409.03137.
    """

    def __init__(self, alpha, warmup_steps):
        self.alpha = check.nonnegative("alpha", alpha)
        self.warmup_steps = check.positive_int("warmup_steps", warmup_steps)

    def __call__(self, step):
        t = keras.ops.cast(step, "float32") + 1
        return keras.ops.minimum(t * (self.alpha / self.warmup_steps), self.alpha)

    def get_config(self):
        return {"alpha": self.alpha, "warmup_steps": self.warmup_steps}

    def __repr__(self):
        return f"AdEMAMixAlphaWarmup({self.alpha}, {self.warmup_steps})"


@_register
class AdEMAMixBeta3Warmup(_Schedule):
    """AdEMAMix's β₃ warm-up, a schedule for `beta[2]`: the slow EMA's half-life grows linearly.

    β₃(t) = min(exp(ln β₁·ln β₃ / ((1−τ)·ln β₃ + τ·ln β₁)), β₃),  τ = t/T,  t = step + 1:
    from β₁ at t = 0 to β₃ at t = T.

    Args:
        beta1: β₁ in (0, 1), AdEMAMix's `beta[0]`.
        beta3: the final β₃ in (0, 1).
        warmup_steps: T, an integer ≥ 1.

    Example:
        >>> schedule = keras_optx.AdEMAMixBeta3Warmup(0.9, 0.9999, 100)
        >>> [round(float(schedule(step)), 4) for step in (0, 49, 99)]  # updates t = 1, 50, 100
        [0.9909, 0.9998, 0.9999]

    `pytorch_optimizer.AdEMAMix(t_alpha_beta3=T)`'s β₃ (the paper's Algorithm 1, counting
    updates from 1). Pagliardini, Ablin & Grangier 2024, arXiv:2409.03137.
    """

    def __init__(self, beta1, beta3, warmup_steps):
        self.beta1 = _open_unit("beta1", beta1)
        self.beta3 = _open_unit("beta3", beta3)
        self.warmup_steps = check.positive_int("warmup_steps", warmup_steps)

    def __call__(self, step):
        tau = (keras.ops.cast(step, "float32") + 1) / self.warmup_steps
        log1, log3 = math.log(self.beta1), math.log(self.beta3)
        return keras.ops.minimum(keras.ops.exp(log1 * log3 / ((1 - tau) * log3 + tau * log1)), self.beta3)

    def get_config(self):
        return {"beta1": self.beta1, "beta3": self.beta3, "warmup_steps": self.warmup_steps}

    def __repr__(self):
        return f"AdEMAMixBeta3Warmup({self.beta1}, {self.beta3}, {self.warmup_steps})"


def _open_unit(name, value):
    value = check._number(name, value)
    if not 0 < value < 1:
        raise ValueError(f"`{name}` must be in (0, 1); received {name}={value}.")
    return value


@_register
class Cautious(Optimiser):
    """Cautious(rule): the rule's update kept only where its sign agrees with the gradient's.

    For each variable, with Δ the wrapped rule's update and g the gradient it was given:
    φ = 1 where Δ·g > 0, else 0;  Δ' = Δ·φ·N/(Σφ + 1)  (N: the variable's number of entries),
    so the kept coordinates are scaled up to keep the update's size.

    Args:
        rule: any keras_optx rule or chain (`Optimiser`, `Partition`, …); the Cautious owns
            its state, as a chain owns its members'.
        **kwargs: any `keras.optimizers.Optimizer` keyword (acting outside the mask: Keras's
            `weight_decay=` is not masked).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Cautious(keras_optx.Momentum(0.1, 0.9))
        >>> opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # Δ = (0.1, −0.1), both kept, ·2/3
        [0.933 2.067]
        >>> opt.apply([np.array([-0.05, -1.0], "float32")], [x])  # Δ = (0.085, −0.19): x[0]'s disagrees with g
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # x[0] stays; x[1] steps 0.19·2/(1 + 1)
        [0.933 2.257]

    `Cautious(ADOPT())`, `Cautious(Lion())` equal pytorch_optimizer's `ADOPT(cautious=True)`,
    `Lion(cautious=True)` step by step. `Cautious(AdEMAMix())` masks AdEMAMix's whole update, as
    the paper defines the mask; `pytorch_optimizer.AdEMAMix(cautious=True)` masks only the fast
    EMA m₁ (tests/test_recent_witnesses.py shows both). The scale N/(Σφ + 1) is the paper's
    and pytorch_optimizer's; the authors' later C-AdamW divides by max(mean φ, 10⁻³) instead.
    optax and Keras have none. Liang, Chen, Liu & Liu 2024, "Cautious Optimizers: Improving
    Training with One Line of Code", arXiv:2411.16085.
    """

    def __init__(self, rule, **kwargs):
        if not isinstance(rule, Rule):
            raise TypeError(
                f"`rule` must be a keras_optx rule or chain (e.g. Cautious(keras_optx.Lion())); received {rule!r}."
            )
        super().__init__(rule, **kwargs)

    @property
    def rule(self):
        return self.rules[0]

    def _transform(self, g, x, state, t, step):
        delta, new_state = super()._transform(g, x, state, t, step)
        # φ: 1 where Δ·g > 0, else 0 (NaN included, as the references' comparison: one NaN Δ stays one)
        agree = Many(keras.ops.cast(p > 0, p.dtype) for p in (delta * g).items)
        scale = Many(_size(a) / (keras.ops.sum(a) + 1.0) for a in agree.items)
        return delta * agree * scale, new_state

    def get_config(self):
        config = super().get_config()
        config["rule"] = config.pop("rules")[0]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["rules"] = [config.pop("rule")]
        return super().from_config(config, custom_objects)

    def __repr__(self):
        return f"Cautious({self.rule!r})"


def _size(tensor):
    return float(math.prod(tensor.shape))
