"""The torch step: a registered kernel where one may run, else the formula as foreach ops."""

import keras
import torch

from ..._identity import _same
from .buffers import pack_slots, values
from .registry import kernel_of

_FUSED_DTYPES = (torch.float32, torch.float64)


EAGER = True  # the optimizer step is always eager (outside torch.compile): per-step values may be read on the host


def prepare_slots(variables):
    """Each slot's variables become views of one packed buffer (see `buffers`)."""
    pack_slots(variables)


def update_step(rule, grads, variables):
    # `isinstance` is what keras.ops.is_tensor tests on torch, without two calls per gradient.
    grads = [g if isinstance(g, torch.Tensor) else keras.ops.convert_to_tensor(g) for g in grads]
    _update(rule, grads, variables)


@torch.compiler.disable
def _update(rule, grads, variables):
    # Under `jit_compile=True` (torch.compile) the step runs eagerly: it is foreach/fused
    # kernels already, and dynamo cannot trace its Python-side step and rate logic.
    with torch.no_grad():
        rule._update(grads, variables)


def apply_kernel(rule, grads, variables, slots):
    """Run the kernel registered for `rule`'s exact class, if any, where `fusable` allows;
    True when it applied the update (a kernel may decline before writing anything)."""
    kernel = kernel_of(rule, getattr(rule, "_shaped_slots", False))
    if kernel is None:
        return False
    xs = values(variables)
    if not fusable(rule, grads, xs):
        return False
    t, step = step_numbers(rule)
    return kernel(rule, xs, list(grads), {n: values(vs) for n, vs in slots.items()}, t, rule._rate(step))


def fusable(owner, grads, xs):
    """Whether kernels may run on variable values `xs`: float32/64 (no float16
    casting), dense contiguous gradients of the same dtype, one device, not under torch.compile.

    Runs every step on fresh gradients, so it reads as few tensor attributes as it can
    (~50 ns each): `dtype` objects are singletons (`is`), shapes were checked by `apply`, and
    the values' own checks are skipped when they are the very tensors `owner` last passed."""
    if not xs or torch.compiler.is_compiling():
        return False
    device = xs[0].device
    if not _same(getattr(owner, "_torch_fusable_for", ()), xs):
        if any(x.dtype not in _FUSED_DTYPES or x.device != device or not x.is_contiguous() for x in xs):
            return False
        object.__setattr__(owner, "_torch_fusable_for", list(xs))  # past Keras's variable tracking
    # The device's index (-1: CPU) is ~3x cheaper to read than comparing `device`s; a process
    # has one kind of accelerator, so the index names the device.
    index, strided = xs[0].get_device(), torch.strided
    for g, x in zip(grads, xs):
        if (
            not isinstance(g, torch.Tensor)
            or g.dtype is not x.dtype
            or g.layout is not strided
            or g.get_device() != index
            or not g.is_contiguous()
        ):
            return False
    return True


def step_numbers(rule):
    """t = 1, 2, … and the 0-based step as Python ints: the kernels and foreach ops take numbers."""
    step = int(rule._iterations.value) // (rule.gradient_accumulation_steps or 1)
    return step + 1, step


def scalar(value):
    """Scalars become Python floats so foreach kernels take their fast path."""
    return value if isinstance(value, (int, float)) else float(value)


def assign(rule, pairs):
    """Set each variable of `(variable, value)` pairs to its value (`copy_` casts to its dtype)."""
    if pairs:
        torch._foreach_copy_(values([v for v, _ in pairs]), [value for _, value in pairs])


def write(rule, slot_writes, variables, delta):
    """Store the new slots and apply x ← x − Δ (`delta` a `Many`) as foreach ops; float16/bfloat16
    variables in float32, rounded once by `rule.rounding` (`keras_optx/_rounding.py`)."""
    if slot_writes:
        torch._foreach_copy_(values([s for s, _ in slot_writes]), [new for _, new in slot_writes])
    xs = values(variables)
    low = _low_precision(rule, xs)
    if low:
        from ... import _rounding

        deltas = delta.items
        pairs = _rounding.updates(rule, [variables[i] for i in low], [deltas[i] for i in low])
        torch._foreach_copy_(values([v for v, _ in pairs]), [value for _, value in pairs])
        if len(low) == len(xs):
            return
        rest = sorted(set(range(len(xs))) - set(low))
        xs, delta = [xs[i] for i in rest], type(delta)(deltas[i] for i in rest)
    deltas, scale = delta._items, delta._scale  # a pending scale goes into `alpha`: one pass
    deltas = [d if d.dtype == x.dtype else d.to(x.dtype) for x, d in zip(xs, deltas)]
    torch._foreach_add_(xs, deltas, alpha=-1.0 if scale is None else -scale)


_LOW_DTYPES = (torch.float16, torch.bfloat16)


def _low_precision(rule, xs):
    """Positions of the float16/bfloat16 tensors among `xs`, cached for the tensors last seen
    (identity is cheaper to check than 200 dtypes)."""
    cached = rule.__dict__.get("_low_precision_for")
    if cached is not None and _same(cached[0], xs):
        return cached[1]
    low = [i for i, x in enumerate(xs) if x.dtype in _LOW_DTYPES]
    object.__setattr__(rule, "_low_precision_for", (list(xs), low))  # past Keras's variable tracking
    return low
