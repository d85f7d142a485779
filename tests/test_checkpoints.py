"""Saved-format stability: `.keras` files written by keras_optx (tests/fixtures/checkpoints/v<format>/<backend>/,
one folder per format version and backend that wrote them, by tests/fixtures/make_checkpoints.py) load on this
backend and continue training to the trajectory recorded when they were saved.

A change that adds, removes or reorders optimizer variables or renames a config key must raise
`keras_optx._base.FORMAT_VERSION` and migrate older files (`Rule._migrate_config`,
`Rule._migrate_variables`); these files then keep passing.
"""

import json
import os
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_optx as ox
from keras_optx._base import FORMAT_VERSION

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "checkpoints")
sys.path.insert(0, os.path.join(HERE, "fixtures"))
import make_checkpoints as fixtures  # noqa: E402

BACKEND = keras.backend.backend()
VERSIONS = sorted(int(folder[1:]) for folder in os.listdir(FIXTURES) if folder.startswith("v"))
FILES = sorted(
    (version, saved_on, name[: -len(".keras")])
    for version in VERSIONS
    for saved_on in os.listdir(os.path.join(FIXTURES, f"v{version}"))
    if os.path.isdir(os.path.join(FIXTURES, f"v{version}", saved_on))
    for name in os.listdir(os.path.join(FIXTURES, f"v{version}", saved_on))
    if name.endswith(".keras")
)
FIRST = os.path.join(FIXTURES, "v1", BACKEND)  # this backend's files of format 1, the first committed


def _path(version, saved_on, name, ext=".keras"):
    return os.path.join(FIXTURES, f"v{version}", saved_on, name + ext)


def _continue(model, recorded, version):
    model.run_eagerly = True
    states = []
    for i in range(len(recorded["x"])):
        model.train_on_batch(recorded["x"][i], recorded["y"][i])
        states.append(_state(model, version))
    return states


def _state(model, version):
    """`fixtures.state` in the layout of a file of format `version`: format 2 added a hyperparameter
    vector per rule (its values come from the file's config; checked here against that config)."""
    if version >= 2:
        return fixtures.state(model)
    kept = []
    for v in model.optimizer.variables:
        if getattr(v, "_keras_optx_hyperparameters", False):
            continue
        kept.append(v)
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in list(model.weights) + kept]


def _hyperparameter_vectors_follow_the_config(optimizer):
    from keras_optx._hyper import _walk

    for rule in _walk(optimizer):
        vector = rule.__dict__.get("_hyper_variable")
        if vector is None:
            continue
        expected = [float(e) for name in rule._hyper_layout for e in np.atleast_1d(rule._static(name))]
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(vector.value), np.float32(expected), err_msg=rule.name)


def _expected(recorded, step):
    n = len([k for k in recorded.files if k.startswith(f"step{step}/")])
    return [recorded[f"step{step}/{j}"] for j in range(n)]


def test_every_format_case_and_backend_has_a_fixture():
    """Format 1 (the first committed) and today's at least; raising FORMAT_VERSION needs its files
    (`python tests/fixtures/make_checkpoints.py`), and the older folders stay."""
    import keras_optx.torch  # noqa: F401  the torch-compatible case needs it importable here

    assert {1, FORMAT_VERSION} <= set(VERSIONS)
    for version in VERSIONS:
        assert {saved_on for v, saved_on, _ in FILES if v == version} == set(fixtures.BACKENDS), version
        for backend in fixtures.BACKENDS:
            assert {name for v, saved_on, name in FILES if (v, saved_on) == (version, backend)} == set(fixtures.cases())


@pytest.mark.parametrize("folder,saved_on,name", FILES, ids=[f"v{v}/{b}/{n}" for v, b, n in FILES])
def test_saved_file_loads_and_continues_the_recorded_trajectory(folder, saved_on, name):
    path = _path(folder, saved_on, name)
    model = keras.saving.load_model(path)
    with np.load(_path(folder, saved_on, name, ".npz")) as recorded:
        recorded = {k: recorded[k] for k in recorded.files}

    class Recorded(dict):
        files = list(recorded)

    recorded = Recorded(recorded)
    version = _config(path)["compile_config"]["optimizer"]["config"]["format_version"]
    _hyperparameter_vectors_follow_the_config(model.optimizer)
    for step, got in enumerate(_continue(model, recorded, version)):
        expected = _expected(recorded, step)
        assert len(got) == len(expected), f"{len(got)} weights + optimizer variables, the file's run had {len(expected)}"
        for j, (a, b) in enumerate(zip(got, expected)):
            # Same backend: the same kernels, to rounding; another backend: float32 tolerance (as
            # tests/test_reliability.py's portable-state check, measured ≤ 2e-6).
            tol = dict(rtol=1e-6, atol=1e-7) if saved_on == BACKEND else dict(rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a, b, **tol, err_msg=f"continued step {step}, array {j}")


def _config(path):
    with zipfile.ZipFile(path) as z:
        return json.loads(z.read("config.json"))


def _rewrite(path, out, edit):
    """Copy the `.keras` file at `path` to `out` with its optimizer config edited by `edit(config)`."""
    config = _config(path)
    edit(config["compile_config"]["optimizer"]["config"])
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = json.dumps(config).encode() if item.filename == "config.json" else src.read(item.filename)
            dst.writestr(item, data)
    return out


def test_configs_carry_the_format_version():
    for version, saved_on, name in FILES:
        optimizer = _config(_path(version, saved_on, name))["compile_config"]["optimizer"]
        assert optimizer["config"]["format_version"] == version, (version, saved_on, name)
    for make in fixtures.cases().values():
        assert make().get_config()["format_version"] == FORMAT_VERSION


def test_file_without_format_version_loads_as_version_0(tmp_path):
    """Files written before format versions existed have today's layout: they load via the migration hook."""
    source = os.path.join(FIRST, "chain_ClipNorm_WeightDecay_ADAM.keras")

    def strip(config):
        config.pop("format_version")
        for rule in config["rules"]:
            rule["config"].pop("format_version")

    seen = []
    original = ox.Optimiser._migrate_config.__func__

    def spy(cls, config, version):
        seen.append((cls.__name__, version))
        return original(cls, config, version)

    ox.Optimiser._migrate_config = classmethod(spy)
    try:
        model = keras.saving.load_model(_rewrite(source, str(tmp_path / "v0.keras"), strip))
    finally:
        del ox.Optimiser._migrate_config
    assert ("Optimiser", 0) in seen
    reference = keras.saving.load_model(source)
    for a, b in zip(model.optimizer.variables, reference.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_file_from_a_newer_format_is_refused(tmp_path):
    source = os.path.join(FIRST, "rule_ADAM.keras")
    out = _rewrite(source, str(tmp_path / "future.keras"), lambda c: c.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(Exception, match="newer keras_optx"):
        keras.saving.load_model(out)


def test_saved_state_of_another_size_is_refused_not_dropped(tmp_path):
    """Keras only warns when the saved optimizer has another number of variables, and trains on from
    zeros; a keras_optx optimizer refuses."""
    source = os.path.join(FIRST, "rule_ADAM.keras")
    original = ox.ADAM._migrate_variables
    ox.ADAM._migrate_variables = lambda self, arrays, version: arrays[:-1]
    try:
        out = _rewrite(source, str(tmp_path / "v0.keras"), lambda c: c.pop("format_version"))
        with pytest.raises(Exception, match="Cannot load the saved state"):
            keras.saving.load_model(out)
    finally:
        ox.ADAM._migrate_variables = original


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "groups"])
def test_format_2_torch_vectors_without_weight_decay_take_it_from_the_config(grouped):
    """Format 3 added `weight_decay` to keras_optx.torch's hyperparameter vectors: a format-2 vector (one
    entry shorter) loads with the values of the loaded config, every other variable as saved."""
    from keras_optx.torch import SGD

    variables = [keras.Variable(np.ones((2, 2), "float32"), name="kernel"), keras.Variable(np.ones(2, "float32"), name="bias")]
    groups = [{"params": "bias", "weight_decay": 0.5, "momentum": 0.8}] if grouped else None
    saved = SGD(0.1, momentum=0.9, weight_decay=0.01, param_groups=groups)
    saved.apply([np.full((2, 2), 0.5, "float32"), np.full(2, -0.5, "float32")], variables)
    arrays = [np.array(keras.ops.convert_to_numpy(v.value)) for v in saved.variables]
    vectors = [i for i, v in enumerate(saved.variables) if getattr(v, "_keras_optx_hyperparameters", False)]
    assert len(vectors) == (3 if grouped else 1)
    old = [a[:-1] if i in vectors else a for i, a in enumerate(arrays)]  # format 2: (momentum, dampening)
    loaded = SGD.from_config(dict(saved.get_config(), format_version=2))
    loaded.build(variables)
    loaded.load_own_variables({str(i): a for i, a in enumerate(old)})
    for i, (a, b) in enumerate(zip(loaded.variables, arrays)):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.value), b, err_msg=f"variable {i}")
