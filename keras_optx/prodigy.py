"""`Prodigy`: ADAM whose step size d is estimated as training goes (learning-rate free)."""

import keras

from . import _checks as check
from ._backends import current as backend
from ._base import EPSILON, Rule, State, _plus_decay
from ._hyper import _Hyper
from ._tensors import Many, ops

_register = keras.saving.register_keras_serializable(package="keras_optx")


def _optional_unit(name, value):
    """None, or a decay factor in [0, 1)."""
    return None if value is None else check.unit(name, value)


_optional_unit.numeric = True  # a schedule or callable too


def _growth_rate(name, value):
    """A factor ≥ 1 (inf: unbounded)."""
    value = check._number(name, value)
    if not value >= 1:
        raise ValueError(f"`{name}` must be ≥ 1 (float('inf') for no bound); received {name}={value}.")
    return value


class _OwnWeightDecay(_Hyper):
    """Prodigy's `weight_decay`; Keras's constructor writes None to it before Prodigy sets its own."""

    def __set__(self, rule, value):
        if value is None and self.name not in rule.__dict__.get("_hyper_values", {}):
            return
        super().__set__(rule, value)


# Prodigy's scalar state, made at build: the estimate d, its running maximum, the numerator's EMA,
# and k, the updates that made progress (prodigyopt skips an update, and its k, while Σ|s| = 0).
_STATE = ("d", "d_max", "d_numerator", "k")


@_register
class Prodigy(Rule):
    """Prodigy: ADAM with a step size d it estimates from how far the weights have moved.

    With x₀ the variables at the first update, dlr = d·η·c (c = √(1−β₂ᵗ)/(1−β₁ᵗ) with
    `use_bias_correction`, else 1), and sums Σ over all of this rule's variables:

    r ← β₃·r + (d/d₀)·dlr·Σ⟨g, x₀ − x⟩;  s ← β₃·s + (d/d₀)·dlr·g  (d/d₀·d·g with `safeguard_warmup`)
    m ← β₁·m + d·(1−β₁)·g;  v ← β₂·v + d²·(1−β₂)·g²
    d̂ = d_coef·r/Σ‖s‖₁;  d_max ← max(d_max, d̂);  d ← min(d_max, d·growth_rate) (first max(d, d̂) while d = d₀)
    Δ = dlr·(m/(√v + d·ϵ) + λ·x)   (dlr of the d before this update; d in √v + d·ϵ the new one)

    While Σ‖s‖₁ = 0 (no gradient yet) nothing moves and d keeps its value, as in prodigyopt.

    Args:
        learning_rate: η, default 1.0: a factor on the estimated step (leave it at 1 unless unstable).
        beta: (β₁, β₂), each in [0, 1), default (0.9, 0.999).
        beta3: β₃ in [0, 1), or None (the default) for √β₂.
        epsilon: ϵ > 0, default 1e-8.
        d0: the initial estimate d₀ > 0, default 1e-6.
        d_coef: a factor on the estimate, > 0, default 1.0 (the preferred knob: 0.5 or 2 also work).
        growth_rate: the largest factor d may grow by per update, ≥ 1, default inf (unbounded).
        use_bias_correction: ADAM's bias corrections in dlr, default False.
        safeguard_warmup: leave η out of s (for a warm-up of η), default False.
        weight_decay: λ ≥ 0, default 0: prodigyopt's decoupled decay x ← x − dlr·λ·x, so
            scaled by the estimated step. It replaces Keras's `weight_decay=` keyword (whose
            η·λ·x would ignore d); `exclude_from_weight_decay` applies to it.

    The state d, d_max, r and k are optimizer variables (saved in `.keras` files and resumed
    exactly), and the sums run over the variables this rule updates: inside a `Partition`,
    over its group only. Under `keras.distribution` (sharded variables, JAX) the sums are
    global reductions in the compiled step; under a TensorFlow `MirroredStrategy` they are
    computed from the gradients already summed over replicas, so every replica holds the same d.

    Example:
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Prodigy()
        >>> for _ in range(5): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(f"{float(opt.d):.3g}")  # the estimate grew from d₀ = 1e-6
        3.43e-05

    Equals `prodigyopt.Prodigy` (one parameter group, `slice_p=1`) step by step, with its
    `weight_decay` as its `decouple=True` decay; its coupled decay (`decouple=False`) is
    `Optimiser(WeightDecay(λ), Prodigy())`. `optax.contrib.prodigy` differs (no `d == d₀`
    first step, no safeguard). Keras has none. Mishchenko & Defazio 2023, "Prodigy: An
    Expeditiously Adaptive Parameter-Free Learner", arXiv:2306.06101.
    """

    hyperparameters = {
        "beta": check.betas,
        "beta3": _optional_unit,
        "epsilon": check.positive,
        "d0": check.positive,
        "d_coef": check.positive,
        "growth_rate": _growth_rate,
        "use_bias_correction": check.flag,
        "safeguard_warmup": check.flag,
        "weight_decay": check.nonnegative,
    }
    weight_decay = _OwnWeightDecay("weight_decay")
    slots = {"m": 0.0, "v": 0.0, "s": 0.0, "x0": 0.0}
    low_precision_refusal = "its x₀ is a copy of the parameters, which would lose their precision"

    def __init__(
        self,
        learning_rate=1.0,
        beta=(0.9, 0.999),
        beta3=None,
        epsilon=EPSILON,
        d0=1e-6,
        d_coef=1.0,
        growth_rate=float("inf"),
        use_bias_correction=False,
        safeguard_warmup=False,
        weight_decay=0.0,
        **kwargs,
    ):
        super().__init__(
            learning_rate, beta=beta, beta3=beta3, epsilon=epsilon, d0=d0, d_coef=d_coef, growth_rate=growth_rate,
            use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, weight_decay=weight_decay,
            **kwargs,
        )

    def _apply_weight_decay(self, variables):
        """Keras's own decoupled decay: never (`weight_decay` is Prodigy's, scaled by d, in the formula)."""

    # State ---------------------------------------------------------------------------
    def _build_state(self, variables):
        made = super()._build_state(variables)
        if "_scalars" not in self.__dict__:
            d0 = float(self._static("d0"))
            initial = {"d": d0, "d_max": d0, "d_numerator": 0.0, "k": 0.0}
            self._scalars = {
                name: self.add_variable(
                    shape=(), dtype="float32", initializer=keras.initializers.Constant(initial[name]),
                    name=f"prodigy_{name}", aggregation="none",
                )
                for name in _STATE
            }
        return made + [self._scalars[name] for name in _STATE]

    @property
    def d(self):
        """The current estimate d (a scalar tensor; d₀ before the first update)."""
        if "_scalars" not in self.__dict__:
            return self._static("d0")
        return self._scalars["d"].value

    # The update ----------------------------------------------------------------------
    def _transform(self, g, x, state, t, step):
        variables = [self._scalars[name] for name in _STATE]
        values = dict(zip(_STATE, (keras.ops.cast(v, "float32") for v in backend.values(variables))))
        delta, new_state, scalars = self._estimate(g, x, State(state), t, self._rate(step), values)
        backend.assign(self._root(), [(self._scalars[name], scalars[name]) for name in _STATE])
        return delta, new_state

    def _estimate(self, g, x, s, t, lr, scalars):
        """(Δ, new slots, new scalar state) at update t, from the scalars d, d_max, d_numerator, k."""
        b1, b2 = self.beta
        b3 = self.beta3
        b3 = keras.ops.sqrt(keras.ops.cast(b2, "float32")) if b3 is None else b3
        d0, eps = self.d0, self.epsilon
        d, d_max, k = scalars["d"], scalars["d_max"], scalars["k"]
        lr = keras.ops.cast(lr, "float32")
        if self.use_bias_correction:
            n = k + 1
            c = keras.ops.sqrt(1 - keras.ops.power(b2, n)) / (1 - keras.ops.power(b1, n))
        else:
            c = 1.0
        dlr = d * lr * c
        active = lr > 0  # prodigyopt leaves the moments alone at η = 0
        x0 = _where(t == 1, x, s.x0)
        ratio = d / d0
        numerator = b3 * scalars["d_numerator"] + ratio * dlr * _total(g * (x0 - x))
        f = [backend.scalar(v) for v in (b1 * 1.0, (1 - b1) * d, b2 * 1.0, (1 - b2) * d * d, b3 * 1.0)]
        m = _where(active, f[0] * s.m + f[1] * g, s.m)
        v = _where(active, f[2] * s.v + f[3] * g**2, s.v)
        into_s = ratio * (d if self.safeguard_warmup else dlr)
        s_new = _where(active, f[4] * s.s + backend.scalar(into_s) * g, s.s)
        denominator = _total(ops.abs(s_new))
        progress = keras.ops.logical_and(active, denominator > 0)
        d_hat = self.d_coef * numerator / keras.ops.where(progress, denominator, 1.0)
        grown = keras.ops.where(d == keras.ops.cast(d0, "float32"), keras.ops.maximum(d, d_hat), d)
        new_max = keras.ops.maximum(d_max, d_hat)
        new_d = keras.ops.minimum(new_max, grown * self.growth_rate)
        new_d = keras.ops.where(progress, new_d, d)
        # β₁ = 0: prodigyopt keeps no m and steps by d·g with the new d (m holds the old d·g).
        m_factor = keras.ops.where(keras.ops.cast(b1, "float32") > 0, 1.0, new_d / d)
        step_size = keras.ops.where(progress, dlr, 0.0)
        update = (backend.scalar(m_factor) * m) / (ops.sqrt(v) + backend.scalar(new_d * eps))
        delta = backend.scalar(step_size) * _plus_decay(update, x, self.weight_decay, self._decay_mask())
        new_scalars = {
            "d": new_d,
            "d_max": keras.ops.where(progress, new_max, d_max),
            "d_numerator": keras.ops.where(progress, numerator, scalars["d_numerator"]),
            "k": k + keras.ops.cast(progress, "float32"),
        }
        return delta, {"m": m, "v": v, "s": s_new, "x0": x0}, new_scalars


def _total(many):
    """Σ over every variable and entry, in float32: one scalar."""
    sums = [keras.ops.sum(keras.ops.cast(a, "float32")) for a in many.items]
    return sum(sums[1:], sums[0])


def _where(condition, if_true, if_false):
    """`if_true` or `if_false` (each a `Many`) by a scalar condition (a Python bool or a tensor)."""
    if isinstance(condition, bool):
        return if_true if condition else if_false
    if backend.EAGER:
        return if_true if bool(condition) else if_false
    return Many(keras.ops.where(condition, a, b) for a, b in zip(if_true.items, if_false.items))
