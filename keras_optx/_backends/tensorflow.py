"""The backend interface (see `keras_optx._backends`) on TensorFlow: `tf.distribute` awareness.

Gradients are summed over replicas (and `IndexedSlices` made dense) before the formula, and every
write happens in cross-replica context, so `MirroredStrategy` gives the one-device trajectory.
The formula itself runs as traced by `tf.function` / XLA.
"""

import keras
import tensorflow as tf

from . import default
from .default import EAGER, apply_kernel, load_kernels, prepare_slots, scalar, step_numbers, values

__all__ = [
    "EAGER", "apply_kernel", "assign", "load_kernels", "prepare_slots", "replicas", "scalar", "step_numbers", "update_step", "values", "write",
]


def update_step(rule, grads, variables):
    """Sum the gradients over replicas and make `IndexedSlices` dense, then the rule's update."""
    pairs = rule._all_reduce_sum_gradients(list(zip(grads, variables)))
    grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g, _ in pairs]
    default.update_step(rule, grads, variables)


def write(rule, slot_writes, variables, delta):
    """Assign in cross-replica context so `tf.distribute` strategies update every replica."""
    _assign_all(rule, default.assignments(slot_writes, variables, delta))


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
