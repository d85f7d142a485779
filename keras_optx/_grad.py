"""Flux's `gradient(() -> loss, θ)` for Keras variables, on every backend.

`loss_fn` takes no arguments and reads the variables it is differentiated with
respect to (a model, a weight matrix), exactly as a Flux closure reads `θ`.
"""

import keras

from ._backends import current as backend


def value_and_gradient(loss_fn, variables):
    """The loss and its gradient with respect to `variables` (Flux `gradient(() -> loss, θ)`).

    Calls `loss_fn()` once and returns `(loss, grads)`: `grads[i] = ∂loss/∂variables[i]`,
    a backend tensor of the variable's shape. The variables are left unchanged, so the
    result can go straight to an optimizer: `opt.apply(grads, variables)`.

    Works the same on every Keras backend: `jax.value_and_grad` (the variables read
    through a `keras.StatelessScope`), `torch.autograd.grad`, `tf.GradientTape`.

    Args:
        loss_fn: a function of no arguments returning a scalar loss (a 0-d tensor).
            It reads the variables, e.g. `lambda: keras.ops.sum((W @ x + b - y) ** 2)`.
        variables: a list (or tuple) of `keras.Variable`s, e.g. `model.trainable_variables`;
            trainable or not. A single variable gives a single gradient.

    Returns:
        `(loss, grads)`: the loss as a 0-d backend tensor and one gradient per variable.
        A variable the loss does not depend on gets zeros (as JAX gives).

    Example:
        >>> W = keras.Variable([[1.0, -2.0], [0.5, 3.0]])
        >>> loss, (gW,) = keras_optx.value_and_gradient(lambda: keras.ops.sum(W ** 2), [W])
        >>> print(float(loss), keras.ops.convert_to_numpy(gW).tolist())  # Σ W², and gW = 2·W
        14.25 [[2.0, -4.0], [1.0, 6.0]]

    Build a model (call it once) before differentiating through it: no variable may be
    created inside `loss_fn`. On JAX, variable writes made inside `loss_fn` (BatchNorm
    statistics, dropout seed counters) are not kept; pass `training=False` or use
    `model.fit` when they matter.

    Flux.jl's `withgradient` (Innes 2018, arXiv:1811.01457).
    """
    if not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be a function of no arguments returning the loss; received {loss_fn!r}.")
    single = isinstance(variables, keras.Variable)
    variables = [variables] if single else _variable_list(variables)
    loss, grads = backend.value_and_grad(lambda: _checked_loss(loss_fn()), variables)
    return loss, (grads[0] if single else grads)


def gradient(loss_fn, variables):
    """The gradient of `loss_fn()` with respect to `variables` (Flux `gradient(() -> loss, θ)`).

    Same as `value_and_gradient(loss_fn, variables)[1]`; see there for the arguments.

    Example:
        >>> w, b = keras.Variable([2.0]), keras.Variable([0.5])
        >>> grads = keras_optx.gradient(lambda: keras.ops.sum((3.0 * w + b - 1.0) ** 2), [w, b])
        >>> print([keras.ops.convert_to_numpy(g).tolist() for g in grads])  # 2·(3w + b − 1)·(3, 1)
        [[33.0], [11.0]]

    Flux.jl's `gradient` (Innes 2018, arXiv:1811.01457).
    """
    return value_and_gradient(loss_fn, variables)[1]


def _variable_list(variables):
    if isinstance(variables, (str, bytes)) or not hasattr(variables, "__iter__"):
        raise TypeError(f"`variables` must be a keras.Variable or a list of them; received {variables!r}.")
    variables = list(variables)
    for i, v in enumerate(variables):
        if not isinstance(v, keras.Variable):
            raise TypeError(
                f"`variables[{i}]` must be a keras.Variable (e.g. from model.trainable_variables); "
                f"received {v!r} ({type(v).__name__})."
            )
    return variables


def _checked_loss(loss):
    """The loss as a backend tensor; a clear error when it is not one number."""
    loss = keras.ops.convert_to_tensor(loss)
    if len(loss.shape) != 0:
        raise ValueError(
            f"`loss_fn` must return a scalar (0-d) loss; it returned shape {tuple(loss.shape)}. "
            "Reduce it first, e.g. with keras.ops.mean or keras.ops.sum."
        )
    return loss
