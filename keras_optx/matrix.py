"""Matrix rules: each variable's update is a matrix function of its state, not elementwise (Muon).

The momentum is an ordinary slot (the variable's shape); the orthogonalisation runs per variable
with `keras.ops` matrix operations, which take each backend's tensors, eager and compiled.
"""

import math

import keras

from . import _checks as check
from ._backends import current as backend
from ._base import Rule, _variable_path
from ._tensors import Many

_register = keras.saving.register_keras_serializable(package="keras_optx")

NS_DTYPES = ("bfloat16", "float32")
ADJUST_LR = (None, "original", "match_rms_adamw")


def _ns_coefficients(name, value):
    """(a, b, c): three real numbers."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"`{name}` must be a tuple (a, b, c) of three real numbers; received {value!r}.")
    if len(value) != 3:
        raise ValueError(f"`{name}` must be a tuple (a, b, c) of length 3; received {name}={tuple(value)!r}.")
    out = tuple(check._number(f"{name}[{i}]", v) for i, v in enumerate(value))
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"`{name}` must hold finite numbers; received {name}={out!r}.")
    return out


def _ns_steps(name, value):
    """An integer in [1, 99] (torch.optim.Muon refuses 100 or more)."""
    value = check.positive_int(name, value)
    if value >= 100:
        raise ValueError(f"`{name}` must be an integer in [1, 99] (as torch.optim.Muon); received {name}={value}.")
    return value


def _choice(options):
    def checked(name, value):
        if value not in options or isinstance(value, bool):
            raise ValueError(f"`{name}` must be one of {options!r}; received {name}={value!r}.")
        return value

    return checked


def lr_ratio(adjust_lr, rows, cols):
    """torch.optim.Muon's `adjust_lr_fn` for a (rows, cols) matrix: None/"original" √max(1, rows/cols)
    (Jordan et al.), "match_rms_adamw" 0.2·√max(rows, cols) (Liu et al. 2025)."""
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))


def as_matrix_shape(shape):
    """The 2-D shape a variable is orthogonalised in: itself for a matrix; a Keras convolution
    kernel (k…, in, out) as (k…·in, out), its fan-in by its output channels (see `Muon`)."""
    shape = tuple(int(d) for d in shape)
    return shape if len(shape) == 2 else (math.prod(shape[:-1]), shape[-1])


def by_shape(shapes):
    """The indices of `shapes` grouped by their matrix's shape up to a transpose (`as_matrix_shape`): the
    matrices whose Newton–Schulz iterations can run as one batch."""
    groups = {}
    for index, shape in enumerate(shapes):
        rows, cols = as_matrix_shape(shape)
        groups.setdefault((min(rows, cols), max(rows, cols)), []).append(index)
    return list(groups.values())


@_register
class Muon(Rule):
    """Muon: momentum orthogonalised by a Newton–Schulz iteration, per weight matrix.

    B ← μ·B + (1−μ)·g;  U = (1−μ)·g + μ·B with `nesterov`, else U = B;
    X₀ = U/max(‖U‖_F, ϵ) (transposed when it has more rows than columns);
    Xₖ₊₁ = a·Xₖ + (b·Aₖ + c·Aₖ²)·Xₖ with Aₖ = Xₖ·Xₖᵀ, k < `ns_steps` (in `ns_dtype`);
    Δ = η·r·X  with r = √max(1, rows/cols) (`adjust_lr` None or "original") or
    0.2·√max(rows, cols) ("match_rms_adamw").

    Args:
        learning_rate: η, default 0.02.
        momentum: μ in [0, 1), default 0.95.
        nesterov: default True.
        ns_steps: Newton–Schulz iterations, in [1, 99], default 5.
        ns_coefficients: (a, b, c), default (3.4445, -4.775, 2.0315).
        epsilon: ϵ, default 1e-7.
        adjust_lr: None, "original" or "match_rms_adamw" (torch's `adjust_lr_fn`), default None.
        ns_dtype: the dtype the iteration runs in, "bfloat16" (default, as torch and the reference
            code) or "float32".

    Decoupled weight decay x ← x − η·λ·x (torch's `weight_decay=λ`, before the step) is Keras's
    `weight_decay=λ` keyword.

    Example:
        >>> x = keras.Variable([[1.0, 0.0], [0.0, 1.0]])
        >>> opt = keras_optx.Muon(0.1, ns_dtype="float32")
        >>> opt.apply([np.array([[1.0, 0.0], [0.0, -2.0]], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 2))  # each singular direction by 0.7η–1.2η, not by |g|
        [[0.89 0.  ]
         [0.   1.07]]

    Equals `torch.optim.Muon(lr=η, momentum=μ, nesterov=…, ns_coefficients=…, eps=ϵ,
    ns_steps=…, adjust_lr_fn=…, weight_decay=λ)` step by step (its default λ is 0.1, Keras's
    `weight_decay` default None). Only matrices are orthogonalised: a variable of rank < 2 (a bias,
    a norm's scale) is refused at build; route it to another rule with a `Partition`
    (`Partition({"kernel": Muon(), ".*": ADAMW()})`). A variable of rank > 2 (a convolution
    kernel, Keras's layout (k…, in, out)) runs as the (k…·in, out) matrix, fan-in by outputs: the
    reference code's `update.view(len(update), -1)` on torch's (out, in, k…) layout, transposed
    (the iteration commutes with transposes and permutations), and r of that matrix;
    torch.optim.Muon refuses rank > 2. `r` reads the shape as given, (rows, cols): torch's
    `nn.Linear` weight is (out, in), a Keras `Dense` kernel (in, out).

    Unlike `keras.optimizers.Muon`: its momentum is the sum B ← μ·B + g (1/(1−μ) times this one;
    the normalisation hides the scale but not the slot values), ϵ is added to the norm, the
    iteration runs in the variable's dtype, its scale is `rms_rate`·√max(rows, cols) (0.2: this
    rule's "match_rms_adamw"), and it routes non-2-D and embedding variables to an AdamW inside
    it. Unlike `optax.contrib.muon`: its momentum is bias-corrected (m/(1−μᵗ), Nesterov as
    μ·m/(1−μᵗ⁺¹) + (1−μ)·g/(1−μᵗ)), ϵ = 1e-8 is added to the norm, the iteration runs in the
    variable's dtype, its scale √max(1, cols/rows) reads a matrix as (in, out) (this rule's
    rows/cols on the transposed matrix), and it routes non-2-D variables to an AdamW inside it.
    Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks",
    https://kellerjordan.github.io/posts/muon/; Liu et al. 2025, "Muon is Scalable for LLM
    Training", arXiv:2502.16982.
    """

    hyperparameters = {
        "momentum": check.unit,
        "nesterov": check.flag,
        "ns_steps": _ns_steps,
        "ns_coefficients": _ns_coefficients,
        "epsilon": check.nonnegative,
        "adjust_lr": _choice(ADJUST_LR),
        "ns_dtype": _choice(NS_DTYPES),
    }
    slots = {"momentum_buffer": 0.0}
    low_precision_slots = {"momentum_buffer": ("bfloat16", "float16")}  # an average of g: not squared

    def __init__(
        self,
        learning_rate=0.02,
        momentum=0.95,
        nesterov=True,
        ns_steps=5,
        ns_coefficients=(3.4445, -4.775, 2.0315),
        epsilon=1e-7,
        adjust_lr=None,
        ns_dtype="bfloat16",
        **kwargs,
    ):
        super().__init__(
            learning_rate, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_coefficients=ns_coefficients,
            epsilon=epsilon, adjust_lr=adjust_lr, ns_dtype=ns_dtype, **kwargs,
        )

    def _slot_owners(self, variables):
        # Build (this rule's, or its chain's or Partition's) refuses what it cannot orthogonalise.
        small = [f"{_variable_path(v)} {tuple(v.shape)}" for v in variables if len(v.shape) < 2]
        if small:
            raise ValueError(
                f"Muon orthogonalises matrices; it cannot update the variable(s) of rank < 2 {small}. Route them "
                "to another rule with a Partition, e.g. keras_optx.Partition({\"kernel\": keras_optx.Muon(), "
                "\".*\": keras_optx.ADAMW()})."
            )
        return super()._slot_owners(variables)

    def delta(self, ops, g, x, s, t, lr):
        mu = self.momentum
        buffer = mu * s.momentum_buffer + (1 - mu) * g
        update = (1 - mu) * g + mu * buffer if self.nesterov else buffer
        steps = [
            (lr * lr_ratio(self.adjust_lr, *as_matrix_shape(u.shape))) * o
            for u, o in zip(update.items, self.orthogonalise(update.items))
        ]
        return Many(steps), {"momentum_buffer": buffer}

    def orthogonalise(self, updates):
        """Newton–Schulz on each of `updates` as a matrix (`as_matrix_shape`), in `ns_dtype`; each
        returned in its own shape and dtype. Matrices of one shape run as one batch: one chain of
        batched products instead of one per matrix (as the reference code batches them)."""
        out = [None] * len(updates)
        for members in by_shape([u.shape for u in updates]):
            # Each as a wide matrix (transposed when it has more rows than columns), stacked.
            wide = [_as_wide_matrix(updates[i], self.ns_dtype) for i in members]
            batch = self._newton_schulz(keras.ops.stack(wide) if len(wide) > 1 else wide[0][None])
            for k, i in enumerate(members):
                shape, dtype = tuple(updates[i].shape), updates[i].dtype
                x = batch[k]
                if as_matrix_shape(shape)[0] > as_matrix_shape(shape)[1]:
                    x = keras.ops.transpose(x)
                out[i] = keras.ops.cast(keras.ops.reshape(x, shape), dtype)
        return out

    def _newton_schulz(self, x):
        """The iteration on a batch (n, rows ≤ cols) in `ns_dtype`, each matrix normalised by its own norm."""
        kernel = backend.newton_schulz(x, self.ns_coefficients, self.ns_steps, self.epsilon)  # torch's batched products
        if kernel is not None:
            return kernel
        ns = self.ns_dtype
        a, b, c = self.ns_coefficients
        # The norm summed in float32 (as torch reduces bfloat16), then rounded to `ns_dtype`.
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(_wide(x)), axis=(1, 2), keepdims=True))
        x = x / keras.ops.cast(keras.ops.maximum(norm, self.epsilon), ns)
        for _ in range(self.ns_steps):
            # Each of torch's three matrix products (`@`, `addmm`, `addmm`) from `ns_dtype` values,
            # accumulated in float32 and rounded to `ns_dtype` once, as its kernels do.
            wide = _wide(x)
            gram = _wide(_rounded(keras.ops.matmul(wide, _transposed(wide)), ns))
            poly = _wide(_rounded(b * gram + c * keras.ops.matmul(gram, gram), ns))
            x = _rounded(a * wide + keras.ops.matmul(poly, wide), ns)
        return x


def _as_wide_matrix(u, dtype):
    """`u` as its (rows, cols) matrix in `dtype`, transposed when rows > cols."""
    rows, cols = as_matrix_shape(u.shape)
    x = keras.ops.cast(keras.ops.reshape(u, (rows, cols)), dtype)
    return keras.ops.transpose(x) if rows > cols else x


def _transposed(batch):
    return keras.ops.transpose(batch, (0, 2, 1))


def _wide(x):
    return keras.ops.cast(x, "float32")


def _rounded(x, dtype):
    return keras.ops.cast(x, dtype)
