"""The ADAM family (Flux's ADAM, RADAM, AdaMax, OADAM, AMSGrad, NADAM, ADAMW, AdaBelief)."""

import keras

from . import _checks as check
from ._base import EPSILON, Rule, _versioned
from .adaptive import _StartsAtEpsilon
from .chain import Optimiser
from .transforms import WeightDecay

_register = keras.saving.register_keras_serializable(package="keras_optx")


class _AdamFamily(Rule):
    """Shared signature `(learning_rate=0.001, beta=(0.9, 0.999), epsilon=1e-8)` and moments."""

    hyperparameters = {"beta": check.betas, "epsilon": check.nonnegative}
    slots = {"m": 0.0, "v": 0.0}
    # float16 for the first moment only: v = g² underflows in float16 for |g| < 2.4e-4.
    low_precision_slots = {"m": ("bfloat16", "float16"), "v": ("bfloat16",)}

    def __init__(self, learning_rate=0.001, beta=(0.9, 0.999), epsilon=EPSILON, **kwargs):
        super().__init__(learning_rate, beta=beta, epsilon=epsilon, **kwargs)

    # Bias corrections 1 − βᵗ are written `ops.one_minus_pow(β, t)`: the plain form loses ~1e-5
    # relative accuracy in float32 (jax/tf) when βᵗ is near 1.

    def moments(self, g, s):
        """m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g²."""
        b1, b2 = self.beta
        return b1 * s.m + (1 - b1) * g, b2 * s.v + (1 - b2) * g**2


@_register
class ADAM(_AdamFamily):
    """ADAM (Flux `ADAM(η, β)`).

    m ← β₁·m + (1−β₁)·g;  v ← β₂·v + (1−β₂)·g²;  Δ = η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ϵ)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), each in [0, 1), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ADAM(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # a constant g: bias-corrected steps of η
        [0.8 2.2]

    Equals `torch.optim.Adam`. `keras.optimizers.Adam` uses ϵ = 1e-7 and adds it to √v
    before the bias correction: η·m̂/(√v̂ + ϵ/√(1−β₂ᵗ)). Kingma & Ba 2014, arXiv:1412.6980.
    """

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m, v = self.moments(g, s)
        # η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ϵ) = η·c/(1−β₁ᵗ) · m/(√v + ϵ·c) with c = √(1−β₂ᵗ):
        # the corrections as scalars, the fewest per-element operations.
        c = ops.sqrt(ops.one_minus_pow(b2, t))
        return (lr * c / ops.one_minus_pow(b1, t)) * m / (ops.sqrt(v) + self.epsilon * c), {"m": m, "v": v}


@_register
class RADAM(_AdamFamily):
    """Rectified ADAM (Flux `RADAM(η, β)`).

    ρ∞ = 2/(1−β₂) − 1;  ρₜ = ρ∞ − 2t·β₂ᵗ/(1−β₂ᵗ);
    Δ = r·η·m̂/(√v̂ + ϵ) with r = √((ρₜ−4)(ρₜ−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρₜ)) when ρₜ > 4, else Δ = η·m̂,
    where m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ) and m, v are ADAM's moments.

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.RADAM(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # ρₜ ≤ 4 for t ≤ 4: Δ = η·m̂ = η·g
        [0.8 2.2]

    `torch.optim.RAdam` switches at ρₜ > 5, not 4. Liu et al. 2019, arXiv:1908.03265.
    """

    def rectification(self, ops, t):
        """(ρₜ, r) at update t: the rule rectifies (Δ = r·η·m̂/(√v̂ + ϵ)) where ρₜ > 4."""
        b2 = self.beta[1]
        rho_inf = 2 / (1 - b2) - 1
        # 1 − β₂ᵗ via expm1: in float32 the plain form errs by ~0.03 in ρₜ near the ρₜ > 4 switch.
        rho = rho_inf - 2 * t * b2**t / ops.one_minus_pow(b2, t)
        return rho, ops.sqrt(ops.maximum((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho), 0.0))

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m, v = self.moments(g, s)
        rho, r = self.rectification(ops, t)
        rate = lr / ops.one_minus_pow(b1, t)  # η·m̂ = rate·m: the corrections stay scalars
        rectified = (r * rate) * m / (ops.sqrt(v) * (1 / ops.sqrt(ops.one_minus_pow(b2, t))) + self.epsilon)
        return ops.where(rho > 4, rectified, rate * m), {"m": m, "v": v}


@_register
class AdaMax(_AdamFamily):
    """AdaMax, ADAM with the ∞-norm (Flux `AdaMax(η, β)`).

    m ← β₁·m + (1−β₁)·g;  u ← max(β₂·u, |g|);  Δ = η/(1−β₁ᵗ) · m/(u + ϵ)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.AdaMax(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # m̂ = g, u = |g|: steps of η
        [0.8 2.2]

    `torch.optim.Adamax` puts ϵ inside the maximum, u ← max(β₂·u, |g| + ϵ) (a difference of
    order (1−β₂)·ϵ); `keras.optimizers.Adamax` uses ϵ = 1e-7.
    Kingma & Ba 2014, §7.1.
    """

    slots = {"m": 0.0, "u": 0.0}
    low_precision_slots = {"m": ("bfloat16", "float16"), "u": ("bfloat16", "float16")}  # u = max|g|: not squared

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m = b1 * s.m + (1 - b1) * g
        u = ops.maximum(b2 * s.u, ops.abs(g))
        return lr / ops.one_minus_pow(b1, t) * m / (u + self.epsilon), {"m": m, "u": u}


@_register
class OADAM(_AdamFamily):
    """Optimistic ADAM (Flux `OADAM(η, β)`): ADAM's step extrapolated, 2Δₜ − Δₜ₋₁.

    m, v as ADAM;  Δₜ = η·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ϵ);  the update is 2Δₜ − Δₜ₋₁
    (Δ₀ = 0), and Δₜ is kept for the next step (slot `prev`).

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), each in [0, 1), default (0.5, 0.9).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> opt, x = keras_optx.OADAM(0.1, (0.9, 0.995)), keras.Variable([1.0, 2.0])
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # 2Δ₁ − 0, then 2Δ₂ − Δ₁: 0.2 + 0.1
        [0.7 2.3]

    Flux v0.12's definition (its docstring says η = 0.0001; the code's default, used here, is
    0.001). `optax.optimistic_adam_v2(η, b1=β₁, b2=β₂, nesterov=False)` is the same rule for a
    constant rate except at the first step, where it takes Δ₀ = Δ₁ (a step of Δ₁, here 2Δ₁);
    its default `nesterov=True` is another rule. Keras and torch.optim have none.
    Daskalakis et al. 2018, "Training GANs with Optimism", arXiv:1711.00141.
    """

    slots = {"m": 0.0, "v": 0.0, "prev": 0.0}
    low_precision_slots = {"m": ("float16",)}
    low_precision_refusal = (
        "its update 2Δₜ − Δₜ₋₁ extrapolates from the kept step Δₜ₋₁, so bfloat16's rounding of that step and of "
        "the moments (8-bit significand, up to 0.4%) enters every update twice, and costs final loss (28–77% "
        "on a small regression, issue 26); keep its state in float32, or use 'float16' (its m only)"
    )

    def __init__(self, learning_rate=0.001, beta=(0.5, 0.9), epsilon=EPSILON, **kwargs):
        super().__init__(learning_rate, beta=beta, epsilon=epsilon, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m, v = self.moments(g, s)
        c = ops.sqrt(ops.one_minus_pow(b2, t))  # as ADAM: the bias corrections as scalars
        step = (lr * c / ops.one_minus_pow(b1, t)) * m / (ops.sqrt(v) + self.epsilon * c)
        return 2 * step - s.prev, {"m": m, "v": v, "prev": step}


@_register
class AMSGrad(_StartsAtEpsilon, _AdamFamily):
    """AMSGrad (Flux `AMSGrad(η, β)`): ADAM with a non-decreasing second moment.

    m, v, v̂ start at ϵ;  m, v as ADAM;  v̂ ← max(v̂, v);  Δ = η·m/(√v̂ + ϵ)  (no bias correction)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8 (also every slot's start).

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.AMSGrad(0.01)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # no bias correction: the first steps are long
        [0.926 2.074]

    `keras.optimizers.Adam(amsgrad=True)` and torch's `Adam(amsgrad=True)` bias-correct;
    Flux does not. Reddi, Kale & Kumar 2018.
    """

    state_names = ("m", "v", "v_hat")
    low_precision_slots = {**_AdamFamily.low_precision_slots, "v_hat": ("bfloat16",)}

    def delta(self, ops, g, x, s, t, lr):
        m, v = self.moments(g, s)
        v_hat = ops.maximum(s.v_hat, v)
        return lr * m / (ops.sqrt(v_hat) + self.epsilon), {"m": m, "v": v, "v_hat": v_hat}


@_register
class NADAM(_AdamFamily):
    """NADAM, ADAM with Nesterov momentum (Flux `NADAM(η, β)`).

    m, v as ADAM;  Δ = η·(β₁·m/(1−β₁ᵗ⁺¹) + (1−β₁)·g/(1−β₁ᵗ)) / (√(β₂·v/(1−β₂ᵗ)) + ϵ)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.NADAM(0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))
        [0.737 2.263]

    `keras.optimizers.Nadam` and `torch.optim.NAdam` use Dozat's momentum-decay
    schedule; Flux's (and this) does not. Dozat 2016.
    """

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m, v = self.moments(g, s)
        c1 = lr * b1 / ops.one_minus_pow(b1, t + 1)
        c2 = lr * (1 - b1) / ops.one_minus_pow(b1, t)
        if not keras.ops.is_tensor(b2) and b2 < _F32_TINY:  # the √(β₂v/(1−β₂ᵗ)) term vanishes (β₂ is 0 in float32; 1/k would overflow)
            return (c1 * m + c2 * g) / self.epsilon, {"m": m, "v": v}
        if keras.ops.is_tensor(b2):  # β₂ read from its variable (jax/tensorflow): k is 0 where β₂ vanishes, no branch
            k = ops.sqrt(b2 / ops.one_minus_pow(b2, t))
            return (c1 * m + c2 * g) / (k * ops.sqrt(v) + self.epsilon), {"m": m, "v": v}
        # (c₁m + c₂g) / (k√v + ϵ) with k = √(β₂/(1−β₂ᵗ)), divided through by k: the corrections
        # stay scalars and each element needs one multiply fewer.
        k = ops.sqrt(b2 / ops.one_minus_pow(b2, t))
        return ((c1 / k) * m + (c2 / k) * g) / (ops.sqrt(v) + self.epsilon / k), {"m": m, "v": v}


_F32_TINY = 1.1754943508222875e-38  # float32's smallest normal number


def _member_hyperparameter(index, name):
    """A property reading and setting hyperparameter `name` of the chain's member `rules[index]`."""
    return property(lambda self: getattr(self.rules[index], name), lambda self, value: setattr(self.rules[index], name, value))


@_register
class ADAMW(Optimiser):
    """ADAM with decoupled weight decay (Flux `ADAMW(η, β, decay)`).

    Exactly `Optimiser(ADAM(η, β), WeightDecay(decay))`: Δ = ADAM's Δ + decay·x.

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), default (0.9, 0.999).
        decay: the weight decay, ≥ 0, default 0.
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ADAMW(0.1, decay=0.1)
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # ADAM's steps of η, plus 0.1·x each step
        [0.62 1.81]

    Flux's decay is not multiplied by η; `keras.optimizers.AdamW` and `torch.optim.AdamW`
    subtract η·λ·x (use `keras_optx.torch.AdamW` for theirs). Loshchilov & Hutter 2019,
    arXiv:1711.05101.
    """

    def __init__(self, learning_rate=0.001, beta=(0.9, 0.999), decay=0.0, epsilon=1e-8, **kwargs):
        decay = check.nonnegative("decay", decay)
        super().__init__(ADAM(learning_rate, beta, epsilon), WeightDecay(decay), **kwargs)

    # The members' hyperparameters, read and set through the chain (`opt.beta = …`, `adjust`).
    beta = _member_hyperparameter(0, "beta")
    epsilon = _member_hyperparameter(0, "epsilon")
    decay = _member_hyperparameter(1, "wd")

    def get_config(self):
        config = super().get_config()
        del config["rules"]
        config.update(learning_rate=self.rules[0].get_config()["learning_rate"], beta=self.beta, decay=self.decay, epsilon=self.epsilon)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config, version = _versioned(cls, config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(config["learning_rate"], custom_objects=custom_objects)
        adamw = cls(**config)
        adamw._saved_format_version = version
        return adamw

    def __repr__(self):
        return f"ADAMW({self.rules[0]!r}, decay={self.decay})"


@_register
class AdaBelief(_AdamFamily):
    """AdaBelief (Flux `AdaBelief(η, β)`): ADAM whose second moment tracks (g − m)², as Flux v0.12.

    m ← β₁·m + (1−β₁)·g;  s ← β₂·s + (1−β₂)·(g − m)²  (with the new m);  Δ = η·m / (√s + ϵ)
    (no bias correction)

    Args:
        learning_rate: η, default 0.001.
        beta: (β₁, β₂), each in [0, 1), default (0.9, 0.999).
        epsilon: ϵ, default 1e-8.

    Example:
        >>> x, g = keras.Variable([1.0, 2.0]), np.array([1.0, -1.0], "float32")
        >>> opt = keras_optx.AdaBelief(0.01)
        >>> opt.apply([g], [x])
        >>> opt.apply([g], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # (g − m)² is small for a constant g: long steps
        [0.915 2.085]

    Flux v0.12's form. The paper's algorithm (and optax's `adabelief`, Optimisers.jl's
    `AdaBelief`) bias-corrects m and s and adds ϵ inside s as well: s ← β₂s + (1−β₂)(g−m)² + ϵ;
    neither Keras nor torch.optim has it. Zhuang et al. 2020, arXiv:2010.07468.
    """

    slots = {"m": 0.0, "s": 0.0}
    low_precision_slots = {"m": ("bfloat16", "float16"), "s": ("bfloat16",)}  # s: squares, as v

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        m = b1 * s.m + (1 - b1) * g
        d = g - m
        belief = b2 * s.s + (1 - b2) * d * d
        return lr * m / (ops.sqrt(belief) + self.epsilon), {"m": m, "s": belief}
