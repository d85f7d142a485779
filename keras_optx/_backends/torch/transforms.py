"""Transforms' `into`s, and the kernels of compositions: the chain's and the partition's.

A transform's `into(rule, out, g, xs, t, step)` returns its Δ written into the kept buffer `out`
(see `buffers.into`), or `g` itself where Δ = g (over large tensors on CPU, ClipNorm and
ClipGlobalNorm hand gradients within their threshold through as they are). Later members write
into `out`, never into what they are handed. So a chain of transforms before a kernel allocates
no large tensor. Each is tested to equal its transform's formula (tests/test_fast_paths.py).
"""

import torch

from ..._identity import _same
from ..._tensors import Many
from ..._base import _current_variables, _has_shaped_slots, _step_variables
from ...chain import Optimiser, _own, _Scaled
from ...partition import Frozen, Partition
from ...transforms import ClipGlobalNorm, ClipNorm, ClipValue, WeightDecay
from .buffers import gather, into, large, pack_of, scratch
from .registry import into_of, kernel_of, register_into, register_kernel, takes_weight_decay


@register_into(WeightDecay)
def weight_decay(rule, out, g, xs, t, step):
    mask = rule._decay_mask()
    if mask is None:
        return into(out, "add", g, xs, alpha=rule.wd)
    # Variables excluded from weight decay (`exclude_from_weight_decay`): their Δ is g itself.
    delta = list(g)
    decayed = [i for i, decays in enumerate(mask) if decays]
    if decayed:
        outs = [out[i] for i in decayed]
        into(outs, "add", [g[i] for i in decayed], [xs[i] for i in decayed], alpha=rule.wd)
        for i, value in zip(decayed, outs):
            delta[i] = value
    return delta


@register_into(ClipValue)
def clip_value(rule, out, g, xs, t, step):
    low = into(out, "clamp_min", g, -rule.thresh)
    return into(low, "clamp_max", low, rule.thresh)


@register_into(ClipNorm)
def clip_norm(rule, out, g, xs, t, step):
    pack = _packed_for(out, g, sizes_shared=True)
    if pack is not None:
        # Many small tensors, most sharing a size with others: each size's norms and scaling
        # are one op on its (count, size) block (200×10k: 1.9 → 1.0 ms for this step).
        norms = [torch.linalg.vector_norm(block, dim=1) for block, _ in pack.runs]
        scales = rule.thresh / torch.clamp_min(torch.cat(norms), rule.thresh)
        for (block, _), scale in zip(pack.runs, scales.split([count for _, count in pack.runs])):
            block.mul_(scale.unsqueeze(1))
        return out
    scales = rule.thresh / torch.clamp_min(torch.stack(torch._foreach_norm(g)), rule.thresh)
    # As 0-d tensors: with a list of Python floats a foreach op dispatches once per tensor on
    # CPU (over 200×10k, `_foreach_mul_` took 0.7–0.9 ms that way, 0.3 ms with tensors).
    factors = list(scales.unbind())
    # On CPU the scales are on the host already: a gradient within the threshold is its own Δ
    # (g·1 = g), so only the clipped ones are copied and scaled. On a device, reading them would wait.
    # `not s >= 1`: a NaN norm (a NaN in g) scales by NaN, as the formula does.
    clipped = [i for i, s in enumerate(scales.tolist()) if not s >= 1.0] if scales.device.type == "cpu" else g
    if len(clipped) == len(g):
        return into(out, "mul", g, factors)
    delta = list(g)
    if clipped:
        outs = [out[i] for i in clipped]
        into(outs, "mul", [g[i] for i in clipped], [factors[i] for i in clipped])
        for i, scaled in zip(clipped, outs):
            delta[i] = scaled
    return delta


@register_into(ClipGlobalNorm)
def clip_global_norm(rule, out, g, xs, t, step):
    pack = _packed_for(out, g)
    if pack is not None:  # small tensors: one norm and one scaling over the buffer
        pack.whole.mul_(rule.thresh / torch.clamp_min(torch.linalg.vector_norm(pack.whole), rule.thresh))
        return out
    norm = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(g)]))
    scale = rule.thresh / torch.clamp_min(norm, rule.thresh)
    if scale.device.type == "cpu" and scale.item() == 1.0:  # within the threshold: Δ = g, no copy (NaN ≠ 1)
        return g
    return into(out, "mul", g, scale)


def _packed_for(out, g, sizes_shared=False):
    """`out`'s pack, now holding a copy of `g`, when `out` is one packed buffer and `g` small
    tensors (< 32768 elements on average) (and with `sizes_shared`, of at most half as many sizes
    as tensors); else None. Over many small tensors a norm per tensor costs more in dispatch than
    in arithmetic; copying them into the buffer first is one op."""
    pack = None if large(g) else pack_of(out)
    if pack is not None and sizes_shared and len(pack.runs) * 2 > len(g):
        return None
    if pack is not None and not _same(g, out):
        gather(pack, g)
    return pack


@register_into(_Scaled)
def scaled(rule, out, g, xs, t, step):
    return into(out, "mul", g, float(rule.schedule(step)))


def buffer_owner(rule):
    """Who keeps the parameter-sized buffer `rule`'s kernel writes into: the outermost chain that runs
    `rule` as its last member (its transforms wrote the gradient into that buffer, and a kernel that
    reads g before it writes may write there too: one kept buffer per chain), else `rule`."""
    owner, *outwards = rule._owners()
    for parent in outwards:
        if not isinstance(parent, Optimiser) or parent._members[-1] is not owner:
            break
        owner = parent
    return owner


@register_kernel(Optimiser)
def chain(rule, xs, gs, slots, t, lr):
    """The members before the last run as `into`s (or, where one has none, as their formulas),
    then the last member's kernel applies the update: a chain costs its transforms + one kernel."""
    *head, last = rule._members
    kernel = kernel_of(last)
    if not head or kernel is None:
        return False
    intos = [into_of(member) for member in head]
    decay = 0.0
    if all(intos):
        if takes_weight_decay(last) and type(head[-1]) is WeightDecay and head[-1]._decay_mask() is None:
            # The kernel adds the coupled decay g + λ·x itself: one pass fewer.
            decay, intos = head[-1].wd, intos[:-1]
        # Transforms only: each writes into one kept buffer (no fresh large tensors; gs untouched).
        g = gs
        if intos:
            (buffer,) = scratch(buffer_owner(rule), xs)
            for member, write in zip(head, intos):
                g = write(member, buffer, g, xs, t, t - 1)
        g = Many(g)
    else:
        many = {k: Many(v) for k, v in slots.items()}
        g, new_state = Optimiser._fold(head, Many(gs), Many(xs), many, t, t - 1)
        for name, value in new_state.items():
            torch._foreach_copy_(slots[name], value.items)
    own = _own(slots, len(head))
    if not kernel(last, xs, g.items, own, t, last._rate(t - 1), **({"weight_decay": decay} if decay else {})):
        # The kernel declined; finish with the last member's formula (the head already ran).
        g = g + decay * Many(xs) if decay else g
        delta, updated = last._transform(g, Many(xs), {k: Many(v) for k, v in own.items()}, t, t - 1)
        for name, value in updated.items():
            torch._foreach_copy_(own[name], value.items)
        torch._foreach_sub_(xs, delta.items)
    return True


@register_kernel(Partition, shaped_slots=True)
def partition(rule, xs, gs, slots, t, lr):
    """Each group runs its rule's kernel (or formula) on its own variables; frozen variables and
    `Frozen` groups are not touched at all. A rule with slots of their own shape (`Slot`: SOAP's
    factors) runs its kernel only if that kernel reads such slots (`kernel_of`)."""
    variables = _current_variables()
    groups = rule._groups(variables)
    frozen = rule._frozen_flags(variables)
    for k, (member, positions) in enumerate(zip(rule.rules, groups)):
        if isinstance(member, Frozen):
            continue
        sub = [variables[i] for i in positions]
        owners = member._slot_owners(sub)
        prefix = f"{k}_"
        keep = [j for j, i in enumerate(positions) if not frozen[i]]
        if not keep:
            continue
        own = {}
        for name, (_, has) in owners.items():
            slot_of = dict(zip([j for j, h in enumerate(has) if h], slots[prefix + name]))  # position in the group → slot
            own[name] = [slot_of[j] for j in keep if j in slot_of]
        kx, kg, kv = [xs[positions[j]] for j in keep], [gs[positions[j]] for j in keep], [sub[j] for j in keep]
        with _step_variables(kv):
            kernel = kernel_of(member, _has_shaped_slots(owners))
            if kernel is not None and kernel(member, kx, kg, own, t, member._rate(t - 1)):
                continue
            delta, updated = member._transform(Many(kg), Many(kx), {n: Many(v) for n, v in own.items()}, t, t - 1)
        for name, value in updated.items():
            torch._foreach_copy_(own[name], value.items)
        torch._foreach_sub_(kx, delta.items)
    return True
