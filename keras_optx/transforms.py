"""Gradient transformations (Flux's WeightDecay, ClipValue, ClipNorm) and a global-norm clip.

Each is a chain member (`Optimiser(ClipNorm(1.0), ADAM())`) and also wraps any Keras
optimizer, built-ins included (`ClipNorm(1.0, keras.optimizers.Adam())`): the gradient
is transformed, then handed to the wrapped optimizer.

On torch each also has `_torch_into(out, g, xs, t, step)`, which returns its Δ, written into
the kept buffer `out` (see `_base._into`; over large tensors on CPU, ClipNorm and ClipGlobalNorm
hand gradients within their threshold through as they are), so a chain of transforms before a
fused rule allocates no large tensor (tested to equal `delta`). Later members write into `out`,
never into what they are handed.
"""

import keras

from . import _checks as check
from ._base import Transform, _gather, _into, _large, _pack_of, _plus_decay, _same
from ._tensors import _TORCH

if _TORCH:
    import torch

_register = keras.saving.register_keras_serializable(package="keras_optx")


@_register
class WeightDecay(Transform):
    """Coupled (L2) weight decay (Flux `WeightDecay(wd)`): Δ = g + wd·x.

    Its place in a chain matters, as in Flux: `Optimiser(WeightDecay(λ), ADAM())` is
    torch's `Adam(weight_decay=λ)` (the decay is adapted by ADAM), while
    `Optimiser(ADAM(), WeightDecay(λ))` is `ADAMW` (the decay is added after ADAM,
    not multiplied by η).

    Args:
        wd: the decay, ≥ 0, default 0. (Keras's own `weight_decay=` keyword is the
            decoupled, rate-scaled kind; Flux's field name `wd` keeps them apart.)
        optimizer: optional Keras optimizer to wrap.

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.WeightDecay(1e-4), keras_optx.ADAM())

    Krogh & Hertz 1991; Loshchilov & Hutter 2019 on its interplay with ADAM.
    """

    hyperparameters = {"wd": check.nonnegative}

    def __init__(self, wd=0.0, optimizer=None, **kwargs):
        super().__init__(optimizer, wd=wd, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return _plus_decay(g, x, self.wd, self._decay_mask()), {}

    def _torch_into(self, out, g, xs, t, step):
        mask = self._decay_mask()
        if mask is None:
            return _into(out, "add", g, xs, alpha=self.wd)
        # Variables excluded from weight decay: their Δ is g itself.
        delta = list(g)
        decayed = [i for i, decays in enumerate(mask) if decays]
        if decayed:
            outs = [out[i] for i in decayed]
            _into(outs, "add", [g[i] for i in decayed], [xs[i] for i in decayed], alpha=self.wd)
            for i, value in zip(decayed, outs):
                delta[i] = value
        return delta


@_register
class ClipValue(Transform):
    """Elementwise gradient clipping (Flux `ClipValue(thresh)`): Δ = clamp(g, −thresh, thresh).

    Args:
        thresh: the bound, > 0.
        optimizer: optional Keras optimizer to wrap.

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.ClipValue(1e-3), keras_optx.ADAM(1e-3))
        >>> opt = keras_optx.ClipValue(1.0, keras.optimizers.SGD(0.1))

    Same as Keras's `clipvalue=` keyword, as a composable member. Mikolov 2012.
    """

    hyperparameters = {"thresh": check.positive}

    def __init__(self, thresh, optimizer=None, **kwargs):
        super().__init__(optimizer, thresh=thresh, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return ops.clip(g, -self.thresh, self.thresh), {}

    def _torch_into(self, out, g, xs, t, step):
        low = _into(out, "clamp_min", g, -self.thresh)
        return _into(low, "clamp_max", low, self.thresh)


@_register
class ClipNorm(Transform):
    """Per-variable gradient-norm clipping (Flux `ClipNorm(thresh)`).

    Δ = g·thresh/‖g‖₂ where ‖g‖₂ > thresh, else g; each variable on its own.

    Args:
        thresh: the largest norm, > 0.
        optimizer: optional Keras optimizer to wrap.

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.ClipNorm(1.0), keras_optx.ADAM())
        >>> opt = keras_optx.ClipNorm(1.0, keras.optimizers.Adam())

    Same as Keras's `clipnorm=` keyword. For one norm over all variables, as usual for
    transformers, see `ClipGlobalNorm`. Pascanu, Mikolov & Bengio 2013.
    """

    hyperparameters = {"thresh": check.positive}

    def __init__(self, thresh, optimizer=None, **kwargs):
        super().__init__(optimizer, thresh=thresh, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return g * (self.thresh / ops.maximum(ops.norm(g), self.thresh)), {}

    def _torch_into(self, out, g, xs, t, step):
        pack = _packed_for(out, g, sizes_shared=True)
        if pack is not None:
            # Many small tensors, most sharing a size with others: each size's norms and scaling
            # are one op on its (count, size) block (200×10k: 1.9 → 1.0 ms for this step).
            norms = [torch.linalg.vector_norm(block, dim=1) for block, _ in pack.runs]
            scales = self.thresh / torch.clamp_min(torch.cat(norms), self.thresh)
            for (block, _), scale in zip(pack.runs, scales.split([count for _, count in pack.runs])):
                block.mul_(scale.unsqueeze(1))
            return out
        scales = self.thresh / torch.clamp_min(torch.stack(torch._foreach_norm(g)), self.thresh)
        # As 0-d tensors: with a list of Python floats a foreach op dispatches once per tensor on
        # CPU (over 200×10k, `_foreach_mul_` took 0.7–0.9 ms that way, 0.3 ms with tensors).
        factors = list(scales.unbind())
        # On CPU the scales are on the host already: a gradient within the threshold is its own Δ
        # (g·1 = g), so only the clipped ones are copied and scaled. On a device, reading them would wait.
        # `not s >= 1`: a NaN norm (a NaN in g) scales by NaN, as the formula does.
        clipped = [i for i, s in enumerate(scales.tolist()) if not s >= 1.0] if scales.device.type == "cpu" else g
        if len(clipped) == len(g):
            return _into(out, "mul", g, factors)
        delta = list(g)
        if clipped:
            outs = [out[i] for i in clipped]
            _into(outs, "mul", [g[i] for i in clipped], [factors[i] for i in clipped])
            for i, scaled in zip(clipped, outs):
                delta[i] = scaled
        return delta


@_register
class ClipGlobalNorm(Transform):
    """Global gradient-norm clipping: all variables' gradients scaled together.

    Δ = g·thresh/‖G‖₂ where ‖G‖₂ = √(Σ over every variable of ‖g‖₂²) > thresh, else g.

    Args:
        thresh: the largest global norm, > 0.
        optimizer: optional Keras optimizer to wrap.

    Example:
        >>> opt = keras_optx.Optimiser(keras_optx.ClipGlobalNorm(1.0), keras_optx.ADAMW(3e-4))

    Same as Keras's `global_clipnorm=` and `torch.nn.utils.clip_grad_norm_`.
    Pascanu, Mikolov & Bengio 2013.
    """

    hyperparameters = {"thresh": check.positive}

    def __init__(self, thresh, optimizer=None, **kwargs):
        super().__init__(optimizer, thresh=thresh, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return g * (self.thresh / ops.maximum(ops.global_norm(g), self.thresh)), {}

    def _torch_into(self, out, g, xs, t, step):
        pack = _packed_for(out, g)
        if pack is not None:  # small tensors: one norm and one scaling over the buffer
            pack.whole.mul_(self.thresh / torch.clamp_min(torch.linalg.vector_norm(pack.whole), self.thresh))
            return out
        norm = torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(g)]))
        scale = self.thresh / torch.clamp_min(norm, self.thresh)
        if scale.device.type == "cpu" and scale.item() == 1.0:  # within the threshold: Δ = g, no copy (NaN ≠ 1)
            return g
        return _into(out, "mul", g, scale)


def _packed_for(out, g, sizes_shared=False):
    """`out`'s pack, now holding a copy of `g`, when `out` is one packed buffer and `g` small
    tensors (< 32768 elements on average) (and with `sizes_shared`, of at most half as many sizes
    as tensors); else None. Over many small tensors a norm per tensor costs more in dispatch than
    in arithmetic; copying them into the buffer first is one op."""
    pack = None if _large(g) else _pack_of(out)
    if pack is not None and sizes_shared and len(pack.runs) * 2 > len(g):
        return None
    if pack is not None and not _same(g, out):
        _gather(pack, g)
    return pack
