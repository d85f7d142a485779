"""What the benchmark scripts share: one process per backend, the thread budget, the machine line.

The scripts run as `python benchmarks/<script>.py`, which puts this folder first on `sys.path`:
each imports this module as `_common`.
"""

import os
import platform
import subprocess
import sys


def per_backend(args, script, order=("torch", "jax", "tensorflow")):
    """With `--backend all`, run `script` once per backend of `order`, each in its own process
    (Keras reads KERAS_BACKEND once per process) with the other arguments as given, and return
    True; with one backend, select it for this process (before Keras is imported) and return False."""
    if args.backend != "all":
        os.environ["KERAS_BACKEND"] = args.backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        return False
    rest = [a for a in sys.argv[1:] if a not in ("--backend", "all")]
    for backend in order:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, script, "--backend", backend] + rest, env=env, check=True)
    return True


def limit_threads(n):
    """Run on `n` cores, enforced: process affinity, then each library's own thread settings.

    Call before numpy, keras or a backend is imported: threads inherit the affinity of the
    thread that creates them, and XLA and TensorFlow size their pools from it. Affinity is what
    holds: jax 0.10's XLA CPU client has no thread-count setting of its own (its large kernels
    are split across a pool, `outer_dimension_partitions`, sized from the schedulable cores).
    Returns the cores chosen.
    """
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= n <= len(available):
        raise SystemExit(f"--threads must be between 1 and {len(available)} (the cores this process may use), got {n}")
    cores = available[:n]
    os.sched_setaffinity(0, cores)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if n == 1:
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    import keras  # noqa: F401  (imports the backend)

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(n)
        torch.set_num_interop_threads(n)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    return cores


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), or "?"."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def machine(backend, keras):
    """A backend's table heading: `## backend <name>: <CPU>, <cores> cores, Python and library versions`."""
    versions = {"keras": keras.__version__}
    for module in ("torch", "jax", "tensorflow", "optax"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            pass
    return (f"\n## backend {backend}: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            + ", ".join(f"{k} {v}" for k, v in versions.items()))


def optax_reference(name):
    """optax's transformation for a rule, by optax's name: the reference of bench_step.py and bench_memory.py."""
    import optax

    return {
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
        "contrib.adopt": lambda: optax.contrib.adopt(0.001),  # clips at (t−1)^¼: the same work per step
        "contrib.ademamix": lambda: optax.contrib.ademamix(0.001),
        "contrib.prodigy": lambda: optax.contrib.prodigy(1.0),  # a slightly different estimate, the same reductions
        "contrib.muon": lambda: optax.contrib.muon(0.02),
        "contrib.schedule_free_adamw": lambda: optax.contrib.schedule_free_adamw(0.0025),
        "contrib.schedule_free_sgd": lambda: optax.contrib.schedule_free_sgd(1.0),
    }[name]()


def optax_step(jax, transformation, params, grads):
    """`(step, state)`: `step()` applies one jitted optax update (buffers donated) of
    `state["params"]` from `grads` and waits for it; `state["opt"]` is the transformation's state."""
    import optax

    def update(params, opt_state, grads):
        updates, opt_state = transformation.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    apply = jax.jit(update, donate_argnums=(0, 1))
    # Each leaf its own buffer: a state may hold the params themselves or one array twice (optax.contrib.prodigy's
    # x₀), and a buffer cannot be donated twice.
    state = jax.tree.map(lambda a: jax.numpy.array(a, copy=True), {"params": params, "opt": transformation.init(params)})

    def step():
        state["params"], state["opt"] = apply(state["params"], state["opt"], grads)
        jax.block_until_ready(state["params"])

    return step, state
