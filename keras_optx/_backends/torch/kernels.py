"""Kernels of the built-in rules: each its rule's update as torch's fused kernels or in-place ops.

Each is registered for one exact class and follows the contract in the package docstring; each is
tested to equal its rule's formula (tests/test_fast_paths.py). Where torch has a fused kernel for
the same update, the rule's parameters are mapped onto it (the mapping is written next to it).
"""

import operator

import numpy
import torch

from ... import torch as compat
from ..._tensors import ops
from ...adam import ADAM, ADAMW, NADAM, OADAM, RADAM, AdaBelief, AdaMax, AMSGrad
from ...adaptive import ADADelta, ADAGrad, RMSProp
from ...chain import _own
from ...descent import Descent, Momentum, Nesterov
from ...matrix import Muon, as_matrix_shape, by_shape, lr_ratio
from ...prodigy import _STATE as _PRODIGY_STATE, Prodigy
from ...recent import ADOPT, AdEMAMix, Cautious
from ...schedule_free import ScheduleFreeAdamW, ScheduleFreeSGD
from ...sign import Lion
from ...soap import SOAP
from .buffers import flat_blocks, gradients_into, in_blocks, into, large, scratch, step_tensors, tensor_blocks, values, whole
from .matrix import _iterate, newton_schulz
from .registry import direction_of, register_direction, register_kernel
from .transforms import buffer_owner


_F32_TINY = 1.1754943508222875e-38  # float32's smallest normal number


# descent.py ------------------------------------------------------------------------------------
@register_kernel(Descent, weight_decay=True)
def descent(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    torch._fused_sgd_(xs, gs, [], weight_decay=weight_decay, momentum=0.0, lr=lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
    return True


@register_kernel(Momentum, weight_decay=True)
def momentum(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    # torch's buf ← ρ·buf + (1 − dampening)·g with dampening = 1 + η is Flux's v ← ρv − ηg
    # (the slot keeps Flux's meaning); x ← x − lr·buf with lr = −1 is x ← x + v.
    if rule.rho == 0:  # torch then skips the buffer
        return False
    torch._fused_sgd_(
        xs, gs, slots["velocity"], weight_decay=weight_decay, momentum=rule.rho, lr=-1.0, dampening=1.0 + lr,
        nesterov=False, maximize=False, is_first_step=False,
    )
    return True


@register_kernel(Nesterov)
def nesterov(rule, xs, gs, slots, t, lr):
    # d = ρ²v − (1+ρ)ηg = ρv' − ηg with v' = ρv − ηg: Momentum's kernel mapping with x ← x + ρv',
    # then x ← x − ηg. (torch's own Nesterov step, g + ρ·buf, needs g rescaled, and its
    # grad_scale overwrites the caller's gradients.)
    if rule.rho == 0:
        return False
    torch._fused_sgd_(
        xs, gs, slots["velocity"], weight_decay=0.0, momentum=rule.rho, lr=-rule.rho, dampening=1.0 + lr,
        nesterov=False, maximize=False, is_first_step=False,
    )
    torch._foreach_add_(xs, gs, alpha=-lr)
    return True


# adaptive.py -----------------------------------------------------------------------------------
@register_kernel(RMSProp, weight_decay=True)
def rmsprop(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    # RMSProp is torch's fused Adam with β₁ = 0 (m = g) and no bias correction (step = ∞
    # makes 1 − βᵗ = 1). The kernel needs an m buffer: a kept one, not state (each step sets it to g).
    # In a chain, the chain's kept buffer (`buffer_owner`): the chain's transforms wrote g there (m = g,
    # elementwise, so the kernel may read and write it in place) or left it unused.
    (buffer,) = scratch(buffer_owner(rule), xs)
    torch._fused_adam_(
        xs, gs, buffer, slots["acc"], [], step_tensors(float("inf"), xs), lr=lr, beta1=0.0,
        beta2=rule.rho, weight_decay=weight_decay, eps=rule.epsilon, amsgrad=False, maximize=False,
    )
    return True


@register_kernel(ADAGrad, weight_decay=True)
def adagrad(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    # torch's Adagrad with lr_decay = 0 is this rule (its step count is then unused).
    torch._fused_adagrad_(
        xs, gs, slots["acc"], step_tensors(t, xs), lr=lr, lr_decay=0.0, weight_decay=weight_decay,
        eps=rule.epsilon, maximize=False,
    )
    return True


@register_kernel(ADADelta)
def adadelta(rule, xs, gs, slots, t, lr):
    # In place on the slots, no fresh parameter-sized tensors. With r = 1/(a + ϵ): r ← r + r·d/ϵ =
    # (d + ϵ)/((a + ϵ)·ϵ), then Δ/√ϵ = g·√r, so d ← ρ·d + (1−ρ)·ϵ·(Δ/√ϵ)² and x ← x − η·√ϵ·(Δ/√ϵ): one
    # square root. Large tensors on CPU: cache blocks with r in a block made for the step (`flat_blocks`),
    # nothing kept. Else a kept packed buffer (in a chain, the chain's: `buffer_owner`) holds r and then
    # Δ/√ϵ; where the chain's transforms wrote g there, g stays there and r is in blocks made for the step.
    rho, eps = rule.rho, rule.epsilon
    if not eps >= _ADADELTA_MIN_EPSILON:
        return False
    step = -lr * eps**0.5
    if large(xs) and xs[0].device.type == "cpu":
        for x, g, a, d, r in flat_blocks((xs, gs, slots["acc"], slots["acc_delta"]), scratch_lists=1):
            _adadelta_block(rho, eps, a, d, g, r, out=r)
            torch._foreach_add_(x, r, alpha=step)
        return True
    (buffer,) = scratch(buffer_owner(rule), xs)
    if not any(map(operator.is_, gs, buffer)):  # g is elsewhere: r in the buffer, then Δ/√ϵ = g·√r there
        _adadelta_block(rho, eps, slots["acc"], slots["acc_delta"], gs, buffer, out=buffer)
    else:  # g (some of it) in a chain's buffer: the rest copied in, r in blocks made for the step
        gradients_into(buffer, gs)
        for a, d, b, r in flat_blocks((slots["acc"], slots["acc_delta"], buffer), scratch_lists=1):
            _adadelta_block(rho, eps, a, d, b, r, out=b)
    torch._foreach_add_(xs, buffer, alpha=step)
    return True


def _adadelta_block(rho, eps, a, d, g, r, out):
    """`adadelta` on one block (lists of tensors): a and d updated, out ← Δ/√ϵ (out is g or r). Steps on
    slots and buffers alone are one op on their packed buffers where they are views of them (`whole`)."""
    torch._foreach_mul_(whole(a)[0], rho)
    torch._foreach_addcmul_(a, g, g, value=1 - rho)  # a ← ρ·a + (1−ρ)·g²
    whole_r, whole_d = whole(into(r, "add", a, eps), d)
    torch._foreach_reciprocal_(whole_r)
    torch._foreach_addcmul_(whole_r, whole_r, whole_d, value=1 / eps)
    torch._foreach_sqrt_(whole_r)
    torch._foreach_mul_(out, r if out is g else g)
    whole_out, whole_d = whole(out, d)
    torch._foreach_mul_(whole_d, rho)
    torch._foreach_addcmul_(whole_d, whole_out, whole_out, value=(1 - rho) * eps)


# The smallest ϵ `adadelta` takes: its buffer, up to d/ϵ², stays finite in float32 (and float64)
# for d (a mean of Δ²) up to 1e16. A smaller ϵ (or 0) takes the formula; the default is 1e-8.
_ADADELTA_MIN_EPSILON = (1e16 / torch.finfo(torch.float32).max) ** 0.5  # ≈ 5.4e-12


# adam.py ---------------------------------------------------------------------------------------
def _moments(rule, gs, m, v):
    """ADAM's moments (`_AdamFamily.moments`) in place on the slots."""
    b1, b2 = rule.beta
    torch._foreach_lerp_(m, gs, 1 - b1)
    torch._foreach_mul_(whole(v)[0], b2)
    torch._foreach_addcmul_(v, gs, gs, value=1 - b2)


@register_kernel(ADAM, weight_decay=True)
def adam(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    b1, b2 = rule.beta
    torch._fused_adam_(
        xs, gs, slots["m"], slots["v"], [], step_tensors(t, xs), lr=lr, beta1=b1, beta2=b2,
        weight_decay=weight_decay, eps=rule.epsilon, amsgrad=False, maximize=False,
    )
    return True


@register_kernel(RADAM)
def radam(rule, xs, gs, slots, t, lr):
    # Rectified (ρₜ > 4), RADAM is ADAM at rate r·η: torch's fused Adam. Before that (the first
    # few steps) the moments update in place and Δ = η·m̂.
    rho, r = rule.rectification(ops, t)
    if rho > 4:
        return adam(rule, xs, gs, slots, t, r * lr)
    _moments(rule, gs, slots["m"], slots["v"])
    torch._foreach_add_(xs, slots["m"], alpha=-lr / ops.one_minus_pow(rule.beta[0], t))
    return True


@register_kernel(AdaMax)
def adamax(rule, xs, gs, slots, t, lr):
    # The formula as in-place foreach ops on the slots and one kept buffer, block by block
    # (`in_blocks`): no fresh tensors; the steps on u and the buffer alone run once on their
    # packed buffers. g is read before the buffer is written: in a chain, the chain's buffer
    # (`buffer_owner`), which may hold g itself.
    b1, b2 = rule.beta
    rate = -lr / ops.one_minus_pow(b1, t)
    for x, g, m, u, buffer in in_blocks(buffer_owner(rule), (xs, gs, slots["m"], slots["u"]), scratch_lists=1):
        torch._foreach_lerp_(m, g, 1 - b1)  # β₁·m + (1−β₁)·g
        into(buffer, "abs", g)
        whole_u, whole_buffer = whole(u, buffer)
        torch._foreach_mul_(whole_u, b2)
        torch._foreach_maximum_(whole_u, whole_buffer)
        into(whole_buffer, "add", whole_u, rule.epsilon)  # buffer ← u + ϵ
        torch._foreach_addcdiv_(x, m, buffer, value=rate)
    return True


@register_kernel(AMSGrad, weight_decay=True)
def amsgrad(rule, xs, gs, slots, t, lr, weight_decay=0.0):
    # torch's AMSGrad at step = ∞: its bias corrections 1 − βᵗ become 1, as in Flux.
    b1, b2 = rule.beta
    torch._fused_adam_(
        xs, gs, slots["m"], slots["v"], slots["v_hat"], step_tensors(float("inf"), xs), lr=lr,
        beta1=b1, beta2=b2, weight_decay=weight_decay, eps=rule.epsilon, amsgrad=True, maximize=False,
    )
    return True


@register_kernel(NADAM)
def nadam(rule, xs, gs, slots, t, lr):
    # torch's fused Adam on the slots, and no buffer at all. Divided through by k = √(β₂/(1−β₂ᵗ)), the
    # step is x ← x − (c₁·m' + c₂·g)/(√v' + ϵ/k) with m' = β₁·m + (1−β₁)·g, so its numerator is
    # A·m + B·g = (A+B)·E, E = β₁'·m + (1−β₁')·g, β₁' = A/(A+B): fused Adam at β₁', rate (A+B)·η/k,
    # ϵ/k and step = ∞ (bias corrections 1) moves x, sets v' and leaves E in the m slot; then
    # m' = lerp(E, g, 1 − β₁/β₁'). That magnifies E's rounding by β₁/β₁' (1.1 at β₁ = 0.9), so past
    # `_NADAM_MAX_GAIN` (β₁ below about 1/4) the kernel declines: the formula runs.
    b1, b2 = rule.beta
    if b2 < _F32_TINY:  # k = 0 in float32 (1/k would overflow): Δ = numerator/ϵ; the formula handles it
        return False
    k = ops.sqrt(b2 / ops.one_minus_pow(b2, t))
    p, q = b1 / ops.one_minus_pow(b1, t + 1), (1 - b1) / ops.one_minus_pow(b1, t)  # c₁ = η·p/k, c₂ = η·q/k
    a, b = p * b1, p * (1 - b1) + q  # A, B over η/k
    beta1 = a / (a + b)
    if b1 > _NADAM_MAX_GAIN * beta1:
        return False
    torch._fused_adam_(
        xs, gs, slots["m"], slots["v"], [], step_tensors(float("inf"), xs), lr=lr * (a + b) / k, beta1=beta1,
        beta2=b2, weight_decay=0.0, eps=rule.epsilon / k, amsgrad=False, maximize=False,
    )
    if b1:
        torch._foreach_lerp_(*whole(slots["m"], gs), 1 - b1 / beta1)
    return True


# Measured against a float64 oracle over 100 steps: up to β₁/β₁' = 4 the m slot is within 1.1e-6 of its
# RMS (the float32 formula's v: 1.8e-6), x as close as the formula's; at β₁ = 0.01 (gain ≈ 100), 1.6e-5.
_NADAM_MAX_GAIN = 4


@register_kernel(OADAM)
def oadam(rule, xs, gs, slots, t, lr):
    # In place on the slots and one kept buffer, block by block (`in_blocks`): x ← x + Δₜ₋₁, then
    # Δₜ = rate·m/(√v + ϵ·c) into the `prev` slot (rate = η·c/(1−β₁ᵗ), c = √(1−β₂ᵗ), as the
    # formula), then x ← x − 2Δₜ. g is read before the buffer is written: in a chain, the chain's
    # buffer (`buffer_owner`).
    b1, b2 = rule.beta
    c = ops.sqrt(ops.one_minus_pow(b2, t))
    rate = lr * c / ops.one_minus_pow(b1, t)
    for x, g, m, v, prev, buffer in in_blocks(buffer_owner(rule), (xs, gs, slots["m"], slots["v"], slots["prev"]), scratch_lists=1):
        _moments(rule, g, m, v)
        torch._foreach_add_(x, prev)
        whole_v, whole_buffer = whole(v, buffer)
        into(whole_buffer, "sqrt", whole_v)
        torch._foreach_add_(whole_buffer, rule.epsilon * c)  # buffer ← √v + ϵ·c
        into(prev, "div", m, buffer)
        torch._foreach_mul_(whole(prev)[0], rate)  # prev ← Δₜ
        torch._foreach_add_(x, prev, alpha=-2.0)
    return True


@register_kernel(AdaBelief)
def adabelief(rule, xs, gs, slots, t, lr):
    # In place on the slots and one kept buffer, block by block (`in_blocks`). g is read before the
    # buffer is written: in a chain, the chain's buffer (`buffer_owner`).
    b1, b2 = rule.beta
    for x, g, m, s, buffer in in_blocks(buffer_owner(rule), (xs, gs, slots["m"], slots["s"]), scratch_lists=1):
        torch._foreach_lerp_(m, g, 1 - b1)  # m ← β₁·m + (1−β₁)·g
        into(buffer, "sub", g, m)  # buffer ← g − m (the new m)
        torch._foreach_mul_(whole(s)[0], b2)
        torch._foreach_addcmul_(s, buffer, buffer, value=1 - b2)  # s ← β₂·s + (1−β₂)·(g − m)²
        whole_s, whole_buffer = whole(s, buffer)
        into(whole_buffer, "sqrt", whole_s)
        torch._foreach_add_(whole_buffer, rule.epsilon)  # buffer ← √s + ϵ
        torch._foreach_addcdiv_(x, m, buffer, value=-lr)
    return True


@register_kernel(ADAMW)
def adamw(rule, xs, gs, slots, t, lr):
    # ADAMW = Optimiser(ADAM, WeightDecay(decay)): torch's AdamW first scales x by 1 − η·λ, so
    # λ = decay/η gives Flux's x − decay·x (ADAM's Δ does not depend on x: the order does not matter).
    if rule.decay and (not lr > 0 or rule.rules[1]._decay_mask() is not None):
        return False  # the formula: no rate to divide by, or variables excluded from the decay
    b1, b2 = rule.beta
    m_v = _own(slots, 0)  # the chain's first member's (ADAM's) slots
    torch._fused_adamw_(
        xs, gs, m_v["m"], m_v["v"], [], step_tensors(t, xs), lr=lr, beta1=b1, beta2=b2,
        weight_decay=rule.decay / lr if rule.decay else 0.0, eps=rule.epsilon, amsgrad=False, maximize=False,
    )
    return True


# torch.py (torch.optim's own kernels on torch's own state) --------------------------------------
@register_kernel(compat.SGD)
def sgd(rule, xs, gs, slots, t, lr):
    # `is_first_step` is torch's b ← g on step 1.
    for (xs, gs, buffers), weight_decay in _decay_groups(rule, xs, gs, slots.get("momentum_buffer", [])):
        torch._fused_sgd_(
            xs, gs, buffers, weight_decay=weight_decay, momentum=rule.momentum,
            lr=lr, dampening=rule.dampening, nesterov=rule.nesterov, maximize=rule.maximize,
            is_first_step=t == 1 and not rule.dampen_first_step,
        )
    return True


@register_kernel(compat.Adam, compat.AdamW)
def torch_adam(rule, xs, gs, slots, t, lr):
    b1, b2 = rule.betas
    kernel = torch._fused_adamw_ if rule._decoupled else torch._fused_adam_
    lists = (xs, gs, slots["exp_avg"], slots["exp_avg_sq"], slots.get("max_exp_avg_sq", []))
    for (xs, gs, m, v, v_max), weight_decay in _decay_groups(rule, *lists):
        kernel(
            xs, gs, m, v, v_max, step_tensors(t, xs), lr=lr, beta1=b1, beta2=b2, weight_decay=weight_decay,
            eps=rule.eps, amsgrad=rule.amsgrad, maximize=rule.maximize,
        )
    return True


def _decay_groups(rule, *lists):
    """[(lists, weight decay)] for one of torch's kernels: one group, or, where variables are excluded
    from weight decay (`exclude_from_weight_decay`), the decayed ones with `weight_decay` (a float:
    the step reads a schedule's value) and the others with 0. An empty list (no such slot) stays
    empty in each group."""
    wd = rule.weight_decay
    mask = rule._decay_mask() if wd else None
    if mask is None:
        return [(lists, wd)]
    groups = []
    for decays, weight_decay in ((True, wd), (False, 0.0)):
        part = [[item for item, m in zip(items, mask) if m is decays] if items else items for items in lists]
        if part[0]:
            groups.append((part, weight_decay))
    return groups


# recent.py -------------------------------------------------------------------------------------
def _numbers(*values):
    """Whether every hyperparameter is a plain number this step (a schedule's value is read by the formula)."""
    return all(isinstance(v, (int, float)) for v in values)


@register_kernel(ADOPT)
def adopt(rule, xs, gs, slots, t, lr):
    # In place on the slots and one kept buffer, block by block (`in_blocks`). n needs g and the old v,
    # and v's update g again: the buffer must not be g, so in a chain (whose buffer may hold g) the
    # formula runs.
    b1, b2 = rule.beta
    owner = buffer_owner(rule)
    if owner is not rule or not _numbers(b1, b2, rule.epsilon):
        return False
    if t == 1:  # v ← g²; m stays 0: Δ = 0
        _adopt_first(gs, slots["v"])
        return True
    for x, g, m, v, buffer in in_blocks(owner, (xs, gs, slots["m"], slots["v"]), scratch_lists=1):
        _adopt_m(rule, t, g, m, v, buffer)
        torch._foreach_add_(x, m, alpha=-lr)  # while m is in the cache
        _adopt_v(rule, g, v)
    return True


@register_direction(ADOPT)
def adopt_direction(rule, t, lr):
    b1, b2 = rule.beta
    if not _numbers(b1, b2, rule.epsilon):
        return None

    def write(out, temp, gs, slots):
        if t == 1:
            _adopt_first(gs, slots["v"])
        else:
            _adopt_m(rule, t, gs, slots["m"], slots["v"], out)
            _adopt_v(rule, gs, slots["v"])
        into(out, "mul", slots["m"], lr)  # Δ = η·m

    return write


def _adopt_first(gs, v):
    """ADOPT at t = 1: v ← g² (m stays 0)."""
    torch._foreach_mul_(whole(v)[0], 0.0)
    torch._foreach_addcmul_(v, gs, gs)


def _adopt_m(rule, t, g, m, v, buffer):
    """ADOPT's m updated in place at t ≥ 2, from the v before (n in `buffer`, which must not be g)."""
    b1 = rule.beta[0]
    bound = float(t) ** 0.25
    whole_v, whole_buffer = whole(v, buffer)
    into(whole_buffer, "sqrt", whole_v)
    torch._foreach_clamp_min_(whole_buffer, rule.epsilon)  # max(√v, ϵ)
    torch._foreach_reciprocal_(whole_buffer)
    torch._foreach_mul_(buffer, g)  # g/max(√v, ϵ)
    torch._foreach_clamp_min_(whole(buffer)[0], -bound)
    torch._foreach_clamp_max_(whole(buffer)[0], bound)  # n = clip(g/max(√v, ϵ), ±t^¼)
    torch._foreach_lerp_(m, buffer, 1 - b1)  # m ← β₁·m + (1−β₁)·n


def _adopt_v(rule, g, v):
    """v ← β₂·v + (1−β₂)·g², after m's update (which reads the v before)."""
    b2 = rule.beta[1]
    torch._foreach_mul_(whole(v)[0], b2)
    torch._foreach_addcmul_(v, g, g, value=1 - b2)


@register_kernel(AdEMAMix)
def ademamix(rule, xs, gs, slots, t, lr):
    # In place on the slots and one kept buffer, block by block (`in_blocks`): g is read (three
    # moments) before the buffer is written, so in a chain the buffer may be g. Δ's two terms are
    # two addcdiv passes: (η·c/(1−β₁ᵗ))·m/(√v + ϵc) + (η·c·α)·m₂/(√v + ϵc), c = √(1−β₂ᵗ).
    b1, b2, b3 = rule.beta
    if not _numbers(b1, b2, b3, rule.alpha, rule.epsilon):
        return False
    c = ops.sqrt(ops.one_minus_pow(b2, t))
    for x, g, m, slow, v, buffer in in_blocks(buffer_owner(rule), (xs, gs, slots["m"], slots["slow"], slots["v"]), scratch_lists=1):
        _ademamix_moments(rule, g, m, slow, v)
        _ademamix_denominator(rule, c, v, buffer)
        torch._foreach_addcdiv_(x, m, buffer, value=-lr * c / ops.one_minus_pow(b1, t))
        torch._foreach_addcdiv_(x, slow, buffer, value=-lr * c * rule.alpha)
    return True


@register_direction(AdEMAMix)
def ademamix_direction(rule, t, lr):
    b1, b2, b3 = rule.beta
    if not _numbers(b1, b2, b3, rule.alpha, rule.epsilon):
        return None
    c = ops.sqrt(ops.one_minus_pow(b2, t))

    def write(out, temp, gs, slots):
        m, slow = slots["m"], slots["slow"]
        _ademamix_moments(rule, gs, m, slow, slots["v"])
        _ademamix_denominator(rule, c, slots["v"], temp)
        into(out, "mul", m, 1 / ops.one_minus_pow(b1, t))
        torch._foreach_add_(*whole(out, slow), alpha=rule.alpha)  # m/(1−β₁ᵗ) + α·m₂
        torch._foreach_div_(out, temp)
        torch._foreach_mul_(whole(out)[0], lr * c)  # Δ, as the formula: (η·c)·mix/(√v + ϵc)

    return write


def _ademamix_moments(rule, g, m, slow, v):
    """AdEMAMix's m, m₂ and v updated in place."""
    b1, b2, b3 = rule.beta
    torch._foreach_lerp_(m, g, 1 - b1)
    torch._foreach_lerp_(slow, g, 1 - b3)
    torch._foreach_mul_(whole(v)[0], b2)
    torch._foreach_addcmul_(v, g, g, value=1 - b2)


def _ademamix_denominator(rule, c, v, out):
    """out ← √v + ϵ·c."""
    whole_v, whole_out = whole(v, out)
    into(whole_out, "sqrt", whole_v)
    torch._foreach_add_(whole_out, rule.epsilon * c)


@register_kernel(Cautious)
def cautious(rule, xs, gs, slots, t, lr):
    # The wrapped rule's Δ (its `direction`, which updates its slots) into the kept buffer, block by
    # block; in a block made for the step φ = (Δ·g > 0) (NaN: 0) and Σφ per tensor; then
    # x ← x + (−N/(Σφ + 1))·φ·Δ: −s·φ is 0 or −s exactly, so Δ·φ·s as the formula rounds it (an
    # infinite or NaN Δ where φ = 0 gives NaN, as there). A tensor whole in a block is finished
    # there; one split over blocks keeps Δ·φ in the buffer until its Σφ is known.
    inner = rule.rule
    direction = direction_of(inner)
    write = direction(inner, t, inner._rate(t - 1)) if direction is not None else None
    if write is None:  # no direction (a chain, say), or it declined (a hyperparameter not a number): the formula runs
        return False
    (buffer,) = scratch(buffer_owner(rule), xs)
    if any(map(operator.is_, gs, buffer)):  # g in a chain's buffer: Δ would overwrite it
        return False
    own = _own(slots, 0)
    counts = {}
    for (positions, complete, (flat,)), (x, g, *state, out, temp) in tensor_blocks((xs, gs, *own.values(), buffer), 1):
        write(out, temp, g, dict(zip(own, state)))
        into(temp, "mul", out, g)
        torch.gt(flat, 0, out=flat)  # φ
        sums = _sums(flat, [p.numel() for p in temp])
        if complete:
            scales = torch.tensor([-float(p.numel()) for p in x], dtype=flat.dtype, device=flat.device).div_(sums.add_(1.0))
            if flat.device.type == "cpu":  # one scalar per tensor (the overload takes them on the host)
                torch._foreach_addcmul_(x, temp, out, scales)
            else:
                torch._foreach_mul_(temp, list(scales.unbind()))
                torch._foreach_addcmul_(x, temp, out)
        else:  # a piece of one tensor: its Σφ so far, and Δ·φ kept in the buffer
            (i,) = positions
            counts[i] = counts[i] + sums if i in counts else sums
            torch._foreach_mul_(out, temp)
    for i, count in counts.items():
        xs[i].addcmul_(buffer[i], xs[i].numel() / (count + 1.0), value=-1.0)
    return True


def _sums(flat, sizes):
    """The sums of the consecutive pieces of `flat` of `sizes`, as one 1-D tensor: one op per run of
    equal sizes, over a (count, size) view (a foreach norm costs more per tensor on the CPU)."""
    sums, start, k = [], 0, 0
    while k < len(sizes):
        end = k
        while end < len(sizes) and sizes[end] == sizes[k]:
            end += 1
        count = end - k
        sums.append(flat[start : start + count * sizes[k]].view(count, sizes[k]).sum(1))
        start, k = start + count * sizes[k], end
    return sums[0] if len(sums) == 1 else torch.cat(sums)


# matrix.py -------------------------------------------------------------------------------------
@register_kernel(Muon)
def muon(rule, xs, gs, slots, t, lr):
    # torch.optim.Muon's step: the momentum lerped in place, each matrix's Nesterov mix, its Newton–Schulz
    # iteration (`matrix._iterate`) and x ← x − η·r·X from the `ns_dtype` result: no parameter-sized float32
    # temporaries. On the CPU one matrix at a time from its mix to x, as torch.optim.Muon (it stays in the
    # cache); on a GPU one batched chain per shape (`matrix.newton_schulz`).
    mu, eps = rule.momentum, rule.epsilon
    if not _numbers(mu, eps):
        return False
    a, b, c = (float(v) for v in rule.ns_coefficients)
    dtype = torch.bfloat16 if rule.ns_dtype == "bfloat16" else torch.float32
    momentum = slots["momentum_buffer"]
    torch._foreach_lerp_(momentum, gs, 1 - mu)
    shapes = [as_matrix_shape(x.shape) for x in xs]

    def mixed(i):  # the matrix to orthogonalise, rows ≤ cols, in `ns_dtype`
        (rows, cols), buffer = shapes[i], momentum[i]
        u = (gs[i].lerp(buffer, mu) if rule.nesterov else buffer).reshape(rows, cols).to(dtype)
        return u.T if rows > cols else u

    def write(i, o):
        rows, cols = shapes[i]
        xs[i].add_((o.T if rows > cols else o).reshape(xs[i].shape), alpha=-lr * lr_ratio(rule.adjust_lr, rows, cols))

    if xs[0].device.type == "cpu":
        for i in range(len(xs)):
            u = mixed(i)
            norm = u.norm().clamp(min=eps)
            # in place unless u is the momentum itself (float32, no Nesterov mix)
            u = u / norm if u.data_ptr() == momentum[i].data_ptr() else u.div_(norm)
            write(i, _iterate(u, a, b, c, int(rule.ns_steps)))
        return True
    for indices in by_shape([x.shape for x in xs]):
        results = newton_schulz(torch.stack([mixed(i) for i in indices]), (a, b, c), rule.ns_steps, eps)
        for i, o in zip(indices, results):
            write(i, o)
    return True


# soap.py ---------------------------------------------------------------------------------------
@register_kernel(SOAP, shaped_slots=True)
def soap(rule, xs, gs, slots, t, lr):
    # The formula matrix by matrix, in place on the slots: the projections' products written into two
    # kept buffers of the matrix's shape (`_matrix_scratch`), the factors updated by one `addmm_` each.
    # A vector is an (n, 1) matrix, a scalar (1, 1); a side without a factor has no product.
    b1, b2 = rule.beta
    beta = rule._shampoo_beta()
    if not _numbers(b1, b2, beta, rule.epsilon):
        return False
    step = t - 1
    rate = lr
    if rule.correct_bias and step > 0:
        rate = lr * ops.sqrt(ops.one_minus_pow(b2, step)) / ops.one_minus_pow(b1, step)
    refresh = step > 0 and step % rule.precondition_frequency == 0
    for i, (x, g) in enumerate(zip(xs, gs)):
        shape = tuple(x.shape)
        rows, cols = (shape + (1, 1))[:2]
        g2, x2 = g.view(rows, cols), x.view(rows, cols)
        m, v = slots["m"][i].view(rows, cols), slots["v"][i].view(rows, cols)
        factors = [
            (slots[f][i], slots[q][i]) if rule._factored(shape, axis) else None
            for axis, (f, q) in enumerate((("L", "QL"), ("R", "QR")))
        ]
        if t == 1:  # the factors and their eigenbases from g; no step
            for axis, factor in enumerate(factors):
                if factor is not None:
                    f, q = factor
                    torch.mm(*_gram_factors(g2, axis), out=f).mul_(1 - beta)
                    q.copy_(torch.linalg.eigh(f).eigenvectors.flip(1))  # descending eigenvalues
            continue
        buffers = _matrix_scratch(rule, x2)
        left, right = (None if factor is None else factor[1] for factor in factors)
        m.lerp_(g2, 1 - b1)
        projected = _project(g2, left, right, buffers)
        v.mul_(b2).addcmul_(projected, projected, value=1 - b2)
        moment = _project(m, left, right, buffers)
        spare = buffers[1] if moment is buffers[0] else buffers[0]
        torch.sqrt(v, out=spare).add_(rule.epsilon)
        # Into a buffer (m itself where no side has a factor), so n is always one of the buffers.
        n = _project(torch.div(moment, spare, out=spare if moment is m else moment), left, right, buffers, back=True)
        if rule.normalize_gradient:
            n.div_(n.square().mean().sqrt().add_(rule.epsilon))
        x2.add_(n, alpha=-rate)
        for axis, factor in enumerate(factors):
            if factor is not None:
                f, q = factor
                f.addmm_(*_gram_factors(g2, axis), beta=beta, alpha=1 - beta)
                if refresh:  # one power iteration and QR, columns (and v along the axis) sorted by estimated eigenvalue
                    product = f @ q
                    order = torch.argsort(-(q * product).sum(0), stable=True)
                    v.copy_(v.index_select(axis, order))
                    q.copy_(torch.linalg.qr(product.index_select(1, order)).Q)
    return True


def _gram_factors(g, axis):
    """The two factors of g·gᵀ (axis 0: L's) or gᵀ·g (axis 1: R's)."""
    return (g, g.T) if axis == 0 else (g.T, g)


def _matrix_scratch(rule, x):
    """Two buffers of `x`'s shape, kept by `rule` between steps (one pair per shape: at most two
    matrices' worth, not parameter-sized)."""
    kept = rule.__dict__.setdefault("_torch_matrix_scratch", {})
    key = (tuple(x.shape), x.dtype, x.device)
    if key not in kept:
        kept[key] = (torch.zeros_like(x), torch.zeros_like(x))
    return kept[key]


def _project(u, left, right, buffers, back=False):
    """Q_Lᵀ·u·Q_R (with `back`, Q_L·u·Q_Rᵀ) written into `buffers` (never into u); a missing Q is the
    identity (u itself returned where both are)."""
    for side, q in (("left", left), ("right", right)):
        if q is not None:
            out = buffers[1] if u is buffers[0] else buffers[0]
            if side == "left":
                torch.mm(q if back else q.T, u, out=out)
            else:
                torch.mm(u, q.T if back else q, out=out)
            u = out
    return u


# schedule_free.py ------------------------------------------------------------------------------
@register_kernel(ScheduleFreeAdamW)
def schedule_free_adamw(rule, xs, gs, slots, t, lr):
    # In place on the slots and one kept buffer, block by block (`in_blocks`; the rule's own buffer:
    # it is never a chain's member). With k = √(1−β₂ᵗ), d = k·b where b = g/(√v + ϵ·k) + (λ/k)·y:
    # b in the buffer, then the step (`_schedule_free_step`).
    (b1, b2), eps, decay = rule.beta, rule.epsilon, _schedule_free_decay(rule)
    if decay is False or not _numbers(b1, b2, eps):
        return False
    _, lr_t, c = rule._averaging(t, lr)
    if not _numbers(lr_t, c):  # r or p not a number: the formula (it records the same η_max and W)
        return False
    k = ops.sqrt(ops.one_minus_pow(b2, t))
    for y, g, u, v, buffer in in_blocks(rule, (xs, gs, slots["z_offset"], slots["v"]), scratch_lists=1):
        torch._foreach_mul_(whole(v)[0], b2)
        torch._foreach_addcmul_(v, g, g, value=1 - b2)  # v ← β₂·v + (1−β₂)·g²
        whole_v, whole_buffer = whole(v, buffer)
        into(whole_buffer, "sqrt", whole_v)
        torch._foreach_add_(whole_buffer, eps * k)
        torch._foreach_reciprocal_(whole_buffer)
        torch._foreach_mul_(buffer, g)  # g/(√v + ϵ·k)
        if decay is not None:
            torch._foreach_add_(buffer, y, alpha=decay / k)
        _schedule_free_step(b1, lr_t * k, c, y, u, buffer)
    return True


@register_kernel(ScheduleFreeSGD)
def schedule_free_sgd(rule, xs, gs, slots, t, lr):
    # Block by block (`in_blocks`): d = g + λ·y in the kept buffer, then the step; without a decay
    # term d is g itself, read in place (no buffer): Δ = ηₜ(1 − β(1−c))·g − c·u, u ← (1−c)·(u − ηₜβ·g).
    beta, decay = rule.momentum, _schedule_free_decay(rule)
    if decay is False or not _numbers(beta):
        return False
    _, lr_t, c = rule._averaging(t, lr)
    if not _numbers(lr_t, c):  # r or p not a number: the formula
        return False
    for y, g, u, *buffer in in_blocks(rule, (xs, gs, slots["z_offset"]), scratch_lists=0 if decay is None else 1):
        if decay is None:
            torch._foreach_add_(y, u, alpha=c)
            torch._foreach_add_(y, g, alpha=-lr_t * (1 - beta * (1 - c)))
            torch._foreach_add_(u, g, alpha=-lr_t * beta)
            torch._foreach_mul_(whole(u)[0], 1 - c)
        else:
            _schedule_free_step(beta, lr_t, c, y, u, into(buffer[0], "add", g, y, alpha=decay))
    return True


def _schedule_free_decay(rule):
    """λ of the decay term λ·y (read once, as the formula does); None where the step has none (built
    with λ = 0); False where the kernel declines: λ not a number, or variables excluded from the decay."""
    if not rule.__dict__.get("_decay_term", True):
        return None
    wd = rule.weight_decay
    return wd if _numbers(wd) and rule._decay_mask() is None else False


def _schedule_free_step(beta, rate, c, y, u, d):
    """The step at y along ηₜ·d = rate·d (d in a kept buffer, overwritten), u = z − y updated in place:
    with w = u − ηₜβ·d, y_new − y = c·w − ηₜ(1−β)·d (= c·u − ηₜ(1 − β(1−c))·d, the formula's −Δ) and
    u_new = (1−c)·w. The steps on u and the buffer alone run on their packed buffers (`whole`)."""
    whole_u, whole_d = whole(u, d)
    torch._foreach_add_(whole_u, whole_d, alpha=-rate * beta)  # w
    torch._foreach_mul_(whole_d, -rate * (1 - beta))
    torch._foreach_add_(whole_d, whole_u, alpha=c)  # y_new − y
    torch._foreach_add_(y, d)
    torch._foreach_mul_(whole_u, 1 - c)


# sign.py ---------------------------------------------------------------------------------------
@register_kernel(Lion)
def lion(rule, xs, gs, slots, t, lr):
    # In place on m and one kept buffer, block by block (`in_blocks`). The buffer takes β₁·m, then g
    # is read again: in a chain whose buffer holds g, the formula runs.
    b1, b2 = rule.beta
    owner = buffer_owner(rule)
    if not _numbers(b1, b2) or (owner is not rule and any(map(operator.is_, gs, scratch(owner, xs)[0]))):
        return False
    for x, g, m, buffer in in_blocks(owner, (xs, gs, slots["m"]), scratch_lists=1):
        _lion_sign(rule, g, m, buffer)
        torch._foreach_add_(x, buffer, alpha=-lr)
    return True


@register_direction(Lion)
def lion_direction(rule, t, lr):
    if not _numbers(*rule.beta):
        return None

    def write(out, temp, gs, slots):
        _lion_sign(rule, gs, slots["m"], out)
        torch._foreach_mul_(whole(out)[0], lr)

    return write


def _lion_sign(rule, g, m, out):
    """out ← sign(β₁·m + (1−β₁)·g), then m ← β₂·m + (1−β₂)·g, each rounded as the formula's foreach ops
    (torch's sign: 0 at 0, and at NaN on the CPU)."""
    b1, b2 = rule.beta
    into(out, "mul", m, b1)
    torch._foreach_add_(out, g, alpha=1 - b1)
    torch._foreach_sign_(whole(out)[0])
    torch._foreach_mul_(whole(m)[0], b2)
    torch._foreach_add_(m, g, alpha=1 - b2)


# prodigy.py ------------------------------------------------------------------------------------
@register_kernel(Prodigy)
def prodigy(rule, xs, gs, slots, t, lr):
    # The formula in two passes with its sums between them, in place on the slots and one kept buffer,
    # block by block (`in_blocks`). Pass 1: x₀ at t = 1, Σ g·(x₀ − x) (x₀ − x in the buffer), s and Σ|s|,
    # read to the host once. Then d and its state as the formula computes them, in float32 (numpy scalars).
    # Pass 2: m, v, and x ← x − dlr·(m_factor·m/(√v + d·ϵ) + λ·x) with x rounded once, as in the formula:
    # d̂ hangs on x₀ − x, a difference of float32 values, which would magnify x rounded more often.
    b1, b2 = rule.beta
    b3, wd = rule.beta3, rule.weight_decay
    if not _numbers(b1, b2, 0.0 if b3 is None else b3, rule.epsilon, rule.d0, rule.d_coef, rule.growth_rate, wd):
        return False  # a value that is not a number (on torch a schedule's is read as one): the formula takes it
    if not lr > 0:  # η = 0 (a schedule's end): prodigyopt then leaves the moments alone; rare, so the formula
        return False
    if wd and rule._decay_mask() is not None:  # variables excluded from the decay: rare, so the formula
        return False
    state = values([rule._scalars[name] for name in _PRODIGY_STATE])  # d, d_max, d_numerator, k
    d, d_max, numerator, k = (numpy.float32(value) for value in torch.stack(state).tolist())
    with numpy.errstate(all="ignore"):  # inf and NaN as the formula's float32 tensors give them, silently
        b3 = numpy.sqrt(numpy.float32(b2)) if b3 is None else b3
        if rule.use_bias_correction:
            c = numpy.sqrt(1 - numpy.power(numpy.float32(b2), k + 1)) / (1 - numpy.power(numpy.float32(b1), k + 1))
        else:
            c = 1.0
        dlr = d * numpy.float32(lr) * c
        ratio = d / numpy.float32(rule.d0)
        into_s = float(ratio * (d if rule.safeguard_warmup else dlr))
        f1, f3 = float((1 - b1) * d), float((1 - b2) * d * d)

    # Pass 1 takes the sums, pass 2 moves m, v and x (their updates take the d before this one). In a chain
    # g may be in the kept buffer, which pass 1 would overwrite: there its temporaries are blocks made for it.
    owner = buffer_owner(rule)
    lists = (xs, gs, slots["x0"], slots["s"])
    blocks = in_blocks(owner, lists, scratch_lists=1) if owner is rule else flat_blocks(lists, scratch_lists=1)
    dots, norms = [], []
    for x, g, x0, s, buffer in blocks:
        dots += _prodigy_dots(t, x, g, x0, buffer)
        torch._foreach_mul_(whole(s)[0], float(b3))
        torch._foreach_add_(s, g, alpha=into_s)  # s ← β₃·s + (d/d₀)·(dlr or d)·g
        norms += _tensor_sums(into(buffer, "abs", s))
    total, denominator = _host_sums(dots, norms)

    with numpy.errstate(all="ignore"):
        numerator = b3 * numerator + ratio * dlr * numpy.float32(total)
        denominator = numpy.float32(denominator)
        progress = denominator > 0
        if progress:
            d_hat = numpy.float32(rule.d_coef) * numerator / denominator
            grown = numpy.maximum(d, d_hat) if d == numpy.float32(rule.d0) else d
            d_max = numpy.maximum(d_max, d_hat)
            new_d = numpy.minimum(d_max, grown * rule.growth_rate)
            # β₁ = 0: prodigyopt keeps no m and steps by d·g with the new d (m holds the old d·g).
            m_factor = 1.0 if b1 > 0 else new_d / d
    if not progress:  # no progress (Σ|s| = 0 or NaN): d and its state stay; x ← x − 0·Δ (NaN where Δ is)
        dlr, new_d, m_factor = 0.0, d, 1.0
    else:
        for tensor, value in zip(state, (new_d, d_max, numerator, k + 1)):
            tensor.fill_(float(value))

    moves = denominator != 0  # Σ|s| = 0: x stays (x − 0·Δ, Δ finite)
    epsilon, m_factor, step = float(new_d * rule.epsilon), float(m_factor), -float(dlr)
    for x, g, m, v, buffer in in_blocks(owner, (xs, gs, slots["m"], slots["v"]), scratch_lists=1):
        torch._foreach_mul_(whole(m)[0], b1)
        torch._foreach_add_(m, g, alpha=f1)  # m ← β₁·m + d·(1−β₁)·g
        torch._foreach_mul_(whole(v)[0], b2)
        torch._foreach_addcmul_(v, g, g, value=f3)  # v ← β₂·v + d²·(1−β₂)·g²
        if not moves:
            continue
        whole_v, whole_buffer = whole(v, buffer)  # g is read: the buffer is free (in a chain, it may have been g)
        into(whole_buffer, "sqrt", whole_v)
        torch._foreach_add_(whole_buffer, epsilon)  # √v + d·ϵ, the new d
        if not wd:
            torch._foreach_addcdiv_(x, m, buffer, value=step * m_factor)
            continue
        # Δ = m_factor·m/(√v + d·ϵ) + λ·x in the buffer, then x − dlr·Δ: x rounded once, as in the formula (the
        # decay as a step of its own would round it twice, and d̂, which hangs on x₀ − x, would drift).
        for a, b in zip(*whole(m, buffer)):
            torch.div(a, b, out=b)
        if m_factor != 1.0:
            torch._foreach_mul_(whole(buffer)[0], m_factor)
        torch._foreach_add_(buffer, x, alpha=wd)
        torch._foreach_add_(x, buffer, alpha=step)
    return True


def _prodigy_dots(t, x, g, x0, difference):
    """x₀ ← x at t = 1; then Σ g·(x₀ − x) of each tensor (or of all, on a packed buffer), with x₀ − x
    written into `difference` (and there, g·(x₀ − x))."""
    if t == 1:
        torch._foreach_copy_(x0, x)
    whole_difference, whole_x0 = whole(difference, x0)
    if whole_difference is difference:  # a block, or not packed: a dot product per tensor
        into(difference, "sub", x0, x)
        return [torch.dot(a.view(-1), b.view(-1)) for a, b in zip(g, difference)]
    torch._foreach_copy_(whole_difference, whole_x0)
    torch._foreach_sub_(difference, x)
    torch._foreach_mul_(difference, g)  # over many small tensors: cheaper than as many dot products
    return _tensor_sums(difference)


def _tensor_sums(tensors):
    """Σ of each tensor (one, on a packed buffer)."""
    return [t.sum() for t in whole(tensors)[0]]


def _host_sums(*lists):
    """Σ of each list of 0-d tensors (float32 or float64), in float64, read to the host at once."""
    totals = []
    for parts in lists:
        if any(p.dtype != parts[0].dtype for p in parts):
            parts = [p.double() for p in parts]
        totals.append(torch.stack(parts).sum(dtype=torch.float64))
    return torch.stack(totals).tolist()
