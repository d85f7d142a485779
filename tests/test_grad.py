"""keras_optx.gradient / value_and_gradient against analytic gradients, on the current backend."""

import keras
import numpy as np
import pytest

import keras_optx as ox

RNG = np.random.default_rng(7)
A = RNG.normal(size=(3, 3))
A = A @ A.T + np.eye(3)  # symmetric, so ∇(½xᵀAx) = Ax
B = RNG.normal(size=3)
C = 0.7


def _quadratic(x, W):
    """½xᵀAx + bᵀx + c·ΣW²; ∂/∂x = Ax + b, ∂/∂W = 2cW."""
    ops = keras.ops
    xa = ops.convert_to_tensor(A.astype("float32"))
    quad = 0.5 * ops.sum(x * ops.matmul(xa, x)) + ops.sum(ops.convert_to_tensor(B.astype("float32")) * x)
    return quad + C * ops.sum(W * W)


def _variables():
    x0 = RNG.normal(size=3).astype("float32")
    W0 = RNG.normal(size=(2, 4)).astype("float32")
    return keras.Variable(x0, name="x"), keras.Variable(W0, name="W"), x0, W0


def test_matches_analytic_gradient_of_a_quadratic():
    x, W, x0, W0 = _variables()
    loss, (gx, gW) = ox.value_and_gradient(lambda: _quadratic(x, W), [x, W])
    x64, W64 = x0.astype("float64"), W0.astype("float64")
    expected_loss = 0.5 * x64 @ A @ x64 + B @ x64 + C * np.sum(W64**2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loss), expected_loss, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gx), A @ x64 + B, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gW), 2 * C * W64, rtol=1e-5, atol=1e-6)
    assert tuple(gW.shape) == (2, 4)
    # Taking a gradient changes nothing; the caller decides on the update.
    np.testing.assert_array_equal(x.numpy(), x0)
    np.testing.assert_array_equal(W.numpy(), W0)


def test_gradient_is_the_second_half_and_single_variable_gives_single_gradient():
    x, W, x0, W0 = _variables()
    grads = ox.gradient(lambda: _quadratic(x, W), (x, W))
    assert isinstance(grads, list) and len(grads) == 2
    gW = ox.gradient(lambda: _quadratic(x, W), W)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(gW), 2 * C * W0, rtol=1e-5, atol=1e-6)


def test_hand_update_descends():
    # Flux's `x .-= η .* Δ`, repeated: the loss of a convex quadratic goes down every step.
    x, W, _, _ = _variables()
    losses = []
    for _ in range(5):
        loss, grads = ox.value_and_gradient(lambda: _quadratic(x, W), [x, W])
        losses.append(float(keras.ops.convert_to_numpy(loss)))
        for v, g in zip([x, W], grads):
            v.assign(v - 0.05 * g)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))


def test_model_layer_gradient():
    # Dense layer y = u·K + β with loss Σ(y − t)²: ∂/∂K = 2uᵀ(y − t), ∂/∂β = 2Σ(y − t).
    layer = keras.layers.Dense(2)
    u = RNG.normal(size=(6, 3)).astype("float32")
    t = RNG.normal(size=(6, 2)).astype("float32")
    layer.build((None, 3))
    tt = keras.ops.convert_to_tensor(t)
    grads = ox.gradient(lambda: keras.ops.sum((layer(u) - tt) ** 2), layer.trainable_variables)
    K, beta = layer.kernel.numpy().astype("float64"), layer.bias.numpy().astype("float64")
    residual = u @ K + beta - t
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grads[0]), 2 * u.T @ residual, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(grads[1]), 2 * residual.sum(0), rtol=1e-4, atol=1e-5)


def test_unused_and_non_trainable_variables():
    x, W, x0, _ = _variables()
    frozen = keras.Variable(np.ones(3, "float32"), trainable=False)
    unused = keras.Variable(np.ones((2, 2), "float32"))
    g_x, g_frozen, g_unused = ox.gradient(lambda: keras.ops.sum(x * frozen * 3.0), [x, frozen, unused])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_x), np.full(3, 3.0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(g_frozen), 3.0 * x0, rtol=1e-6)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(g_unused), np.zeros((2, 2)))
    assert frozen.trainable is False


def test_result_feeds_an_optimizer():
    x, W, x0, W0 = _variables()
    grads = ox.gradient(lambda: _quadratic(x, W), [x, W])
    g_x = keras.ops.convert_to_numpy(grads[0])
    ox.Descent(0.1).apply(grads, [x, W])
    np.testing.assert_allclose(x.numpy(), x0 - 0.1 * g_x, rtol=1e-6, atol=1e-7)


def test_bad_input_is_refused():
    x, W, _, _ = _variables()
    with pytest.raises(TypeError, match="loss_fn"):
        ox.gradient(3.0, [x])
    with pytest.raises(TypeError, match=r"variables\[1\]"):
        ox.gradient(lambda: keras.ops.sum(x), [x, np.ones(3)])
    with pytest.raises(TypeError, match="variables"):
        ox.gradient(lambda: keras.ops.sum(x), 5)
    with pytest.raises(ValueError, match="scalar"):
        ox.gradient(lambda: x * 2.0, [x])
