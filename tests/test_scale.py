"""Optimizer state at scale: slots laid out like their variables, `shard_state`, `state_dtype`.

The 8-device checks run tests/_distributed.py in a subprocess (XLA's host-device count is fixed
when jax is imported) and only in the jax process of the suite: keras.distribution runs on JAX
only, and the subprocess does not depend on the parent's backend.
"""

import json
import os
import pathlib
import subprocess
import sys
import warnings

import keras
import ml_dtypes
import numpy as np
import pytest
import reference as ref
from cases import CASES
from conftest import BACKEND
from test_conformance import MODES, assert_close, compiled_apply, gradient_stream, initial_values

import keras_optx as ox
from keras_optx import _scale

HERE = pathlib.Path(__file__).resolve().parent
ONCE = pytest.mark.skipif(
    BACKEND != "jax",
    reason="keras.distribution runs on JAX only; the 8-device subprocess runs once, in the jax test process",
)


def _distributed(mode, tmp_path):
    out = tmp_path / f"{mode}.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(HERE / "_distributed.py"), mode, str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["devices"] == 8
    return data["cases"]


_STATELESS_MEMBERS = ("Descent", "ExpDecay", "InvDecay", "WeightDecay", "ClipValue", "ClipNorm", "ClipGlobalNorm")


def _stateful(case_id):
    """Whether the case keeps keras_optx slots: a chain does when any member does."""
    if case_id.startswith(("ClipValue(keras", "ClipGlobalNorm(keras")):
        return False  # keras_optx's part is stateless; the wrapped Keras optimizer's state is its own
    if "(keras" in case_id:
        return True
    return not all(member.strip("()").startswith(_STATELESS_MEMBERS) for member in case_id.split(">"))


@ONCE
def test_every_slot_is_sharded_like_its_variable_under_model_parallel(tmp_path):
    cases = _distributed("layouts", tmp_path)
    assert set(cases) >= {c.id for c in CASES} | {"torch.AdamW", "SkipNonFinite(ADAM)", "ClipNorm(keras Adam)"}
    for name, result in cases.items():
        assert result["sharded_variables"] == 3, name  # the layout map did shard the kernels and a bias
        if _stateful(name) or name == "ClipNorm(keras Adam)":
            assert result["slots"], name
        # A slot of its variable's shape is laid out like it; a `Slot` of another shape (SOAP's Kronecker factors
        # and eigenbases) is replicated, by design (keras_optx/_scale.py), and the steps still equal one device's.
        for row in result["slots"]:
            expected = row["variable_spec"] if row["same_shape"] else [None] * len(row["slot_spec"])
            assert row["slot_spec"] == expected, (name, row)
        for variable_spec, slot_spec, same_shape in result.get("fit_slots", []):
            assert slot_spec == (variable_spec if same_shape else [None] * len(slot_spec)), name
        # the same steps on one device, to float32 rounding; and the steps did move the variables
        assert result["eager_difference"] <= 1e-6 and result["moved"] > 0, (name, result)
        assert result.get("fit_difference", 0.0) <= 1e-5, (name, result)


@ONCE
def test_shard_state_keeps_a_fraction_of_the_state_per_device_under_data_parallel(tmp_path):
    cases = _distributed("shard", tmp_path)
    adam = cases["ADAM"]
    assert adam["per_device"] <= adam["total"] / 5 and adam["fit_per_device"] <= adam["fit_total"] / 5, adam
    for name, result in cases.items():
        if _stateful(name):
            assert result["total"] > 0, name
        assert result["per_device"] <= result["total"] / 5, (name, result)
        # a slot of another shape (SOAP's factors) stays whole on every device, by design (keras_optx/_scale.py)
        assert result["factor_per_device"] == result["factor_total"], (name, result)
        for path, shape, spec, same_shape in result["slots"]:
            # split over the data axis on the first dimension that divides by 8; d3's bias (3,) replicated
            expected = [None] * len(shape) if shape == [3] or not same_shape else ["batch"] + [None] * (len(shape) - 1)
            assert spec == expected, (name, path, spec)
        assert result["eager_difference"] <= 1e-6, (name, result)
        for key in ("fit_difference", "fit_one_device_difference"):
            assert result.get(key, 0.0) <= 1e-5, (name, key, result)


# Keywords: accepted where they act, refused by name where they cannot ------------------
@pytest.mark.parametrize("make, match", [
    (lambda: ox.ADAM(state_dtype="int8"), "state_dtype"),
    (lambda: ox.ADAM(shard_state=1), "shard_state"),
    (lambda: ox.ADAGrad(state_dtype="bfloat16"), "ADAGrad does not take state_dtype"),
    (lambda: ox.RMSProp(state_dtype="float16"), "RMSProp does not take state_dtype='float16'"),
    (lambda: ox.Descent(state_dtype="bfloat16"), "Descent does not take state_dtype.*no state"),
    (lambda: ox.ClipNorm(1.0, state_dtype="bfloat16"), "ClipNorm does not take state_dtype"),
    (lambda: ox.torch.Adam(state_dtype="bfloat16"), "Adam does not take state_dtype"),
    (lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAGrad(), state_dtype="bfloat16"), "ADAGrad does not take"),
    (lambda: ox.Optimiser(ox.ADAM(state_dtype="float16"), state_dtype="bfloat16"), "set one"),
    (lambda: ox.Optimiser(ox.ADAM(shard_state=True)), "set shard_state=True on the Optimiser"),
    (lambda: ox.ClipNorm(1.0, keras.optimizers.Adam(), shard_state=True), "cannot reach Adam's slots"),
])
def test_scale_keywords_refused_where_they_cannot_act(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_scale_keywords_round_trip_through_config(case):
    optimizer = case.make()
    config = optimizer.get_config()
    if "shard_state" not in config:  # a Transform wrapping a Keras optimizer
        return
    assert config["shard_state"] is False and config["state_dtype"] is None
    if isinstance(optimizer, ox.Transform) and optimizer.optimizer is not None:
        return
    config["shard_state"] = True
    clone = type(optimizer).from_config(config)
    assert clone.shard_state is True and clone.get_config() == config


def test_shard_state_warns_once_where_it_cannot_apply():
    """Off JAX, or on JAX without a keras.distribution, the state cannot be sharded: a warning, once."""
    _scale._warned.clear()
    variables = [keras.Variable(np.ones((4, 2), "float32"))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ox.ADAM(shard_state=True).build(variables)
        ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(), shard_state=True).build(variables)
    messages = [str(w.message) for w in caught if "shard_state" in str(w.message)]
    assert len(messages) == 1 and "has no effect" in messages[0], messages
    assert ("JAX" in messages[0]) if BACKEND != "jax" else ("no keras.distribution" in messages[0])


# Low-precision state -------------------------------------------------------------------
LOW = [
    ("ADAM bfloat16", lambda: ox.ADAM(0.01, state_dtype="bfloat16"), lambda: ref.ADAM(0.01), {"m": "bfloat16", "v": "bfloat16"}),
    ("ADAM float16", lambda: ox.ADAM(0.01, state_dtype="float16"), lambda: ref.ADAM(0.01), {"m": "float16", "v": "float32"}),
    ("AMSGrad bfloat16", lambda: ox.AMSGrad(0.01, state_dtype="bfloat16"), lambda: ref.AMSGrad(0.01),
     {"m": "bfloat16", "v": "bfloat16", "v_hat": "bfloat16"}),
    ("Momentum float16", lambda: ox.Momentum(0.01, state_dtype="float16"), lambda: ref.Momentum(0.01), {"v": "float16"}),
    ("ADAMW bfloat16", lambda: ox.ADAMW(0.01, decay=0.1, state_dtype="bfloat16"), lambda: ref.ADAMW(0.01, (0.9, 0.999), 0.1),
     {"m": "bfloat16", "v": "bfloat16"}),
    ("ClipNorm>ADAM(bfloat16)", lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(0.01, state_dtype="bfloat16")),
     lambda: ref.Chain(ref.ClipNorm(1.0), ref.ADAM(0.01)), {"m": "bfloat16", "v": "bfloat16"}),
]


def _rounded(oracle, dtypes):
    """The float64 oracle with its state (by the oracle's slot names) stored in `dtypes` after every step."""
    call = oracle.__call__ if not isinstance(oracle, ref.Chain) else oracle

    def step(gs, xs, n):
        out = call(gs, xs, n)
        for states in _states(oracle):
            for s in states.values():
                for name, dtype in dtypes.items():
                    if name in s:
                        s[name] = s[name].astype(getattr(ml_dtypes, dtype, dtype)).astype(np.float64)
        return out

    return step


def _states(oracle):
    if hasattr(oracle, "state"):
        yield oracle.state
    for member in getattr(oracle, "members", ()):
        yield from _states(member)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, make, reference, dtypes", LOW, ids=[c[0] for c in LOW])
def test_low_precision_state_stores_slots_in_it_and_computes_in_float32(name, make, reference, dtypes, mode):
    """Against the float64 oracle whose state is rounded to the same dtypes after each step:
    to float32 rounding. The plain float32-state oracle differs by ~3e-4 here (bfloat16), far
    beyond the tolerance, so this tells stored-in-low-precision from not."""
    values = initial_values()
    variables = [keras.Variable(v) for v in values]
    optimizer, oracle = make(), reference()
    apply = (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)
    step = _rounded(oracle, dtypes)
    expected = [v.astype(np.float64) for v in values]
    for n, grads in zip(range(1, 21), gradient_stream()):
        apply([keras.ops.convert_to_tensor(g) for g in grads])
        expected = [x - d for x, d in zip(expected, step(grads, expected, n))]
        for i, (v, x) in enumerate(zip(variables, expected)):
            assert_close(keras.ops.convert_to_numpy(v.value), x, f"{name}: variable {i} at step {n}")
    slots = [v for v in optimizer.variables if v.path.rsplit("_", 1)[-1] in ("m", "v", "hat", "velocity")]
    assert slots
    for slot in slots:
        kind = "v_hat" if slot.path.endswith("v_hat") else slot.path.rsplit("_", 1)[-1]
        kind = "v" if kind == "velocity" else kind  # the oracle's name
        assert keras.backend.standardize_dtype(slot.dtype) == dtypes[kind], slot.path


def test_low_precision_state_saves_and_loads(tmp_path):
    """k steps, save, load, one more step == k + 1 steps without saving; the slots stay bfloat16."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=ox.ADAMW(0.01, decay=0.01, state_dtype="bfloat16"), loss="mse")
    rng = np.random.default_rng(0)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    for _ in range(3):
        model.optimizer.apply([rng.standard_normal(s).astype("float32") for s in shapes], model.trainable_variables)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.state_dtype == "bfloat16"
    grads = [rng.standard_normal(s).astype("float32") for s in shapes]
    for m in (model, loaded):
        m.optimizer.apply(grads, m.trainable_variables)
    for a, b in zip(model.optimizer.variables + model.trainable_variables, loaded.optimizer.variables + loaded.trainable_variables):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value).astype("float32"),
                                      keras.ops.convert_to_numpy(b.value).astype("float32"))
    assert {keras.backend.standardize_dtype(v.dtype) for v in loaded.optimizer.variables if v.path.endswith(("_m", "_v"))} == {"bfloat16"}


def _rules(optimizer):
    yield optimizer
    for member in getattr(optimizer, "_members", ()):
        yield from _rules(member)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_rule_says_which_slots_take_low_precision(case):
    """A rule with state lists each slot in `low_precision_slots` or says why not
    (`low_precision_refusal`): a new slot is never left behind in float32 unannounced."""
    for rule in _rules(case.make()):
        if isinstance(rule, ox.Optimiser) or not rule.slots or rule.low_precision_refusal:
            continue
        assert set(rule.slots) <= set(rule.low_precision_slots), type(rule).__name__


# Two processes over loopback -------------------------------------------------------------
def _free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _processes(tmp_path, *commands, timeout=300):
    """Run `commands` (argument lists of tests/_multiprocess.py, the output path last) together;
    each is killed past `timeout` seconds. Returns the JSON each wrote."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    outs, running = [], []
    for i, args in enumerate(commands):
        outs.append(tmp_path / f"out{i}.json")
        log = open(tmp_path / f"log{i}.txt", "w")
        running.append(subprocess.Popen([sys.executable, str(HERE / "_multiprocess.py"), *args, str(outs[-1])],
                                        stdout=log, stderr=subprocess.STDOUT, env=env))
    try:
        codes = [p.wait(timeout=timeout) for p in running]
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, code in enumerate(codes):
        assert code == 0, (tmp_path / f"log{i}.txt").read_text()[-3000:]
    return [json.loads(o.read_text()) for o in outs]


def _largest_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b))


MULTIPROCESS = pytest.mark.skipif(
    BACKEND != "jax", reason="the processes pick their own backend; run once, in the jax test process"
)


@MULTIPROCESS
def test_two_jax_processes_match_one_with_and_without_shard_state(tmp_path):
    (port,) = _free_ports(1)
    first, second = _processes(tmp_path, ["jax", "0", str(port)], ["jax", "1", str(port)])
    (one,) = _processes(tmp_path, ["one", "jax"])
    assert _largest_difference(one["initial"], one["weights"]) > 1e-3  # the steps moved the weights
    for result in (first, second):
        assert result["processes"] == 2 and result["devices"] == 2
        for key in ("shard_state=False", "shard_state=True"):
            assert _largest_difference(result[key]["weights"], one["weights"]) <= 1e-6, (key, result[key])
        sharded = result["shard_state=True"]
        assert ["batch", None] in sharded["slot_specs"] and sharded["slot_local_bytes"] < 0.6 * sharded["slot_bytes"]
        assert result["shard_state=False"]["slot_local_bytes"] == result["shard_state=False"]["slot_bytes"]


@MULTIPROCESS
def test_two_tensorflow_workers_match_one(tmp_path):
    ports = [str(p) for p in _free_ports(2)]
    first, second = _processes(tmp_path, ["tensorflow", "0", *ports], ["tensorflow", "1", *ports])
    (one,) = _processes(tmp_path, ["one", "tensorflow"])
    assert _largest_difference(one["initial"], one["weights"]) > 1e-3
    for result in (first, second):
        assert result["replicas"] == 2
        assert _largest_difference(result["weights"], one["weights"]) <= 1e-6


def test_partition_and_chain_members_keep_their_state_dtype():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])
    partition = ox.Partition({"kernel": ox.ADAM(state_dtype="bfloat16"), ".*": ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum())})
    partition.build(model.trainable_variables)
    dtypes = {v.path.rsplit("/", 1)[-1]: keras.backend.standardize_dtype(v.dtype) for v in partition.variables}
    assert dtypes["sequential_dense_kernel_0_m"] == dtypes["sequential_dense_kernel_0_v"] == "bfloat16", dtypes
    assert dtypes["sequential_dense_bias_1_1_velocity"] == "float32", dtypes
    with pytest.raises(ValueError, match="ADAGrad does not take"):
        ox.Partition({"kernel": ox.ADAM(), ".*": ox.ADAGrad()}, state_dtype="bfloat16")
    bf16 = ox.Partition({".*": ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum())}, state_dtype="bfloat16")
    bf16.build(model.trainable_variables)
    assert {keras.backend.standardize_dtype(v.dtype) for v in bf16.variables if v.path.endswith("velocity")} == {"bfloat16"}
