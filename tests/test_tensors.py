"""`Many` arithmetic equals NumPy's, including torch's pending scalar products (zero and negative scales)."""

import keras
import numpy as np
import pytest

from keras_optx._tensors import Many, ops

A = [np.array([1.0, -2.0, 3.0], "float32"), np.array([[0.5]], "float32")]
B = [np.array([2.0, 4.0, -1.0], "float32"), np.array([[-3.0]], "float32")]

# name: (the expression on `Many` with `ops`, the same on NumPy arrays)
EXPRESSIONS = {
    "0·a·b": (lambda a, b: (0.0 * a) * b, lambda a, b: (0.0 * a) * b),
    "(2a)·(3b)": (lambda a, b: (2 * a) * (3 * b), lambda a, b: (2 * a) * (3 * b)),
    "2a + 1": (lambda a, b: 2 * a + 1, lambda a, b: 2 * a + 1),
    "2a − 1": (lambda a, b: 2 * a - 1, lambda a, b: 2 * a - 1),
    "1 − 2a": (lambda a, b: 1 - 2 * a, lambda a, b: 1 - 2 * a),
    "(3a)/b": (lambda a, b: (3 * a) / b, lambda a, b: (3 * a) / b),
    "(2a)/(4b)": (lambda a, b: (2 * a) / (4 * b), lambda a, b: (2 * a) / (4 * b)),
    "−a + b": (lambda a, b: -a + b, lambda a, b: -a + b),
    "b − 0.5b": (lambda a, b: b - 0.5 * b, lambda a, b: b - 0.5 * b),
    "0·a + b": (lambda a, b: 0.0 * a + b, lambda a, b: 0.0 * a + b),
    "0.9a + 0.1b (an EMA)": (lambda a, b: 0.9 * a + 0.1 * b, lambda a, b: 0.9 * a + 0.1 * b),
    "(−2a)·b − 3": (lambda a, b: (-2 * a) * b - 3, lambda a, b: (-2 * a) * b - 3),
    "a²/(|b| + 1)": (lambda a, b: a**2 / (ops.abs(b) + 1), lambda a, b: a**2 / (np.abs(b) + 1)),
    "√(4b²)·0.5": (lambda a, b: ops.sqrt(4 * b**2) * 0.5, lambda a, b: np.sqrt(4 * b**2) * 0.5),
    "max(2a, b)": (lambda a, b: ops.maximum(2 * a, b), lambda a, b: np.maximum(2 * a, b)),
    "clip(3a, −1, 1)": (lambda a, b: ops.clip(3 * a, -1.0, 1.0), lambda a, b: np.clip(3 * a, -1.0, 1.0)),
}


@pytest.mark.parametrize("name", list(EXPRESSIONS))
def test_many_arithmetic_matches_numpy(name):
    on_many, on_numpy = EXPRESSIONS[name]
    a = Many([keras.ops.convert_to_tensor(x) for x in A])
    b = Many([keras.ops.convert_to_tensor(x) for x in B])
    for got, want in zip(on_many(a, b).items, [on_numpy(x, y) for x, y in zip(A, B)]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), want, rtol=1e-6, err_msg=name)


def test_pending_scale_never_reaches_the_operands():
    a = Many([keras.ops.convert_to_tensor(x) for x in A])
    scaled = 5 * a
    _ = (scaled + 1).items, (scaled - a).items, scaled.items
    for got, want in zip(a.items, A):  # the inputs are untouched by in-place work on fresh buffers
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), want)
    for got, want in zip(scaled.items, A):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), 5 * want)
