"""The backend interface (see `keras_optx._backends`) for JAX and any backend without its own module.

Under JAX the whole step is traced and compiled by XLA; nothing here but `value_and_grad` is
JAX-specific, so this is also what the TensorFlow and torch modules fall back on. `Many`'s
arithmetic is one `keras.ops` call per variable, which the compiler fuses.
"""

import numbers

import keras


EAGER = False  # the optimizer step is traced and compiled (under `jit`): per-step values stay tensors


def prepare_slots(variables):
    """Nothing to do: slots are plain Keras variables."""


def update_step(rule, grads, variables):
    """Keras's `_backend_update_step`: gradients as tensors, then the rule's update."""
    rule._update([g if keras.ops.is_tensor(g) else keras.ops.convert_to_tensor(g) for g in grads], variables)


def apply_kernel(rule, grads, variables, slots):
    """No kernels: the formula, traced and fused by the compiler, is the fast path."""
    return False


def values(variables):
    return [v.value for v in variables]


def step_numbers(rule):
    """t = 1, 2, … as float32 (traced) and the 0-based step for schedules."""
    return keras.ops.cast(rule.iterations + 1, "float32"), rule.iterations


def scalar(value):
    return value


def assignments(rule, slot_writes, variables, delta):
    """`[(variable, new value)]`: the slots' new values (in each slot's dtype: `state_dtype` may keep
    it in bfloat16/float16), then x − Δ: in each variable's dtype, or for float16/bfloat16 variables
    in float32 rounded once by `rule.rounding` (`keras_optx/_rounding.py`)."""
    from .. import _rounding

    updates = [(s, new if new.dtype == s.dtype else keras.ops.cast(new, s.dtype)) for s, new in slot_writes]
    return updates + _rounding.updates(rule, variables, delta.items)


def write(rule, slot_writes, variables, delta):
    for variable, value in assignments(rule, slot_writes, variables, delta):
        variable.assign(value)


def assign(rule, pairs):
    """Set each variable of `(variable, value)` pairs to its value, cast to the variable's dtype."""
    for variable, value in pairs:
        variable.assign(keras.ops.cast(value, variable.dtype))


def replicas(rule):
    return 1


# `Many`'s arithmetic: one keras.ops call per variable. Results are built as `type(many)(items)`
# (this module is loaded before `_tensors`); no pending scale is ever kept.
_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: keras.ops.power(a, b),
    "maximum": keras.ops.maximum,
    "minimum": keras.ops.minimum,
}
_UNARY = {
    "neg": lambda a: -a,
    "reciprocal": lambda a: 1 / a,
    "sqrt": keras.ops.sqrt,
    "abs": keras.ops.abs,
    "sign": keras.ops.sign,
}


def per_item(other, many):
    """`other` as one operand per tensor of `many`: a `Many`'s tensors, or a scalar cast to each
    tensor's dtype (a Python number stays a number)."""
    if isinstance(other, type(many)):
        return other.items
    if isinstance(other, numbers.Number):
        return [other] * len(many)
    return [keras.ops.cast(other, item.dtype) for item in many.items]


def binary(name, many, other):
    """`many <name> other` (add, sub, mul, div, pow, maximum, minimum); `other` a `Many` or a scalar."""
    fn = _BINARY[name]
    return type(many)(fn(a, b) for a, b in zip(many.items, per_item(other, many)))


def unary(name, many):
    """`name(many)` (neg, reciprocal, sqrt, abs, sign)."""
    fn = _UNARY[name]
    return type(many)(fn(a) for a in many.items)


def clip(many, low, high):
    """Each tensor of `many` clamped into [low, high] (scalars; NaN stays NaN). On JAX `lax.clamp`,
    which XLA keeps as one clamp, as it makes of constant bounds; maximum-then-minimum with bounds read
    from a variable (ClipValue's `thresh`) stays two NaN-propagating ops: 6% slower in a pure-JAX
    ADADelta step after a clip over 200×10k (benchmarks/RESULTS.md has what remains)."""
    return type(many)(_CLIP(a, lo, hi) for a, lo, hi in zip(many.items, per_item(low, many), per_item(high, many)))


def _clamp(x, low, high):
    import jax

    return jax.lax.clamp(low, x, high)


_CLIP = _clamp if keras.backend.backend() == "jax" else keras.ops.clip


def scale_items(items, scale):
    """`scale · items`: a pending scale applied (never kept here; for completeness)."""
    return [item * scale for item in items]


def norms(items):
    """The L2 norm of each tensor."""
    return [keras.ops.sqrt(keras.ops.sum(keras.ops.square(a))) for a in items]


def global_norm(norms):
    """The L2 norm of all tensors together, from their norms, in float32."""
    squares = [keras.ops.cast(n, "float32") ** 2 for n in norms]
    return keras.ops.sqrt(sum(squares[1:], squares[0]))


def newton_schulz(batch, coefficients, steps, epsilon):
    """No kernel here: None, and Muon's formula runs (XLA compiles its products)."""
    return None


def value_and_grad(loss_fn, variables):
    """`(loss, grads)` of `loss_fn()` (a checked 0-d loss) with respect to `variables`: on JAX,
    `jax.value_and_grad` of the loss with the variables read through a `keras.StatelessScope`."""
    if keras.backend.backend() != "jax":
        raise NotImplementedError("keras_optx.gradient needs the jax, torch or tensorflow backend.")
    import jax

    def loss_of(values):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return loss_fn()

    return jax.value_and_grad(loss_of)([v.value for v in variables])
