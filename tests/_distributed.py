"""Optimizer state under keras.distribution on JAX with 8 host devices; run by tests/test_scale.py.

Its own process: `--xla_force_host_platform_device_count=8` must be set before jax is imported.
Usage: python tests/_distributed.py {layouts,shard} OUT.json — writes what it measured as JSON;
tests/test_scale.py asserts on it.

- layouts: every case of tests/cases.py, keras_optx.torch's optimizers, SkipNonFinite and a
  Transform wrapping a Keras optimizer, built under `ModelParallel` (mesh 2×4, kernels sharded on
  'model'): each slot's sharding against its variable's; then 3 eager `apply` steps and, for a few,
  3 `fit` steps (jit), against the same steps without a distribution.
- shard: `shard_state=True` under `DataParallel` over 8 devices: bytes of state per device over
  the total, each slot's sharding, and the steps against `shard_state=False`.
"""

import json
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["KERAS_BACKEND"] = "jax"
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from cases import CASES  # noqa: E402

import keras_optx as ox  # noqa: E402

D = keras.distribution
STEPS = 3

EXTRA = [
    ("torch.SGD(momentum)", lambda: ox.torch.SGD(0.01, momentum=0.9)),
    ("torch.Adam(amsgrad)", lambda: ox.torch.Adam(0.01, amsgrad=True)),
    ("torch.AdamW", lambda: ox.torch.AdamW(0.01)),
    ("SkipNonFinite(ADAM)", lambda: ox.SkipNonFinite(ox.ADAM(0.01))),
    ("SkipNonFinite(chain)", lambda: ox.SkipNonFinite(ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(0.01)))),
    ("ClipNorm(keras Adam)", lambda: ox.ClipNorm(1.0, keras.optimizers.Adam(0.01))),
    ("ADAM(bfloat16 state)", lambda: ox.ADAM(0.01, state_dtype="bfloat16")),
]
ALL = [(c.id, c.make) for c in CASES] + EXTRA
FIT = {"ADAM", "ClipNorm>WeightDecay>ADAM", "torch.AdamW", "SkipNonFinite(ADAM)", "ClipNorm(keras Adam)",
       "Prodigy", "Partition(kernel:Prodigy,.*:Prodigy(d₀=1e-4))"}  # Prodigy: its global sums in a sharded jit step


def model(units):
    keras.utils.set_random_seed(0)
    layers = [keras.Input((8,))] + [keras.layers.Dense(u, activation="tanh", name=f"d{i}") for i, u in enumerate(units, 1)]
    return keras.Sequential(layers, name="net")


def gradients(variables, seed=1):
    rng = np.random.default_rng(seed)
    return [[np.asarray(rng.standard_normal(v.shape) * (10.0 if n == 1 else 1.0), "float32") for v in variables] for n in range(STEPS)]


def slots_of(optimizer, variable):
    """The optimizer variables kept for `variable` (named after its path, as Keras and keras_optx do)."""
    path = variable.path.replace("/", "_")
    return [s for s in optimizer.variables if path in s.path]


def spec(array, ndim):
    return [a if a is None or isinstance(a, str) else list(a) for a in tuple(array.sharding.spec) + (None,) * (ndim - len(array.sharding.spec))]


def run_eager(make, units, distribution, seed=1):
    def go():
        net = model(units)
        opt = make()
        opt.build(net.trainable_variables)
        for grads in gradients(net.trainable_variables, seed):
            opt.apply(grads, net.trainable_variables)
        return net, opt

    if distribution is None:
        return go()
    with distribution.scope():
        return go()


def run_fit(make, units, distribution):
    def go():
        net = model(units)
        opt = make()
        net.compile(optimizer=opt, loss="mse")
        rng = np.random.default_rng(2)
        x = rng.standard_normal((16 * STEPS, 8)).astype("float32")
        y = rng.standard_normal((16 * STEPS, units[-1])).astype("float32")
        net.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
        return net, opt

    if distribution is None:
        return go()
    with distribution.scope():
        return go()


def difference(a, b):
    """Largest |a − b| / (1 + |b|) over the model's variables."""
    return max(
        float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)) / (1 + np.abs(np.asarray(v, np.float64)))))
        for u, v in zip(a, b)
    )


def layouts():
    devices = jax.devices()
    mesh = D.DeviceMesh((2, 4), ("batch", "model"), devices)
    layout_map = D.LayoutMap(mesh)
    layout_map[".*d1/kernel"] = (None, "model")
    layout_map[".*d1/bias"] = ("model",)
    layout_map[".*d2/kernel"] = ("model", None)
    distribution = D.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    units = (16, 4)
    out = {}
    for name, make in ALL:
        keras.utils.clear_session(free_memory=False)
        net, opt = run_eager(make, units, distribution)
        ref_net, ref_opt = run_eager(make, units, None)
        rows = []
        for v in net.trainable_variables:
            for s in slots_of(opt, v):
                rows.append({"variable": v.path, "slot": s.path, "variable_spec": spec(v.value, len(v.shape)),
                             "slot_spec": spec(s.value, len(s.shape)), "same_shape": tuple(s.shape) == tuple(v.shape)})
        result = {"slots": rows, "sharded_variables": sum(any(spec(v.value, len(v.shape))) for v in net.trainable_variables),
                  "eager_difference": difference([v.value for v in net.trainable_variables], [v.value for v in ref_net.trainable_variables]),
                  "moved": difference([v.value for v in ref_net.trainable_variables], [v.value for v in model(units).trainable_variables])}
        if name in FIT:
            keras.utils.clear_session(free_memory=False)
            net, opt = run_fit(make, units, distribution)
            ref_net, _ = run_fit(make, units, None)
            result["fit_difference"] = difference([v.value for v in net.trainable_variables], [v.value for v in ref_net.trainable_variables])
            result["fit_slots"] = [[spec(v.value, len(v.shape)), spec(s.value, len(s.shape)), tuple(s.shape) == tuple(v.shape)]
                                   for v in net.trainable_variables for s in slots_of(opt, v)]
        out[name] = result
    return out


def state_bytes(optimizer, variables):
    """Bytes of the slots kept for `variables`: {"total", "per_device" (on the fullest device)} over the
    slots of their variable's shape, and the same over the slots of another shape ("factor_…": SOAP's)."""
    totals, per_device = {"": 0, "factor_": 0}, {"": {}, "factor_": {}}
    for v in variables:
        for s in slots_of(optimizer, v):
            kind = "" if tuple(s.shape) == tuple(v.shape) else "factor_"
            totals[kind] += s.value.nbytes
            for shard in s.value.addressable_shards:
                per_device[kind][shard.device] = per_device[kind].get(shard.device, 0) + shard.data.nbytes
    return {f"{kind}{key}": value for kind in totals
            for key, value in (("total", totals[kind]), ("per_device", max(per_device[kind].values(), default=0)))}


SHARD_CASES = [(c.id, c.make) for c in CASES if "keras SGD" not in c.id] + [
    ("torch.SGD(momentum)", EXTRA[0][1]), ("torch.Adam(amsgrad)", EXTRA[1][1]), ("torch.AdamW", EXTRA[2][1]),
    ("ADAM(bfloat16 state)", EXTRA[6][1]),
]


def shard():
    distribution = D.DataParallel(devices=jax.devices())
    units = (64, 32, 3)  # d3's bias (3,) divides by no data axis of 8: its slots stay replicated
    out = {}
    for name, make in SHARD_CASES:
        print(name, file=sys.stderr, flush=True)  # the case a failure's stderr tail ends at
        keras.utils.clear_session(free_memory=False)

        def sharded():
            opt = make()
            config = opt.get_config()
            config["shard_state"] = True
            if isinstance(config.get("optimizer"), dict):  # a wrapper (Lookahead): its optimizer's state too
                config["optimizer"]["config"]["shard_state"] = True
            return type(opt).from_config(config)

        net, opt = run_eager(sharded, units, distribution)
        ref_net, _ = run_eager(make, units, distribution)
        out[name] = {
            **state_bytes(opt, net.trainable_variables),
            "slots": [[v.path, list(s.shape), spec(s.value, len(s.shape)), tuple(s.shape) == tuple(v.shape)] for v in net.trainable_variables for s in slots_of(opt, v)],
            "eager_difference": difference([v.value for v in net.trainable_variables], [v.value for v in ref_net.trainable_variables]),
        }
        if name in FIT:
            keras.utils.clear_session(free_memory=False)
            net, opt = run_fit(sharded, units, distribution)
            ref_net, _ = run_fit(make, units, distribution)
            one_net, _ = run_fit(make, units, None)
            out[name].update(
                **{f"fit_{key}": value for key, value in state_bytes(opt, net.trainable_variables).items()},
                fit_difference=difference([v.value for v in net.trainable_variables], [v.value for v in ref_net.trainable_variables]),
                fit_one_device_difference=difference([v.value for v in net.trainable_variables], [v.value for v in one_net.trainable_variables]),
            )
    return out


if __name__ == "__main__":
    mode, path = sys.argv[1:3]
    keras.config.disable_interactive_logging()
    result = {"devices": len(jax.devices()), "cases": {"layouts": layouts, "shard": shard}[mode]()}
    pathlib.Path(path).write_text(json.dumps(result, indent=1))
