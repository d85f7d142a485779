"""Gradient transformations (Flux's WeightDecay, ClipValue, ClipNorm) and a global-norm clip.

Each is a chain member (`Optimiser(ClipNorm(1.0), ADAM())`) and also wraps any Keras
optimizer, built-ins included (`ClipNorm(1.0, keras.optimizers.Adam())`): the gradient
is transformed, then handed to the wrapped optimizer.

On torch, in a chain before a rule with a kernel, each runs as its registered `into`
(`keras_optx/_backends/torch/transforms.py`), writing into one kept buffer.
"""

import keras

from . import _checks as check
from ._base import _plus_decay
from ._transform import Transform

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
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.Optimiser(keras_optx.WeightDecay(0.5), keras_optx.Descent(0.1))
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # Δ = 0.1·(g + 0.5·x)
        [0.708 2.   ]

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
        >>> x = keras.Variable([1.0, 2.0])
        >>> opt = keras_optx.ClipValue(0.25, keras.optimizers.SGD(0.1))
        >>> for _ in range(2): opt.apply([np.array([1.0, -1.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # g clipped to ±0.25
        [0.95 2.05]

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
        >>> x = keras.Variable([0.0, 0.0])
        >>> opt = keras_optx.Optimiser(keras_optx.ClipNorm(1.0), keras_optx.Descent(1.0))
        >>> opt.apply([np.array([3.0, 4.0], "float32")], [x])
        >>> print(np.round(keras.ops.convert_to_numpy(x), 3))  # g·1/‖g‖ with ‖g‖ = 5
        [-0.6 -0.8]

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
        >>> x, y = keras.Variable([0.0]), keras.Variable([0.0])
        >>> opt = keras_optx.Optimiser(keras_optx.ClipGlobalNorm(1.0), keras_optx.Descent(1.0))
        >>> opt.apply([np.array([3.0], "float32"), np.array([4.0], "float32")], [x, y])
        >>> print(keras.ops.convert_to_numpy(x), keras.ops.convert_to_numpy(y))  # one norm, 5, over both
        [-0.6] [-0.8]

    Same as Keras's `global_clipnorm=` and `torch.nn.utils.clip_grad_norm_`.
    Pascanu, Mikolov & Bengio 2013.
    """

    hyperparameters = {"thresh": check.positive}

    def __init__(self, thresh, optimizer=None, **kwargs):
        super().__init__(optimizer, thresh=thresh, **kwargs)

    def delta(self, ops, g, x, s, t, lr):
        return g * (self.thresh / ops.maximum(ops.global_norm(g), self.thresh)), {}
