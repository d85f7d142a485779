"""Elementwise math over all of an optimizer's variables at once.

A rule is written once, against `Many` (one tensor per variable) and the
`ops` namespace below. The arithmetic itself is the backend's (`keras_optx._backends`:
`binary`, `unary`, `scale_items`, `norms`, `global_norm`): on torch every operation is
one multi-tensor foreach call over the whole list; on JAX and TensorFlow it is a list of
`keras.ops` calls, which the compiler fuses. Scalars (step counts, learning rates, bias
corrections) are Python floats on torch and backend tensors elsewhere; both mix freely with `Many`.
"""

import math
import numbers

import keras

from ._backends import current as backend
from ._backends.default import per_item


class Many:
    """One tensor per variable, with elementwise arithmetic across all of them.

    `Many(items, scale)` stands for `scale · items`: a backend's arithmetic may keep a product
    with a Python number pending (torch's does, so that a later add takes it as its `alpha`).
    Reading `items` applies a pending scale, so nothing downstream can see an unscaled value.
    """

    __slots__ = ("_items", "_scale")
    __array_priority__ = 1000  # make numpy scalars defer to our operators

    def __init__(self, items, scale=None):
        self._items = list(items)
        self._scale = scale

    @property
    def items(self):
        if self._scale is not None:
            self._items, self._scale = _scale_items(self._items, self._scale), None
        return self._items

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        return iter(self.items)

    # Binary arithmetic ---------------------------------------------------------
    def __add__(self, other):
        return _binary("add", self, other)

    def __radd__(self, other):
        return _binary("add", self, other)

    def __sub__(self, other):
        return _binary("sub", self, other)

    def __rsub__(self, other):
        return _binary("add", -self, other)

    def __mul__(self, other):
        return _binary("mul", self, other)

    def __rmul__(self, other):
        return _binary("mul", self, other)

    def __truediv__(self, other):
        return _binary("div", self, other)

    def __rtruediv__(self, other):
        return _binary("mul", _unary("reciprocal", self), other)

    def __pow__(self, exponent):
        if exponent == 2:
            return self * self
        return _binary("pow", self, exponent)

    def __neg__(self):
        return _unary("neg", self)


_binary = backend.binary  # (name, many, other) -> Many
_unary = backend.unary  # (name, many) -> Many
_scale_items = backend.scale_items  # (items, scale) -> items: a pending scale applied


def _symmetric(name, python_fn, x, y):
    """A commutative elementwise op on any mix of `Many`, tensors and Python numbers."""
    if isinstance(x, Many):
        return _binary(name, x, y)
    if isinstance(y, Many):
        return _binary(name, y, x)
    if isinstance(x, numbers.Number) and isinstance(y, numbers.Number):
        return python_fn(x, y)
    return getattr(keras.ops, name)(x, y)


class _Ops:
    """The handful of functions a rule needs beyond arithmetic.

    Each accepts `Many` (elementwise over every variable) or a scalar (a
    Python number or a 0-d tensor, e.g. a bias correction).
    """

    @staticmethod
    def sqrt(x):
        if isinstance(x, Many):
            return _unary("sqrt", x)
        return math.sqrt(x) if isinstance(x, numbers.Number) else keras.ops.sqrt(x)

    @staticmethod
    def one_minus_pow(base, t):
        """1 − baseᵗ for a scalar step t, accurate in float32 when baseᵗ is near 1 (via expm1)."""
        if keras.ops.is_tensor(base):  # a hyperparameter read from its variable (jax/tensorflow)
            base = keras.ops.cast(base, "float32")
            return -keras.ops.expm1(keras.ops.cast(t, "float32") * keras.ops.log(base))
        log_base = math.log(base) if base > 0 else -math.inf
        if isinstance(t, numbers.Number):
            return -math.expm1(t * log_base)
        return -keras.ops.expm1(t * log_base)

    @staticmethod
    def abs(x):
        return _unary("abs", x)

    @staticmethod
    def sign(x):
        return _unary("sign", x)

    @staticmethod
    def maximum(x, y):
        return _symmetric("maximum", max, x, y)

    @staticmethod
    def minimum(x, y):
        return _symmetric("minimum", min, x, y)

    @staticmethod
    def clip(x, low, high):
        """Clamp every element into [low, high] (scalars)."""
        if isinstance(x, Many):
            return backend.clip(x, low, high)
        return _Ops.minimum(_Ops.maximum(x, low), high)

    @staticmethod
    def where(condition, if_true, if_false):
        """Select by a scalar condition, e.g. one that depends only on the step.

        Where the step runs eagerly (torch) the condition is a Python value and only one side
        is used; under JAX/TensorFlow tracing it is a tensor and both sides are kept.
        """
        if isinstance(condition, bool) or backend.EAGER and not keras.ops.is_tensor(condition):
            return if_true if condition else if_false
        if not isinstance(if_true, Many) and not isinstance(if_false, Many):
            return keras.ops.where(condition, if_true, if_false)
        like = if_true if isinstance(if_true, Many) else if_false
        a, b = per_item(if_true, like), per_item(if_false, like)
        return Many(keras.ops.where(condition, x, y) for x, y in zip(a, b))

    @staticmethod
    def norm(x):
        """The L2 norm of each variable's tensor: `Many` of scalars."""
        return Many(backend.norms(x.items))

    @staticmethod
    def global_norm(x):
        """The L2 norm of all variables' tensors together: one scalar."""
        return backend.global_norm(backend.norms(x.items))


ops = _Ops()
