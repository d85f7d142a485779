"""The backend interface (see `keras_optx._backends`) for JAX and any backend without its own module.

Under JAX the whole step is traced and compiled by XLA; nothing here is JAX-specific, so this is
also what the TensorFlow and torch modules fall back on.
"""

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


def assignments(slot_writes, variables, delta):
    """`[(variable, new value)]`: the slots' new values (in each slot's dtype: `state_dtype` may keep
    it in bfloat16/float16), then x − Δ in each variable's dtype."""
    updates = [(s, new if new.dtype == s.dtype else keras.ops.cast(new, s.dtype)) for s, new in slot_writes]
    updates += [(v, keras.ops.cast(v.value - keras.ops.cast(d, v.dtype), v.dtype)) for v, d in zip(variables, delta.items)]
    return updates


def write(rule, slot_writes, variables, delta):
    for variable, value in assignments(slot_writes, variables, delta):
        variable.assign(value)


def assign(rule, pairs):
    """Set each variable of `(variable, value)` pairs to its value, cast to the variable's dtype."""
    for variable, value in pairs:
        variable.assign(keras.ops.cast(value, variable.dtype))


def replicas(rule):
    return 1


def load_kernels():
    """No kernels to register."""
