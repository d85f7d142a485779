"""Property-based tests (hypothesis) over every rule, transform, schedule and chain of tests/cases.py.

- Valid hyperparameters drawn from their documented ranges, gradients mixing zeros, float32
  denormals (±1e-40), ordinary values and ±1e30: two steps give the NumPy float64 oracle's result
  (tests/reference.py). Where a rule squares a gradient of 1e30 (1e60 overflows float32, a limit
  of float32 itself, not of the rule) the values are not compared: each NaN/Inf must be where the
  formula has one, evaluated in float64 or in float32.
- Partitions (tests/cases.py's PARTITIONS) are left to tests/test_partition.py, Lookahead to the
  conformance test (fixed hyperparameters).
- Out-of-range hyperparameters raise a ValueError naming the argument; a bad rate set after
  training starts is refused and leaves every variable unchanged.

Reproducible: `derandomize=True` (the same examples on every run and backend), few examples,
no deadline (a first call compiles).
"""

import copy
import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops

import keras_optx as ox
import reference as ref
from cases import CHAINS, RULES, SCHEDULES

SETTINGS = settings(max_examples=6, deadline=None, derandomize=True, database=None)
SHAPES = ((3, 2), (2,))
F32_MAX = float(np.finfo(np.float32).max)

# Documented ranges (keras_optx._checks), kept away from edges where float32 itself cannot follow
# float64 (a rate of 1e-300 is valid but underflows in float32).
# Factors are 0 or ≥ 1e-6: a β of 1e-311 is valid, but float32 holds it as 0.
rate = st.floats(1e-4, 1.0)
unit = st.one_of(st.just(0.0), st.floats(1e-6, 0.99))
beta = st.tuples(unit, st.one_of(st.just(0.0), st.floats(1e-6, 0.999)))
eps = st.floats(1e-8, 1e-2)
wd = st.floats(0.0, 0.5)
thresh = st.floats(1e-2, 10.0)

# name: (hyperparameter strategies, keras_optx factory, oracle factory, squares the gradient)
RULE_SPACE = {
    "Descent": ({"lr": rate}, lambda p: ox.Descent(p["lr"]), lambda p: ref.Descent(p["lr"]), False),
    "Momentum": ({"lr": rate, "rho": unit}, lambda p: ox.Momentum(p["lr"], p["rho"]),
                 lambda p: ref.Momentum(p["lr"], p["rho"]), False),
    "Nesterov": ({"lr": rate, "rho": unit}, lambda p: ox.Nesterov(p["lr"], p["rho"]),
                 lambda p: ref.Nesterov(p["lr"], p["rho"]), False),
    "RMSProp": ({"lr": rate, "rho": unit, "eps": eps}, lambda p: ox.RMSProp(p["lr"], p["rho"], epsilon=p["eps"]),
                lambda p: ref.RMSProp(p["lr"], p["rho"], p["eps"]), True),
    "ADAGrad": ({"lr": rate, "eps": eps}, lambda p: ox.ADAGrad(p["lr"], epsilon=p["eps"]),
                lambda p: ref.ADAGrad(p["lr"], p["eps"]), True),
    "ADADelta": ({"rho": unit, "eps": eps}, lambda p: ox.ADADelta(p["rho"], epsilon=p["eps"]),
                 lambda p: ref.ADADelta(p["rho"], p["eps"]), True),
    "ADAMW": ({"lr": rate, "beta": beta, "wd": wd, "eps": eps},
              lambda p: ox.ADAMW(p["lr"], p["beta"], p["wd"], p["eps"]),
              lambda p: ref.ADAMW(p["lr"], p["beta"], p["wd"], p["eps"]), True),
}
for _name in ("ADAM", "RADAM", "AdaMax", "AMSGrad", "NADAM", "OADAM", "AdaBelief"):
    RULE_SPACE[_name] = (
        {"lr": rate, "beta": beta, "eps": eps},
        lambda p, n=_name: getattr(ox, n)(p["lr"], p["beta"], epsilon=p["eps"]),
        lambda p, n=_name: getattr(ref, n)(p["lr"], p["beta"], p["eps"]),
        _name != "AdaMax",
    )

# Sign-based rules: sign(1e-40) is ±1, but XLA on CPU (jax, tensorflow) flushes float32 denormals to
# 0, so their result on a denormal gradient differs by backend; they are drawn without denormals.
SIGN_BASED = {"Lion", "Rprop"}
RULE_SPACE["Lion"] = ({"lr": rate, "beta": st.tuples(unit, unit)}, lambda p: ox.Lion(p["lr"], p["beta"]),
                      lambda p: ref.Lion(p["lr"], p["beta"]), False)
RULE_SPACE["Rprop"] = (
    {"lr": rate, "ell": st.tuples(st.floats(0.1, 0.9), st.floats(1.1, 3.0)),
     "gamma": st.tuples(st.floats(1e-6, 1e-3), st.floats(1e-2, 10.0))},
    lambda p: ox.Rprop(p["lr"], p["ell"], p["gamma"]), lambda p: ref.Rprop(p["lr"], p["ell"], p["gamma"]), False,
)
# Schedule-free: β₁ (momentum) in (0, 1), as eval divides by it; a warm-up of 0 to 4 steps.
sf_beta = st.floats(0.05, 0.99)
RULE_SPACE["ScheduleFreeAdamW"] = (
    {"lr": rate, "b1": sf_beta, "b2": st.one_of(st.just(0.0), st.floats(1e-6, 0.999)), "eps": eps, "wd": wd,
     "warmup": st.integers(0, 4)},
    lambda p: ox.ScheduleFreeAdamW(p["lr"], (p["b1"], p["b2"]), p["eps"], p["wd"], p["warmup"]),
    lambda p: ref.ScheduleFree(p["lr"], p["b1"], p["b2"], p["eps"], p["wd"], p["warmup"]), True,
)
RULE_SPACE["ScheduleFreeSGD"] = (
    {"lr": rate, "b1": sf_beta, "wd": wd, "warmup": st.integers(0, 4)},
    lambda p: ox.ScheduleFreeSGD(p["lr"], p["b1"], p["wd"], p["warmup"]),
    lambda p: ref.ScheduleFree(p["lr"], p["b1"], wd=p["wd"], warmup=p["warmup"]), False,
)
RULE_SPACE["ScheduleFree"] = (  # the wrapper around a decayed Descent: ScheduleFreeSGD's named case
    {"lr": rate, "b1": sf_beta, "wd": wd, "warmup": st.integers(0, 4)},
    lambda p: ox.ScheduleFree(ox.Optimiser(ox.WeightDecay(p["wd"]), ox.Descent(p["lr"])), p["b1"], p["warmup"]),
    lambda p: ref.ScheduleFree(p["lr"], p["b1"], wd=p["wd"], warmup=p["warmup"]), False,
)

# The 2024 rules (keras_optx/recent.py, prodigy.py).
RULE_SPACE["ADOPT"] = ({"lr": rate, "beta": beta, "eps": eps}, lambda p: ox.ADOPT(p["lr"], p["beta"], p["eps"]),
                       lambda p: ref.ADOPT(p["lr"], p["beta"], p["eps"]), True)
RULE_SPACE["AdEMAMix"] = (
    {"lr": rate, "beta": st.tuples(unit, st.one_of(st.just(0.0), st.floats(1e-6, 0.999)), unit),
     "alpha": st.floats(0.0, 10.0), "eps": eps},
    lambda p: ox.AdEMAMix(p["lr"], p["beta"], p["alpha"], p["eps"]),
    lambda p: ref.AdEMAMix(p["lr"], p["beta"], p["alpha"], p["eps"]), True,
)
RULE_SPACE["Prodigy"] = (
    {"lr": rate, "beta": beta, "eps": eps, "d0": st.floats(1e-6, 1e-3), "d_coef": st.floats(0.5, 2.0), "wd": wd},
    lambda p: ox.Prodigy(p["lr"], p["beta"], epsilon=p["eps"], d0=p["d0"], d_coef=p["d_coef"], weight_decay=p["wd"]),
    lambda p: ref.Prodigy(p["lr"], p["beta"], eps=p["eps"], d0=p["d0"], d_coef=p["d_coef"], weight_decay=p["wd"]), True,
)
# Cautious(rule): its mask φ = [Δ·g > 0] of a denormal g is 0 where XLA flushes the product (jax,
# tensorflow) and 1 in float64: drawn without denormals, as the sign-based rules.
SIGN_BASED |= {"Cautious"}

TRANSFORMS = {  # each followed by Descent(η) so that it moves the variables
    "WeightDecay": ({"wd": wd}, lambda p: ox.WeightDecay(p["wd"]), lambda p: ref.WeightDecay(p["wd"]), False),
    "ClipValue": ({"t": thresh}, lambda p: ox.ClipValue(p["t"]), lambda p: ref.ClipValue(p["t"]), False),
    "ClipNorm": ({"t": thresh}, lambda p: ox.ClipNorm(p["t"]), lambda p: ref.ClipNorm(p["t"]), True),
    "ClipGlobalNorm": ({"t": thresh}, lambda p: ox.ClipGlobalNorm(p["t"]), lambda p: ref.ClipGlobalNorm(p["t"]), True),
}
exp_decay = st.fixed_dictionaries({"eta": rate, "decay": st.floats(0.1, 1.0), "step": st.integers(1, 3),
                                   "clip": st.floats(0.0, 1e-3), "start": st.integers(0, 3)})
inv_decay = st.fixed_dictionaries({"gamma": st.floats(0.0, 2.0), "eta": rate})


def _exp(p):
    return ox.ExpDecay(p["eta"], p["decay"], p["step"], p["clip"], p["start"])


def _exp_ref(p):
    return ref.exp_decay(p["eta"], p["decay"], p["step"], p["clip"], p["start"])


def _draw_rule(draw, name):
    space, make, oracle, squares = (RULE_SPACE | TRANSFORMS)[name]
    params = draw(st.fixed_dictionaries(space))
    return make(params), oracle(params), squares


@st.composite
def configurations(draw, case_id):
    """(keras_optx optimizer, oracle, squares) for the case `case_id` of tests/cases.py, hyperparameters drawn."""
    name = case_id.split("(")[0]
    if case_id in ("Descent(ExpDecay)", "Momentum(InvDecay)"):
        p = draw(exp_decay if "Exp" in case_id else inv_decay)
        if "Exp" in case_id:
            return ox.Descent(_exp(p)), ref.Descent(_exp_ref(p)), False
        return ox.Momentum(ox.InvDecay(p["gamma"], learning_rate=p["eta"])), ref.Momentum(ref.inv_decay(p["gamma"], p["eta"])), False
    if name in RULE_SPACE and ">" not in case_id:
        return _draw_rule(draw, name)
    if name == "Cautious":  # Cautious(<a case id>): the wrapped rule or chain drawn, then masked
        opt, oracle, squares = draw(configurations(case_id[len("Cautious("):-1]))
        return ox.Cautious(opt), ref.Cautious(oracle), squares
    # A chain: its members' hyperparameters drawn; a schedule member's too.
    if case_id.startswith("ExpDecay"):
        p, (opt, oracle, _) = draw(exp_decay), _draw_rule(draw, "Descent")
        return ox.Optimiser(_exp(p), opt), ref.Chain(ref.Scale(_exp_ref(p)), oracle), False
    if case_id.startswith("InvDecay"):
        p, (opt, oracle, _) = draw(inv_decay), _draw_rule(draw, "Momentum")
        return (ox.Optimiser(ox.InvDecay(p["gamma"], learning_rate=p["eta"]), opt),
                ref.Chain(ref.Scale(ref.inv_decay(p["gamma"], p["eta"])), oracle), False)
    if case_id.endswith("(keras SGD)"):
        clip, clip_ref, squares = _draw_rule(draw, name)
        lr = draw(rate)
        clip = type(clip).from_config(dict(clip.get_config(), optimizer=keras.optimizers.SGD(lr)))
        return clip, ref.Chain(clip_ref, ref.Descent(lr)), squares
    nested = case_id.split(">(")
    # A member's name without its fixed settings ("Momentum(ρ=0)", "ClipNorm(3)"): they are drawn.
    members = [_draw_rule(draw, m.split("(")[0]) for m in nested[0].split(">") if m]
    if len(nested) > 1:
        inner = [_draw_rule(draw, m) for m in nested[1].rstrip(")").split(">")]
        members.append((ox.Optimiser(*(m[0] for m in inner)), ref.Chain(*(m[1] for m in inner)), any(m[2] for m in inner)))
    return (ox.Optimiser(*(m[0] for m in members)), ref.Chain(*(m[1] for m in members)), any(m[2] for m in members))


ordinary = st.floats(1e-3, 3.0).flatmap(lambda v: st.sampled_from([v, -v]))


def _gradients(denormals=True):
    special = st.sampled_from([0.0, 1e30, -1e30] + ([1e-40, -1e-40] if denormals else []))
    element = st.one_of(special, ordinary, ordinary)
    return st.tuples(*(st.lists(element, min_size=math.prod(s), max_size=math.prod(s)) for s in SHAPES))


def _start():
    rng = np.random.default_rng(3)
    return [rng.normal(size=s).astype("float32") for s in SHAPES]


# One case per rule class (hyperparameters are drawn: cases.py's variants add nothing here), then
# every schedule and chain.
# Lookahead (a wrapper with its own slow weights) is not drawn here: its cases stay in
# tests/test_conformance.py with fixed hyperparameters.
# RULES' Partition rows (Muon and SOAP take matrices, so their rows route by rank) are left to
# tests/test_matrix.py, tests/test_soap.py and tests/test_partition.py, as the other Partitions.
_RULE_NAMES = [c.id.split("(")[0] for c in RULES if not c.id.startswith("Partition(")]
CASE_IDS = list(dict.fromkeys(_RULE_NAMES)) + [
    c.id for c in SCHEDULES + CHAINS if not c.id.startswith("Lookahead") and c.reference is not None
]


def _trajectory(oracle, steps, dtype):
    """The oracle's variables after `steps` (lists of float32 gradients), computed in `dtype`, and
    the largest magnitude they passed through."""
    ref.DTYPE = dtype
    try:
        xs = [x.astype(dtype) for x in _start()]
        largest = max(float(np.max(np.abs(x))) for x in xs)
        with np.errstate(all="ignore"):
            for n, grads in enumerate(steps, start=1):
                deltas = oracle([g.astype(dtype) for g in grads], [x.copy() for x in xs], n)
                xs = [(x - d).astype(dtype) for x, d in zip(xs, deltas)]
                largest = max([largest] + [float(np.max(np.abs(x))) for x in xs if np.all(np.isfinite(x))])
        return xs, largest
    finally:
        ref.DTYPE = np.float64


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_valid_hyperparameters_and_extreme_gradients_follow_the_oracle(case_id):
    @SETTINGS
    @given(st.data(), st.lists(_gradients(case_id.split("(")[0] not in SIGN_BASED), min_size=2, max_size=2))
    def check(data, raw_steps):
        keras.utils.clear_session(free_memory=False)
        optimizer, oracle, squares = data.draw(configurations(case_id))
        pristine = copy.deepcopy(oracle)
        steps = [[np.asarray(g, np.float32).reshape(s) for g, s in zip(step, SHAPES)] for step in raw_steps]
        variables = [keras.Variable(x) for x in _start()]
        for grads in steps:
            optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
        got = [np.asarray(ops.convert_to_numpy(v.value), np.float64) for v in variables]
        huge = squares and any(np.any(np.abs(g) > 1e19) for grads in steps for g in grads)
        expected, largest = _trajectory(oracle, steps, np.float64)
        # g² of 1e30 overflows float32: then the formula evaluated in float32 (the oracle in float32,
        # a fresh copy) may turn a value non-finite (∞·0) where float64 does not, or the reverse.
        in_float32 = _trajectory(copy.deepcopy(pristine), steps, np.float32)[0] if huge else expected
        for i, (a, b, b32) in enumerate(zip(got, expected, in_float32)):
            with np.errstate(invalid="ignore"):
                b = np.where(np.abs(b) > F32_MAX, np.sign(b) * np.inf, b)  # what float32 can hold
            for kind, test in (("NaN", np.isnan), ("Inf", np.isinf)):
                allowed = (test(a) == test(b)) | (test(a) == test(b32))
                assert allowed.all(), f"{kind} pattern of variable {i}: {a} vs the formula's {b} (float32: {b32})"
            if not huge:
                finite = np.isfinite(b)
                # float32 keeps ~7 digits of the largest value the trajectory passed through
                # (x + 1e30·η − 1e30·η loses x): the absolute tolerance scales with it.
                atol = 2e-5 * max(1.0, largest)
                np.testing.assert_allclose(a[finite], b[finite], rtol=2e-5, atol=atol, err_msg=f"variable {i}")

    check()


def test_every_case_is_covered():
    assert set(_RULE_NAMES) <= set(RULE_SPACE)


# Invalid hyperparameters ------------------------------------------------------------------------
bad_unit = st.one_of(st.floats(max_value=-1e-6, allow_infinity=False), st.floats(min_value=1.0), st.just(math.nan))
bad_nonneg = st.one_of(st.floats(max_value=-1e-6), st.just(math.nan), st.just(math.inf))
bad_positive = st.one_of(st.floats(max_value=0.0), st.just(math.nan), st.just(math.inf))
# (factory taking the bad value, argument name as the error names it, strategy)
INVALID = [
    (lambda v: ox.Descent(v), "learning_rate", bad_nonneg),
    (lambda v: ox.Momentum(0.01, v), "rho", bad_unit),
    (lambda v: ox.Nesterov(0.01, v), "rho", bad_unit),
    (lambda v: ox.RMSProp(0.01, v), "rho", bad_unit),
    (lambda v: ox.RMSProp(0.01, 0.9, epsilon=v), "epsilon", bad_nonneg),
    (lambda v: ox.ADAM(0.01, (v, 0.999)), r"beta\[0\]", bad_unit),
    (lambda v: ox.RADAM(0.01, (0.9, v)), r"beta\[1\]", bad_unit),
    (lambda v: ox.AdaMax(v), "learning_rate", bad_nonneg),
    (lambda v: ox.AMSGrad(0.01, (0.9, v)), r"beta\[1\]", bad_unit),
    (lambda v: ox.NADAM(0.01, (v, 0.9)), r"beta\[0\]", bad_unit),
    (lambda v: ox.ADAGrad(0.1, epsilon=v), "epsilon", bad_nonneg),
    (lambda v: ox.ADADelta(v), "rho", bad_unit),
    (lambda v: ox.ADAMW(0.01, decay=v), "decay", bad_nonneg),
    (lambda v: ox.WeightDecay(v), "wd", bad_nonneg),
    (lambda v: ox.ClipValue(v), "thresh", bad_positive),
    (lambda v: ox.ClipNorm(v), "thresh", bad_positive),
    (lambda v: ox.ClipGlobalNorm(v), "thresh", bad_positive),
    (lambda v: ox.ExpDecay(v), "learning_rate|eta", bad_nonneg),
    (lambda v: ox.InvDecay(v), "gamma", bad_nonneg),
]


@pytest.mark.parametrize("make,name,bad", INVALID, ids=[f"{i}-{n}" for i, (_, n, _) in enumerate(INVALID)])
def test_out_of_range_hyperparameter_refused_naming_it(make, name, bad):
    @SETTINGS
    @given(bad)
    def check(value):
        with pytest.raises(ValueError, match=name):
            make(value)

    check()


@pytest.mark.parametrize("case_id", ["ADAM", "ClipNorm>WeightDecay>ADAM", "ClipValue(keras SGD)"])
def test_bad_rate_set_during_training_changes_nothing(case_id):
    @SETTINGS
    @given(configurations(case_id), bad_nonneg)
    def check(configuration, value):
        keras.utils.clear_session(free_memory=False)
        optimizer = configuration[0]
        variables = [keras.Variable(x) for x in _start()]
        optimizer.apply([ops.ones(s) for s in SHAPES], variables)
        before = [np.array(ops.convert_to_numpy(v.value)) for v in variables + list(optimizer.variables)]
        with pytest.raises(ValueError, match="learning_rate"):
            optimizer.learning_rate = value
        after = [np.array(ops.convert_to_numpy(v.value)) for v in variables + list(optimizer.variables)]
        for a, b in zip(after, before):
            np.testing.assert_array_equal(a, b)

    check()


def test_nadam_with_a_beta2_float32_holds_as_zero():
    """β₂ = 1e-300 is valid; float32 holds it as 0, so the √(β₂v/(1−β₂ᵗ)) term vanishes (it was an
    overflow: torch's kernel raised, jax/tensorflow gave NaN). The oracle with β₂ = 0 gives the update."""
    variables = [keras.Variable(x) for x in _start()]
    optimizer, oracle = ox.NADAM(0.1, (0.9, 1e-300)), ref.NADAM(0.1, (0.9, 0.0))
    steps = [[np.full(s, 0.5 * (k + 1), np.float32) for s in SHAPES] for k in range(2)]
    for grads in steps:
        optimizer.apply([ops.convert_to_tensor(g) for g in grads], variables)
    expected, _ = _trajectory(oracle, steps, np.float64)
    for v, b in zip(variables, expected):
        np.testing.assert_allclose(ops.convert_to_numpy(v.value), b, rtol=2e-5, atol=2e-5)
