"""`Many`'s arithmetic on torch: each operation is one `torch._foreach_*` call over every variable.

A product with a Python number stays pending (`Many(items, scale)` stands for `scale · items`),
so `a + s·b` is one `_foreach_add(a, b, alpha=s)` and `s₁·a + s₂·b` one new buffer plus an in-place
add into it: large CPU tensors pay mostly for fresh allocations. `Many.items` applies a pending
scale (`scale_items`), so nothing downstream can see an unscaled value; `step.write` folds it into
its `alpha` instead.

Results are built as `type(many)(items, scale)`: this module is loaded before `_tensors`.
"""

import numbers

import torch


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _scaled(many, factor):
    return type(many)(many._items, factor if many._scale is None else many._scale * factor)


scale_items = torch._foreach_mul  # (items, scale) -> scale · items as new tensors: a pending scale applied


def _lazy(name, many, other):
    """The cases that fold a pending scale into the op; None when there is none."""
    if name == "mul" and _is_number(other):
        return _scaled(many, float(other))
    new = type(many)
    if name == "mul" and isinstance(other, new) and (many._scale is not None or other._scale is not None):
        scale = (1.0 if many._scale is None else many._scale) * (1.0 if other._scale is None else other._scale)
        return new(torch._foreach_mul(many._items, other._items), scale)
    if name in ("add", "sub") and _is_number(other) and many._scale is not None:
        fresh = torch._foreach_mul(many._items, many._scale)  # a new buffer only this op holds
        torch._foreach_add_(fresh, float(other) if name == "add" else -float(other))
        return new(fresh)
    if name == "div" and isinstance(other, new) and many._scale is not None and other._scale is None:
        return new(torch._foreach_div(many._items, other._items), many._scale)
    if name in ("add", "sub") and isinstance(other, new):
        alpha = 1.0 if other._scale is None else other._scale
        alpha = -alpha if name == "sub" else alpha
        if many._scale is None:
            return new(torch._foreach_add(many._items, other._items, alpha=alpha))
        fresh = torch._foreach_mul(many._items, many._scale)  # a new buffer only this op holds
        torch._foreach_add_(fresh, other._items, alpha=alpha)
        return new(fresh)
    return None


def _operand(other, many):
    """`other` as torch's foreach ops take it: a list of tensors, a Python float or a tensor."""
    if isinstance(other, type(many)):
        return other.items
    return float(other) if not torch.is_tensor(other) else other


def binary(name, many, other):
    """`many <name> other` (add, sub, mul, div, pow, maximum, minimum); `other` a `Many` or a scalar."""
    lazy = _lazy(name, many, other)
    if lazy is not None:
        return lazy
    return type(many)(getattr(torch, f"_foreach_{name}")(many.items, _operand(other, many)))


def unary(name, many):
    """`name(many)` (neg, reciprocal, sqrt, abs, sign); a negation stays a pending scale of −1."""
    if name == "neg":
        return _scaled(many, -1.0)
    return type(many)(getattr(torch, f"_foreach_{name}")(many.items))


def clip(many, low, high):
    """Each tensor of `many` clamped into [low, high] (scalars): maximum, then minimum."""
    return binary("minimum", binary("maximum", many, low), high)


def norms(items):
    """The L2 norm of each tensor: one `_foreach_norm`."""
    return torch._foreach_norm(items)


def global_norm(norms):
    """The L2 norm of all tensors together, from their norms, in float32 (or wider)."""
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
