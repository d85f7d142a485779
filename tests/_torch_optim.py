"""torch.optim run in float64 on a fixed gradient sequence: the witness for keras_optx.torch
(tests/test_torch_compat.py, tests/test_torch_param_groups.py). torch is installed in every
backend's test environment; it is only the reference here."""

import torch


def torch_optim_trajectory(name, kwargs, x0, grads, groups=None, lr_drop=None, own_rate=(), clip=None, change=None):
    """The variables after each step of `torch.optim.<name>(params, **kwargs)` from `x0`.

    `groups(params)`: param groups made from the float64 parameters (default: the parameters
    themselves). `lr_drop = (step, lr)`: before that step every group's rate becomes `lr`, as a
    Keras callback setting `optimizer.learning_rate` does, except the groups whose indices are in
    `own_rate` (those with a rate of their own). `clip`: the gradients pass through
    `torch.nn.utils.clip_grad_norm_(params, clip)` first. `change(step, opt.param_groups)`: runs
    before each step (0-based), e.g. to set a group's `weight_decay`."""
    params = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in x0]
    opt = getattr(torch.optim, name)(groups(params) if groups else params, **kwargs)
    out = []
    for step, gs in enumerate(grads):
        if lr_drop and step == lr_drop[0]:
            for i, group in enumerate(opt.param_groups):
                if i not in own_rate:
                    group["lr"] = lr_drop[1]
        if change is not None:
            change(step, opt.param_groups)
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        out.append([p.detach().numpy().copy() for p in params])
    return out
