"""Nothing a user writes is accepted and then ignored (issue 14): each call here either acts as
documented or is refused with an error naming what to change, on every backend.

Keras keywords on chain members, `exclude_from_weight_decay` on every keras_optx decay,
`set_weights` of wrappers, NaN through the clipping fast paths, a negative rate set after
construction, a member reused, gradients as nested Python lists.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_optx as ox
from keras_optx import torch as oxt

BACKEND = keras.backend.backend()


def _vars(seed=0, shapes=((3, 2), (2,)), names=("kernel", "bias")):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=n) for s, n in zip(shapes, names)]


def _grads(step, shapes=((3, 2), (2,))):
    rng = np.random.default_rng(100 + step)
    return [ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in shapes]


def _np(variables):
    return [np.array(ops.convert_to_numpy(v.value)) for v in variables]


def _run(opt, variables, steps=3):
    for i in range(steps):
        opt.apply(_grads(i, [tuple(v.shape) for v in variables]), variables)
    return _np(variables)


# 1. Keras keywords on a chain member --------------------------------------------------------
KEYWORDS = {
    "weight_decay": 0.5,
    "clipnorm": 1.0,
    "clipvalue": 1.0,
    "global_clipnorm": 1.0,
    "use_ema": True,
    "gradient_accumulation_steps": 2,
    "loss_scale_factor": 2.0,
}


@pytest.mark.parametrize("keyword", list(KEYWORDS))
def test_keras_keyword_on_a_member_refused_with_where_to_put_it(keyword):
    value = KEYWORDS[keyword]
    makers = [
        lambda: ox.Optimiser(ox.ClipValue(100.0), ox.Descent(0.1, **{keyword: value})),
        lambda: ox.Optimiser(ox.ClipNorm(1.0, **{keyword: value}), ox.ADAM()),
        lambda: ox.Optimiser(ox.ClipValue(1.0), ox.Optimiser(ox.WeightDecay(0.1), ox.Nesterov(), **{keyword: value})),
    ]
    if keyword != "weight_decay":  # keras_optx.torch's weight_decay is torch's own hyperparameter
        makers.append(lambda: ox.Optimiser(oxt.SGD(0.1, **{keyword: value})))
    for make in makers:
        with pytest.raises(ValueError, match=rf"{keyword}=.*Put them on the chain"):
            make()
    # On the chain itself the keyword is taken (and acts: tests/test_reliability.py).
    chain = ox.Optimiser(ox.ClipValue(100.0), ox.Descent(0.1), **{keyword: value})
    assert getattr(chain, keyword) == value


# 2. exclude_from_weight_decay ------------------------------------------------------------------
# Each: (optimizer with decay λ); λ = 0 is the same optimizer without decay.
DECAYS = {
    "WeightDecay>Descent": lambda wd: ox.Optimiser(ox.WeightDecay(wd), ox.Descent(0.1)),
    "WeightDecay>ADAM": lambda wd: ox.Optimiser(ox.WeightDecay(wd), ox.ADAM(0.1)),  # torch: decay in ADAM's kernel
    "WeightDecay>RMSProp": lambda wd: ox.Optimiser(ox.WeightDecay(wd), ox.RMSProp(0.01)),
    "ADAM>WeightDecay": lambda wd: ox.Optimiser(ox.ADAM(0.1), ox.WeightDecay(wd)),
    "ClipNorm>WeightDecay>Momentum": lambda wd: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(wd), ox.Momentum(0.1)),
    "ClipValue>(WeightDecay>Nesterov)": lambda wd: ox.Optimiser(
        ox.ClipValue(2.0), ox.Optimiser(ox.WeightDecay(wd), ox.Nesterov(0.01))
    ),
    "WeightDecay(keras SGD)": lambda wd: ox.WeightDecay(wd, keras.optimizers.SGD(0.1)),
    "ADAMW": lambda wd: ox.ADAMW(0.1, decay=wd),
    "ADAM(weight_decay=)": lambda wd: ox.ADAM(0.1, weight_decay=wd or None),
    "torch.SGD": lambda wd: oxt.SGD(0.1, weight_decay=wd),
    "torch.SGD(momentum)": lambda wd: oxt.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=wd),
    "torch.Adam": lambda wd: oxt.Adam(0.1, weight_decay=wd),
    "torch.Adam(amsgrad)": lambda wd: oxt.Adam(0.1, weight_decay=wd, amsgrad=True),
    "torch.AdamW": lambda wd: oxt.AdamW(0.1, weight_decay=wd),
    "SkipNonFinite(torch.AdamW)": lambda wd: ox.SkipNonFinite(oxt.AdamW(0.1, weight_decay=wd)),
}


@pytest.mark.parametrize("when", ["before build", "after build"])
@pytest.mark.parametrize("how", ["var_names", "var_list"])
@pytest.mark.parametrize("case", list(DECAYS))
def test_exclude_from_weight_decay_honoured(case, how, when):
    """The excluded bias follows the run without decay, the kernel the run with it (on torch through
    the fused kernels: one call for the decayed variables, one with weight_decay = 0)."""
    make = DECAYS[case]
    variables = _vars()
    opt = make(0.3)
    if when == "after build":
        opt.build(variables)
    opt.exclude_from_weight_decay(**({"var_names": ["bias"]} if how == "var_names" else {"var_list": [variables[1]]}))
    got = _run(opt, variables)
    decayed, plain = _run(make(0.3), _vars()), _run(make(0.0), _vars())
    np.testing.assert_allclose(got[0], decayed[0], rtol=1e-6, atol=1e-7, err_msg="kernel: should decay")
    np.testing.assert_allclose(got[1], plain[1], rtol=1e-6, atol=1e-7, err_msg="bias: excluded, should not decay")
    assert not np.allclose(decayed[1], plain[1]), "the decay must change the bias when not excluded"


def test_exclusion_on_the_member_itself_and_before_joining():
    decay = ox.WeightDecay(0.5)
    decay.exclude_from_weight_decay(var_names=["bias"])
    chain = ox.Optimiser(decay, ox.Descent(0.1))
    variables = _vars()
    zeros = [ops.zeros(v.shape) for v in variables]
    before = _np(variables)
    chain.apply(zeros, variables)
    after = _np(variables)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0] * (1 - 0.1 * 0.5), rtol=1e-6)


def test_exclude_from_weight_decay_refuses_a_bare_string():
    with pytest.raises(TypeError, match="var_names"):
        ox.ADAMW().exclude_from_weight_decay(var_names="bias")


# 3. set_weights / variables of wrappers ------------------------------------------------------
WRAPPERS = {
    "SkipNonFinite(ADAM)": lambda: ox.SkipNonFinite(ox.ADAM(0.1)),
    "SkipNonFinite(chain)": lambda: ox.SkipNonFinite(ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1))),
    "ClipNorm(keras Adam)": lambda: ox.ClipNorm(1.0, keras.optimizers.Adam(0.1)),
    "SkipNonFinite(ClipNorm(keras Adam))": lambda: ox.SkipNonFinite(ox.ClipNorm(1.0, keras.optimizers.Adam(0.1))),
    "chain": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ADAM(0.1)),
    "Lookahead(ADAM)": lambda: ox.Lookahead(ox.ADAM(0.1), 2),
    "SkipNonFinite(Lookahead(chain))": lambda: ox.SkipNonFinite(ox.Lookahead(ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1)), 2)),
}


@pytest.mark.parametrize("case", list(WRAPPERS))
def test_set_weights_of_a_wrapper_restores_the_wrapped_state(case):
    trained, variables = WRAPPERS[case](), _vars()
    _run(trained, variables, steps=2)
    saved = [np.array(ops.convert_to_numpy(v.value)) for v in trained.variables]
    assert int(ops.convert_to_numpy(trained.iterations)) == 2
    fresh, copy = WRAPPERS[case](), _vars()
    fresh.build(copy)
    assert len(fresh.variables) == len(saved)
    fresh.set_weights(saved)
    for v, trained_v in zip(copy, variables):
        v.assign(trained_v.value)
    assert int(ops.convert_to_numpy(fresh.iterations)) == 2
    for a, b in zip(fresh.variables, saved):
        np.testing.assert_array_equal(ops.convert_to_numpy(a.value), b)
    trained.apply(_grads(7), variables)
    fresh.apply(_grads(7), copy)
    for a, b in zip(_np(copy), _np(variables)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="takes .* arrays"):
        fresh.set_weights(saved[:-1])


# 4. NaN through the clipping fast paths --------------------------------------------------------
@pytest.mark.parametrize("clip", ["ClipNorm", "ClipGlobalNorm"])
@pytest.mark.parametrize("shapes", [[(3,)], [(64,)] * 6, [(40000,)]], ids=["one", "packed", "large"])
def test_nan_gradient_through_clipping_gives_the_formula(clip, shapes):
    """Δ = g·thresh/max(‖g‖, thresh): a NaN in g makes the norm NaN and every element of its
    variable (ClipNorm) or of all variables (ClipGlobalNorm) NaN, on every backend."""
    rng = np.random.default_rng(1)
    values = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [0.01 * rng.normal(size=s).astype("float32") for s in shapes]  # within the threshold
    grads[0][1] = np.nan
    variables = [keras.Variable(v) for v in values]
    ox.Optimiser(getattr(ox, clip)(1.0), ox.Descent(0.1)).apply([ops.convert_to_tensor(g) for g in grads], variables)
    g64 = [g.astype(np.float64) for g in grads]
    if clip == "ClipNorm":
        norms = [np.sqrt(np.sum(g * g)) for g in g64]
    else:
        norms = [np.sqrt(sum(np.sum(g * g) for g in g64))] * len(g64)
    for v, x, g, n in zip(_np(variables), values, g64, norms):
        expected = x - 0.1 * g * (1.0 / np.maximum(n, 1.0))
        np.testing.assert_array_equal(np.isnan(v), np.isnan(expected))
        np.testing.assert_allclose(v, expected, rtol=1e-6, equal_nan=True)


# 5. A rate set after construction --------------------------------------------------------------
RATED = {
    "ADAM": lambda: ox.ADAM(0.1),
    "chain": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1)),
    "ClipNorm(keras Adam)": lambda: ox.ClipNorm(1.0, keras.optimizers.Adam(0.1)),
    "SkipNonFinite(ADAM)": lambda: ox.SkipNonFinite(ox.ADAM(0.1)),
    "torch.SGD": lambda: oxt.SGD(0.1),
}


@pytest.mark.parametrize("case", list(RATED))
def test_negative_rate_set_later_refused_like_the_constructor(case):
    opt = RATED[case]()
    for bad in (-0.5, float("nan"), np.float32(-1.0), ops.convert_to_tensor(-0.5)):
        with pytest.raises(ValueError, match=r"learning_rate.*≥ 0"):
            opt.learning_rate = bad
        assert float(ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.1)
    opt.learning_rate = 0.25
    assert float(ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.25)
    opt.learning_rate = lambda: 0.05  # callables and schedules are still accepted
    opt.learning_rate = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)


# 6. One member, one chain ----------------------------------------------------------------------
def test_one_rule_twice_in_a_chain_refused():
    adam = ox.ADAM()
    with pytest.raises(ValueError, match="same object as an earlier member"):
        ox.Optimiser(adam, adam)
    schedule = ox.ExpDecay(0.1)  # a schedule keeps no state: the same one twice is fine
    ox.Optimiser(schedule, schedule, ox.Descent())


def test_member_used_alone_after_joining_refused():
    adam = ox.ADAM(0.1)
    chain = ox.Optimiser(ox.ClipNorm(1.0), adam)  # noqa: F841  kept alive: it owns `adam`
    variables = _vars()
    before = _np(variables)
    with pytest.raises(ValueError, match="is a member of"):
        adam.apply(_grads(0), variables)
    with pytest.raises(ValueError, match="is a member of"):
        adam.build(variables)
    for a, b in zip(_np(variables), before):
        np.testing.assert_array_equal(a, b)


# 7. Gradients as nested Python lists -------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda: ox.ADAM(0.1), lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.1)), lambda: oxt.Adam(0.1),
     lambda: ox.SkipNonFinite(ox.Descent(0.1)), lambda: ox.ClipValue(0.5, keras.optimizers.SGD(0.1))],
    ids=["ADAM", "chain", "torch.Adam", "SkipNonFinite", "ClipValue(keras SGD)"],
)
def test_gradient_as_nested_python_list(make):
    as_lists, as_tensors = _vars(), _vars()
    a, b = make(), make()
    for step in range(2):
        grads = [np.asarray(ops.convert_to_numpy(g)) for g in _grads(step)]
        a.apply([g.tolist() for g in grads], as_lists)
        b.apply([ops.convert_to_tensor(g) for g in grads], as_tensors)
    for x, y in zip(_np(as_lists), _np(as_tensors)):
        np.testing.assert_array_equal(x, y)
