"""Shared pieces of tests/test_reliability.py, and the worker it runs in fresh processes.

As a script: `python tests/_reliability.py SPEC.json` runs the tasks in SPEC (JSON) on the
backend named by KERAS_BACKEND and writes every result array to SPEC["out"] (npz) and any
per-case error to SPEC["out"] + ".json". Options: "tf_logical_cpus" splits the CPU into
that many TensorFlow devices before TensorFlow starts (set XLA_FLAGS in the environment
for JAX host devices).
"""

import json
import os
import sys
import traceback
from collections import namedtuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

Case = namedtuple("Case", "make lr settable schedules", defaults=(True,))
K_STEPS, N_STEPS, M_STEPS = 3, 3, 2  # trained before saving, after loading, on the return trip
BATCH = 8


def cases():
    """{id: Case}: one representative configuration per rule class, chains, wrappers, compat.

    `make(lr, **keras_kwargs)` builds the optimizer; `settable` says whether
    `optimizer.learning_rate = value` is allowed (not for a schedule given as the rate);
    `schedules` whether the rule takes a schedule or callable as its rate (not Rprop, whose
    rate is only its initial step size).
    """
    import keras

    import keras_optx as ox

    table = {
        "Descent": Case(lambda lr, **kw: ox.Descent(lr, **kw), 0.1, True),
        "Momentum": Case(lambda lr, **kw: ox.Momentum(lr, 0.9, **kw), 0.05, True),
        "Nesterov": Case(lambda lr, **kw: ox.Nesterov(lr, 0.9, **kw), 0.05, True),
        "RMSProp": Case(lambda lr, **kw: ox.RMSProp(lr, 0.9, **kw), 0.01, True),
        "ADAM": Case(lambda lr, **kw: ox.ADAM(lr, **kw), 0.01, True),
        # β₂ = 0.8: ρₜ passes 4 at t = 5, so both RADAM branches run within the test.
        "RADAM": Case(lambda lr, **kw: ox.RADAM(lr, (0.9, 0.8), **kw), 0.01, True),
        "AdaMax": Case(lambda lr, **kw: ox.AdaMax(lr, **kw), 0.01, True),
        "ADAGrad": Case(lambda lr, **kw: ox.ADAGrad(lr, **kw), 0.1, True),
        "ADADelta": Case(lambda lr, **kw: ox.ADADelta(0.9, learning_rate=lr, **kw), 1.0, True),
        "AMSGrad": Case(lambda lr, **kw: ox.AMSGrad(lr, **kw), 0.01, True),
        "NADAM": Case(lambda lr, **kw: ox.NADAM(lr, **kw), 0.01, True),
        "OADAM": Case(lambda lr, **kw: ox.OADAM(lr, **kw), 0.01, True),
        "AdaBelief": Case(lambda lr, **kw: ox.AdaBelief(lr, **kw), 0.01, True),
        "Lion": Case(lambda lr, **kw: ox.Lion(lr, **kw), 0.003, True),
        "Rprop": Case(lambda lr, **kw: ox.Rprop(lr, **kw), 0.01, True, False),
        "ADAMW": Case(lambda lr, **kw: ox.ADAMW(lr, decay=1e-2, **kw), 0.01, True),
        "ClipNorm>WeightDecay>ADAM": Case(
            lambda lr, **kw: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM(lr), **kw), 0.01, True
        ),
        "ExpDecay>Momentum": Case(
            lambda lr, **kw: ox.Optimiser(ox.ExpDecay(0.1, 0.5, 3), ox.Momentum(lr), **kw), 0.05, True
        ),
        "ClipValue>Nesterov": Case(
            lambda lr, **kw: ox.Optimiser(ox.ClipValue(0.5), ox.Nesterov(lr), **kw), 0.05, True
        ),
        "ClipGlobalNorm(keras Adam)": Case(
            lambda lr, **kw: ox.ClipGlobalNorm(1.0, keras.optimizers.Adam(lr), **kw), 0.01, True
        ),
        # k = 2: synchronised before saving and after loading (K_STEPS = N_STEPS = 3).
        "Lookahead(ADAM)": Case(lambda lr, **kw: ox.Lookahead(ox.ADAM(lr), 2, 0.5, **kw), 0.01, True),
        "Lookahead(keras SGD)": Case(
            lambda lr, **kw: ox.Lookahead(keras.optimizers.SGD(lr, momentum=0.9), 2, 0.8, **kw), 0.05, True
        ),
        "Descent(ExpDecay)": Case(lambda lr, **kw: ox.Descent(ox.ExpDecay(lr, 0.5, 2, 1e-3), **kw), 0.1, False),
    }
    try:
        from keras_optx import torch as oxt
    except ImportError:  # keras_optx.torch not present in this checkout
        return table
    table.update(
        {
            "torch.SGD": Case(
                lambda lr, **kw: oxt.SGD(lr, momentum=0.9, nesterov=True, weight_decay=1e-3, **kw), 0.05, True
            ),
            "torch.Adam": Case(lambda lr, **kw: oxt.Adam(lr, weight_decay=1e-3, amsgrad=True, **kw), 0.01, True),
            "torch.AdamW": Case(lambda lr, **kw: oxt.AdamW(lr, weight_decay=1e-2, **kw), 0.01, True),
        }
    )
    return table


JIT_CASES = ["ClipNorm>WeightDecay>ADAM", "ExpDecay>Momentum", "Lookahead(ADAM)"]  # also resumed with compiled training
DISTRIBUTED_CASES = ["ADAM", "ClipNorm>WeightDecay>ADAM", "ClipGlobalNorm(keras Adam)"]  # a rule, a chain, a wrapper


def make(case_id, **kwargs):
    case = cases()[case_id]
    return case.make(case.lr, **kwargs)


def make_model(seed=0):
    """A tiny MLP with weights drawn by NumPy, so every backend starts from the same point."""
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    rng = np.random.default_rng(seed)
    model.set_weights([(0.5 * rng.normal(size=w.shape)).astype("float32") for w in model.get_weights()])
    return model


def batches(seed, n, size=BATCH):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(size, 3)).astype("float32"), rng.normal(size=(size, 1)).astype("float32")) for _ in range(n)
    ]


def train(model, data):
    for x, y in data:
        model.train_on_batch(x, y)


def state(model):
    """Every number a resumed run must reproduce: weights, optimizer variables, iterations."""
    import keras

    arrays = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.weights]
    arrays += [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.optimizer.variables]
    arrays.append(np.asarray(int(keras.ops.convert_to_numpy(model.optimizer.iterations))))
    return arrays


def compile_model(model, optimizer, jit):
    model.compile(optimizer=optimizer, loss="mse", run_eagerly=not jit)


# Tasks run by the worker -------------------------------------------------------------
def task_continue(spec, put):
    """Load each `.keras` file, train N_STEPS more, record the state; optionally save again."""
    import keras

    for key in spec["keys"]:
        case_id, jit = key.split("@")[0], key.endswith("@jit")
        model = keras.saving.load_model(os.path.join(spec["dir"], f"{spec['prefix']}{key}.keras"))
        model.run_eagerly = not jit
        train(model, batches(2, N_STEPS))
        put(f"continue/{key}", state(model))
        if spec.get("save_prefix"):
            model.save(os.path.join(spec["dir"], f"{spec['save_prefix']}{key}.keras"))
        if spec.get("weights") and not jit:
            # The other resume route: a model and optimizer built from code, then load_weights.
            fresh = make_model(seed=99)
            compile_model(fresh, make(case_id), jit=False)
            fresh.optimizer.build(fresh.trainable_variables)
            fresh.load_weights(os.path.join(spec["dir"], f"{spec['prefix']}{key}.weights.h5"))
            train(fresh, batches(2, N_STEPS))
            put(f"weights/{key}", state(fresh))


def _fit_trajectory(case_id, data):
    model = make_model()
    compile_model(model, make(case_id), jit=True)
    x = np.concatenate([b[0] for b in data])
    y = np.concatenate([b[1] for b in data])
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()]


def task_data_parallel(spec, put):
    """JAX: the same fit on one device and with DataParallel over every host CPU device."""
    import keras

    devices = keras.distribution.list_devices("cpu")
    put("devices", [np.asarray(len(devices))])
    data = batches(3, 4)
    for case_id in spec["keys"]:
        put(f"one/{case_id}", _fit_trajectory(case_id, data))
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            put(f"many/{case_id}", _fit_trajectory(case_id, data))
        finally:
            keras.distribution.set_distribution(None)


def task_mirrored(spec, put):
    """TensorFlow: the same fit on one device and under MirroredStrategy over the logical CPUs."""
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    put("devices", [np.asarray(len(devices))])
    data = batches(3, 4)
    for case_id in spec["keys"]:
        put(f"one/{case_id}", _fit_trajectory(case_id, data))
        with tf.distribute.MirroredStrategy(devices).scope():
            put(f"many/{case_id}", _fit_trajectory(case_id, data))


TASKS = {"continue": task_continue, "data_parallel": task_data_parallel, "mirrored": task_mirrored}


def main(path):
    with open(path) as f:
        spec = json.load(f)
    if spec.get("tf_logical_cpus"):
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * spec["tf_logical_cpus"]
        )
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import keras

    import keras_optx  # noqa: F401  (registers the classes the saved files name)

    cases()  # imports keras_optx.torch too, which load_model needs for the compat optimizers

    keras.config.disable_interactive_logging()
    results, errors = {}, {}

    def put(key, arrays):
        for i, a in enumerate(arrays):
            results[f"{key}/{i}"] = a

    for task in spec["tasks"]:
        try:
            TASKS[task["kind"]](task, put)
        except Exception:  # reported to the parent test, which fails with this text
            errors[task["kind"]] = traceback.format_exc()
    np.savez(spec["out"], **results)
    with open(spec["out"] + ".json", "w") as f:
        json.dump(errors, f)


if __name__ == "__main__":
    main(sys.argv[1])
