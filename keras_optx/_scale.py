"""Where optimizer state lives and in what dtype: slot layouts, `shard_state`, `state_dtype`.

- Each slot is created with its variable's layout (as Keras's `add_variable_from_reference`):
  under `keras.distribution` on JAX it is sharded exactly like its variable; on TensorFlow it is
  colocated with it (`tf.distribute`); on torch a layout is a no-op.
- `shard_state=True` (ZeRO stage 1, Rajbhandari et al. 2020, arXiv:1910.02054): under a
  distribution with a data axis on JAX, each slot is further split over that axis on its first
  dimension that divides evenly, so each of N data-parallel devices keeps ~1/N of the state. The
  update math is unchanged; XLA's partitioner inserts the communication the shardings imply.
- `state_dtype="bfloat16"` / `"float16"`: slots a rule declares sound in that dtype
  (`Rule.low_precision_slots`) are stored in it; every update still computes in float32.
"""

import contextlib
import warnings

import keras

_BACKEND = keras.backend.backend()
STATE_DTYPES = ("bfloat16", "float16")
_warned = set()


def check_shard_state(value):
    if not isinstance(value, bool):
        raise TypeError(f"`shard_state` must be True or False; received {value!r} ({type(value).__name__}).")
    return value


def check_state_dtype(value):
    if value is None:
        return None
    try:
        name = keras.backend.standardize_dtype(value)
    except (ValueError, TypeError, AttributeError):
        name = None
    if name not in STATE_DTYPES:
        raise ValueError(f"`state_dtype` must be None (the variables' dtype), 'bfloat16' or 'float16'; received {value!r}.")
    return name


def warn_once(key, message):
    """A `UserWarning` the first time `key` is seen in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=4)


def slot_variable(optimizer, variable, name, initial, dtype, shard, shape=None):
    """A slot variable for `variable`, laid out like it (and split over the data axis if `shard`);
    of `shape` where given and not the variable's (a `Slot`): then replicated on every device."""
    if shape is None or tuple(shape) == tuple(variable.shape):
        shape, layout = variable.shape, slot_layout(variable, shard)
    else:
        layout = _replicated(len(shape))
    with _colocated(optimizer, variable):
        return optimizer.add_variable(
            shape=shape,
            dtype=dtype,
            initializer=keras.initializers.Constant(initial),
            name=name,
            **({"layout": layout} if layout is not None else {}),
        )


def _replicated(rank):
    """A replicated layout of `rank` under a `keras.distribution` (else None): a slot of its own shape
    takes no layout from its variable's, nor from a layout map matching its path."""
    distribution = keras.distribution.distribution() if _BACKEND == "jax" else None
    if distribution is None:
        return None
    return keras.distribution.TensorLayout([None] * rank, distribution.device_mesh)


@contextlib.contextmanager
def _colocated(optimizer, variable):
    """On TensorFlow, create the slot on its variable's device(s) (as Keras's TF optimizer does)."""
    if _BACKEND != "tensorflow":
        yield
        return
    target = variable.value if isinstance(variable, keras.Variable) else variable
    with optimizer._distribution_strategy.extended.colocate_vars_with(target):
        yield


def slot_layout(variable, shard):
    """The layout of a slot for `variable`: the variable's own (None where it has none); with
    `shard`, that layout further split over the distribution's data axis where a dimension divides."""
    layout = getattr(variable, "_layout", None)
    if not shard:
        return layout
    reason = _cannot_shard()
    if reason:
        warn_once(("shard_state", reason), f"shard_state=True has no effect here: {reason}. Every device keeps the whole optimizer state.")
        return layout
    distribution = keras.distribution.distribution()
    mesh, axis = distribution.device_mesh, distribution.batch_dim_name
    if layout is None:
        layout = distribution.get_variable_layout(variable)
    if not isinstance(layout, keras.distribution.TensorLayout):
        return layout  # a backend-specific sharding the user set: kept as is
    axes = list(layout.axes)
    if axis in axes:
        return layout
    shards = mesh.shape[list(mesh.axis_names).index(axis)]
    for dim, size in enumerate(variable.shape):
        if axes[dim] is None and size % shards == 0:
            axes[dim] = axis
            return keras.distribution.TensorLayout(axes, layout.device_mesh or mesh)
    return layout  # small or indivisible: replicated over the data axis


def _cannot_shard():
    """Why `shard_state` cannot apply here, or '' when it can."""
    if _BACKEND != "jax":
        return (
            f"the {_BACKEND} backend keeps a full copy of every variable per replica (keras.distribution, "
            "which shards state, runs on the JAX backend only)"
        )
    distribution = keras.distribution.distribution()
    if distribution is None:
        return "no keras.distribution is set (use keras.distribution.DataParallel or ModelParallel)"
    axis = getattr(distribution, "batch_dim_name", None)
    mesh = distribution.device_mesh
    if axis is None or axis not in mesh.axis_names:
        return f"{type(distribution).__name__} has no data-parallel axis"
    if mesh.shape[list(mesh.axis_names).index(axis)] < 2:
        return f"the data axis {axis!r} has one device"
    return ""
