"""Time one optimizer step of every keras_optx rule next to its references, per backend.

    .venv/bin/python benchmarks/bench_step.py                    # all three backends (subprocesses)
    .venv/bin/python benchmarks/bench_step.py --backend torch    # one backend
    .venv/bin/python benchmarks/bench_step.py --quick            # smaller tensors, fewer rounds

One step = one update of every variable from fixed gradients. For each rule the cases
(keras_optx, Keras's built-in, torch.optim foreach/fused, optax) are built together and
timed interleaved, round after round, in one process; the table shows the median and
the minimum of the rounds and the ratios keras_optx / reference (on a loaded machine the
minimum is the steadier figure: contention only ever adds time).

- torch: `optimizer.apply(grads, variables)` eagerly; torch.optim's `step()` on the same
  sizes (foreach=True, and fused=True where torch has it).
- jax: keras_optx and Keras built-ins through `stateless_apply` under `jax.jit` with
  donated buffers; optax `update` + `apply_updates` under `jax.jit`, donated.
- tensorflow: `optimizer.apply` inside `tf.function(jit_compile=True)` (XLA, as `model.fit` compiles), for both sides.

Also measured: the machine's memory bandwidth (a large copy) and the floor it implies for
ADAM (reads p, g, m, v and writes p, m, v: 28 bytes per float32 parameter).
"""

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time

LAYOUTS = {"4x2.5M": (4, 10_000_000), "200x10k": (200, 2_000_000)}
QUICK_LAYOUTS = {"4x250k": (4, 1_000_000), "200x1k": (200, 200_000)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="10x smaller tensors, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (median taken)")
    parser.add_argument("--rules", default=None, help="comma-separated subset, e.g. ADAM,Momentum")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per library (default 1: stable on a shared machine)")
    args = parser.parse_args()
    if args.backend == "all":
        for backend in ("torch", "jax", "tensorflow"):
            rest = [a for a in sys.argv[1:] if a not in ("--backend", "all")]
            cmd = [sys.executable, __file__, "--backend", backend] + rest
            env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
            subprocess.run(cmd, env=env, check=True)
        return
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    limit_threads(args.threads)
    run(args)


def limit_threads(n):
    """Same thread budget for every library; oversubscribed OpenMP spin-waits wreck timings."""
    os.environ["OMP_NUM_THREADS"] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import keras  # noqa: F401  (imports the backend)

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)


# ------------------------------------------------------------------------------------
def run(args):
    import numpy as np

    import keras
    import keras_optx as ox

    backend = keras.backend.backend()
    layouts = QUICK_LAYOUTS if args.quick else LAYOUTS
    rounds = args.rounds or (5 if args.quick else 9)
    K = keras.optimizers

    # rule -> (keras_optx factory, Keras built-in factory or None, torch.optim name + kwargs, optax factory)
    rules = {
        "Descent": (lambda: ox.Descent(0.01), lambda: K.SGD(0.01), ("SGD", dict(lr=0.01)), "sgd"),
        "Momentum": (lambda: ox.Momentum(0.01, 0.9), lambda: K.SGD(0.01, momentum=0.9), ("SGD", dict(lr=0.01, momentum=0.9)), "momentum"),
        "Nesterov": (lambda: ox.Nesterov(0.01, 0.9), lambda: K.SGD(0.01, momentum=0.9, nesterov=True), ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)), "nesterov"),
        "RMSProp": (lambda: ox.RMSProp(), lambda: K.RMSprop(), ("RMSprop", dict(lr=0.001, alpha=0.9, eps=1e-8)), "rmsprop"),
        "ADAM": (lambda: ox.ADAM(), lambda: K.Adam(), ("Adam", dict(lr=0.001)), "adam"),
        "RADAM": (lambda: ox.RADAM(), None, ("RAdam", dict(lr=0.001)), "radam"),
        "AdaMax": (lambda: ox.AdaMax(), lambda: K.Adamax(), ("Adamax", dict(lr=0.001)), "adamax"),
        "ADAGrad": (lambda: ox.ADAGrad(), lambda: K.Adagrad(), ("Adagrad", dict(lr=0.1, eps=1e-8, initial_accumulator_value=1e-8)), "adagrad"),
        "ADADelta": (lambda: ox.ADADelta(), lambda: K.Adadelta(learning_rate=1.0, rho=0.9), ("Adadelta", dict(lr=1.0, rho=0.9)), "adadelta"),
        "AMSGrad": (lambda: ox.AMSGrad(), lambda: K.Adam(amsgrad=True), ("Adam", dict(lr=0.001, amsgrad=True)), "amsgrad"),
        "NADAM": (lambda: ox.NADAM(), lambda: K.Nadam(), ("NAdam", dict(lr=0.001)), "nadam"),
        "ADAMW": (lambda: ox.ADAMW(0.001, decay=1e-4), lambda: K.AdamW(weight_decay=0.1), ("AdamW", dict(lr=0.001, weight_decay=0.1)), "adamw"),
        # Rules without a Keras or torch.optim namesake are also timed next to keras_optx ADAM.
        "OADAM": (lambda: ox.OADAM(), None, None, "optimistic_adam"),
        "AdaBelief": (lambda: ox.AdaBelief(), None, None, "adabelief"),
        "Lion": (lambda: ox.Lion(), lambda: K.Lion(), None, "lion"),
        "Rprop": (lambda: ox.Rprop(), None, ("Rprop", dict(lr=0.001)), "rprop"),
        # keras_optx.torch: torch's rules with torch's names (ported PyTorch code).
        "torch.SGD(momentum)": (lambda: ox.torch.SGD(0.01, momentum=0.9), lambda: K.SGD(0.01, momentum=0.9), ("SGD", dict(lr=0.01, momentum=0.9)), "momentum"),
        "torch.Adam": (lambda: ox.torch.Adam(), lambda: K.Adam(), ("Adam", dict(lr=0.001)), "adam"),
        "torch.AdamW": (lambda: ox.torch.AdamW(weight_decay=0.1), lambda: K.AdamW(weight_decay=0.1), ("AdamW", dict(lr=0.001, weight_decay=0.1)), "adamw"),
        "chain(ClipNorm,WeightDecay,ADAM)": (
            lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM()),
            None, None, None,
        ),
    }
    if args.rules:
        wanted = set(args.rules.split(","))
        rules = {k: v for k, v in rules.items() if k in wanted or k.split("(")[0] in wanted}

    bandwidth = measure_bandwidth(np)
    header(backend, keras, bandwidth, rounds)
    harness = {"torch": TorchHarness, "jax": JaxHarness, "tensorflow": TfHarness}[backend](np)
    for layout, (count, total) in layouts.items():
        print(f"\n### {backend}, layout {layout}: {count} variables, {total / 1e6:g}M parameters\n")
        print("| rule | keras_optx ms (median / min) | reference | ref ms (median / min) | ratio of medians | ratio of minima |")
        print("|---|---:|---|---:|---:|---:|")
        adam_ms = None
        for name, (ours, builtin, torch_ref, optax_ref) in rules.items():
            cases = {"keras_optx": harness.keras_case(ours(), count, total)}
            if builtin is not None:
                cases["keras " + type(builtin()).__name__] = harness.keras_case(builtin(), count, total)
            for label, make in harness.references(torch_ref, optax_ref, count, total):
                cases[label] = make()
            if name.startswith("chain") or (builtin is None and torch_ref is None):
                cases["keras_optx ADAM"] = harness.keras_case(ox.ADAM(), count, total)
            times = interleave(cases, rounds, harness.sync)
            mine = times.pop("keras_optx")
            if name == "ADAM":
                adam_ms = mine
            for label, ms in times.items():
                print(f"| {name} | {mine[0]:.2f} / {mine[1]:.2f} | {label} | {ms[0]:.2f} / {ms[1]:.2f} | {mine[0] / ms[0]:.2f} | {mine[1] / ms[1]:.2f} |")
            cases.clear()
            gc.collect()
        if adam_ms is not None:
            floor = 28 * total / bandwidth * 1e3
            print(f"| ADAM | {adam_ms[0]:.2f} / {adam_ms[1]:.2f} | bandwidth floor (28 B/param at {bandwidth / 1e9:.1f} GB/s) | {floor:.2f} | {adam_ms[0] / floor:.2f} | {adam_ms[1] / floor:.2f} |")


def interleave(cases, rounds, sync):
    """Median milliseconds per case; cases alternate within each round."""
    for step in cases.values():  # warm-up: compile, allocate state
        for _ in range(3):
            step()
        sync()
    times = {label: [] for label in cases}
    for _ in range(rounds):
        for label, step in cases.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[label].append(time.perf_counter() - start)
    return {label: (statistics.median(ts) * 1e3, min(ts) * 1e3) for label, ts in times.items()}


def measure_bandwidth(np):
    """Bytes per second of a large copy (read + write), best of several."""
    a = np.ones(50_000_000, dtype=np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best


def header(backend, keras, bandwidth, rounds):
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    versions = {"keras": keras.__version__}
    for mod in ("torch", "jax", "tensorflow", "optax"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    print(f"\n## backend {backend}: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"memory bandwidth (numpy copy, read+write): {bandwidth / 1e9:.1f} GB/s; median of {rounds} interleaved rounds; "
          f"{os.environ.get('OMP_NUM_THREADS')} thread(s) per library")


def _arrays(np, count, total, seed):
    rng = np.random.default_rng(seed)
    size = total // count
    return [rng.normal(0, 0.1, size).astype("float32") for _ in range(count)]


class TorchHarness:
    def __init__(self, np):
        import torch

        self.np, self.torch = np, torch

    def sync(self):
        pass

    def keras_case(self, opt, count, total):
        import keras

        variables = [keras.Variable(a) for a in _arrays(self.np, count, total, 0)]
        grads = [self.torch.from_numpy(a) for a in _arrays(self.np, count, total, 1)]
        return lambda: opt.apply(grads, variables)

    def references(self, torch_ref, optax_ref, count, total):
        if torch_ref is None:
            return
        name, kwargs = torch_ref
        cls = getattr(self.torch.optim, name)
        kinds = ["foreach"] + (["fused"] if name in ("SGD", "Adam", "AdamW", "Adagrad") else [])
        for kind in kinds:
            yield f"torch.optim.{name} {kind}", lambda kind=kind: self._torch_case(cls, kwargs, kind, count, total)

    def _torch_case(self, cls, kwargs, kind, count, total):
        torch = self.torch
        params = [torch.nn.Parameter(torch.from_numpy(a)) for a in _arrays(self.np, count, total, 0)]
        for p, g in zip(params, _arrays(self.np, count, total, 1)):
            p.grad = torch.from_numpy(g)
        opt = cls(params, **kwargs, **{kind: True})
        return opt.step


class JaxHarness:
    def __init__(self, np):
        import jax

        self.np, self.jax = np, jax

    def sync(self):
        pass  # each step blocks on its own outputs

    def keras_case(self, opt, count, total):
        import keras

        jax = self.jax
        variables = [keras.Variable(a) for a in _arrays(self.np, count, total, 0)]
        grads = [jax.numpy.asarray(a) for a in _arrays(self.np, count, total, 1)]
        opt.build(variables)
        state = {"opt": [v.value for v in opt.variables], "train": [v.value for v in variables]}
        # Outputs in the order of the donated inputs (optimizer, then model variables): XLA pairs
        # donated buffers with outputs by position, and a swapped order costs a copy of every array.
        apply = jax.jit(lambda opt_vars, train_vars, g: opt.stateless_apply(opt_vars, g, train_vars)[::-1], donate_argnums=(0, 1))

        def step():
            opt_vars, train = apply(state["opt"], state["train"], grads)
            state["opt"], state["train"] = opt_vars, train
            jax.block_until_ready(train)

        return step

    def references(self, torch_ref, optax_ref, count, total):
        if optax_ref is None:
            return
        yield f"optax.{optax_ref}", lambda: self._optax_case(optax_ref, count, total)

    def _optax_case(self, name, count, total):
        import optax

        jax = self.jax
        make = {
            "sgd": lambda: optax.sgd(0.01),
            "momentum": lambda: optax.sgd(0.01, momentum=0.9),
            "nesterov": lambda: optax.sgd(0.01, momentum=0.9, nesterov=True),
            "rmsprop": lambda: optax.rmsprop(0.001, decay=0.9, eps=1e-8),
            "adam": lambda: optax.adam(0.001),
            "radam": lambda: optax.radam(0.001),
            "adamax": lambda: optax.adamax(0.001),
            "adagrad": lambda: optax.adagrad(0.1, initial_accumulator_value=1e-8, eps=1e-8),
            "adadelta": lambda: optax.adadelta(1.0, rho=0.9),
            "amsgrad": lambda: optax.amsgrad(0.001),
            "nadam": lambda: optax.nadam(0.001),
            "adamw": lambda: optax.adamw(0.001, weight_decay=0.1),
            "optimistic_adam": lambda: optax.optimistic_adam_v2(0.001, b1=0.5, b2=0.9, nesterov=False),
            "adabelief": lambda: optax.adabelief(0.001),  # bias-corrected, ϵ in s: Flux v0.12's is not
            "lion": lambda: optax.lion(0.001),
            "rprop": lambda: optax.rprop(0.001),
        }[name]()
        params = [jax.numpy.asarray(a) for a in _arrays(self.np, count, total, 0)]
        grads = [jax.numpy.asarray(a) for a in _arrays(self.np, count, total, 1)]

        def update(params, opt_state, grads):
            updates, opt_state = make.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        apply = jax.jit(update, donate_argnums=(0, 1))
        state = {"params": params, "opt": make.init(params)}

        def step():
            state["params"], state["opt"] = apply(state["params"], state["opt"], grads)
            jax.block_until_ready(state["params"])

        return step


class TfHarness:
    def __init__(self, np):
        import tensorflow as tf

        self.np, self.tf = np, tf

    def sync(self):
        pass

    def keras_case(self, opt, count, total):
        import keras

        tf = self.tf
        variables = [keras.Variable(a) for a in _arrays(self.np, count, total, 0)]
        grads = [tf.constant(a) for a in _arrays(self.np, count, total, 1)]
        opt.build(variables)
        # XLA, as `model.fit` compiles by default on TensorFlow (jit_compile="auto"); CPU execution is synchronous.
        return tf.function(lambda: opt.apply(grads, variables), jit_compile=True)

    def references(self, torch_ref, optax_ref, count, total):
        return iter(())


if __name__ == "__main__":
    main()
