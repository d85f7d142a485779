"""`value_and_grad` on torch: `torch.autograd.grad` over the variables' tensors."""

import torch


def value_and_grad(loss_fn, variables):
    """`(loss, grads)` of `loss_fn()` (a checked 0-d loss) with respect to `variables`; zeros where unused."""
    tensors = [v.value for v in variables]
    # Non-trainable variables are created with requires_grad=False; differentiate them too.
    frozen = [t for t in tensors if not t.requires_grad]
    for t in frozen:
        t.requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = loss_fn()
            if not loss.requires_grad:  # the loss reads none of the variables
                return loss, [torch.zeros_like(t) for t in tensors]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    finally:
        for t in frozen:
            t.requires_grad_(False)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
    return loss.detach(), grads
