"""Time one optimizer step of every keras_optx rule next to its references, per backend.

    .venv/bin/python benchmarks/bench_step.py                    # all three backends (subprocesses), 1 core
    .venv/bin/python benchmarks/bench_step.py --backend torch    # one backend
    .venv/bin/python benchmarks/bench_step.py --threads 2        # 2 cores (affinity) and 2 threads per library
    .venv/bin/python benchmarks/bench_step.py --quick            # smaller tensors, fewer rounds

One step = one update of every variable from fixed gradients. For each rule the cases
(keras_optx, Keras's built-in, torch.optim foreach/fused, optax, the memory floor, the empty
step) are built together and timed interleaved, round after round, in one process; the table
shows the median and the minimum of the rounds, the process's CPU time / wall time over the
timed rounds, and the ratios keras_optx / reference (on a loaded machine the minimum is the
steadier figure: contention only ever adds time).

Threads: the process runs on `--threads` cores (`os.sched_setaffinity`, set before any library
starts a thread pool), and torch, TensorFlow and OpenMP are set to as many threads. CPU/wall
near 1.0 with one core means the case had the core to itself; below 1.0 it waited for it (the
machine was busy); above 1.0 more cores worked than were stated (it cannot, with affinity).

- torch: `optimizer.apply(grads, variables)` eagerly; torch.optim's `step()` on the same
  sizes (foreach=True, and fused=True where torch has it).
- jax: keras_optx and Keras built-ins through `stateless_apply` under `jax.jit` with
  donated buffers; optax `update` + `apply_updates` under `jax.jit`, donated. The "empty
  step" passes the same arrays through a jit that computes nothing: the call's own cost.
- tensorflow: `optimizer.apply` inside `tf.function(jit_compile=True)` (XLA, as `model.fit`
  compiles), for both sides; the empty step reads one element of each of the same arrays.

Memory floor (Descent, Momentum, Nesterov, ADAM): the time of `x += y` in numpy over as many
bytes as the rule must move at least (ADAM: reads p, g, m, v and writes p, m, v, 28 bytes per
float32 parameter; Momentum and Nesterov 20; Descent 12), on the same cores, interleaved.
"""

import argparse
import gc
import glob
import importlib
import os
import statistics
import time

from _common import limit_threads, machine, optax_reference, optax_step, per_backend

LAYOUTS = {"4x2.5M": (4, 10_000_000), "200x10k": (200, 2_000_000)}
QUICK_LAYOUTS = {"4x250k": (4, 1_000_000), "200x1k": (200, 200_000)}
# Rules that update matrices only (keras_optx._catalog.MATRIX_RULES) are timed on a transformer's
# matrices instead: GPT-2 small's 24 of 768x768 (attention, per head block) and 12 of 768x3072 (MLP).
MATRIX_LAYOUTS = {"24x768x768+12x768x3072": [(768, 768)] * 24 + [(768, 3072)] * 12}
QUICK_MATRIX_LAYOUTS = {"4x64x64+2x64x256": [(64, 64)] * 4 + [(64, 256)] * 2}
ON_MATRICES = ("SOAP",)  # also timed on MATRIX_LAYOUTS: on vectors SOAP is Adam
NO_FOREACH = {"Muon", "pytorch_optimizer.SOAP"}  # torch.optim classes without foreach/fused variants: their one (for-loop) step is timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["jax", "torch", "tensorflow", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="10x smaller tensors, fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per case (median taken)")
    parser.add_argument("--rules", default=None, help="comma-separated subset, e.g. ADAM,Momentum")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU cores the process may run on (affinity), and threads per library (default 1)")
    args = parser.parse_args()
    if per_backend(args, __file__):
        return
    limit_threads(args.threads)
    run(args)


def thread_check():
    """The cores every thread of this process may run on, read back from /proc (one line)."""
    allowed = {}
    for status in glob.glob("/proc/self/task/*/status"):
        try:
            text = open(status).read()
        except OSError:  # the thread ended
            continue
        cores = text.split("Cpus_allowed_list:", 1)[1].split()[0]
        allowed[cores] = allowed.get(cores, 0) + 1
    return ", ".join(f"{count} threads on core(s) {cores}" for cores, count in sorted(allowed.items()))


# ------------------------------------------------------------------------------------
def run(args):
    import numpy as np

    import keras
    import keras_optx as ox
    from keras_optx._catalog import EXTRA_RULES, FLUX_RULES, MATRIX_RULES, TORCH_RULES

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
        "Lookahead(ADAM)": (lambda: ox.Lookahead(ox.ADAM()), None, None, None),
        # The 2024 rules against torch.optim.Adam (foreach and fused): none of them is in torch.optim.
        "ADOPT": (lambda: ox.ADOPT(), None, ("Adam", dict(lr=0.001)), "contrib.adopt"),
        "AdEMAMix": (lambda: ox.AdEMAMix(), None, ("Adam", dict(lr=0.001)), "contrib.ademamix"),
        "Prodigy": (lambda: ox.Prodigy(), None, ("Adam", dict(lr=0.001)), "contrib.prodigy"),
        "Cautious(Lion)": (lambda: ox.Cautious(ox.Lion()), lambda: K.Lion(), ("Adam", dict(lr=0.001)), None),
        # Matrix rules (MATRIX_LAYOUTS): Newton–Schulz in bfloat16 on both sides; Keras's Muon runs it in float32.
        "Muon": (lambda: ox.Muon(0.02), lambda: K.Muon(0.02, weight_decay=0.0), ("Muon", dict(lr=0.02, weight_decay=0.0)),
                 "contrib.muon"),
        "SOAP": (lambda: ox.SOAP(), None, ("pytorch_optimizer.SOAP", dict(lr=3e-3, weight_decay=0.0)), None),
        # Schedule-free: the reference is the schedulefree package's torch optimizer (foreach), in train mode.
        "ScheduleFreeAdamW": (lambda: ox.ScheduleFreeAdamW(), None, ("schedulefree.AdamWScheduleFree", dict(lr=0.0025)),
                              "contrib.schedule_free_adamw"),
        "ScheduleFreeSGD": (lambda: ox.ScheduleFreeSGD(), None, ("schedulefree.SGDScheduleFree", dict(lr=1.0)),
                            "contrib.schedule_free_sgd"),
        # keras_optx.torch: torch's rules with torch's names (ported PyTorch code).
        "torch.SGD(momentum)": (lambda: ox.torch.SGD(0.01, momentum=0.9), lambda: K.SGD(0.01, momentum=0.9), ("SGD", dict(lr=0.01, momentum=0.9)), "momentum"),
        "torch.Adam": (lambda: ox.torch.Adam(), lambda: K.Adam(), ("Adam", dict(lr=0.001)), "adam"),
        "torch.AdamW": (lambda: ox.torch.AdamW(weight_decay=0.1), lambda: K.AdamW(weight_decay=0.1), ("AdamW", dict(lr=0.001, weight_decay=0.1)), "adamw"),
        "chain(ClipNorm,WeightDecay,ADAM)": (
            lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM()),
            None, None, None,
        ),
    }
    # Every rule keras_optx lists (keras_optx/_catalog.py, as `compare` does) is timed: those above
    # against their references, any other alone.
    timed = {label.split("(")[0] for label in rules}
    listed = [(c, getattr(ox, c)) for c in (*FLUX_RULES.values(), *EXTRA_RULES.values())]
    for label, make in listed + [(f"torch.{c}", getattr(ox.torch, c)) for c in TORCH_RULES.values()]:
        if label not in timed:
            rules[label] = (make, None, None, None)
    if args.rules:
        wanted = set(args.rules.split(","))
        rules = {k: v for k, v in rules.items() if k in wanted or k.split("(")[0] in wanted}

    harness = {"torch": TorchHarness, "jax": JaxHarness, "tensorflow": TfHarness}[backend](np)
    header(backend, keras, rounds, args.threads, harness.describe())
    matrix_rules = {k: v for k, v in rules.items() if k.split("(")[0] in (*MATRIX_RULES, *ON_MATRICES)}
    rules = {k: v for k, v in rules.items() if k not in matrix_rules}
    matrix_layouts = QUICK_MATRIX_LAYOUTS if args.quick else MATRIX_LAYOUTS
    sections = [(rules, layout, count, total) for layout, (count, total) in layouts.items()]
    sections += [(matrix_rules, layout, shapes, sum(a * b for a, b in shapes)) for layout, shapes in matrix_layouts.items()
                 if matrix_rules]
    for rules, layout, count, total in sections:
        if not rules:
            continue
        count_text = count if isinstance(count, int) else len(count)
        print(f"\n### {backend}, layout {layout}: {count_text} variables, {total / 1e6:g}M parameters\n")
        print("| rule | keras_optx ms (wall median / min, CPU median) | reference | ref ms (wall median / min, CPU median) "
              "| CPU/wall (keras_optx / ref) | ratio of wall medians | ratio of wall minima | ratio of CPU medians |")
        print("|---|---:|---|---:|---:|---:|---:|---:|")
        for name, (ours, builtin, torch_ref, optax_ref) in rules.items():
            step = harness.keras_case(ours(), count, total)
            cases = {"keras_optx": step}
            if getattr(step, "empty", None) is not None:
                cases[f"empty step, same {step.arrays} arrays"] = step.empty
            if builtin is not None:
                cases["keras " + type(builtin()).__name__] = harness.keras_case(builtin(), count, total)
            for label, make in harness.references(torch_ref, optax_ref, count, total):
                cases[label] = make()
            if name.startswith("chain") or (builtin is None and torch_ref is None):
                cases["keras_optx ADAM"] = harness.keras_case(ox.ADAM(), count, total)
            floor = None
            if name in FLOOR_BYTES:
                floor = harness.floor(FLOOR_BYTES[name], total, args.threads)
                cases["floor"] = floor
            times = interleave(cases, rounds, harness.sync)
            mine = times.pop("keras_optx")
            for label, ms in times.items():
                if label == "floor":
                    cached = " (in L3 cache: not a memory floor)" if 2 * floor.bytes / 3 <= l3_bytes() and not harness.gpu else ""
                    where = "GPU" if harness.gpu else f"{args.threads} core(s)"
                    label = (f"memory floor: x += y, {FLOOR_BYTES[name]} B/param, {where}, "
                             f"{floor.bytes / ms[1] / 1e6:.1f} GB/s at the minimum{cached}")
                print(f"| {name} | {mine[0]:.2f} / {mine[1]:.2f}, {mine[2]:.2f} | {label} | {ms[0]:.2f} / {ms[1]:.2f}, {ms[2]:.2f} "
                      f"| {mine[3]:.2f} / {ms[3]:.2f} | {mine[0] / ms[0]:.2f} | {mine[1] / ms[1]:.2f} | {mine[2] / ms[2]:.2f} |")
            cases.clear()
            floor = None
            gc.collect()
    print(f"\nthreads at the end of the run: {thread_check()}; load average at the end "
          + ", ".join(f"{x:.2f}" for x in os.getloadavg()))


# Least memory traffic of one step, bytes per float32 parameter: Descent reads p, g and writes p;
# Momentum (and Nesterov) read p, g, v and write p, v; ADAM reads p, g, m, v and writes p, m, v.
FLOOR_BYTES = {"Descent": 12, "Momentum": 20, "Nesterov": 20, "ADAM": 28}


def interleave(cases, rounds, sync):
    """Per case: median and minimum wall ms, median CPU ms, and CPU time / wall time over the rounds.

    Cases alternate within each round, so a change in the machine's load falls on all of them.
    CPU time is the whole process's (every thread). On one core it is the time the step had
    the core: on a machine shared with other work it leaves out the time spent waiting for it,
    which wall time counts, so the CPU median is the steadier figure there (CPU/wall below 1
    shows how much waiting the wall figures hold).
    """
    for step in cases.values():  # warm-up: compile, allocate state
        for _ in range(3):
            step()
        sync()
    times = {label: [] for label in cases}
    cpus = {label: [] for label in cases}
    for _ in range(rounds):
        for label, step in cases.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            sync()
            cpus[label].append(time.process_time() - start_cpu)
            times[label].append(time.perf_counter() - start)
    return {label: (statistics.median(ts) * 1e3, min(ts) * 1e3, statistics.median(cpus[label]) * 1e3,
                    sum(cpus[label]) / sum(ts)) for label, ts in times.items()}


class MemoryFloor:
    """The least time of one step's memory traffic: `x += y` (numpy, in place) moving `per_param` bytes per parameter.

    An optimizer kernel updates its variables and slots in place and reads the gradient, so it
    moves each cache line once each way; `x += y` has the same pattern (read x and y, write x:
    12 bytes per element). A copy into a second buffer is not a floor here: its stores first
    read the destination's lines (write-allocate), and on this machine it measured 27 GB/s to
    the in-place add's 45. Split over `threads` threads (numpy releases the GIL), one per core
    the benchmark may use; timed interleaved with the cases, under the same load.
    """

    def __init__(self, np, per_param, total, threads):
        self.np, self.threads = np, threads
        size = round(per_param / 12 * total)
        self.x, self.y = np.ones(size, dtype=np.float32), np.empty(size, dtype=np.float32)
        self.y.fill(0.0)  # written, so its pages are real memory (np.zeros maps one shared zero page: cached)
        self.bytes = 12 * size
        bounds = [size * i // threads for i in range(threads + 1)]
        self.parts = [(self.x[lo:hi], self.y[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
        if threads > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(threads)

    def _add(self, part):
        self.np.add(part[0], part[1], out=part[0])

    def __call__(self):
        if self.threads == 1:
            self._add(self.parts[0])
        else:
            list(self.pool.map(self._add, self.parts))


def l3_bytes():
    """The last-level cache's size in bytes (0 if unknown)."""
    try:
        text = open("/sys/devices/system/cpu/cpu0/cache/index3/size").read().strip()
    except OSError:
        return 0
    return int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text)


def header(backend, keras, rounds, threads, device):
    print(machine(backend, keras))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{threads} thread(s): process affinity cores {sorted(os.sched_getaffinity(0))}, each library set to "
          f"{threads}; {device}; median and minimum of {rounds} interleaved rounds; load average at the start {load}")


def _arrays(np, count, total, seed):
    """`count` vectors of `total // count` elements, or, where `count` is a list of shapes, one array of each."""
    rng = np.random.default_rng(seed)
    shapes = count if isinstance(count, list) else [(total // count,)] * count
    return [rng.normal(0, 0.1, shape).astype("float32") for shape in shapes]


class TorchHarness:
    def __init__(self, np):
        import torch

        self.np, self.torch = np, torch
        self.gpu = torch.cuda.is_available()  # Keras puts its variables on the GPU when there is one
        self.device = torch.device("cuda" if self.gpu else "cpu")

    def describe(self):
        return f"torch device {self.torch.cuda.get_device_name() if self.gpu else 'cpu'}"

    def sync(self):
        if self.gpu:
            self.torch.cuda.synchronize()

    def floor(self, per_param, total, threads):
        if not self.gpu:
            return MemoryFloor(self.np, per_param, total, threads)
        size = round(per_param / 12 * total)
        x, y = self.torch.ones(size, device=self.device), self.torch.zeros(size, device=self.device)
        step = lambda: x.add_(y)  # noqa: E731
        step.bytes = 12 * size
        return step

    def keras_case(self, opt, count, total):
        import keras

        variables = [keras.Variable(a) for a in _arrays(self.np, count, total, 0)]
        grads = [self.torch.from_numpy(a).to(self.device) for a in _arrays(self.np, count, total, 1)]
        return lambda: opt.apply(grads, variables)

    def references(self, torch_ref, optax_ref, count, total):
        if torch_ref is None:
            return
        name, kwargs = torch_ref
        module, _, class_name = name.rpartition(".")  # torch.optim's, or a package's ("pytorch_optimizer.SOAP")
        cls = getattr(importlib.import_module(module) if module else self.torch.optim, class_name)
        if module == "schedulefree":  # the schedulefree package (test dependency), foreach only
            kinds = ["foreach"]
        else:
            kinds = [None] if name in NO_FOREACH else ["foreach"] + (["fused"] if name in ("SGD", "Adam", "AdamW", "Adagrad") else [])
        for kind in kinds:
            yield f"{'torch.optim.' if '.' not in name else ''}{name} {kind or 'for-loop'}", lambda kind=kind: self._torch_case(cls, kwargs, kind, count, total)

    def _torch_case(self, cls, kwargs, kind, count, total):
        torch = self.torch
        params = [torch.nn.Parameter(torch.from_numpy(a).to(self.device)) for a in _arrays(self.np, count, total, 0)]
        for p, g in zip(params, _arrays(self.np, count, total, 1)):
            p.grad = torch.from_numpy(g).to(self.device)
        opt = cls(params, **kwargs, **({kind: True} if kind else {}))
        if hasattr(opt, "train"):
            opt.train()  # schedulefree's optimizers step in train mode only
        return opt.step


class JaxHarness:
    def __init__(self, np):
        import jax

        self.np, self.jax = np, jax
        self.gpu = jax.default_backend() == "gpu"

    def describe(self):
        return f"jax device {self.jax.devices()[0].device_kind}"

    def floor(self, per_param, total, threads):
        if not self.gpu:
            return MemoryFloor(self.np, per_param, total, threads)
        jax = self.jax
        size = round(per_param / 12 * total)
        add = jax.jit(lambda x, y: x + y, donate_argnums=0)
        state = {"x": jax.numpy.ones(size), "y": jax.numpy.zeros(size)}

        def step():
            state["x"] = add(state["x"], state["y"])
            jax.block_until_ready(state["x"])

        step.bytes = 12 * size
        return step

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

        # The same arrays through a jit that computes nothing (outputs alias the donated inputs):
        # the per-array cost of the call itself, which no optimizer formula can remove.
        nothing = jax.jit(lambda opt_vars, train_vars, g: (opt_vars, train_vars), donate_argnums=(0, 1))
        empty_state = {"opt": [jax.numpy.array(x) for x in state["opt"]], "train": [jax.numpy.array(x) for x in state["train"]]}

        def empty():
            empty_state["opt"], empty_state["train"] = nothing(empty_state["opt"], empty_state["train"], grads)
            jax.block_until_ready(empty_state["train"])

        step.empty, step.arrays = empty, len(state["opt"]) + len(state["train"]) + len(grads)
        return step

    def references(self, torch_ref, optax_ref, count, total):
        if optax_ref is None:
            return
        yield f"optax.{optax_ref}", lambda: self._optax_case(optax_ref, count, total)

    def _optax_case(self, name, count, total):
        params = [self.jax.numpy.asarray(a) for a in _arrays(self.np, count, total, 0)]
        grads = [self.jax.numpy.asarray(a) for a in _arrays(self.np, count, total, 1)]
        step, _ = optax_step(self.jax, optax_reference(name), params, grads)
        return step


class TfHarness:
    gpu = False

    def __init__(self, np):
        import tensorflow as tf

        self.np, self.tf = np, tf

    def describe(self):
        return "tensorflow device cpu"

    def floor(self, per_param, total, threads):
        return MemoryFloor(self.np, per_param, total, threads)

    def sync(self):
        pass

    def keras_case(self, opt, count, total):
        import keras

        tf = self.tf
        variables = [keras.Variable(a) for a in _arrays(self.np, count, total, 0)]
        grads = [tf.constant(a) for a in _arrays(self.np, count, total, 1)]
        opt.build(variables)
        # XLA, as `model.fit` compiles by default on TensorFlow (jit_compile="auto"); CPU execution is synchronous.
        step = tf.function(lambda: opt.apply(grads, variables), jit_compile=True)
        # The same arrays into the same kind of compiled function, which reads one element of each:
        # the per-array cost of the call itself.
        arrays = [v.value for v in opt.variables] + [v.value for v in variables] + grads
        empty = tf.function(lambda: tf.add_n([tf.cast(tf.reshape(x, [-1])[0], "float32") for x in arrays]), jit_compile=True)

        def timed():
            step()

        timed.empty, timed.arrays = empty, len(arrays)
        return timed

    def references(self, torch_ref, optax_ref, count, total):
        return iter(())


if __name__ == "__main__":
    main()
