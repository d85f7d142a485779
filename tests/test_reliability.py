"""Reliability: exact resume, portable state, Keras's optimizer contract, mixed precision,
non-finite gradients (`SkipNonFinite`), sparse gradients, one-machine distribution, bad input.

Driven by the rows of tests/cases.py that carry a `reliability` configuration
(`_reliability.cases()`): one per rule class, chains, a wrapper, a schedule as the rate, and the
`keras_optx.torch` compat optimizers; bad input by its `BAD` table.
Checks that need a fresh process or another backend run in a few subprocesses
(`tests/_reliability.py`), started together by one module fixture.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import keras_optx as ox
from cases import BAD
from _reliability import (
    BATCH,
    DISTRIBUTED_CASES,
    JIT_CASES,
    K_STEPS,
    M_STEPS,
    N_STEPS,
    batches,
    cases,
    compile_model,
    make,
    make_model,
    state,
    train,
)

BACKEND = keras.backend.backend()
CASES = cases()
IDS = list(CASES)
HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_reliability.py")
# Cross-backend and multi-device runs reduce and fuse in other orders; a few float32
# steps of an adaptive rule stay within this of each other (measured ≤ 2e-6).
TOL = dict(rtol=1e-5, atol=1e-6)


# Subprocess runs ------------------------------------------------------------------------
def _spawn(backend, spec, tmp, name, extra_env=None):
    spec = dict(spec, out=os.path.join(tmp, f"{name}.npz"))
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    env = dict(os.environ, KERAS_BACKEND=backend, **(extra_env or {}))
    proc = subprocess.Popen([sys.executable, WORKER, path], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return name, proc, spec["out"]


def _collect(name, proc, out):
    log = proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode == 0, f"{name} worker failed:\n{log[-4000:]}"
    with open(out + ".json") as f:
        errors = json.load(f)
    with np.load(out) as data:
        return {k: data[k] for k in data.files}, errors


def _arrays(results, prefix):
    n = len([k for k in results if k.startswith(prefix + "/")])
    return [results[f"{prefix}/{i}"] for i in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train K steps and save every case here, then continue it here and in new processes.

    One worker on this backend resumes every case (and runs the multi-device checks);
    from the jax test run only, a torch and a tensorflow worker also load the jax files.
    """
    tmp = str(tmp_path_factory.mktemp("reliability"))
    # torch's jit_compile is torch.compile (dynamo), which this package does not support yet.
    keys = IDS + ([f"{c}@jit" for c in JIT_CASES] if BACKEND != "torch" else [])
    models = {}
    for key in keys:
        case_id, jit = key.split("@")[0], key.endswith("@jit")
        model = models[key] = make_model()
        compile_model(model, make(case_id), jit)
        train(model, batches(1, K_STEPS))
        model.save(os.path.join(tmp, f"{BACKEND}_{key}.keras"))
        if not jit:
            model.save_weights(os.path.join(tmp, f"{BACKEND}_{key}.weights.h5"))

    own = {"tasks": [{"kind": "continue", "dir": tmp, "keys": keys, "prefix": f"{BACKEND}_", "weights": True}]}
    extra = None
    if BACKEND == "jax":
        own["tasks"].append({"kind": "data_parallel", "keys": _distributed()})
        extra = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    elif BACKEND == "tensorflow":
        own["tasks"].append({"kind": "mirrored", "keys": _distributed()})
        own["tf_logical_cpus"] = 2
    procs = [_spawn(BACKEND, own, tmp, "own", extra)]
    if BACKEND == "jax":
        for target in ("torch", "tensorflow"):
            task = {"kind": "continue", "dir": tmp, "keys": IDS, "prefix": "jax_", "save_prefix": f"{target}_"}
            procs.append(_spawn(target, {"tasks": [task]}, tmp, target))
    ref_n, ref_nm = {}, {}  # the uninterrupted runs, trained while the workers start
    for key, model in models.items():
        train(model, batches(2, N_STEPS))
        ref_n[key] = state(model)
        train(model, batches(4, M_STEPS))
        ref_nm[key] = state(model)
    results = {name: _collect(name, proc, out) for name, proc, out in procs}
    return {"dir": tmp, "keys": keys, "ref_n": ref_n, "ref_nm": ref_nm, "results": results}


def _distributed():
    return [c for c in DISTRIBUTED_CASES if c in CASES]


def _each(case_ids, check):
    """Run `check(case_id)` for every case; fail once, listing every case that failed and why."""
    failures = []
    for case_id in case_ids:
        try:
            check(case_id)
        except Exception as error:  # collected so one run reports every broken case
            failures.append(f"{case_id}: {type(error).__name__}: {str(error).strip()[:600]}")
    assert not failures, "\n".join(failures)


def _no_errors(errors, kind):
    assert kind not in errors, errors[kind]


# Exact resume ---------------------------------------------------------------------------
def test_resume_in_new_process_is_bit_exact(runs):
    """K steps, save, load in a new process, N steps == K+N steps without stopping (every slot, iterations).

    Routes: `.keras` + load_model (eager, and compiled for JIT_CASES except on torch, whose
    jit_compile is torch.compile, not supported by keras_optx), and a model built from code
    + `load_weights` of a `.weights.h5` (which holds the optimizer variables too).
    """
    results, errors = runs["results"]["own"]
    _no_errors(errors, "continue")

    def check(key):
        expected = runs["ref_n"][key]
        assert int(expected[-1]) == K_STEPS + N_STEPS
        for route in ["continue"] + (["weights"] if not key.endswith("@jit") else []):
            got = _arrays(results, f"{route}/{key}")
            assert len(got) == len(expected), f"{route}: {len(got)} saved arrays, expected {len(expected)}"
            for i, (a, b) in enumerate(zip(got, expected)):
                np.testing.assert_array_equal(a, b, err_msg=f"{route} route, array {i}")

    _each(runs["keys"], check)


# Portable state -------------------------------------------------------------------------
@pytest.mark.skipif(
    BACKEND != "jax",
    reason="run once, from the jax test process: it spawns torch and tensorflow workers itself, "
    "so running it from every backend would triple the cost and cover nothing more",
)
@pytest.mark.parametrize("target", ["torch", "tensorflow"])
def test_state_saved_on_jax_continues_on_other_backends(runs, target):
    """jax → target (N steps) matches jax alone; target's save, back on jax (M steps), matches too."""
    results, errors = runs["results"][target]
    _no_errors(errors, "continue")
    _each(IDS, lambda case_id: _check_portable(runs, results, target, case_id))


def _check_portable(runs, results, target, case_id):
    got = _arrays(results, f"continue/{case_id}")
    expected = runs["ref_n"][case_id]
    assert len(got) == len(expected)
    for i, (a, b) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"array {i} after jax → {target}")
    model = keras.saving.load_model(os.path.join(runs["dir"], f"{target}_{case_id}.keras"))
    model.run_eagerly = True
    train(model, batches(4, M_STEPS))
    for i, (a, b) in enumerate(zip(state(model), runs["ref_nm"][case_id])):
        np.testing.assert_allclose(a, b, **TOL, err_msg=f"array {i} after jax → {target} → jax")


# One machine, several devices -----------------------------------------------------------
@pytest.mark.skipif(
    BACKEND == "torch",
    reason="Keras's torch backend has no single-process multi-device strategy (torch DDP needs one process "
    "per device); jax DataParallel and tf MirroredStrategy are tested from their own runs",
)
def test_multi_device_matches_one_device(runs):
    """jax DataParallel over 2 host devices / tf MirroredStrategy over 2 logical CPUs == one device."""
    kind = "data_parallel" if BACKEND == "jax" else "mirrored"
    results, errors = runs["results"]["own"]
    _no_errors(errors, kind)
    assert int(results["devices/0"]) == 2
    start = make_model().get_weights()

    def check(case_id):
        one, many = _arrays(results, f"one/{case_id}"), _arrays(results, f"many/{case_id}")
        assert not np.allclose(one[0], start[0]), "the one-device run did not train"
        for i, (a, b) in enumerate(zip(many, one)):
            np.testing.assert_allclose(a, b, **TOL, err_msg=f"weight {i}")

    _each(_distributed(), check)


# Keras's optimizer contract ---------------------------------------------------------------
def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=(3, 2)).astype("float32")), keras.Variable(rng.normal(size=(2,)).astype("float32"))]


def _grads(step, scale=1.0):
    rng = np.random.default_rng(100 + step)
    return [ops.convert_to_tensor((scale * rng.normal(size=s)).astype("float32")) for s in ((3, 2), (2,))]


def _numpy(variables):
    return [np.array(ops.convert_to_numpy(v.value)) for v in variables]


def _run(opt, variables, steps, first=0):
    for i in range(first, first + steps):
        opt.apply(_grads(i), variables)
    return _numpy(variables)


def _assert_same(a, b, exact=True):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if exact:
            np.testing.assert_array_equal(x, y)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_iterations_count_updates():
    def check(case_id):
        opt = make(case_id)
        _run(opt, _variables(), 3)
        assert int(ops.convert_to_numpy(opt.iterations)) == 3

    _each(IDS, check)


def test_learning_rate_can_be_set():
    def check(case_id):
        case = CASES[case_id]
        if not case.settable:
            opt = make(case_id)
            with pytest.raises(TypeError, match="LearningRateSchedule"):
                opt.learning_rate = 0.5
            return
        reference, changed = make(case_id), case.make(case.lr * 7)
        changed.learning_rate = case.lr
        assert float(ops.convert_to_numpy(changed.learning_rate)) == pytest.approx(case.lr)
        _assert_same(_run(changed, _variables(), 3), _run(reference, _variables(), 3))

    _each(IDS, check)


def test_schedule_and_callable_rates():
    """A Keras schedule equals setting its value before each step; a callable equals its value."""
    _each([c for c in IDS if CASES[c].settable and CASES[c].schedules], _check_schedule_and_callable)


def _check_schedule_and_callable(case_id):
    case = CASES[case_id]
    schedule = keras.optimizers.schedules.ExponentialDecay(case.lr, decay_steps=1, decay_rate=0.5)
    scheduled, stepped = case.make(schedule), case.make(case.lr)
    a, b = _variables(), _variables()
    for i in range(3):
        stepped.learning_rate = float(ops.convert_to_numpy(schedule(i)))
        scheduled.apply(_grads(i), a)
        stepped.apply(_grads(i), b)
    _assert_same(_numpy(a), _numpy(b), exact=False)
    _assert_same(_run(case.make(lambda: case.lr), _variables(), 3), _run(make(case_id), _variables(), 3), exact=False)


def test_set_weights_restores_optimizer_state():
    def check(case_id):
        trained, fresh = make(case_id), make(case_id)
        a = _variables()
        _run(trained, a, 3)
        b = [keras.Variable(x) for x in _numpy(a)]
        fresh.build(b)
        assert len(fresh.variables) == len(trained.variables)
        fresh.set_weights([ops.convert_to_numpy(v.value) for v in trained.variables])
        _assert_same(_run(fresh, b, 2, first=3), _run(trained, a, 2, first=3))
        _assert_same(_numpy(fresh.variables), _numpy(trained.variables))

    _each(IDS, check)


def test_ema_is_the_moving_average_of_the_trajectory():
    def check(case_id):
        momentum = 0.8
        ema_opt, plain = make(case_id, use_ema=True, ema_momentum=momentum), make(case_id)
        a, b = _variables(), _variables()
        average = None
        for i in range(3):
            ema_opt.apply(_grads(i), a)
            values = _run(plain, b, 1, first=i)
            # Keras: the first average is the variable itself, then m·avg + (1−m)·x.
            average = values if average is None else [momentum * p + (1 - momentum) * x for p, x in zip(average, values)]
        _assert_same(_numpy(a), _numpy(b), exact=False)  # EMA does not change training
        ema_opt.finalize_variable_values(a)
        _assert_same(_numpy(a), average, exact=False)

    _each(IDS, check)


def test_gradient_accumulation_averages_micro_steps():
    def check(case_id):
        acc, plain = make(case_id, gradient_accumulation_steps=2), make(case_id)
        a, b = _variables(), _variables()
        g1, g2 = _grads(0), _grads(1)
        acc.apply(g1, a)
        acc.apply(g2, a)
        plain.apply([(x + y) / 2 for x, y in zip(g1, g2)], b)
        _assert_same(_numpy(a), _numpy(b), exact=False)
        acc.apply(_grads(2), a)  # a micro-step: accumulated, not applied
        _assert_same(_numpy(a), _numpy(b), exact=False)
        assert int(ops.convert_to_numpy(acc.iterations)) == 1

    _each(IDS, check)


def test_loss_scale_factor_divides_gradients():
    def check(case_id):
        scaled, plain = make(case_id, loss_scale_factor=8.0), make(case_id)
        a, b = _variables(), _variables()
        for i in range(2):
            scaled.apply([8.0 * g for g in _grads(i)], a)
            plain.apply(_grads(i), b)
        _assert_same(_numpy(a), _numpy(b))

    _each(IDS, check)


# Partitions whose first key takes matrices (Muon's row): a lone vector cannot be routed to it.
_ROUTED_BY_RANK = {"Partition(kernel:Muon,.*:ADAM)"}


def test_variable_constraint_applied_after_update():
    def check(case_id):
        rng = np.random.default_rng(0)
        start = rng.normal(size=(4,)).astype("float32")
        if case_id in _ROUTED_BY_RANK:  # a lone vector: its matrix key would route nothing (refused at build)
            return
        constrained = keras.Variable(start)
        constrained.constraint = keras.constraints.NonNeg()  # as Layer.add_weight does
        free = keras.Variable(start)
        g = ops.convert_to_tensor(rng.normal(size=(4,)).astype("float32"))
        make(case_id).apply([g], [constrained])
        make(case_id).apply([g], [free])
        expected = np.maximum(_numpy([free])[0], 0)
        assert (expected == 0).any() and (expected > 0).any(), "choose data where the constraint matters"
        np.testing.assert_array_equal(_numpy([constrained])[0], expected)

    _each(IDS, check)


def test_none_gradient_skipped_with_keras_warning():
    def check(case_id):
        opt = make(case_id)
        a = _variables()
        before = _numpy(a)
        with pytest.warns(UserWarning, match="Gradients do not exist"):
            opt.apply([None, _grads(0)[1]], a)
        np.testing.assert_array_equal(_numpy(a)[0], before[0])
        if case_id in _ROUTED_BY_RANK:  # its matrix key routes nothing for a vector alone: refused at build, rightly
            return
        alone = keras.Variable(before[1])
        make(case_id).apply([_grads(0)[1]], [alone])
        np.testing.assert_array_equal(_numpy(a)[1], _numpy([alone])[0])

    _each(IDS, check)


def test_wrong_gradient_lists_refused_without_writes():
    def check(case_id):
        opt = make(case_id)
        a = _variables()
        _run(opt, a, 1)
        before, state_before = _numpy(a), _numpy(opt.variables)
        g = _grads(1)
        with pytest.raises(ValueError, match="same length"):
            opt.apply(g + [g[1]], a)
        with pytest.raises(ValueError, match="gradients must match"):
            opt.apply(g[:1])
        with pytest.raises(ValueError, match="shape"):
            opt.apply([g[1], g[0]], a)
        with pytest.raises(ValueError, match="Unknown variable"):
            opt.apply([g[1]], [keras.Variable(np.zeros(2, "float32"))])
        _assert_same(_numpy(a), before)
        _assert_same(_numpy(opt.variables), state_before)

    _each(IDS, check)


# Mixed precision --------------------------------------------------------------------------
@pytest.fixture
def policy():
    yield keras.mixed_precision.set_dtype_policy
    keras.mixed_precision.set_dtype_policy("float32")




@pytest.mark.parametrize("dtype_policy", ["mixed_float16", "mixed_bfloat16", "float16"])
def test_mixed_precision_trains_and_keeps_dtypes(policy, dtype_policy):
    policy(dtype_policy)
    # mixed_float16: Keras wraps every case in LossScaleOptimizer; the other two policies give
    # the rules float16/bfloat16 variables (float32 slots and math).
    _each([c for c in IDS if c in CASES], lambda case_id: _check_mixed_precision(dtype_policy, case_id))


def _check_mixed_precision(dtype_policy, case_id):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    start = [np.array(w) for w in model.get_weights()]
    model.compile(optimizer=make(case_id), loss="mse", run_eagerly=True)
    if dtype_policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # four steps: LossScaleOptimizer may skip the first (an overflowing scale), and ADOPT's first moves nothing
    for x, y in batches(1, 4):
        loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    variable_dtype = keras.mixed_precision.dtype_policy().variable_dtype
    for w in model.weights:
        assert keras.backend.standardize_dtype(w.dtype) == variable_dtype
    assert any(not np.array_equal(np.asarray(w, "float32"), s) for w, s in zip(model.get_weights(), start))
    for v in model.optimizer.variables:
        if getattr(v, "_keras_optx_hyperparameters", False):
            continue  # what the user set, not trained state (Prodigy's growth_rate = inf)
        assert np.isfinite(np.asarray(ops.convert_to_numpy(v.value), "float64")).all(), v.path
    # keras_optx slots of float16 variables are float32 (a wrapped Keras optimizer keeps its own in float16)
    if "(keras " not in case_id:
        inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
        shaped = [v for v in inner.variables if tuple(v.shape) == tuple(model.weights[0].shape)]
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in shaped)


# Non-finite gradients ---------------------------------------------------------------------
def test_skip_non_finite_equals_inner_on_finite_gradients():
    def check(case_id):
        guarded, plain = ox.SkipNonFinite(make(case_id)), make(case_id)
        _assert_same(_run(guarded, _variables(), 3), _run(plain, _variables(), 3))
        _assert_same(_numpy(guarded.optimizer.variables), _numpy(plain.variables))
        assert int(ops.convert_to_numpy(guarded.skipped)) == 0
        assert int(ops.convert_to_numpy(guarded.iterations)) == 3

    _each(IDS, check)


def test_skip_non_finite_leaves_everything_unchanged():
    for bad in (np.nan, np.inf, -np.inf):
        _each(["ADAM", "ExpDecay>Momentum", "ClipGlobalNorm(keras Adam)"], lambda c: _check_skip(c, bad))


def _check_skip(case_id, bad):
    guarded = ox.SkipNonFinite(make(case_id))
    a = _variables()
    _run(guarded, a, 2)
    before, state_before = _numpy(a), _numpy(guarded.optimizer.variables)
    g = _grads(2)
    g[1] = ops.convert_to_tensor(np.array([1.0, bad], "float32"))
    guarded.apply(g, a)
    _assert_same(_numpy(a), before)
    _assert_same(_numpy(guarded.optimizer.variables), state_before)
    assert int(ops.convert_to_numpy(guarded.skipped)) == 1
    assert int(ops.convert_to_numpy(guarded.iterations)) == 2


def test_skip_non_finite_in_compiled_fit(tmp_path):
    """A NaN batch inside model.fit (jit on jax, tf.function on tensorflow, eager torch) is as if absent."""
    cases_ = ["ADAM", "ClipNorm>WeightDecay>ADAM", "ClipGlobalNorm(keras Adam)", "Descent(ExpDecay)"]
    _each(cases_, lambda case_id: _check_skip_in_fit(case_id, tmp_path))


def _check_skip_in_fit(case_id, tmp_path):
    good = batches(5, 3)
    x_bad = good[1][0].copy()
    x_bad[0, 0] = np.nan
    data = [good[0], (x_bad, good[1][1]), good[2]]
    jit = BACKEND != "torch"  # torch's jit_compile is torch.compile, not supported by keras_optx
    guarded = make_model()
    compile_model(guarded, ox.SkipNonFinite(make(case_id)), jit=jit)
    guarded.fit(np.concatenate([d[0] for d in data]), np.concatenate([d[1] for d in data]),
                batch_size=BATCH, shuffle=False, verbose=0)
    plain = make_model()
    compile_model(plain, make(case_id), jit=jit)
    plain.fit(np.concatenate([good[0][0], good[2][0]]), np.concatenate([good[0][1], good[2][1]]),
              batch_size=BATCH, shuffle=False, verbose=0)
    opt = guarded.optimizer
    assert int(ops.convert_to_numpy(opt.skipped)) == 1
    assert int(ops.convert_to_numpy(opt.iterations)) == 2
    for a, b in zip(guarded.get_weights(), plain.get_weights()):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    path = str(tmp_path / f"{case_id}.keras")
    guarded.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, ox.SkipNonFinite)
    _assert_same(_numpy(loaded.optimizer.variables), _numpy(opt.variables))
    assert int(ops.convert_to_numpy(loaded.optimizer.skipped)) == 1


@pytest.mark.skipif(BACKEND != "jax", reason="stateless_apply is JAX's functional API")
def test_skip_non_finite_under_jax_stateless_apply():
    import jax

    guarded = ox.SkipNonFinite(make("ADAM"))
    a = _variables()
    guarded.build(a)
    step = jax.jit(guarded.stateless_apply)
    opt_vals, train_vals = [v.value for v in guarded.variables], [v.value for v in a]
    bad = _grads(1)
    bad[0] = bad[0].at[0, 0].set(np.nan)
    new_train, new_opt = step(opt_vals, _grads(0), train_vals)
    newer_train, newer_opt = step(new_opt, bad, new_train)
    _assert_same([np.asarray(x) for x in newer_train], [np.asarray(x) for x in new_train])
    skipped = next(i for i, v in enumerate(guarded.variables) if v is guarded.skipped)
    assert int(newer_opt[skipped]) == 1 and int(new_opt[skipped]) == 0
    plain = make("ADAM")
    _assert_same([np.asarray(x) for x in new_train], _run(plain, _variables(), 1))


def test_skip_non_finite_refuses_bad_arguments():
    with pytest.raises(TypeError, match="optimizer"):
        ox.SkipNonFinite("adam")
    with pytest.raises(ValueError, match="use_ema"):
        ox.SkipNonFinite(ox.ADAM(), use_ema=True)
    guarded = ox.SkipNonFinite(ox.ADAM(0.01))
    guarded.learning_rate = 0.5
    assert float(ops.convert_to_numpy(guarded.optimizer.learning_rate)) == 0.5
    config = keras.optimizers.serialize(guarded)
    again = keras.optimizers.deserialize(config)
    assert isinstance(again.optimizer, ox.ADAM) and again.optimizer.get_config() == guarded.optimizer.get_config()


# Sparse gradients -------------------------------------------------------------------------
class _OneHotEmbedding(keras.layers.Layer):
    """Embedding as one_hot(ids) @ table: the same function, with a dense gradient."""

    def __init__(self, rows, width):
        super().__init__()
        self.rows = rows
        self.embeddings = self.add_weight(shape=(rows, width), initializer="zeros")

    def call(self, ids):
        return ops.matmul(ops.one_hot(ids, self.rows), self.embeddings)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="only TensorFlow hands optimizers sparse (IndexedSlices) gradients; jax and torch give dense ones",
)
def test_sparse_embedding_gradients_match_dense():
    def check(case_id):
        import tensorflow as tf

        def build(layer):
            model = keras.Sequential([keras.Input((2,), dtype="int32"), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
            rng = np.random.default_rng(0)
            model.set_weights([(0.5 * rng.normal(size=w.shape)).astype("float32") for w in model.get_weights()])
            model.compile(optimizer=make(case_id), loss="mse", run_eagerly=True)
            return model

        sparse, dense = build(keras.layers.Embedding(6, 3)), build(_OneHotEmbedding(6, 3))
        rng = np.random.default_rng(1)
        ids = rng.integers(0, 5, size=(8, 2)).astype("int32")  # row 5 never looked up; repeats summed
        y = rng.normal(size=(8, 1)).astype("float32")
        with tf.GradientTape() as tape:
            loss = keras.losses.mean_squared_error(y, sparse(ids))
        assert isinstance(tape.gradient(loss, sparse.trainable_variables[0].value), tf.IndexedSlices)
        for _ in range(3):
            sparse.train_on_batch(ids, y)
            dense.train_on_batch(ids, y)
        for a, b in zip(sparse.get_weights(), dense.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    _each(IDS, check)


# Bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("build,error,name", BAD, ids=[f"{i}:{name}" for i, (_, _, name) in enumerate(BAD)])
def test_bad_hyperparameters_refused_with_the_argument_named(build, error, name):
    with pytest.raises(error, match=name):
        build()


def test_bad_range_is_stated():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ox.Momentum(0.01, 1.0)
    with pytest.raises(ValueError, match="> 0"):
        ox.ClipNorm(0.0)


def test_chain_misuse_refused():
    shared = ox.ADAM()
    first = ox.Optimiser(ox.ClipNorm(1.0), shared)  # a member is claimed while its chain lives
    with pytest.raises(ValueError, match="already a member"):
        ox.Optimiser(ox.WeightDecay(1e-4), shared)
    assert first[1] is shared
    trained = ox.Momentum(0.1)
    a = _variables()
    _run(trained, a, 1)
    before = _numpy(a)
    with pytest.raises(ValueError, match="already used to train"):
        ox.Optimiser(ox.ClipNorm(1.0), trained)
    _assert_same(_numpy(a), before)
    _run(trained, a, 1)  # the standalone rule still works
    assert int(ops.convert_to_numpy(trained.iterations)) == 2


def test_model_unchanged_when_fit_refuses_another_variable_list():
    model = make_model()
    model.compile(optimizer=ox.ADAM(0.01), loss="mse", run_eagerly=True)
    train(model, batches(1, 1))
    before = [np.array(w) for w in model.get_weights()]
    other = make_model(seed=3)
    with pytest.raises(ValueError, match="Unknown variable"):
        model.optimizer.apply([ops.ones(v.shape) for v in other.trainable_variables], other.trainable_variables)
    _assert_same(model.get_weights(), before)
    _assert_same(other.get_weights(), make_model(seed=3).get_weights())
