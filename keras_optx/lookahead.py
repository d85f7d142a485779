"""`Lookahead`: slow weights that follow the fast ones every k updates (Zhang et al. 2019)."""

import keras

from . import _checks as check
from ._backends import current as backend
from ._base import _cast, _state_dtype
from ._transform import Transform
from ._tensors import Many, ops

_register = keras.saving.register_keras_serializable(package="keras_optx")


def _slow_step_size(name, value):
    """α ∈ (0, 1]."""
    value = check._number(name, value)
    if not 0 < value <= 1:
        raise ValueError(f"`{name}` must be in (0, 1]; received {name}={value}.")
    return value


_slow_step_size.numeric = True  # takes a schedule or callable (keras_optx/_hyper.py)


@_register
class Lookahead(Transform):
    """Lookahead: the wrapped optimizer moves fast weights x; every k updates the slow weights
    φ move α of the way to them, and x restarts from there.

    φ starts at the variables' values before the first update. At update t the wrapped
    optimizer updates x; then, when t is a multiple of k:  φ ← φ + α·(x − φ);  x ← φ.

    Args:
        optimizer: the optimizer that makes the fast steps: any keras_optx rule or chain, or
            a Keras optimizer (`Lookahead(keras_optx.RADAM())` is "Ranger").
        sync_period: k, an integer ≥ 1, default 6.
        slow_step_size: α ∈ (0, 1], default 0.5: a number, or a `LearningRateSchedule` (called
            with the 0-based update count, as a rate's schedule) or a callable, like every
            hyperparameter; a number set later (`opt.slow_step_size = 0.8`, `adjust`) acts at
            the next update. A schedule's values are not checked against the range.

    Example:
        >>> opt = keras_optx.Lookahead(keras_optx.ADAM(1e-3), sync_period=5, slow_step_size=0.5)

    The semantics of TensorFlow Addons' `tfa.optimizers.Lookahead` (slow weights from the
    variables at the first update, synchronised after every k-th update). The slow weights
    are optimizer variables: saved in `.keras` files and resumed exactly. t counts updates
    (with Keras's `gradient_accumulation_steps` on the Lookahead, one per accumulated step).
    `learning_rate` reads and sets the wrapped optimizer's rate; Keras keywords
    (`clipnorm`, `weight_decay`, `use_ema`, …) given to the Lookahead act on the gradients it
    hands on and on the result, as for any keras_optx wrapper. `optax.lookahead` keeps both
    weight sets in a `LookaheadParams` pair instead; Keras and torch.optim have none.
    Zhang, Lucas, Hinton & Ba 2019, "Lookahead Optimizer: k steps forward, 1 step back",
    arXiv:1907.08610.
    """

    hyperparameters = {"sync_period": check.positive_int, "slow_step_size": _slow_step_size}
    slots = {"slow": 0.0}
    low_precision_refusal = "its slow weights are a copy of the parameters, which would lose their precision"

    def __init__(self, optimizer, sync_period=6, slow_step_size=0.5, **kwargs):
        if optimizer is None:
            raise TypeError("`optimizer` must be a Keras optimizer (keras.optimizers.Optimizer); received None.")
        inner = getattr(optimizer, "gradient_accumulation_steps", None) if not isinstance(optimizer, dict) else None
        if inner:
            raise ValueError(
                "The wrapped optimizer accumulates gradients (`gradient_accumulation_steps`), so Lookahead "
                "could not count its updates; set `gradient_accumulation_steps` on the Lookahead instead."
            )
        super().__init__(optimizer, sync_period=sync_period, slow_step_size=slow_step_size, **kwargs)

    def _update_step(self, grads, variables):
        t, _ = self._step_numbers()
        first = t == 1
        sync = t % self.sync_period == 0
        # Python bools where the step runs eagerly (torch: t is an int): most steps leave φ alone
        # and copy nothing.
        # Under jit (JAX, TensorFlow) they are tensors and `where` selects.
        keep_before = not (isinstance(first, bool) and not first)
        before = [keras.ops.copy(v.value) for v in variables] if keep_before else None  # the wrapped update writes in place
        self._apply_wrapped(grads, variables)
        if isinstance(sync, bool) and not sync and not keep_before:
            return
        dtypes = [_state_dtype(v.dtype) for v in variables]
        slow_variables = self._slot_lists(variables)["slow"]
        slow = Many(backend.values(slow_variables))
        if keep_before:
            slow = ops.where(first, Many(_cast(b, d) for b, d in zip(before, dtypes)), slow)
        fast = Many(_cast(x, d) for x, d in zip(backend.values(variables), dtypes))
        alpha = self.slow_step_size
        moved = slow + alpha * (fast - slow)
        new_slow = ops.where(sync, moved, slow)
        new_fast = ops.where(sync, moved, fast)
        writes = list(zip(slow_variables, new_slow.items))
        if not (isinstance(sync, bool) and not sync):
            writes += list(zip(variables, new_fast.items))
        backend.assign(self, writes)
