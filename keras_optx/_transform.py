"""`Transform`: a gradient transformation without a learning rate, also wrapping any Keras optimizer."""

import copy

import keras

from ._backends import current as backend
from ._base import Rule, _adopt_rate
from ._tensors import Many
from ._variables import _track_once


class Transform(Rule):
    """A gradient transformation without a learning rate (weight decay, clipping).

    It is a chain member, and also wraps any Keras optimizer: `ClipNorm(1.0,
    keras.optimizers.Adam())` transforms each gradient, then hands it to Adam.
    Subclasses pass `optimizer` through and define `delta` (ignoring `lr`).

    Example:
        A transform that flips the gradient's sign (signSGD's direction, Bernstein et al. 2018,
        arXiv:1802.04434):

        >>> class Sign(keras_optx.Transform):
        ...     def __init__(self, optimizer=None, **kwargs):
        ...         super().__init__(optimizer, **kwargs)
        ...
        ...     def delta(self, ops, g, x, s, t, lr):
        ...         return ops.sign(g), {}
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Optimiser(Sign(), keras_optx.Descent(0.1))  # signSGD
        >>> opt.apply([np.array([3.0, -0.5], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))
        [0.9 2.1]
    """

    has_learning_rate = False

    def __init__(self, optimizer=None, **kwargs):
        super().__init__(1.0, **kwargs)
        if isinstance(optimizer, dict):  # from_config; Keras rewrites the dict it deserializes
            optimizer = keras.optimizers.deserialize(copy.deepcopy(optimizer))
        if optimizer is not None and not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                f"`optimizer` must be a Keras optimizer (keras.optimizers.Optimizer) or None; received {optimizer!r}."
            )
        if optimizer is not None and self.shard_state and not self.slots:
            raise ValueError(
                f"{type(self).__name__} wrapping {type(optimizer).__name__} keeps no state of its own; "
                f"`shard_state=True` cannot reach {type(optimizer).__name__}'s slots. Use a keras_optx chain, "
                f"e.g. Optimiser({type(self).__name__}(...), ADAM(), shard_state=True)."
            )
        if optimizer is not None and self.rounding != "nearest":
            raise ValueError(
                f"{type(self).__name__} wrapping {type(optimizer).__name__} does not write the variables; "
                f"rounding={self.rounding!r} cannot act. Give it to the wrapped optimizer if it is a keras_optx rule, "
                f"or use a chain, e.g. Optimiser({type(self).__name__}(...), ADAM(), rounding={self.rounding!r})."
            )
        self.optimizer = optimizer
        if optimizer is not None:
            _adopt_rate(self, optimizer._learning_rate)
            for v in optimizer.variables:
                _track_once(self, v)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.optimizer is not None:
            self.optimizer.build(variables)
            for v in self.optimizer.variables:
                _track_once(self, v)

    def _update_step(self, grads, variables):
        if self.optimizer is None:
            return super()._update_step(grads, variables)
        t, step = self._step_numbers()
        delta, _ = self._transform(Many(grads), Many(v.value for v in variables), {}, t, step)
        self._apply_wrapped(delta.items, variables)

    def _apply_wrapped(self, grads, variables):
        """Hand `grads` to the wrapped optimizer, which updates `variables`."""
        # On TensorFlow the base handed us the dense gradient summed over replicas (a norm of
        # per-replica or IndexedSlices gradients is wrong); the wrapped optimizer sums over
        # replicas again, so each replica passes its 1/n share.
        replicas = backend.replicas(self)
        self.optimizer.apply([g / replicas for g in grads] if replicas > 1 else list(grads), variables)

    def get_config(self):
        config = super().get_config()
        if self.optimizer is not None:
            config["optimizer"] = keras.optimizers.serialize(self.optimizer)
        return config

    def __repr__(self):
        inner = "" if self.optimizer is None else f", {type(self.optimizer).__name__}"
        return super().__repr__()[:-1] + inner + ")"
