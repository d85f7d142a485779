"""End-to-end `model.fit` speed on a 784-512-512-10 MLP with random data, per backend.

    .venv/bin/python benchmarks/bench_fit.py                   # all three backends (subprocesses)
    .venv/bin/python benchmarks/bench_fit.py --backend torch --quick

Steps per second for each optimizer, and the optimizer's share of the training step:
(step time − step time with a no-op optimizer) / step time, also given over plain SGD.
Models are built and compiled once each, then timed one epoch at a time, interleaved. The
process runs on `--threads` cores (affinity, as in bench_step.py) with as many threads per
library; the table gives the process's CPU time / wall time per optimizer.
"""

import argparse
import os
import statistics
import time

from _common import cpu_name, limit_threads, per_backend


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"], default="all")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="CPU cores (affinity) and threads per library")
    args = parser.parse_args()
    if per_backend(args, __file__):
        return
    limit_threads(args.threads)
    run(args)


def run(args):
    import numpy as np

    import keras
    import keras_optx as ox

    class NoOp(keras.optimizers.Optimizer):
        """Leaves every variable as it is: the fit loop's cost without an update."""

        def update_step(self, gradient, variable, learning_rate):
            pass

        def _backend_update_step(self, grads, variables, learning_rate):
            pass

    backend = keras.backend.backend()
    batch, steps = 128, (10 if args.quick else 40)
    rounds = 3 if args.quick else 5
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * steps, 784)).astype("float32")
    y = rng.integers(0, 10, size=(batch * steps,))
    optimizers = {
        "no-op": lambda: NoOp(learning_rate=0.0),
        "keras SGD": lambda: keras.optimizers.SGD(0.01),
        "keras Adam": lambda: keras.optimizers.Adam(),
        "keras_optx ADAM": lambda: ox.ADAM(),
        "keras_optx Momentum": lambda: ox.Momentum(),
        "keras_optx NADAM": lambda: ox.NADAM(),
        "keras_optx chain(ClipNorm,WeightDecay,ADAM)": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM()),
    }
    models = {}
    for name, make in optimizers.items():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((784,)),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(10),
        ])
        model.compile(optimizer=make(), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # warm-up: trace, compile, build
        models[name] = model
    times = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
            cpu[name].append((time.process_time() - start_cpu) / steps)
            times[name].append((time.perf_counter() - start) / steps)
    # Shares are taken of CPU medians: on one core, the time the step had the core (steady on a shared machine).
    step = {name: (statistics.median(ts), min(ts), statistics.median(cpu[name])) for name, ts in times.items()}
    applied = _apply_times(models, rounds=9 if args.quick else 31) if backend == "torch" else {}
    print(f"\n### model.fit, {backend}: MLP 784-512-512-10, batch {batch}, {steps} steps/epoch, "
          f"median and min of {rounds} epochs; {cpu_name()}, {os.cpu_count()} cores, {args.threads} thread(s) on cores "
          f"{sorted(os.sched_getaffinity(0))}; load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + "\n")
    print("| optimizer | ms/step (wall median / min, CPU median) | steps/s (wall median) | share over no-op (CPU) "
          "| share over SGD (CPU) | apply CPU ms, share of CPU step | CPU/wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    noop, sgd = step["no-op"][2], step["keras SGD"][2]
    if applied:  # no fit row of its own: its apply time against keras_optx ADAM's fit step
        step[_FUSED] = step["keras_optx ADAM"]
    for name, (med, low, mid_cpu) in step.items():
        if name == _FUSED:
            print(f"| {name} | — | — | — | — | {applied[name] * 1e3:.2f}, {applied[name] / mid_cpu:.0%} | — |")
            continue
        direct = f"{applied[name] * 1e3:.2f}, {applied[name] / mid_cpu:.0%}" if name in applied else "—"
        ratio = sum(cpu[name]) / sum(times[name])
        print(f"| {name} | {med * 1e3:.2f} / {low * 1e3:.2f}, {mid_cpu * 1e3:.2f} | {1 / med:.1f} | {(mid_cpu - noop) / mid_cpu:.0%} "
              f"| {(mid_cpu - sgd) / mid_cpu:.0%} | {direct} | {ratio:.2f} |")
    if applied:
        print("\n\"apply CPU ms\": `optimizer.apply` alone on the model's variables with fixed gradients (median CPU time "
              "of interleaved calls), and its share of the CPU median of the fit step. The differences of whole epochs "
              "swing by several % on a shared machine; this one does not.")


def _apply_times(models, rounds):
    """Median CPU time of one eager `optimizer.apply` per model, on its own variables (torch: as fit calls it)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(1)
    calls = {}
    for name, model in models.items():
        variables = model.trainable_variables
        grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32") * 1e-3) for v in variables]
        calls[name] = (model.optimizer, grads, variables)
    import torch

    # The floor for comparison: torch's own fused Adam on tensors of the same shapes.
    params = [torch.nn.Parameter(torch.zeros(tuple(v.shape))) for v in variables]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    fused = torch.optim.Adam(params, lr=1e-3, fused=True)
    times = {name: [] for name in [*models, _FUSED]}
    for _ in range(rounds):
        for name, (optimizer, grads, variables) in calls.items():
            start = time.process_time()
            optimizer.apply(grads, variables)
            times[name].append(time.process_time() - start)
        start = time.process_time()
        fused.step()
        times[_FUSED].append(time.process_time() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


_FUSED = "torch.optim.Adam(fused=True), apply only"


if __name__ == "__main__":
    main()
