"""Gradient transformations (Flux's WeightDecay, ClipValue, ClipNorm) and a global-norm clip.

Each is a chain member (`Optimiser(ClipNorm(1.0), ADAM())`) and also wraps any Keras
optimizer, built-ins included (`ClipNorm(1.0, keras.optimizers.Adam())`): the gradient
is transformed, then handed to the wrapped optimizer.

On torch, in a chain before a rule with a kernel, each runs as its registered `into`
(`keras_optx/_backends/torch/transforms.py`), writing into one kept buffer.
"""

import keras

from . import _checks as check
from ._base import Transform, _plus_decay

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
