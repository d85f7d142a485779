"""`SkipNonFinite`: an opt-in guard that drops a whole update when any gradient is NaN or ±Inf."""

import keras
from keras import ops

from ._base import FORMAT_VERSION, _KERAS_UPDATE_KEYWORDS, Rule, _adopt_rate, _versioned
from ._gradients import _checked_gradients
from ._saving import _set_all

_register = keras.saving.register_keras_serializable(package="keras_optx")

# Keras optimizer keywords the guard leaves to the wrapped optimizer.
_INNER_ONLY = _KERAS_UPDATE_KEYWORDS


@_register
class SkipNonFinite(keras.optimizers.Optimizer):
    """Skip every update whose gradients contain a NaN or ±Inf; count the skips.

    For each step: if every gradient is finite, the wrapped optimizer applies it
    exactly as it would alone. Otherwise nothing changes: the model's variables and
    every variable of the wrapped optimizer (slots, its `iterations`, gradient
    accumulators, EMA) keep their values, and `skipped` grows by one.

    Policy on counting:

    - `optimizer.iterations` is the wrapped optimizer's: updates actually applied.
      A skipped batch is as if it had never been seen, so bias corrections, the
      step t of a rule and learning-rate schedules do not advance.
    - `optimizer.skipped` (an integer variable, saved with the model) counts the
      skipped steps; attempts = `iterations + skipped` (without gradient accumulation).

    The choice is made without a Python `if` on tensor values: the wrapped update is
    computed (with zero gradients in place of non-finite ones) and the old or new
    values are selected with `where`, so it runs under `jit` on JAX (`model.fit`,
    `stateless_apply`), in `tf.function` and eagerly on torch. It costs one extra copy
    of the model and optimizer variables per step. Not intended for tf.distribute
    strategies.

    Args:
        optimizer: the Keras optimizer to guard (any: keras_optx rules, chains,
            wrappers, Keras built-ins).
        name: optional name.

    Keras keywords that change the update (`clipnorm`, `use_ema`,
    `gradient_accumulation_steps`, `loss_scale_factor`, …) belong to the wrapped
    optimizer and are refused here. `learning_rate` reads and sets the wrapped
    optimizer's rate, so callbacks work.

    Example:
        >>> x = keras.Variable([1.0])
        >>> opt = keras_optx.SkipNonFinite(keras_optx.Descent(0.1))
        >>> opt.apply([np.array([np.nan], "float32")], [x])  # skipped: nothing changes
        >>> opt.apply([np.array([1.0], "float32")], [x])
        >>> print(keras.ops.convert_to_numpy(x), int(opt.skipped), int(opt.iterations))
        [0.9] 1 1

    Unlike `keras.optimizers.LossScaleOptimizer` (which also skips non-finite steps,
    but only as part of loss scaling), this changes no loss scale and works for
    float32 training. The skip rule is the one dynamic loss scaling uses (Micikevicius et
    al. 2018, arXiv:1710.03740), without the scaling.
    """

    def __init__(self, optimizer, name=None, **kwargs):
        if isinstance(optimizer, dict):
            optimizer = keras.optimizers.deserialize(optimizer)
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"`optimizer` must be a Keras optimizer (keras.optimizers.Optimizer); received {optimizer!r}."
            )
        for key, default in _INNER_ONLY.items():
            if key in kwargs and kwargs.pop(key) != default:
                raise ValueError(f"SkipNonFinite does not take `{key}`; set it on the wrapped optimizer instead.")
        kwargs.pop("learning_rate", None)  # written by the base get_config; the rate is the wrapped one
        if kwargs:
            raise TypeError(f"SkipNonFinite got unexpected keyword arguments: {sorted(kwargs)}.")
        super().__init__(learning_rate=0.0, name=name)
        self.optimizer = optimizer
        _adopt_rate(self, optimizer._learning_rate)
        if isinstance(optimizer._learning_rate, keras.Variable):
            self._untrack_variable(optimizer._learning_rate)  # listed once, by the wrapped optimizer

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.skipped = self.add_variable(
            shape=(), dtype="int", initializer="zeros", aggregation="only_first_replica", name="skipped"
        )
        self.optimizer.build(variables)

    @property
    def variables(self):
        return self._variables + self.optimizer.variables

    @property
    def iterations(self):
        return self.optimizer.iterations

    def set_weights(self, weights):
        """Set every variable of `self.variables`: the guard's own, then the wrapped optimizer's."""
        _set_all(self, weights)

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Passed to the wrapped optimizer, which applies the decay."""
        self.optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.optimizer.learning_rate = value

    def apply(self, grads, trainable_variables=None):
        grads, trainable_variables = _checked_gradients(self, grads, trainable_variables)
        if trainable_variables is not None:
            if not self.built:
                with keras.name_scope(self.name, caller=self):
                    self.build(trainable_variables)
        elif not self.built:
            raise ValueError("Build the optimizer (or pass `trainable_variables`) before calling `apply(grads)`.")
        targets = trainable_variables if trainable_variables is not None else self._trainable_variables
        finite = _all_finite(grads)
        watched = list(targets) + self.optimizer.variables
        # Copies: on torch `.value` is the storage the update writes in place.
        before = [ops.copy(v.value) for v in watched]
        safe = [None if g is None else ops.where(finite, g, ops.zeros_like(g)) for g in grads]
        self.optimizer.apply(safe, trainable_variables)
        for variable, old in zip(watched, before):
            variable.assign(ops.where(finite, variable.value, old))
        self.skipped.assign_add(ops.cast(ops.logical_not(finite), self.skipped.dtype))
        self._iterations.assign_add(1)

    def scale_loss(self, loss):
        return self.optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list):
        self.optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras.optimizers.serialize(self.optimizer),
            "format_version": FORMAT_VERSION,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config, version = _versioned(cls, config)
        inner = keras.optimizers.deserialize(config.pop("optimizer"), custom_objects=custom_objects)
        guard = cls(inner, **config)
        guard._saved_format_version = version
        return guard

    @classmethod
    def _migrate_config(cls, config, version):
        """As `Rule._migrate_config`: `config` of format `version` in today's form."""
        return config

    def _migrate_variables(self, arrays, version):
        """As `Rule._migrate_variables` (format ≤ 1: the wrapped rule's hyperparameter vector)."""
        return Rule._migrate_variables(self, arrays, version)

    def load_own_variables(self, store):
        version = getattr(self, "_saved_format_version", FORMAT_VERSION)
        if version == FORMAT_VERSION or not self.variables:
            return super().load_own_variables(store)
        arrays = self._migrate_variables([store[str(i)] for i in range(len(store.keys()))], version)
        if len(arrays) != len(self.variables):
            raise ValueError(
                f"Cannot load the saved state of optimizer {self.name!r}: it has {len(arrays)} variables (format "
                f"{version}), this SkipNonFinite has {len(self.variables)}. Load it with the configuration it was saved with."
            )
        for variable, value in zip(self.variables, arrays):
            variable.assign(value)

    def __repr__(self):
        return f"SkipNonFinite({self.optimizer!r})"


def _all_finite(grads):
    checks = [ops.all(ops.isfinite(g)) for g in grads if g is not None]
    if not checks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(checks))
