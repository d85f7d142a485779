"""The main job, `python -m keras_optx.compare`: a real run, its table and plot, and its error paths."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_optx import compare

BACKEND = keras.backend.backend()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(args, env_backend):
    env = dict(os.environ, KERAS_BACKEND=env_backend, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_OPTX_COMPARE_REEXEC", None)
    return subprocess.run(
        [sys.executable, "-m", "keras_optx.compare", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_tiny_run_prints_table_and_writes_png(tmp_path):
    # Start the process under another backend (a quick one to import): --backend must re-exec.
    other = "torch" if BACKEND == "jax" else "jax"
    png = tmp_path / "curves.png"
    args = ["--backend", BACKEND, "--rules", "descent,clipnorm+adam:0.01", "--epochs", "1", "--output", str(png)]
    result = _run(args, env_backend=other)
    assert result.returncode == 0, result.stderr[-3000:]

    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["#", "rule", "η", "train", "loss", "test", "accuracy", "ms/step", "note"]
    rows = {line.split()[1]: line.split()[2:] for line in lines[2:]}
    assert sorted(rows) == ["ClipNorm+ADAM(0.01)", "Descent"]
    assert [line.split()[0] for line in lines[2:]] == ["1", "2"]  # ranked
    assert rows["Descent"][0] == "0.1" and rows["ClipNorm+ADAM(0.01)"][0] == "0.01"  # the rates run
    start_loss = 2.302585  # ln 10: cross-entropy of a near-uniform guess over ten digits
    for name, (_, loss, accuracy, ms) in rows.items():
        assert 0 < float(loss) < start_loss, name  # one epoch of training lowers the loss
        assert 10.0 < float(accuracy.rstrip("%")) <= 100.0, name  # better than chance
        assert float(ms) > 0, name

    assert f"backend {BACKEND}" in result.stderr  # the re-exec took effect
    assert "epoch 1/1" in result.stderr  # progress, one line per rule and epoch
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rules", "adam,bogus"], "unknown rule 'bogus'"),
        (["--epochs", "-3"], "--epochs"),
        (["--epochs", "zero"], "--epochs"),
        (["--rules", "adam:fast"], "bad number"),
        (["--rules", "adadelta:1.5"], "rho"),
        (["--rules", "clipnorm"], "chain it with a rule"),
        (["--rules", "adam++descent"], "empty rule name at position 2 of the chain 'adam++descent'"),
        (["--rules", "adam,,descent"], "empty rule name at position 2 of 'adam,,descent'"),
        (["--rules", ",adam"], "empty rule name at position 1"),
        (["--rules", "expdecay"], "chain it with a rule"),
        (["--seeds", "0"], "--seeds"),
        (["--tune-epochs", "0"], "--tune-epochs"),
        (["--backend", "numpy"], "--backend"),
        (["--output", "curves.jpg"], ".png"),
    ],
)
def test_bad_options_give_one_line_and_status_2(args, message, capsys):
    assert compare.main(["--backend", BACKEND, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("keras-optx-compare: error:"), err
    assert message in err


def test_bad_option_in_a_real_process_has_no_traceback():
    result = _run(["--rules", "descent,nope", "--epochs", "1"], env_backend=BACKEND)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "keras-optx-compare: error: unknown rule 'nope'" in result.stderr
    assert result.stdout == ""


def test_rule_names_build_the_named_optimizers():
    import keras_optx as ox

    assert isinstance(compare.build_optimizer("ADAM"), ox.ADAM)
    assert float(compare.build_optimizer("momentum:0.05").learning_rate) == pytest.approx(0.05)
    chain = compare.build_optimizer("clipnorm:0.5+weightdecay+adam")
    assert isinstance(chain, ox.Optimiser)
    assert [type(r) for r in chain] == [ox.ClipNorm, ox.WeightDecay, ox.ADAM]
    assert chain[0].thresh == 0.5
    assert compare.display_name("clipnorm+adam:0.01") == "ClipNorm+ADAM(0.01)"
    decayed = compare.build_optimizer("expdecay:0.5+descent")  # the decays have names, as chain members
    assert isinstance(decayed[0], ox.ExpDecay) and decayed[0].learning_rate == 0.5
    assert isinstance(compare.build_optimizer("invdecay+momentum")[0], ox.InvDecay)
    assert compare.display_name("expdecay+descent") == "ExpDecay+Descent"
    assert len(compare.DEFAULT_RULES) == 14
    assert isinstance(compare.build_optimizer("lion:0.0003"), ox.Lion)
    assert isinstance(compare.build_optimizer("clipnorm+rprop"), ox.Optimiser)
    assert compare.display_name("rprop:0.01") == "Rprop(0.01)"
    ranger = compare.build_optimizer("lookahead:5+clipnorm+radam")
    assert isinstance(ranger, ox.Lookahead) and ranger.sync_period == 5
    assert [type(r) for r in ranger.optimizer] == [ox.ClipNorm, ox.RADAM]
    assert compare.display_name("lookahead+adam") == "Lookahead+ADAM"
    for bad in ("lookahead", "lookahead:0+adam", "lookahead:x+adam"):
        with pytest.raises(compare.UsageError, match="lookahead"):
            compare.build_optimizer(bad)


# The Python API ------------------------------------------------------------------------
def _data(n=64, seed=0, features=4):
    x = np.random.default_rng(seed).normal(size=(n, features)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def _user_model():
    # A user's model: functional, two inputs' worth of layers, not the CLI's MLP.
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_api_runs_a_user_model_with_every_kind_of_rule(tmp_path):
    import keras_optx as ox
    import keras_optx.torch as ox_torch

    x, y = _data()
    x_test, y_test = _data(32, seed=1)
    rules = {
        "by name": "descent:0.5",
        "object": ox.Descent(0.5),  # the same rule: with the same weights and batches, the same curve
        "chain": ox.Optimiser(ox.ClipNorm(1.0), ox.ExpDecay(1.0, 0.5, 2), ox.ADAM(0.01)),
        "torch": ox_torch.SGD(0.5, momentum=0.9),
        "factory": ox.ADAGrad,
        "partition": ox.Partition({"kernel": ox.Momentum(0.1), ".*": ox.Descent(0.1)}),
    }
    result = compare.compare(
        _user_model, (x, y), rules, loss=LOSS, metrics=["accuracy"], epochs=2, batch_size=16, seeds=2,
        test_data=(x_test, y_test), progress=False,
    )
    assert [row.rule for row in result.rows] == list(rules)
    assert result.score_name == "test accuracy" and result.higher_is_better
    for row in result.rows:
        assert row.seeds == [0, 1] and len(row.curves) == 2 and all(len(c) == 2 for c in row.curves)
        assert all(np.isfinite(row.losses)) and not row.diverged
        assert all(0.0 <= s <= 1.0 for s in row.scores)
        assert row.ms_per_step > 0
        assert row.losses[0] != row.losses[1]  # the seeds differ: a spread
        assert row.loss()[1] > 0
    by = {row.rule: row for row in result.rows}
    np.testing.assert_allclose(by["by name"].curves, by["object"].curves, rtol=1e-6)
    assert by["by name"].learning_rate == 0.5 and by["factory"].learning_rate == pytest.approx(0.1)
    assert rules["object"].iterations.numpy() == 0  # a copy trained, not the object given

    dicts = result.to_dicts()
    assert [d["rule"] for d in dicts] == list(rules)
    assert dicts[0]["score_std"] >= 0 and dicts[0]["seeds"] == [0, 1] and dicts[0]["tuned"] is False
    table = result.table()
    assert "± " in table and "over 2 seeds" in table
    for name in rules:
        assert name in table
    # the same cells as Markdown: a header, its alignment row, one row per rule in the table's order
    markdown = result.markdown().splitlines()
    assert markdown[0].startswith("| # | rule | η | train loss |") and markdown[1].startswith("| ---: | --- | ---: |")
    assert [line.split(" | ")[1] for line in markdown[2:]] == [row.rule for row in result.ranked()]
    pytest.importorskip("matplotlib", reason="plot() needs matplotlib (keras-optx[compare])")
    png = tmp_path / "curves.png"
    assert result.plot(png) == png and png.read_bytes()[:8] == PNG_MAGIC


def test_every_rule_of_a_seed_starts_from_the_same_weights():
    seen = []

    def build():
        model = _user_model()
        seen.append([w.copy() for w in model.get_weights()])
        return model

    x, y = _data()
    compare.compare(build, (x, y), ["descent", "adam"], loss=LOSS, epochs=1, seeds=[3], progress=False)
    assert len(seen) == 2
    for a, b in zip(*seen):
        np.testing.assert_array_equal(a, b)


def test_tune_searches_on_a_held_out_split_never_the_test_set(monkeypatch):
    x, y = _data(100)
    x_test, y_test = _data(37, seed=2)
    calls = []
    fit, evaluate = keras.Model.fit, keras.Model.evaluate

    def spy(method, original):
        def wrapper(self, x=None, y=None, *args, **kwargs):
            calls.append((method, x))
            return original(self, x, y, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(keras.Model, "fit", spy("fit", fit))
    monkeypatch.setattr(keras.Model, "evaluate", spy("evaluate", evaluate))
    result = compare.compare(
        _user_model, (x, y), ["descent"], loss=LOSS, metrics=["accuracy"], epochs=1, tune=True,
        tune_epochs=1, tune_factors=[0.1, 1.0, 10.0], test_data=(x_test, y_test), progress=False,
    )
    (row,) = result.rows
    search = calls[: next(i for i, (_, arr) in enumerate(calls) if len(arr) == 100)]  # before the full run
    assert search and all(arr is not x_test for _, arr in search)
    fits = [arr for method, arr in search if method == "fit"]
    held_out = [arr for method, arr in search if method == "evaluate"]
    assert {len(a) for a in fits} == {80} and {len(a) for a in held_out} == {20}  # validation_split=0.2
    rows = lambda a: {tuple(r) for r in a}  # noqa: E731
    assert rows(held_out[0]) <= rows(x) and not rows(held_out[0]) & rows(fits[0])  # held out of the training data
    assert calls[-1][0] == "evaluate" and calls[-1][1] is x_test  # the test set: only after the full run
    assert sum(arr is x_test for _, arr in calls) == 1
    # The chosen rate is the trial with the lowest validation loss; the table shows it.
    assert row.tuned and row.learning_rate == min(row.trials, key=lambda t: t[1])[0]
    assert {round(r, 6) for r, _, _ in row.trials} >= {0.01, 0.1, 1.0}
    assert f"{row.learning_rate:.3g}" in result.table()


@pytest.mark.parametrize("kind", ["chain", "lookahead"])
def test_search_trials_equal_fresh_runs_at_their_rate(kind):
    # The search reuses one model and optimizer (restored, new rate): each trial must equal
    # a fresh model trained at that rate on the same split.
    import keras_optx as ox

    def make(rate):
        if kind == "chain":
            return ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(rate))
        return ox.Lookahead(ox.Momentum(rate), sync_period=2)

    x, y = _data(80)
    result = compare.compare(
        _user_model, (x, y), [make(0.01)], loss=LOSS, epochs=1,
        batch_size=16, tune=True, tune_epochs=1, tune_factors=[1.0, 10.0], progress=False,
    )
    (row,) = result.rows
    assert row.rule == ("Lookahead(Momentum)" if kind == "lookahead" else "ClipNorm+Momentum")
    (x_fit, y_fit), (x_val, y_val) = compare._split((x, y), 0.2)
    for rate, val, _ in row.trials[:2]:
        keras.utils.set_random_seed(0)
        model = _user_model()
        model.compile(optimizer=make(rate), loss=LOSS)
        order = compare._order(len(x_fit), 0, 0)  # the runs' batch order: seed 0, epoch 0
        model.fit(x_fit[order], y_fit[order], batch_size=16, epochs=1, shuffle=False, verbose=0)
        fresh = model.evaluate(x_val, y_val, batch_size=16, verbose=0, return_dict=True)["loss"]
        assert val == pytest.approx(fresh, rel=1e-5), rate


def test_a_diverged_rule_is_marked_and_the_table_stays_aligned():
    import keras_optx as ox

    x, y = _data()
    result = compare.compare(
        _user_model, (x, y), {"sane": "descent", "wild": ox.Descent(3e38)}, loss=LOSS, metrics=["accuracy"],
        epochs=2, seeds=2, progress=False,
    )
    wild = result.rows[1]
    assert wild.diverged and wild.diverged_runs == 2 and "diverged" in wild.note
    assert result.ranked()[-1] is wild
    lines = result.table().splitlines()
    header, rows = lines[0], lines[2:4]
    assert "diverged" in rows[1]
    for column in ("train loss", "ms/step"):
        end = header.index(column) + len(column)
        for line in rows:  # right-aligned cells end under their heading
            assert line[end - 1] != " " and (len(line) == end or line[end] == " "), (column, line)
    assert result.to_dicts()[1]["diverged"] is True


def test_interrupting_keeps_the_rules_that_finished():
    x, y = _data()
    built = []

    def build():
        built.append(1)
        if len(built) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the second rule's second seed
        return _user_model()

    result = compare.compare(build, (x, y), ["descent", "adam"], loss=LOSS, epochs=1, seeds=2, progress=False)
    assert result.interrupted
    assert [len(row.losses) for row in result.rows] == [2]
    assert "interrupted" in result.table()


def test_a_dataset_as_data_and_for_the_search():
    x, y = _data(48)

    class Batches(keras.utils.PyDataset):
        def __init__(self, x, y):
            super().__init__()
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x) // 16

        def __getitem__(self, i):
            return self.x[16 * i : 16 * (i + 1)], self.y[16 * i : 16 * (i + 1)]

    with pytest.raises(ValueError, match="validation_data"):
        compare.compare(_user_model, Batches(x, y), ["adam"], loss=LOSS, tune=True, progress=False)
    result = compare.compare(
        _user_model, Batches(x, y), ["adam"], loss=LOSS, epochs=1, tune=True, tune_epochs=1,
        tune_factors=[1.0, 3.0], validation_data=Batches(*_data(32, seed=3)), progress=False,
    )
    (row,) = result.rows
    assert row.tuned and result.score_name == "validation loss" and np.isfinite(row.scores[0])


def test_rules_without_a_settable_rate_are_run_untuned():
    import keras_optx as ox

    x, y = _data()
    lines = []
    result = compare.compare(
        _user_model, (x, y), [ox.Descent(ox.ExpDecay(0.1, 0.5, 2))], loss=LOSS, epochs=1, tune=True,
        tune_epochs=1, progress=lines.append,
    )
    (row,) = result.rows
    assert not row.tuned and row.learning_rate is None and row.note == "not tuned: its rate is a schedule"
    assert result.table().splitlines()[0].split() == ["#", "rule", "η", "train", "loss", "ms/step", "note"]
    assert lines and all("ETA" in line for line in lines)  # progress, with a time estimate


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"seeds": 0}, ValueError, "seeds"),
        ({"seeds": []}, ValueError, "seeds"),
        ({"validation_split": 1.5}, ValueError, "validation_split"),
        ({"rules": []}, ValueError, "rules"),
        ({"rules": [42]}, TypeError, r"rules\[0\]"),
        ({"rules": ["adam", "bogus"]}, ValueError, r"rules\[1\]: unknown rule 'bogus'"),
        ({"loss": None}, ValueError, "loss"),
        ({"tune": True, "tune_factors": [0.0]}, ValueError, "tune_factors"),
        ({"rules": [lambda lr: None]}, TypeError, "factory"),
    ],
)
def test_api_refuses_bad_arguments_before_training(kwargs, error, message):
    built = []
    kwargs = {"rules": ["adam"], "loss": LOSS, **kwargs}
    with pytest.raises(error, match=message):
        compare.compare(lambda: built.append(1) or _user_model(), _data(), **kwargs, progress=False)
    assert not built


def test_docstring_examples_run():
    import doctest

    import keras_optx

    failures, tried = doctest.testmod(compare, extraglobs={"keras_optx": keras_optx}, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


# Issue 26 item 10 ------------------------------------------------------------------------
def _dropout_model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8, activation="tanh")(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def test_search_trials_with_dropout_equal_fresh_runs_at_their_rate():
    # Each rate must start from the same random state too: dropout's masks are drawn from
    # seed variables that training advances (restored with the weights), or, for torch's
    # unseeded dropout, from torch's global generator (seeded when training begins).
    import keras_optx as ox

    x, y = _data(80)
    result = compare.compare(
        _dropout_model, (x, y), [ox.Momentum(0.01)], loss=LOSS, epochs=1,
        batch_size=16, tune=True, tune_epochs=1, tune_factors=[1.0, 10.0, 0.1], progress=False,
    )
    (x_fit, y_fit), (x_val, y_val) = compare._split((x, y), 0.2)
    for rate, val, _ in result.rows[0].trials[:3]:
        keras.utils.set_random_seed(0)
        model = _dropout_model()
        model.compile(optimizer=ox.Momentum(rate), loss=LOSS)
        order = compare._order(len(x_fit), 0, 0)
        seeded = keras.callbacks.LambdaCallback(on_train_begin=lambda logs: keras.utils.set_random_seed(0))
        model.fit(x_fit[order], y_fit[order], batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[seeded])
        fresh = model.evaluate(x_val, y_val, batch_size=16, verbose=0, return_dict=True)["loss"]
        assert val == pytest.approx(fresh, rel=1e-5), rate


def test_tune_works_on_a_model_without_an_input():
    # `Sequential([Dense(8), Dense(3)])` has no weights until it sees data.
    x, y = _data(60)
    result = compare.compare(
        lambda: keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)]), (x, y),
        ["descent"], loss=LOSS, epochs=1, batch_size=20, tune=True, tune_epochs=1, tune_factors=[0.1, 1.0],
        progress=False,
    )
    (row,) = result.rows
    assert row.tuned and len(row.trials) >= 2 and all(np.isfinite(v) for _, v, _ in row.trials[:2])
    assert row.trials[0][1] != row.trials[1][1]  # two rates, two results: each trial trained


def _shuffled_dataset(x, y):
    tf = pytest.importorskip("tensorflow", reason="tf.data is TensorFlow's; it is installed for every backend here")
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).batch(8)


class _BatchLog(keras.callbacks.Callback):
    """The loss of each batch: with the same start and the same rule, equal batches give equal losses."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def on_train_batch_end(self, batch, logs=None):
        self.log.append(float(keras.ops.convert_to_numpy(logs["loss"])))


def test_a_reshuffling_tf_dataset_is_refused_and_a_factory_gives_every_rule_the_same_order():
    x, y = _data(48)
    dataset = _shuffled_dataset(x, y)
    with pytest.raises(ValueError, match=r"data: .*reshuffle_each_iteration.*lambda"):
        compare.compare(_user_model, dataset, ["descent"], loss=LOSS, epochs=1, progress=False)
    # A function returning the dataset: every run builds its own after seeding. The same rule
    # twice then sees the same batches in the same order, epoch after epoch: equal curves.
    result = compare.compare(
        _user_model, lambda: _shuffled_dataset(x, y), ["descent", "descent"], loss=LOSS, epochs=3, seeds=2,
        progress=False,
    )
    first, second = result.rows
    np.testing.assert_array_equal(first.curves, second.curves)
    assert first.curves[0] != first.curves[1]  # the seeds differ
    tf = pytest.importorskip("tensorflow")
    fixed = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(48, reshuffle_each_iteration=False).batch(8)
    result = compare.compare(_user_model, fixed, ["descent", "descent"], loss=LOSS, epochs=2, progress=False)
    np.testing.assert_array_equal(result.rows[0].curves, result.rows[1].curves)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"tune": True, "tune_factors": 5}, TypeError, "tune_factors"),
        ({"tune_factors": ["x"]}, ValueError, "tune_factors"),
        ({"data": (np.zeros((10, 4), "float32"), np.zeros(9, "int32"))}, ValueError, r"data: x, y .* lengths"),
        ({"test_data": (np.zeros((10, 4), "float32"), np.zeros(9, "int32"))}, ValueError, "test_data"),
        ({"build_model": _user_model()}, TypeError, "build_model must be a function"),
        ({"seeds": [0, 0]}, ValueError, "seeds must be distinct"),
        ({"seeds": "01"}, TypeError, "seeds"),
        ({"higher_is_better": "up"}, TypeError, "higher_is_better"),
        ({"validation_split": True}, ValueError, "validation_split"),
    ],
)
def test_more_bad_arguments_are_refused_before_training(kwargs, error, message):
    built = []
    kwargs = {"build_model": lambda: built.append(1) or _user_model(), "data": _data(), "rules": ["adam"], "loss": LOSS, **kwargs}
    with pytest.raises(error, match=message):
        compare.compare(**kwargs, progress=False)
    assert not built


def test_cautious_wraps_the_rest_and_the_2024_rules_have_names():
    import keras_optx as ox

    opt = compare.build_optimizer("cautious+lion:0.001")
    assert isinstance(opt, ox.Cautious) and isinstance(opt.rule, ox.Lion)
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.001)  # tuning steers the Lion
    assert isinstance(compare.build_optimizer("cautious+clipnorm+adam").rule, ox.Optimiser)
    assert compare.display_name("cautious+lion") == "Cautious+Lion"
    for bad in ("cautious", "cautious:2+adam"):
        with pytest.raises(compare.UsageError, match="cautious"):
            compare.build_optimizer(bad)
    for name, cls in (("adopt", ox.ADOPT), ("ademamix", ox.AdEMAMix), ("prodigy", ox.Prodigy)):
        assert type(compare.build_optimizer(name)) is cls and name in compare.known_names()
