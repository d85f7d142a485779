"""Routing and freezing that a user relies on (issues 26 and 27): Keras's update keywords leave frozen
variables untouched, routing that can never apply is refused at build, predicate keys route in fit and
survive `.keras` files, and torch-named methods say what to do."""

import keras
import numpy as np
import pytest
from cases import PATHS
from conftest import BACKEND
from test_conformance import MODES, compiled_apply, gradient_stream, initial_values, regression_data

import keras_optx as ox


def named_variables():
    return [keras.Variable(v, name=name) for v, name in zip(initial_values(), PATHS)]


def values(variables):
    return [np.array(keras.ops.convert_to_numpy(v.value)) for v in variables]


def stepper(optimizer, variables, mode):
    return (lambda grads: optimizer.apply(grads, variables)) if mode == "eager" else compiled_apply(optimizer, variables)


def tensors(grads):
    return [keras.ops.convert_to_tensor(g) for g in grads]


# Item 1: every Keras update keyword leaves frozen variables untouched -------------------------------------
KEYWORDS = {
    "weight_decay": {"weight_decay": 0.05},
    "ema_overwrite": {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 3},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "clipnorm": {"clipnorm": 0.5},
    "clipvalue": {"clipvalue": 0.1},
    "accumulation": {"gradient_accumulation_steps": 2},
    "loss_scale": {"loss_scale_factor": 4.0},
}


def _partition(how, keywords, in_chain):
    rules = {"bias": ox.Frozen(), ".*": ox.ADAM(0.05)} if how == "Frozen" else {".*": ox.ADAM(0.05)}
    if in_chain:
        return ox.Optimiser(ox.ClipValue(10.0), ox.Partition(rules), **keywords)
    return ox.Partition(rules, **keywords)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("in_chain", [False, True], ids=["alone", "in_chain"])
@pytest.mark.parametrize("how", ["Frozen", "freeze"])
@pytest.mark.parametrize("keyword", list(KEYWORDS))
def test_keras_keywords_leave_frozen_variables_untouched(keyword, how, in_chain, mode):
    """Frozen from the start (Frozen()) or from step 3 (freeze): the bias never moves again, the others train."""
    variables = named_variables()
    optimizer = _partition(how, KEYWORDS[keyword], in_chain)
    apply = stepper(optimizer, variables, mode)
    partition = optimizer.rules[1] if in_chain else optimizer
    for n, grads in zip(range(1, 7), gradient_stream()):
        if n == 3 and how == "freeze":
            partition.freeze("bias")
        if n == 3:
            bias = values(variables)[1]
            rest = values(variables)
        apply(tensors(grads))
    after = values(variables)
    np.testing.assert_array_equal(after[1], bias, err_msg=f"{keyword} moved a frozen variable")
    for i in (0, 2, 3):
        assert not np.array_equal(after[i], rest[i]), f"{PATHS[i]} did not train"


@pytest.mark.parametrize("mode", MODES)
def test_frozen_gradients_count_in_no_global_clipnorm(mode):
    """With global_clipnorm, the trainable variables move as if the frozen one's gradient were zero."""
    runs = []
    for zero_frozen in (False, True):
        variables = named_variables()
        optimizer = ox.Partition({"bias": ox.Frozen(), ".*": ox.Descent(0.1)}, global_clipnorm=0.5)
        apply = stepper(optimizer, variables, mode)
        for _, grads in zip(range(3), gradient_stream()):
            grads = [100 * g if i == 1 else g for i, g in enumerate(grads)]  # a huge gradient on the frozen bias
            if zero_frozen:
                grads[1] = np.zeros_like(grads[1])
            apply(tensors(grads))
        runs.append(values(variables))
    for i, (a, b) in enumerate(zip(*runs)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=PATHS[i])


def test_weight_decay_matches_the_formula_on_trainable_variables():
    """Keras's decoupled decay x ← x(1 − λη) still reaches the variables that train: Descent with g = 0."""
    w, b = keras.Variable([1.0], name="kernel"), keras.Variable([1.0], name="bias")
    optimizer = ox.Partition({"bias": ox.Frozen(), ".*": ox.Descent(0.1)}, weight_decay=0.05)
    for _ in range(2):
        optimizer.apply([np.zeros(1, "float32")] * 2, [w, b])
    np.testing.assert_allclose(values([w])[0], [(1 - 0.05 * 0.1) ** 2], rtol=1e-6)
    np.testing.assert_array_equal(values([b])[0], [1.0])


@pytest.mark.parametrize("keyword", ["weight_decay", "ema_overwrite"])
def test_fit_with_keras_keywords_keeps_frozen_layers(keyword):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head")])
    optimizer = ox.Partition({"body": ox.Frozen(), ".*": ox.ADAM(0.01)}, **KEYWORDS[keyword])
    model.compile(optimizer=optimizer, loss="mse")
    body, head = values(model.layers[0].weights), values(model.layers[1].weights)
    model.fit(*regression_data(), batch_size=64, epochs=2, verbose=0)
    for a, b in zip(values(model.layers[0].weights), body):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(values(model.layers[1].weights)[0], head[0])


# Item 7: freeze before the model is built, then fit (tensorflow crashed) ------------------------------------
@pytest.mark.parametrize("jit", [False, True], ids=["eager_step", "compiled_step"])
def test_freeze_before_build_then_fit(jit):
    if jit and BACKEND == "torch":
        pytest.skip("torch has no graph compiler in Keras's default train step (jit_compile=False)")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head")])
    optimizer = ox.Partition({"bias": ox.Descent(0.01), ".*": ox.ADAM(0.01)})
    optimizer.freeze("body")
    optimizer.freeze("head/bias").thaw("head")  # in order: thawed again
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit, run_eagerly=not jit and BACKEND != "torch")
    body, head = values(model.layers[0].weights), values(model.layers[1].weights)
    model.fit(*regression_data(), batch_size=64, epochs=1, verbose=0)
    for a, b in zip(values(model.layers[0].weights), body):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(values(model.layers[1].weights), head):
        assert not np.array_equal(a, b)
    assert [p.split("/")[-2:] for p in optimizer.frozen] == [["body", "kernel"], ["body", "bias"]]


# Item 9: routing that can never apply is refused at build, naming the key ----------------------------------
REFUSED_AT_BUILD = [
    ({".*": ox.Descent, "bias": ox.Frozen}, r"pattern 'bias' is shadowed.*earlier pattern '\.\*'"),
    ({"kernel": ox.ADAM, "decoder": ox.ADAM, ".*": ox.Descent}, r"pattern 'decoder' matches no variable"),
    ({"kernel|bias": ox.ADAM, "bias": ox.Descent, ".*": ox.Descent}, r"pattern 'bias' is shadowed"),
    ({lambda v: v.name != "bias": ox.ADAM, "kernel": ox.Descent, ".*": ox.Descent}, r"pattern 'kernel' is shadowed.*<lambda>"),
    ({"kernel": ox.ADAM, lambda v: len(v.shape) > 5: ox.Descent, ".*": ox.Descent}, r"<lambda>.* matches no variable"),
]


@pytest.mark.parametrize("rules,match", REFUSED_AT_BUILD, ids=[m for _, m in REFUSED_AT_BUILD])
def test_routing_that_never_applies_is_refused_at_build(rules, match):
    optimizer = ox.Partition({key: make() for key, make in rules.items()})
    variables = named_variables()
    with pytest.raises(ValueError, match=match):
        optimizer.apply(tensors(next(gradient_stream())), variables)
    np.testing.assert_array_equal(values(variables)[0], initial_values()[0])  # nothing written
    assert not optimizer.built  # no half-built state


def test_a_nested_partition_and_fit_refuse_too():
    optimizer = ox.Optimiser(ox.ClipNorm(1.0), ox.Partition({"kernel": ox.Partition({"conv": ox.ADAM(), "dense": ox.ADAM()}),
                                                             ".*": ox.Descent()}))
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    with pytest.raises(ValueError, match="pattern 'conv' matches no variable"):
        model.fit(*regression_data(), epochs=1, verbose=0)


def test_a_catch_all_last_may_route_nothing():
    optimizer = ox.Partition({"kernel": ox.ADAM(), "bias|scale": ox.Descent(), ".*": ox.Descent()})
    optimizer.build([keras.Variable([1.0], name="kernel"), keras.Variable([1.0], name="bias")])


def test_the_same_rule_under_two_keys_is_refused():
    rule = ox.ADAM()
    with pytest.raises(ValueError, match=r"rule for 'bias'.*same object as the rule for 'kernel'.*\"a\|b\""):
        ox.Partition({"kernel": rule, "bias": rule, ".*": ox.Descent()})


def test_torch_param_groups_that_overlap_or_match_nothing_are_refused():
    variables = named_variables()
    listed = [{"params": variables[:2], "lr": 0.01}, {"params": variables[1:], "lr": 0.0}]  # bias in both, as torch refuses
    with pytest.raises(ValueError, match=r"bias is in param_groups\[0\].*and param_groups\[1\].*one group only"):
        ox.torch.SGD(lr=0.1, param_groups=listed).build(variables)
    shadowed = ox.torch.SGD(lr=0.1, param_groups=[{"params": "kernel", "lr": 0.01}, {"params": "conv", "lr": 0.0}])
    with pytest.raises(ValueError, match=r"param_groups\[1\] \(params 'conv'\) is shadowed.*param_groups\[0\]"):
        shadowed.build(variables)  # regex groups: the first match wins (documented), so 'conv' routes nothing
    nothing = ox.torch.SGD(lr=0.1, param_groups=[{"params": "decoder", "lr": 0.01}])
    with pytest.raises(ValueError, match=r"param_groups\[0\] \(params 'decoder'\) matches no variable"):
        nothing.build(variables)
    every = ox.torch.SGD(lr=0.1, param_groups=[{"params": ".*", "lr": 0.01}])  # the default group may be empty
    every.build(variables)


# Predicate keys (issue 27) --------------------------------------------------------------------------------
def _embedding_model():
    return keras.Sequential([
        keras.Input((4,), dtype="int32"), keras.layers.Embedding(10, 3, name="embedding"), keras.layers.Flatten(),
        keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head"),
    ])


def _tokens():
    rng = np.random.default_rng(0)
    return rng.integers(0, 10, (64, 4)).astype("int32"), rng.standard_normal((64, 1)).astype("float32")


def test_predicate_routes_in_fit_as_the_equivalent_regex_and_survives_keras_files(tmp_path):
    """matrices(exclude=["embedding"]) takes the two Dense kernels: the same trajectory as the regex doing so;
    saved and loaded, the Partition keeps its predicate and resumes bit for bit."""
    x, y = _tokens()
    by_predicate, by_regex = _embedding_model(), _embedding_model()
    by_regex.set_weights(by_predicate.get_weights())
    by_predicate.compile(optimizer=ox.Partition({ox.matrices(exclude=["embedding"]): ox.Momentum(0.05), ".*": ox.ADAM(0.01)}),
                         loss="mse")
    by_regex.compile(optimizer=ox.Partition({"(body|head)/kernel": ox.Momentum(0.05), ".*": ox.ADAM(0.01)}), loss="mse")
    for model in (by_predicate, by_regex):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(by_predicate.get_weights(), by_regex.get_weights()):
        np.testing.assert_array_equal(a, b)
    path = tmp_path / "routed.keras"
    by_predicate.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.patterns[0] == ox.matrices(exclude=["embedding"])
    for model in (by_predicate, loaded):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(loaded.get_weights(), by_predicate.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_matrices_selects_by_rank_and_excludes_by_path():
    kernel = keras.Variable(np.ones((2, 3)), name="kernel")
    conv = keras.Variable(np.ones((3, 3, 2, 4)), name="conv_kernel")
    embedding = keras.Variable(np.ones((5, 2)), name="embeddings")
    bias = keras.Variable(np.ones(3), name="bias")
    chosen = ox.matrices(exclude=["embedding"])
    assert [chosen(v) for v in (kernel, conv, embedding, bias)] == [True, False, False, False]
    assert [ox.matrices(higher_rank=True)(v) for v in (kernel, conv, embedding, bias)] == [True, True, True, False]
    with pytest.raises(TypeError, match="exclude"):
        ox.matrices(exclude=[3])
    with pytest.raises(TypeError, match="higher_rank"):
        ox.matrices(higher_rank="yes")


def test_a_lambda_key_routes_but_saving_it_is_refused(tmp_path):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    model.compile(optimizer=ox.Partition({lambda v: len(v.shape) == 2: ox.Descent(0.01), ".*": ox.ADAM()}), loss="mse")
    model.fit(*regression_data(), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="cannot save.*keras_optx.matrices"):
        model.save(tmp_path / "lambda.keras")


def test_a_predicate_must_answer_true_or_false_and_freeze_takes_one():
    with pytest.raises(TypeError, match="must return True or False"):
        ox.Partition({lambda v: v.shape: ox.ADAM(), ".*": ox.Descent()}).build(named_variables())
    variables = named_variables()
    optimizer = ox.Partition({".*": ox.Descent(0.1)}).freeze(ox.matrices(higher_rank=True))
    optimizer.apply(tensors(next(gradient_stream())), variables)
    assert optimizer.frozen == ["kernel", "conv_kernel"]  # of rank ≥ 2: (3, 4) and (2, 3, 2)
    optimizer.thaw(ox.matrices()).freeze(lambda v: v.name == "bias")
    assert optimizer.frozen == ["bias", "conv_kernel"]


# Item 12: errors that say what to do ----------------------------------------------------------------------
def test_torch_methods_map_or_name_the_keras_way():
    variables = named_variables()
    optimizer = ox.torch.Adam(lr=0.01)
    assert optimizer.zero_grad() is None and optimizer.zero_grad(set_to_none=False) is None
    with pytest.raises(TypeError, match=r"model.fit.*opt.apply"):
        optimizer.step()
    with pytest.raises(TypeError, match="param_groups="):
        optimizer.add_param_group({"params": "bias", "lr": 0.1})
    with pytest.raises(ValueError, match="before it is built"):
        optimizer.state_dict()
    stream = gradient_stream()
    for _ in range(2):
        optimizer.apply(tensors(next(stream)), variables)
    saved, at_save = optimizer.state_dict(), values(variables)
    grads = tensors(next(stream))
    optimizer.apply(grads, variables)
    after = values(variables)
    for v, value in zip(variables, at_save):
        v.assign(value)
    optimizer.load_state_dict(saved)
    optimizer.apply(grads, variables)
    for a, b in zip(values(variables), after):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="torch.optim state dict"):
        optimizer.load_state_dict({"state": {}, "param_groups": []})


def _native_variable():
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.Variable([1.0])
    import torch

    return torch.nn.Parameter(torch.ones(1))


@pytest.mark.skipif(BACKEND == "jax", reason="jax has no variable type of its own to pass instead of a keras.Variable")
@pytest.mark.parametrize("make", [lambda: ox.ADAM(), lambda: ox.Partition({".*": ox.ADAM()})], ids=["ADAM", "Partition"])
def test_a_backend_variable_is_refused_by_name(make):
    with pytest.raises(TypeError, match="keras.Variable"):
        make().apply([np.ones(1, "float32")], [_native_variable()])


# Item 13 (words): refusals give their reason --------------------------------------------------------------
def test_low_precision_refusals_give_their_reason():
    with pytest.raises(ValueError, match="Rprop does not take state_dtype='float16': its step sizes"):
        ox.Rprop(state_dtype="float16")
    ox.Rprop(state_dtype="bfloat16")
    with pytest.raises(ValueError, match="OADAM does not take state_dtype='bfloat16': its update 2Δₜ − Δₜ₋₁"):
        ox.OADAM(state_dtype="bfloat16")
    ox.OADAM(state_dtype="float16")


# Freezing mid-epoch from a callback (issue 26, item 4's freeze part) ----------------------------------------
@pytest.mark.parametrize("through_model", [True, False], ids=["self.model.optimizer", "own_reference"])
def test_freeze_mid_epoch_from_a_callback_acts_or_is_refused(through_model):
    """It acts from the next step, also on jax through a reference of its own (the state is held by fit
    mid-epoch: the trainer hands it back first, `keras_optx._hyper.attach`)."""
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head")])
    optimizer = ox.Partition({".*": ox.ADAM(0.01)})
    model.compile(optimizer=optimizer, loss="mse")

    class FreezeBody(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                (self.model.optimizer if through_model else optimizer).freeze("body")
                self.body = values(self.model.layers[0].weights)

    callback = FreezeBody()
    x, y = regression_data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    for a, b in zip(values(model.layers[0].weights), callback.body):
        np.testing.assert_array_equal(a, b)
    assert [p.split("/")[-2:] for p in optimizer.frozen] == [["body", "kernel"], ["body", "bias"]]
