"""The torch backend: the step, its buffers, and kernels registered per rule class.

On torch a rule's formula (`delta` over `Many`) runs as multi-tensor `torch._foreach_*` ops, a
product with a Python number kept pending until an add or the write can take it (`many.py`);
`value_and_gradient` is `torch.autograd.grad` (`grad.py`). A rule may also have a *kernel*: the
same update written as torch's fused kernels or in-place foreach ops, registered for its exact class
(`kernels.py`, `transforms.py`). The step (`step.py`) runs the kernel when the rule is the optimizer
itself or a chain's last member, and `fusable` holds: every variable float32/float64, contiguous and
on one device, each gradient dense and contiguous of its variable's dtype, not under torch.compile.
Otherwise, and for any class without a kernel, the formula runs. A subclass is a different class:
it runs its own formula unless it registers a kernel itself.

The kernel contract (tests/test_fast_paths.py holds each kernel to its rule's formula):

    @register_kernel(MyRule)                      # weight_decay=True: see below
    def my_rule(rule, xs, gs, slots, t, lr):      # -> bool
        ...

- `rule`: the optimizer (its hyperparameters); `xs`: the variables' tensors, to update in place;
  `gs`: the gradients, read only (they are the caller's tensors); `slots`: `{slot name: tensors}`
  in `xs`'s order, to update in place; `t`: the update count 1, 2, … (int); `lr`: the rate (float).
- Returns True once it applied the update. It may decline, returning False *before writing
  anything*, for settings it does not cover (e.g. Momentum with ρ = 0); the formula then runs.
- Temporaries go in kept buffers (`buffers.scratch`, `buffers.into`, `buffers.in_blocks`) or in
  block-sized ones made for the step (`buffers.flat_blocks`), not fresh parameter-sized tensors; at most
  one parameter-sized kept buffer per optimizer or chain (`transforms.buffer_owner`); slot-only steps
  may run on a slot's packed buffer (`buffers.whole`).
- `register_kernel(..., weight_decay=True)`: the kernel also takes `weight_decay=λ` and adds the
  coupled decay g + λ·x itself. A chain whose last member has such a kernel, right after a
  `WeightDecay(λ)`, hands λ to the kernel instead of running the decay as a pass of its own.
- `register_kernel(..., shaped_slots=True)`: the kernel reads slots of their own shape (`Slot`: SOAP's
  factors, per variable, not packed). Other kernels pair each slot with its variable, so a rule with
  such slots runs its formula unless its kernel says so (a Partition's group likewise).

A transform may register an `into(rule, out, g, xs, t, step) -> Δ` (`register_into`): its Δ, written
into the kept buffer `out` (or `g` itself, untouched, where Δ = g), never into `g`. A chain
(`Optimiser`) whose members before the last all have one runs them into one buffer and hands the
result to the last member's kernel; that is the chain's own kernel (`transforms.py`).

A rule may register a `direction(rule, t, lr)` (`register_direction`): None where it declines, else
`write(out, temp, gs, slots)`, which updates its slots in place and writes its Δ into `out` without
applying it, elementwise (block by block if the caller likes). A wrapper that masks or rescales Δ
uses it: `Cautious`'s kernel runs its wrapped rule's direction (Lion, ADOPT, AdEMAMix; `kernels.py`).
"""

from ..default import replicas
from .grad import value_and_grad
from .many import binary, clip, global_norm, norms, scale_items, unary
from .matrix import newton_schulz
from .registry import direction_of, into_of, kernel_of, register_direction, register_into, register_kernel, takes_weight_decay
from .step import EAGER, apply_kernel, assign, prepare_slots, scalar, step_numbers, update_step, values, write

__all__ = [
    "EAGER", "apply_kernel", "assign", "binary", "clip", "direction_of", "global_norm", "into_of", "kernel_of", "newton_schulz", "norms", "prepare_slots",
    "register_direction", "register_into", "register_kernel", "replicas", "scalar", "scale_items", "step_numbers", "takes_weight_decay", "unary",
    "update_step", "value_and_grad", "values", "write",
]

