"""SOAP: Adam in the eigenbasis of Shampoo's preconditioner, with Kronecker factors as slots of their own shape."""

import keras

from . import _checks as check
from ._base import Rule, Slot, _variable_path
from ._tensors import Many

_register = keras.saving.register_keras_serializable(package="keras_optx")


def _false_only(name, value):
    value = check.flag(name, value)
    if value:
        raise ValueError(
            f"`{name}=True` is not implemented (pytorch_optimizer's merging of small dimensions); use {name}=False, "
            "or reshape the variable."
        )
    return value


def _optional_unit(name, value):
    return None if value is None else check.unit(name, value)


@_register
class SOAP(Rule):
    """SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors, refreshed every few steps.

    For a matrix G (gradient) with factors L (rows×rows), R (cols×cols) and their eigenbases Q_L, Q_R:

    t = 1: L = (1−β_s)·GGᵀ, R = (1−β_s)·GᵀG; Q_L, Q_R their eigenvectors (descending eigenvalues); Δ = 0.
    t > 1, with s = t − 1:  G' = Q_Lᵀ·G·Q_R;  m ← β₁·m + (1−β₁)·G;  v ← β₂·v + (1−β₂)·G'²;
    N = Q_L·((Q_Lᵀ·m·Q_R) / (√v + ϵ))·Q_Rᵀ  (divided by √mean(N²) + ϵ with `normalize_gradient`);
    Δ = η·√(1−β₂ˢ)/(1−β₁ˢ)·N (η·N without `correct_bias`); then L ← β_s·L + (1−β_s)·GGᵀ, R likewise,
    and where s is a multiple of `precondition_frequency`, each Q ← QR(L·Q) with its columns (and v's
    entries along that axis) sorted by the estimated eigenvalues diag(Qᵀ·L·Q), descending.

    A side longer than `max_precondition_dim` keeps the identity (no factor). A vector is preconditioned
    only with `precondition_1d=True` (else it runs as Adam, one step late as the matrices); a scalar is Adam.

    Args:
        learning_rate: η, default 3e-3.
        beta: (β₁, β₂), each in [0, 1), default (0.95, 0.95).
        shampoo_beta: β_s in [0, 1), default None (β₂).
        epsilon: ϵ, default 1e-8.
        precondition_frequency: steps between eigenbasis refreshes, default 10.
        max_precondition_dim: the longest side given a factor, default 10000.
        merge_dims: False (True, pytorch_optimizer's merging of small dimensions, is refused).
        precondition_1d: whether vectors get a factor, default False.
        correct_bias: default True.
        normalize_gradient: default False.

    Example:
        >>> x = keras.Variable([[1.0, 0.0], [0.0, 1.0]])
        >>> opt = keras_optx.SOAP(0.1)
        >>> for _ in range(2): opt.apply([np.array([[1.0, 0.0], [0.0, -2.0]], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # no step at t = 1; then Adam's first: η·sign
        [[0.9 0. ]
         [0.  1.1]]

    Equals `pytorch_optimizer.SOAP(lr=η, betas=β, shampoo_beta=…, eps=ϵ, precondition_frequency=…,
    max_precondition_dim=…, precondition_1d=…, correct_bias=…, normalize_gradient=…, weight_decay=0)`
    step by step. Its decoupled weight decay (default 0.01) is Keras's `weight_decay=λ` keyword here,
    which decays before each step, the first included: pytorch_optimizer decays after the step
    (x ← (x − Δ)·(1 − ηλ), a difference of ηλ·Δ) and not at the first. Variables of rank > 2 are
    refused (route them to another rule with a `Partition`). Keras and optax have no SOAP.
    Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam", arXiv:2409.11321.
    """

    hyperparameters = {
        "beta": check.betas,
        "shampoo_beta": _optional_unit,
        "epsilon": check.nonnegative,
        "precondition_frequency": check.positive_int,
        "max_precondition_dim": check.positive_int,
        "merge_dims": _false_only,
        "precondition_1d": check.flag,
        "correct_bias": check.flag,
        "normalize_gradient": check.flag,
    }
    low_precision_refusal = "its eigenbases and factors need float32 (eigh and QR of ill-conditioned matrices)"

    def __init__(
        self,
        learning_rate=3e-3,
        beta=(0.95, 0.95),
        shampoo_beta=None,
        epsilon=1e-8,
        precondition_frequency=10,
        max_precondition_dim=10000,
        merge_dims=False,
        precondition_1d=False,
        correct_bias=True,
        normalize_gradient=False,
        **kwargs,
    ):
        super().__init__(
            learning_rate, beta=beta, shampoo_beta=shampoo_beta, epsilon=epsilon,
            precondition_frequency=precondition_frequency, max_precondition_dim=max_precondition_dim,
            merge_dims=merge_dims, precondition_1d=precondition_1d, correct_bias=correct_bias,
            normalize_gradient=normalize_gradient, **kwargs,
        )

    def _factored(self, shape, axis):
        """Whether axis `axis` of a variable of `shape` has a factor (else the identity)."""
        if axis >= len(shape) or shape[axis] > self.max_precondition_dim:
            return False
        return len(shape) == 2 or self.precondition_1d

    def _factor_shape(self, axis):
        # A side without a factor keeps a 1×1 placeholder: every variable has every slot.
        return lambda shape: (shape[axis], shape[axis]) if self._factored(shape, axis) else (1, 1)

    @property
    def slots(self):
        return {
            "m": 0.0, "v": 0.0,
            "L": Slot(self._factor_shape(0)), "QL": Slot(self._factor_shape(0)),
            "R": Slot(self._factor_shape(1)), "QR": Slot(self._factor_shape(1)),
        }

    def _slot_owners(self, variables):
        large = [f"{_variable_path(v)} {tuple(v.shape)}" for v in variables if len(v.shape) > 2]
        if large:
            raise ValueError(
                f"SOAP preconditions scalars, vectors and matrices; it cannot update the variable(s) of rank > 2 "
                f"{large}. Route them to another rule with a Partition, e.g. keras_optx.Partition({{\"conv\": "
                "keras_optx.ADAMW(), \".*\": keras_optx.SOAP()}), or reshape them."
            )
        return super()._slot_owners(variables)

    def delta(self, ops, g, x, s, t, lr):
        b1, b2 = self.beta
        step = t - 1
        rate = lr
        if self.correct_bias:
            counted = ops.maximum(step, 1)  # t = 1 takes no step: any finite rate
            rate = lr * ops.sqrt(ops.one_minus_pow(b2, counted)) / ops.one_minus_pow(b1, counted)
        out = {name: [] for name in ("m", "v", "L", "QL", "R", "QR")}
        deltas = []
        for i, gi in enumerate(g.items):
            slots = {name: s[name].items[i] for name in out}
            axes = [self._factored(tuple(gi.shape), a) for a in (0, 1)]
            first = lambda gi=gi, slots=slots, axes=axes: self._first(gi, slots, axes)  # noqa: E731
            later = lambda gi=gi, slots=slots, axes=axes: self._later(gi, slots, axes, step, rate)  # noqa: E731
            d, new = _branch(t == 1, first, later)
            deltas.append(d)
            for name, value in new.items():
                out[name].append(value)
        return Many(deltas), {name: Many(values) for name, values in out.items()}

    def _shampoo_beta(self):
        return self.beta[1] if self.shampoo_beta is None else self.shampoo_beta

    def _first(self, g, slots, axes):
        """t = 1: the factors from g and their eigenbases; no step."""
        new = dict(slots)
        for axis, (f, q) in zip((0, 1), (("L", "QL"), ("R", "QR"))):
            if axes[axis]:
                new[f] = (1 - self._shampoo_beta()) * _outer(g, axis)
                new[q] = _eigenbasis(new[f])
        return keras.ops.zeros_like(g), new

    def _later(self, g, slots, axes, step, rate):
        b1, b2 = self.beta
        q = [slots["QL"] if axes[0] else None, slots["QR"] if axes[1] else None]
        m = b1 * slots["m"] + (1 - b1) * g
        v = b2 * slots["v"] + (1 - b2) * keras.ops.square(_project(g, q))
        n = _project(_project(m, q) / (keras.ops.sqrt(v) + self.epsilon), q, back=True)
        if self.normalize_gradient:
            n = n / (keras.ops.sqrt(keras.ops.mean(keras.ops.square(n))) + self.epsilon)
        new = {**slots, "m": m, "v": v}
        beta = self._shampoo_beta()
        for axis, f in ((0, "L"), (1, "R")):
            if axes[axis]:
                new[f] = beta * slots[f] + (1 - beta) * _outer(g, axis)
        refresh = lambda: self._refresh(new, axes)  # noqa: E731
        return rate * n, _branch(_divides(self.precondition_frequency, step), refresh, lambda: new)

    def _refresh(self, state, axes):
        """Each eigenbasis by one power iteration and QR, its columns (and v along its axis) sorted."""
        state = dict(state)
        for axis, (f, qn) in zip((0, 1), (("L", "QL"), ("R", "QR"))):
            if axes[axis]:
                product = keras.ops.matmul(state[f], state[qn])
                order = keras.ops.argsort(-keras.ops.sum(state[qn] * product, axis=0))
                state["v"] = keras.ops.take(state["v"], order, axis=axis)
                state[qn], _ = keras.ops.qr(keras.ops.take(product, order, axis=1))
        return state


def _outer(g, axis):
    """g·gᵀ (axis 0) or gᵀ·g (axis 1); for a vector, g⊗g."""
    if len(g.shape) == 1:
        return keras.ops.outer(g, g)
    return keras.ops.matmul(g, keras.ops.transpose(g)) if axis == 0 else keras.ops.matmul(keras.ops.transpose(g), g)


def _eigenbasis(factor):
    _, vectors = keras.ops.eigh(factor)
    return keras.ops.flip(vectors, axis=1)  # descending eigenvalues


def _project(x, q, back=False):
    """Q_Lᵀ·x·Q_R (forward) or Q_L·x·Q_Rᵀ (back); a missing Q is the identity."""
    left, right = q
    if left is not None:
        x = keras.ops.matmul(left if back else keras.ops.transpose(left), x)
    if right is not None:
        x = keras.ops.matmul(x, keras.ops.transpose(right) if back else right)
    return x


def _divides(frequency, step):
    if isinstance(step, int):
        return step > 0 and step % frequency == 0
    step = keras.ops.cast(step, "int32")
    return keras.ops.logical_and(step > 0, keras.ops.equal(keras.ops.mod(step, frequency), 0))


def _branch(condition, if_true, if_false):
    """One of two computations: a Python condition (torch's eager step) picks one; a traced one runs
    `keras.ops.cond`, so the other (an eigendecomposition, a QR) is not computed."""
    if isinstance(condition, bool):
        return if_true() if condition else if_false()
    return keras.ops.cond(condition, if_true, if_false)
