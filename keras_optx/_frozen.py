"""What a `Partition` freezes, kept frozen by every Keras update keyword of the optimizer holding it.

Keras applies `weight_decay=`, `use_ema=`/`ema_overwrite_frequency=` and `global_clipnorm=` itself,
over all the variables, outside the rule's formula. `FreezingMixin` (a base of `Rule`) makes each
of them skip the variables a Partition inside freezes: `Frozen()` targets and `freeze()`d ones.
(`clipnorm`, `clipvalue`, loss scaling and gradient accumulation change gradients only, and a
frozen variable's gradient is never applied.)
"""

import keras

from ._backends import current as backend


class FreezingMixin:
    """The Keras keywords' side of freezing, for every keras_optx optimizer (see the module docstring)."""

    def _check_routes(self, variables):
        """Refuse, at build, routing that can never apply (a Partition's; see `Partition._check_routes`)."""
        for part in self._parts() or ():
            part._check_routes(variables)

    def _frozen(self, variables):
        """Per variable, whether a Partition inside this rule freezes it now (`Frozen()` or `freeze`):
        True/False, or a scalar bool tensor in a traced step; None where none can be frozen."""
        flags = None
        for part in self._parts() or ():
            flags = _either_frozen(flags, part._frozen(variables))
        return flags

    def _apply_weight_decay(self, variables):
        frozen = self._frozen(variables) if self.weight_decay is not None else None
        if frozen is None:
            return super()._apply_weight_decay(variables)
        super()._apply_weight_decay([v for v, f in zip(variables, frozen) if f is False])
        traced = [(v, f) for v, f in zip(variables, frozen) if not isinstance(f, bool) and self._use_weight_decay(v)]
        if traced:
            rate, decay = self.learning_rate, self.weight_decay
            backend.assign(self, [
                (v, keras.ops.where(f, v.value, v.value - v.value * keras.ops.cast(decay * rate, v.dtype)))
                for v, f in traced
            ])

    def _update_model_variables_moving_average(self, trainable_variables):
        # A frozen variable's average is the variable itself: an EMA overwrite leaves it as it is.
        super()._update_model_variables_moving_average(trainable_variables)
        frozen = self._frozen(trainable_variables) if self.use_ema else None
        if frozen is not None:
            backend.assign(self, [
                (average, v.value if f is True else keras.ops.where(f, v.value, average.value))
                for v, average, f in zip(trainable_variables, self._model_variables_moving_average, frozen)
                if average is not None and f is not False
            ])

    def _filter_empty_gradients(self, grads, variables):
        # A frozen variable's gradient counts in no `global_clipnorm` (as in a chain's ClipGlobalNorm).
        grads, variables = super()._filter_empty_gradients(grads, variables)
        frozen = self._frozen(variables) if self.global_clipnorm else None
        if frozen is not None:
            grads = [
                g if g is None or f is False else keras.ops.zeros_like(g) if f is True
                else keras.ops.where(f, keras.ops.zeros_like(g), g)
                for g, f in zip(grads, frozen)
            ]
        return grads, variables


def _either_frozen(a, b):
    """Per variable, frozen by `a` or by `b` (lists of flags as `Rule._frozen` gives, or None)."""
    if a is None or b is None:
        return b if a is None else a
    return [x if y is False or x is True else y if x is False or y is True else keras.ops.logical_or(x, y) for x, y in zip(a, b)]
