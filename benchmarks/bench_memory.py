"""Optimizer state memory: bytes kept per parameter, per backend, next to Keras, optax and torch.optim.

    .venv/bin/python benchmarks/bench_memory.py                    # all three backends (subprocesses)
    .venv/bin/python benchmarks/bench_memory.py --backend jax      # one backend
    .venv/bin/python benchmarks/bench_memory.py --quick            # small model, few rounds (the test suite)

For every keras_optx rule (and four chains, and keras_optx.torch's optimizers), on a model of
`count` float32 variables, after a few steps:

- **state B/param**: bytes of every optimizer variable (slots, `iterations`, rates) over the
  number of parameters; float32 ADAM keeps 8 (two moments).
- **bfloat16 state**: the same with `state_dtype="bfloat16"` where the rule takes it.
- **per device, shard_state** (jax; 8 host devices, `keras.distribution.DataParallel`): the
  bytes on the fullest device with `shard_state=True`, over the parameters (replicated: the total).
- **kept beyond state** (torch): bytes of the tensors keras_optx keeps between steps besides
  its variables (scratch buffers of its fast paths), in parameter-sized buffers.
- **Training in bfloat16** (a second table): weights + state + Kahan compensation bytes per parameter
  for float32 training and for bfloat16 weights with bfloat16 state under each `rounding` (ADAM: 12 → 6 → 8).
- **step ms**: median step time (one update of every variable from fixed gradients) as
  bench_step.py times it (jax: jitted `stateless_apply`, tensorflow: `tf.function(jit_compile)`,
  torch: eager `apply`). With shard_state on 8 host devices the step is one jitted update
  over 8 CPU "devices" sharing this machine's cores: a placement check, not a speed claim.

References: Keras's built-in of the same rule, optax (jax: bytes of its state pytree) and
torch.optim (torch: bytes of `optimizer.state`), the same sizes.

The accuracy cost of bfloat16 state (`--accuracy`): keras_optx.compare's MLP on scikit-learn's
digits, trained with float32 and with bfloat16 state, final training loss and test accuracy.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

from _common import limit_threads, machine, optax_reference, optax_step, per_backend

SIZES = {"full": (8, 4_000_000), "quick": (4, 64_000)}  # (variables, parameters)
DEVICES = 8


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="a small model, few rounds, a subset of the rules")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--accuracy", action="store_true", help="also train compare's MLP with float32 vs bfloat16 state")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per library (default 1: stable on a shared machine)")
    args = parser.parse_args()
    if per_backend(args, __file__, order=("jax", "torch", "tensorflow")):
        return
    if args.backend == "jax":  # before jax is imported
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    limit_threads(args.threads)  # the same thread budget as bench_step.py
    run(args)


def rule_table(quick):
    import keras

    import keras_optx as ox

    K = keras.optimizers
    # name -> (keras_optx factory taking **scale keywords, Keras built-in or None, torch.optim (name, kwargs) or None, optax or None)
    rules = {
        "Descent": (lambda **k: ox.Descent(0.01, **k), lambda: K.SGD(0.01), ("SGD", {"lr": 0.01}), "sgd"),
        "Momentum": (lambda **k: ox.Momentum(0.01, 0.9, **k), lambda: K.SGD(0.01, momentum=0.9), ("SGD", {"lr": 0.01, "momentum": 0.9}), "momentum"),
        "Nesterov": (lambda **k: ox.Nesterov(0.01, 0.9, **k), lambda: K.SGD(0.01, momentum=0.9, nesterov=True), ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}), "nesterov"),
        "RMSProp": (lambda **k: ox.RMSProp(**k), lambda: K.RMSprop(), ("RMSprop", {"lr": 0.001}), "rmsprop"),
        "ADAM": (lambda **k: ox.ADAM(**k), lambda: K.Adam(), ("Adam", {"lr": 0.001}), "adam"),
        "RADAM": (lambda **k: ox.RADAM(**k), None, ("RAdam", {"lr": 0.001}), "radam"),
        "AdaMax": (lambda **k: ox.AdaMax(**k), lambda: K.Adamax(), ("Adamax", {"lr": 0.001}), "adamax"),
        "ADAGrad": (lambda **k: ox.ADAGrad(**k), lambda: K.Adagrad(), ("Adagrad", {"lr": 0.1}), "adagrad"),
        "ADADelta": (lambda **k: ox.ADADelta(**k), lambda: K.Adadelta(learning_rate=1.0, rho=0.9), ("Adadelta", {"lr": 1.0, "rho": 0.9}), "adadelta"),
        "AMSGrad": (lambda **k: ox.AMSGrad(**k), lambda: K.Adam(amsgrad=True), ("Adam", {"lr": 0.001, "amsgrad": True}), "amsgrad"),
        "NADAM": (lambda **k: ox.NADAM(**k), lambda: K.Nadam(), ("NAdam", {"lr": 0.001}), "nadam"),
        "ADAMW": (lambda **k: ox.ADAMW(0.001, decay=1e-4, **k), lambda: K.AdamW(weight_decay=0.1), ("AdamW", {"lr": 0.001, "weight_decay": 0.1}), "adamw"),
        "OADAM": (lambda **k: ox.OADAM(**k), None, None, "optimistic_adam"),
        "AdaBelief": (lambda **k: ox.AdaBelief(**k), None, None, "adabelief"),
        "Lion": (lambda **k: ox.Lion(**k), lambda: K.Lion(), None, "lion"),
        "Rprop": (lambda **k: ox.Rprop(**k), None, ("Rprop", {"lr": 0.001}), "rprop"),
        # On these (n, 8) matrices: one buffer per matrix. torch.optim.Muon has no foreach variant.
        "Muon": (lambda **k: ox.Muon(**k), lambda: K.Muon(weight_decay=0.0), ("Muon", {"lr": 0.02, "weight_decay": 0.0, "foreach": None}),
                 "contrib.muon"),
        # max_precondition_dim=1000 on both sides: the quick model's (2000, 8) matrices get the 8×8 factor only.
        "SOAP": (lambda **k: ox.SOAP(max_precondition_dim=1000, **k), None,
                 ("pytorch_optimizer.SOAP", {"lr": 3e-3, "weight_decay": 0.0, "max_precondition_dim": 1000, "foreach": None}), None),
        "chain(ClipNorm,WeightDecay,ADAM)": (
            lambda **k: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM(), **k), None, None, None),
        "chain(ClipNorm,RMSProp)": (lambda **k: ox.Optimiser(ox.ClipNorm(1.0), ox.RMSProp(), **k), None, None, None),
        "chain(ClipNorm,NADAM)": (lambda **k: ox.Optimiser(ox.ClipNorm(1.0), ox.NADAM(), **k), None, None, None),
        "chain(ClipValue,ADADelta)": (lambda **k: ox.Optimiser(ox.ClipValue(0.5), ox.ADADelta(), **k), None, None, None),
        "torch.SGD(momentum)": (lambda **k: ox.torch.SGD(0.01, momentum=0.9, **k), None, None, None),
        "torch.Adam": (lambda **k: ox.torch.Adam(**k), None, None, None),
        "torch.AdamW": (lambda **k: ox.torch.AdamW(**k), None, None, None),
    }
    if quick:
        rules = {k: v for k, v in rules.items() if k in ("Momentum", "ADAM", "ADADelta", "chain(ClipNorm,WeightDecay,ADAM)", "chain(ClipNorm,RMSProp)",
                                                       "chain(ClipNorm,NADAM)", "chain(ClipValue,ADADelta)", "torch.Adam", "Muon", "SOAP")}
    return rules


def arrays(np, count, total, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.1, (total // count // 8, 8)).astype("float32") for _ in range(count)]  # 8 divides dim 0


def timed(step, rounds):
    for _ in range(2):
        step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def run(args):
    import numpy as np

    import keras

    backend = keras.backend.backend()
    count, total = SIZES["quick" if args.quick else "full"]
    rounds = args.rounds or (3 if args.quick else 7)
    harness = {"jax": Jax, "torch": Torch, "tensorflow": Tf}[backend](np, count, total)
    header(backend, keras, count, total, rounds)
    print("| rule | implementation | state B/param | bfloat16 state B/param | per device B/param, shard_state "
          f"({DEVICES} devices) | kept beyond state (param-sized buffers) | step ms | step ms bfloat16 | step ms shard_state |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (ours, builtin, torch_ref, optax_ref) in rule_table(args.quick).items():
        row = harness.keras_row(ours, rounds)
        print(f"| {name} | keras_optx | {fmt(row['state'])} | {fmt(row.get('bf16'))} | {fmt(row.get('sharded'))} | "
              f"{fmt(row.get('kept'), '{:.2f}')} | {fmt(row['ms'], '{:.2f}')} | {fmt(row.get('bf16_ms'), '{:.2f}')} | "
              f"{fmt(row.get('sharded_ms'), '{:.2f}')} |")
        refs = []
        if builtin is not None:
            refs.append(("keras " + type(builtin()).__name__, lambda: harness.keras_row(lambda **k: builtin(), rounds, scale=False)))
        if torch_ref is not None and backend == "torch":
            label = torch_ref[0] if "." in torch_ref[0] else f"torch.optim.{torch_ref[0]}"
            refs.append((label, lambda: harness.torch_row(*torch_ref, rounds)))
        if optax_ref is not None and backend == "jax":
            refs.append((f"optax.{optax_ref}", lambda: harness.optax_row(optax_ref, rounds)))
        for label, measure in refs:
            ref = measure()
            print(f"| {name} | {label} | {fmt(ref['state'])} | – | – | {fmt(ref.get('kept'), '{:.2f}')} | {fmt(ref['ms'], '{:.2f}')} | – | – |")
    low_precision_table(np, count, total)
    if args.accuracy:
        accuracy(args.quick)


def low_precision_table(np, count, total):
    """Bytes per parameter of the weights and the optimizer together, for float32 training and for
    training in bfloat16 (`dtype="bfloat16"` weights, `state_dtype="bfloat16"`), with each `rounding`;
    gradients aside. Counted from the variables (`build` makes them all)."""
    import keras

    import keras_optx as ox

    print(f"\n### Training in bfloat16: weights and optimizer state, bytes per parameter ({total / 1e6:g}M parameters)\n")
    print("| rule | weights, state, rounding | weights B/param | state B/param | compensation B/param | total B/param |")
    print("|---|---|---:|---:|---:|---:|")
    rules = {"ADAM": lambda **k: ox.ADAM(**k), "chain(ClipNorm,ADAM)": lambda **k: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(), **k)}
    settings = [("float32", None, "nearest"), ("bfloat16", "bfloat16", "nearest"), ("bfloat16", "bfloat16", "kahan"),
                ("bfloat16", "bfloat16", "stochastic")]
    for name, make in rules.items():
        for dtype, state_dtype, rounding in settings:
            variables = [keras.Variable(a, dtype=dtype) for a in arrays(np, count, total, 0)]
            opt = make(state_dtype=state_dtype, rounding=rounding)
            opt.build(variables)
            compensation = [v for v in (opt._compensation or []) if v is not None]
            state = [v for v in opt.variables if not any(v is c for c in compensation)]
            weights, kept, kahan = (state_bytes(vs) / total for vs in (variables, state, compensation))
            label = f"{dtype} weights, {state_dtype or 'float32'} state, {rounding}"
            print(f"| {name} | {label} | {weights:.2f} | {kept:.2f} | {kahan:.2f} | {weights + kept + kahan:.2f} |")


def _takes_bfloat16(make):
    try:
        make(state_dtype="bfloat16")
    except ValueError:  # refused by the rule (ADAGrad, keras_optx.torch, rules without state)
        return False
    return True


def fmt(value, pattern="{:.2f}"):
    return "–" if value is None else pattern.format(value)


def header(backend, keras, count, total, rounds):
    print(machine(backend, keras))
    print(f"{count} float32 variables, {total / 1e6:g}M parameters; median of {rounds} steps; "
          f"{os.environ.get('OMP_NUM_THREADS')} thread(s) per library\n")


def state_bytes(variables):
    return sum(int(np_size(v)) for v in variables)


def np_size(variable):
    import numpy as np

    import keras

    return np.prod(variable.shape, dtype=np.int64) * np.dtype(keras.backend.standardize_dtype(variable.dtype)).itemsize


class Jax:
    def __init__(self, np, count, total):
        import jax

        self.np, self.jax, self.count, self.total = np, jax, count, total

    def _case(self, make_opt, distribution=None):
        import keras

        jax = self.jax

        def make():
            variables = [keras.Variable(a) for a in arrays(self.np, self.count, self.total, 0)]
            opt = make_opt()  # under the distribution: its `iterations` are placed by it too
            opt.build(variables)
            return opt, variables

        if distribution is None:
            opt, variables = make()
        else:
            with distribution.scope():
                opt, variables = make()
        grads = [jax.numpy.asarray(a) for a in arrays(self.np, self.count, self.total, 1)]
        if distribution is not None:
            grads = [jax.device_put(g, v.value.sharding) for g, v in zip(grads, variables)]
        state = {"opt": [v.value for v in opt.variables], "train": [v.value for v in variables]}
        shardings = ([v.value.sharding for v in opt.variables], [v.value.sharding for v in variables])
        apply = jax.jit(lambda o, t, g: opt.stateless_apply(o, g, t)[::-1], donate_argnums=(0, 1), out_shardings=shardings)

        def step():
            state["opt"], state["train"] = apply(state["opt"], state["train"], grads)
            jax.block_until_ready(state["train"])

        return step, state

    def keras_row(self, make, rounds, scale=True):
        import keras

        jax = self.jax
        step, state = self._case(make)
        row = {"ms": timed(step, rounds), "state": sum(a.nbytes for a in state["opt"]) / self.total}
        if scale:
            if _takes_bfloat16(make):
                step, state = self._case(lambda: make(state_dtype="bfloat16"))
                row["bf16_ms"], row["bf16"] = timed(step, rounds), sum(a.nbytes for a in state["opt"]) / self.total
            distribution = keras.distribution.DataParallel(devices=jax.devices())
            step, state = self._case(lambda: make(shard_state=True), distribution)
            row["sharded_ms"] = timed(step, rounds)
            per_device = {}
            for a in state["opt"]:
                for shard in a.addressable_shards:
                    per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
            row["sharded"] = max(per_device.values()) / self.total
        return row

    def optax_row(self, name, rounds):
        params = [self.jax.numpy.asarray(a) for a in arrays(self.np, self.count, self.total, 0)]
        grads = [self.jax.numpy.asarray(a) for a in arrays(self.np, self.count, self.total, 1)]
        step, state = optax_step(self.jax, optax_reference(name), params, grads)
        ms = timed(step, rounds)
        return {"ms": ms, "state": sum(a.nbytes for a in self.jax.tree_util.tree_leaves(state["opt"])) / self.total}


class _Eager:
    """A backend whose row is its eager `_row` (torch) or `tf.function` one (tensorflow), twice
    where the rule takes bfloat16 state; no sharded run (jax only)."""

    def keras_row(self, make, rounds, scale=True):
        row = self._row(make(), rounds)
        if scale and _takes_bfloat16(make):
            bf16 = self._row(make(state_dtype="bfloat16"), rounds)
            row["bf16"], row["bf16_ms"] = bf16["state"], bf16["ms"]
        return row


class Torch(_Eager):
    def __init__(self, np, count, total):
        import torch

        self.np, self.torch, self.count, self.total = np, torch, count, total

    def _row(self, opt, rounds):
        import keras

        from keras_optx._backends.torch.buffers import kept_bytes

        variables = [keras.Variable(a) for a in arrays(self.np, self.count, self.total, 0)]
        grads = [self.torch.from_numpy(a) for a in arrays(self.np, self.count, self.total, 1)]
        opt.build(variables)
        ms = timed(lambda: opt.apply(grads, variables), rounds)
        return {"ms": ms, "state": state_bytes(opt.variables) / self.total, "kept": kept_bytes(opt, variables) / (4 * self.total)}

    def torch_row(self, name, kwargs, rounds):
        torch = self.torch
        params = [torch.nn.Parameter(torch.from_numpy(a)) for a in arrays(self.np, self.count, self.total, 0)]
        for p, g in zip(params, arrays(self.np, self.count, self.total, 1)):
            p.grad = torch.from_numpy(g)
        kwargs = {"foreach": True, **kwargs}
        module, _, class_name = name.rpartition(".")  # torch.optim's, or a package's ("pytorch_optimizer.SOAP")
        cls = getattr(importlib.import_module(module) if module else torch.optim, class_name)
        opt = cls(params, **{k: v for k, v in kwargs.items() if v is not None})
        ms = timed(opt.step, rounds)
        state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in _tensors(s.values()))
        return {"ms": ms, "state": state / self.total}


def _tensors(values):
    """The tensors in an optimizer's per-parameter state, in lists too (pytorch_optimizer.SOAP's factors)."""
    import torch

    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


class Tf(_Eager):
    def __init__(self, np, count, total):
        import tensorflow as tf

        self.np, self.tf, self.count, self.total = np, tf, count, total

    def _row(self, opt, rounds):
        import keras

        tf = self.tf
        variables = [keras.Variable(a) for a in arrays(self.np, self.count, self.total, 0)]
        grads = [tf.constant(a) for a in arrays(self.np, self.count, self.total, 1)]
        opt.build(variables)
        step = tf.function(lambda: opt.apply(grads, variables), jit_compile=True)
        return {"ms": timed(step, rounds), "state": state_bytes(opt.variables) / self.total}


def accuracy(quick):
    """compare's MLP on digits with float32 and bfloat16 state: final training loss, test accuracy."""
    import keras_optx as ox
    from keras_optx import compare

    epochs = 2 if quick else 20
    print(f"\n### Accuracy cost of bfloat16 state: keras_optx.compare's MLP on digits, {epochs} epochs, seed 0\n")
    print("| rule | state | final training loss | test accuracy |")
    print("|---|---|---:|---:|")
    rules = {"ADAM": lambda **k: ox.ADAM(**k), "ADAMW": lambda **k: ox.ADAMW(0.001, decay=1e-4, **k),
             "Momentum": lambda **k: ox.Momentum(**k), "RMSProp": lambda **k: ox.RMSProp(**k)}
    if quick:
        rules = {"ADAM": rules["ADAM"]}
    original = compare.build_optimizer
    for name, make in rules.items():
        for dtype in (None, "bfloat16"):
            compare.build_optimizer = lambda spec, make=make, dtype=dtype: make(state_dtype=dtype)
            try:
                (result,) = compare.run([name.lower()], epochs=epochs)
            finally:
                compare.build_optimizer = original
            print(f"| {name} | {dtype or 'float32'} | {result.losses[-1]:.4f} | {result.accuracy:.4f} |")


if __name__ == "__main__":
    main()
