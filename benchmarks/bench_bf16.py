"""Training in bfloat16: does a small step survive the write? Final losses of an MLP with `dtype="bfloat16"`
weights trained with each `rounding` ("nearest", "kahan", "stochastic"), against the same model in float32.

    .venv/bin/python benchmarks/bench_bf16.py                  # all three backends (subprocesses)
    .venv/bin/python benchmarks/bench_bf16.py --backend torch  # one backend
    .venv/bin/python benchmarks/bench_bf16.py --quick          # a few steps (the test suite): the table's shape only

The task: regression onto a fixed random teacher MLP (16 → 64 → 64 → 1, tanh), 2048 samples, batches of
64, ADAM at a small rate (3e-4: each step is well below half a bfloat16 unit in the last place of most
weights), and the chain Optimiser(ClipNorm(1.0), ADAM(3e-4)). Every run starts from the same weights
(bfloat16 values, so the float32 run starts where the bfloat16 runs do) and sees the same batches. The
final loss is the mean squared error on the training set of the trained weights evaluated in float32,
so the table shows what the optimizer kept, not the bfloat16 forward pass. This measures loss, not time.
"""

import argparse
import os
import sys

from _common import limit_threads, per_backend

SIZES = {"full": (50, 512), "quick": (1, 128)}  # (epochs, samples); 8 batches of 64 an epoch in full


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="a few steps: checks that it runs")
    args = parser.parse_args()
    if per_backend(args, __file__, order=("torch", "jax", "tensorflow")):
        return
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    limit_threads(1)  # a small model: one thread is fastest, and steady on a shared machine
    run(args.quick)


def data(np, samples):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 16)).astype("float32")
    w1, w2, w3 = (rng.standard_normal(shape) / np.sqrt(shape[0]) for shape in ((16, 64), (64, 64), (64, 1)))
    y = np.tanh(np.tanh(x @ w1) @ w2) @ w3
    return x, y.astype("float32")


def mlp(keras, dtype):
    return keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(64, activation="tanh", dtype=dtype),
        keras.layers.Dense(64, activation="tanh", dtype=dtype),
        keras.layers.Dense(1, dtype=dtype),
    ])


def run(quick):
    import keras
    import numpy as np

    import keras_optx as ox

    epochs, samples = SIZES["quick" if quick else "full"]
    x, y = data(np, samples)
    keras.utils.set_random_seed(0)
    start = [np.asarray(w).astype("float32") for w in mlp(keras, "bfloat16").get_weights()]  # bfloat16 values
    rules = {"ADAM": lambda **k: ox.ADAM(3e-4, **k), "chain(ClipNorm,ADAM)": lambda **k: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(3e-4), **k)}
    steps = epochs * (samples // 64)
    print(f"keras {keras.__version__}, backend {keras.backend.backend()}; {steps} steps of batch 64, rate 3e-4, seed 0\n")
    print("| rule | weights | rounding | final loss | ratio to float32 |")
    print("|---|---|---|---:|---:|")
    initial = loss(keras, np, start, x, y)
    for name, make in rules.items():
        baseline = None
        for dtype, rounding in (("float32", "nearest"), ("bfloat16", "nearest"), ("bfloat16", "kahan"), ("bfloat16", "stochastic")):
            keras.utils.set_random_seed(0)
            model = mlp(keras, dtype)
            model.set_weights(start)
            model.compile(optimizer=make(rounding=rounding), loss="mse")
            model.fit(x, y, batch_size=64, epochs=epochs, shuffle=False, verbose=0)
            final = loss(keras, np, model.get_weights(), x, y)
            baseline = final if baseline is None else baseline
            shown = "–" if dtype == "float32" else rounding
            print(f"| {name} | {dtype} | {shown} | {final:.5f} | {final / baseline:.3f} |", flush=True)
    print(f"\nInitial loss {initial:.5f}.")


def loss(keras, np, weights, x, y):
    """Mean squared error of `weights` evaluated in float32."""
    model = mlp(keras, "float32")
    model.set_weights([np.asarray(w).astype("float32") for w in weights])
    prediction = keras.ops.convert_to_numpy(model(x))
    return float(np.mean((prediction - y) ** 2))


if __name__ == "__main__":
    main()
