"""Backend code: what each Keras backend needs beyond a rule's formula.

The rule modules hold formulas only and `_base.Rule` the Keras glue; everything that differs per
backend is here, behind one small interface. `current` is the module for the running Keras backend
(`torch/`, `tensorflow.py`, or `default.py` for JAX and the rest), and each offers:

- `prepare_slots(variables)`: after `build` made one slot's variables (torch: packs them into one buffer).
- `update_step(rule, grads, variables)`: Keras's `_backend_update_step`; ends in `rule._update`
  (tensorflow: gradients summed over replicas and made dense first; torch: under `no_grad`, outside torch.compile).
- `apply_kernel(rule, grads, variables, slots)`: True when a kernel registered for the rule's exact class
  applied the whole update (torch); False: the formula runs.
- `values(variables)`: the variables' current tensors.
- `step_numbers(rule)`: `(t, step)`, t = 1, 2, … and the 0-based step, counting applied updates.
- `scalar(value)`: a learning rate or scale as the backend's kernels take it (torch: a Python float).
- `write(rule, slot_writes, variables, delta)`: store the new slots and apply x ← x − Δ.
- `assign(rule, pairs)`: set each `(variable, value)` (cast to the variable's dtype), as `write` sets slots.
- `replicas(rule)`: replicas a wrapped Keras optimizer sums over (tensorflow's strategy; else 1).
- `EAGER`: whether the step always runs eagerly (torch), so per-step flags may be read as Python values.

Kernels (torch) live in modules that import the rule classes they serve and register themselves by
class (`torch/kernels.py`, `torch/transforms.py`); `keras_optx/__init__.py` imports them after the
rules, and nothing else does: the rules reach this package, never the kernels (tests/test_imports.py).

`Many`'s arithmetic (`_tensors.py` holds no backend code; results are built as `type(many)(…)`):

- `binary(name, many, other)`: `many <name> other` for add, sub, mul, div, pow, maximum, minimum,
  `other` a `Many` or a scalar; `unary(name, many)`: neg, reciprocal, sqrt, abs, sign.
  `default.py`: one `keras.ops` call per tensor. torch: one `torch._foreach_*` call, a product with a
  Python number kept pending as `Many(items, scale)` (`torch/many.py`).
- `clip(many, low, high)`: each tensor clamped into [low, high] (scalars); NaN stays NaN.
- `scale_items(items, scale)`: a pending scale applied (what reading `Many.items` calls).
- `norms(items)`: each tensor's L2 norm; `global_norm(norms)`: all together, from those norms.
- `newton_schulz(batch, coefficients, steps, epsilon)`: Muon's iteration on a batch of matrices as a kernel
  (torch: batched `baddbmm`, `torch/matrix.py`), or None where the rule's formula runs.

- `value_and_grad(loss_fn, variables)`: `(loss, grads)` for `keras_optx.value_and_gradient`; `loss_fn`
  returns a checked 0-d loss (JAX: `jax.value_and_grad` in `default.py`; torch: `torch.autograd.grad`,
  `torch/grad.py`; TensorFlow: a `tf.GradientTape`).
"""

import keras

NAME = keras.backend.backend()

if NAME == "torch":
    from . import torch as current
elif NAME == "tensorflow":
    from . import tensorflow as current
else:
    from . import default as current

__all__ = ["NAME", "current"]
