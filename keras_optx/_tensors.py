"""Elementwise math over all of an optimizer's variables at once.

A rule is written once, against `Many` (one tensor per variable) and the
`ops` namespace below. On the torch backend every operation is one
`torch._foreach_*` call over the whole list; on JAX and TensorFlow it is a
list of `keras.ops` calls, which the compiler fuses. Scalars (step counts,
learning rates, bias corrections) are Python floats on torch and backend
tensors elsewhere; both mix freely with `Many`.
"""

import math
import numbers

import keras

_TORCH = keras.backend.backend() == "torch"
if _TORCH:
    import torch


def _is_scalar_tensor(value):
    return keras.ops.is_tensor(value) and len(value.shape) == 0


class Many:
    """One tensor per variable, with elementwise arithmetic across all of them.

    On torch a product with a Python number stays pending (`value = scale · tensors`), so
    `a + s·b` is one `_foreach_add(a, b, alpha=s)` and `s₁·a + s₂·b` one new buffer plus an
    in-place add into it: large CPU tensors pay mostly for fresh allocations. Reading `items`
    applies a pending scale, so nothing downstream can see an unscaled value.
    """

    __slots__ = ("_items", "_scale")
    __array_priority__ = 1000  # make numpy scalars defer to our operators

    def __init__(self, items, scale=None):
        self._items = list(items)
        self._scale = scale

    @property
    def items(self):
        if self._scale is not None:
            self._items, self._scale = torch._foreach_mul(self._items, self._scale), None
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
        if _TORCH:
            return self._scaled(-1.0)
        return _unary("neg", self)

    def _scaled(self, factor):
        return Many(self._items, factor if self._scale is None else self._scale * factor)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _torch_lazy(name, many, other):
    """The torch cases that fold a pending scale into the op; None when there is none."""
    if name == "mul" and _is_number(other):
        return many._scaled(float(other))
    if name == "mul" and isinstance(other, Many) and (many._scale is not None or other._scale is not None):
        scale = (1.0 if many._scale is None else many._scale) * (1.0 if other._scale is None else other._scale)
        return Many(torch._foreach_mul(many._items, other._items), scale)
    if name in ("add", "sub") and _is_number(other) and many._scale is not None:
        fresh = torch._foreach_mul(many._items, many._scale)  # a new buffer only this op holds
        torch._foreach_add_(fresh, float(other) if name == "add" else -float(other))
        return Many(fresh)
    if name == "div" and isinstance(other, Many) and many._scale is not None and other._scale is None:
        return Many(torch._foreach_div(many._items, other._items), many._scale)
    if name in ("add", "sub") and isinstance(other, Many):
        alpha = 1.0 if other._scale is None else other._scale
        alpha = -alpha if name == "sub" else alpha
        if many._scale is None:
            return Many(torch._foreach_add(many._items, other._items, alpha=alpha))
        fresh = torch._foreach_mul(many._items, many._scale)  # a new buffer only this op holds
        torch._foreach_add_(fresh, other._items, alpha=alpha)
        return Many(fresh)
    return None


def _operand(other, like):
    """`other` as torch foreach accepts it, or as a per-item list elsewhere."""
    if isinstance(other, Many):
        return other.items
    if _TORCH:
        return float(other) if not torch.is_tensor(other) else other
    return [_cast_scalar(other, item) for item in like.items]


def _cast_scalar(value, item):
    if isinstance(value, numbers.Number):
        return value
    return keras.ops.cast(value, item.dtype)


_KERAS_BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: keras.ops.power(a, b),
    "maximum": keras.ops.maximum,
    "minimum": keras.ops.minimum,
}
_KERAS_UNARY = {
    "neg": lambda a: -a,
    "reciprocal": lambda a: 1 / a,
    "sqrt": keras.ops.sqrt,
    "abs": keras.ops.abs,
    "sign": keras.ops.sign,
}


def _binary(name, many, other):
    if _TORCH:
        lazy = _torch_lazy(name, many, other)
        if lazy is not None:
            return lazy
        return Many(getattr(torch, f"_foreach_{name}")(many.items, _operand(other, many)))
    other = _operand(other, many)
    fn = _KERAS_BINARY[name]
    return Many(fn(a, b) for a, b in zip(many.items, other))


def _unary(name, many):
    if _TORCH:
        return Many(getattr(torch, f"_foreach_{name}")(many.items))
    fn = _KERAS_UNARY[name]
    return Many(fn(a) for a in many.items)


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
        return _Ops.minimum(_Ops.maximum(x, low), high)

    @staticmethod
    def where(condition, if_true, if_false):
        """Select by a scalar condition, e.g. one that depends only on the step.

        On torch the condition is a Python bool and only one side is used;
        under JAX/TensorFlow tracing it is a tensor and both sides are kept.
        """
        if isinstance(condition, bool) or _TORCH and not keras.ops.is_tensor(condition):
            return if_true if condition else if_false
        if not isinstance(if_true, Many) and not isinstance(if_false, Many):
            return keras.ops.where(condition, if_true, if_false)
        like = if_true if isinstance(if_true, Many) else if_false
        a, b = _operand(if_true, like), _operand(if_false, like)
        return Many(keras.ops.where(condition, x, y) for x, y in zip(a, b))

    @staticmethod
    def norm(x):
        """The L2 norm of each variable's tensor: `Many` of scalars."""
        if _TORCH:
            return Many(torch._foreach_norm(x.items))
        return Many(keras.ops.sqrt(keras.ops.sum(keras.ops.square(a))) for a in x.items)

    @staticmethod
    def global_norm(x):
        """The L2 norm of all variables' tensors together: one scalar."""
        norms = _Ops.norm(x).items
        if _TORCH:
            return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
        squares = [keras.ops.cast(n, "float32") ** 2 for n in norms]
        return keras.ops.sqrt(sum(squares[1:], squares[0]))


ops = _Ops()
