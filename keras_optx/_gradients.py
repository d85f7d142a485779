"""The gradients `apply` takes, checked against its variables before any write."""

import keras

from ._identity import _same, _set_cache
from ._variables import _variable_path


def _checked_gradients(optimizer, grads, trainable_variables):
    """`grads` and the variables as lists, refused (before any write) on a length or shape mismatch.

    A gradient given as a nested Python list or a number becomes a tensor of its variable's dtype."""
    grads = list(grads)
    if trainable_variables is not None:
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"`grads` and `trainable_variables` must have the same length; received "
                f"{len(grads)} gradients for {len(trainable_variables)} variables."
            )
    targets = trainable_variables if trainable_variables is not None else getattr(optimizer, "_trainable_variables", [])
    # The variables' shapes, cached for the last list seen (reading 200 `.shape` properties
    # costs more than comparing them).
    cache = optimizer.__dict__.get("_shape_cache")
    if cache is None or not _same(cache.variables, targets):
        _refuse_foreign(targets)
        cache = _set_cache(optimizer, "_shape_cache", variables=list(targets), shapes=[v.shape for v in targets])
    try:
        _check_shapes(grads, cache.shapes, targets)
    except AttributeError:  # a nested list or a number among them (no `.shape`): one pass more, only then
        grads = [
            g if g is None or hasattr(g, "shape")
            else keras.ops.convert_to_tensor(g, dtype=targets[i].dtype if i < len(targets) else None)
            for i, g in enumerate(grads)
        ]
        _check_shapes(grads, cache.shapes, targets)
    return grads, trainable_variables


def _refuse_foreign(variables):
    foreign = next((v for v in variables if not isinstance(v, keras.Variable)), None)
    if foreign is not None:
        raise TypeError(
            f"keras_optx updates keras.Variable objects (a model's `trainable_variables`); received a "
            f"{type(foreign).__module__}.{type(foreign).__name__}. Make it a keras.Variable(value, name=...) and train that."
        )


def _check_shapes(grads, shapes, targets):
    # `shape != expected` first: a torch.Size equals a tuple, and the tuples are built only on a mismatch.
    for i, (g, shape) in enumerate(zip(grads, shapes)):
        if g is not None and g.shape != shape and tuple(g.shape) != tuple(shape):
            raise ValueError(
                f"Gradient {i} has shape {tuple(g.shape)} but its variable {_variable_path(targets[i])} has shape "
                f"{tuple(targets[i].shape)}; `grads` must follow the order of `trainable_variables`."
            )
