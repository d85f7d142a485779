"""The backend interface (see `keras_optx._backends`) on TensorFlow: `tf.distribute` awareness.

Gradients are summed over replicas (and `IndexedSlices` made dense) before the formula, and every
write happens in cross-replica context, so `MirroredStrategy` gives the one-device trajectory.
The formula itself runs as traced by `tf.function` / XLA; `value_and_gradient` is a `tf.GradientTape`.
"""

import keras
import tensorflow as tf

from . import default
from .default import (
    EAGER, apply_kernel, binary, clip, global_norm, newton_schulz, norms, prepare_slots, scalar, scale_items, step_numbers, unary,
    values,
)

__all__ = [
    "EAGER", "apply_kernel", "assign", "binary", "clip", "global_norm", "newton_schulz", "norms", "prepare_slots", "replicas", "scalar",
    "scale_items", "step_numbers", "unary", "update_step", "value_and_grad", "values", "write",
]


def update_step(rule, grads, variables):
    """Sum the gradients over replicas and make `IndexedSlices` dense, then the rule's update."""
    pairs = rule._all_reduce_sum_gradients(list(zip(grads, variables)))
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g, _ in pairs]
    default.update_step(rule, grads, variables)


def write(rule, slot_writes, variables, delta):
    """Assign in cross-replica context so `tf.distribute` strategies update every replica."""
    _assign_all(rule, default.assignments(rule, slot_writes, variables, delta))


def assign(rule, pairs):
    """Set each variable of `(variable, value)` pairs to its value (cast), in cross-replica context."""
    _assign_all(rule, [(v, keras.ops.cast(value, v.dtype)) for v, value in pairs])


def _assign_all(rule, updates):
    targets = [v.value if isinstance(v, keras.Variable) else v for v, _ in updates]
    new_values = [value for _, value in updates]

    def assign_all(distribution, targets, new_values):
        for target, value in zip(targets, new_values):
            distribution.extended.update(target, lambda var, val: var.assign(val), args=(value,), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(assign_all, rule._distribution_strategy, targets, new_values)


def replicas(rule):
    """A wrapped Keras optimizer sums over replicas again: each passes its 1/n share."""
    return rule._distribution_strategy.num_replicas_in_sync


def value_and_grad(loss_fn, variables):
    """`(loss, grads)` of `loss_fn()` (a checked 0-d loss) with respect to `variables`, by a
    `tf.GradientTape` watching only them; zeros where unused, dense where the tape gave `IndexedSlices`."""
    tensors = [v.value for v in variables]
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(tensors)
        loss = loss_fn()
    grads = tape.gradient(loss, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # Embedding lookups give IndexedSlices; a dense tensor is what a hand-written update expects.
    return loss, [tf.convert_to_tensor(g) for g in grads]
