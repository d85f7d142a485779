"""Fast paths compute the rule's own formula, and nothing breaks compilation.

On torch, a rule with a kernel registered for its class (keras_optx/_backends/torch/) runs it
when it is the optimizer itself; here the kernel and the generic path (`delta`, evaluated over
all variables) are run side by side and must give the same trajectory, slots included. On JAX and
TensorFlow every rule runs its formula under XLA / tf.function; `model.fit` with
`jit_compile=True` must match the eager run.
"""

import warnings

import numpy as np
import pytest

import keras
import keras_optx as ox
from cases import KERNELS
from conftest import BACKEND

SHAPES = [(3, 4), (7,), (2, 3, 5), (1,), (64, 33)]
STEPS = 20

# Every configuration with a torch kernel (tests/cases.py, `kernel=True`): non-default hyperparameters.
FAST = {name: case.make for name, case in KERNELS.items()}
# The learning rate changes every step where the slot carries η (Flux's velocity).
VARYING_RATE = {name for name, case in KERNELS.items() if case.varying_rate}
ADAM, RADAM, ADAMAX, ADADELTA, NADAM, OADAM, ADABELIEF = (
    "ADAM(0.001,(0.9,0.8))", "RADAM(0.01,(0.9,0.8))", "AdaMax(0.002,(0.9,0.995))", "ADADelta(0.89)", "NADAM(0.002,(0.89,0.995))",
    "OADAM(0.01,(0.9,0.995),eps=1e-6)", "AdaBelief(0.002,(0.8,0.9))",
)
ADOPT, ADEMAMIX = "ADOPT(0.01,(0.8,0.99),eps=1e-3)", "AdEMAMix(0.01,(0.8,0.99,0.995),2.0,eps=1e-6)"
SF_ADAMW, SF_SGD = "ScheduleFreeAdamW(0.01,(0.85,0.99),wd=0.1,warmup=5,r=1,p=1)", "ScheduleFreeSGD(0.003,0.8,wd=0.05,warmup=4)"
LION, CAUTIOUS = "Lion(3e-4,(0.95,0.98))", ["Cautious(Lion)", "Cautious(ADOPT)", "Cautious(AdEMAMix)"]
PRODIGY, PRODIGY_B1_0 = "Prodigy(0.5,β,β₃,ϵ,d₀,d_coef,growth,bias,safeguard,wd)", "Prodigy(β₁=0,d₀=1e-4)"

torch_only = pytest.mark.skipif(
    BACKEND != "torch", reason="torch fused kernels exist only on torch; jax/tf run `delta` under XLA/tf.function"
)


def _variables(rng, dtype="float32", shapes=SHAPES):
    return [keras.Variable(rng.normal(size=s).astype("float32"), dtype=dtype) for s in shapes]


def _generic(opt):
    opt._torch_kernel = None  # an instance's own kernel (here: none) replaces its class's: `delta` runs
    return opt


def _counting(opt):
    """`opt` with its kernel wrapped to record each call's answer (on torch; elsewhere there are none)."""
    calls = []
    if BACKEND != "torch":
        return opt, calls
    from keras_optx._backends.torch import kernel_of

    kernel = kernel_of(opt)

    def counted(*args, **kwargs):
        handled = kernel(*args, **kwargs)
        calls.append(handled)
        return handled

    opt._torch_kernel = counted
    return opt, calls


def _slots(opt):
    return {v.path: keras.ops.convert_to_numpy(v) for v in opt.variables if "iteration" not in v.path}


@torch_only
@pytest.mark.parametrize("name", sorted(FAST))
def test_fast_path_matches_formula(name):
    _compare_fast_and_generic(name, SHAPES, STEPS)


# Tensors of ≥ 32768 elements take the per-tensor `out=` branch of the in-place helpers
# (`buffers.into`); the small shapes above take the foreach copy-then-in-place branch.
LARGE_SHAPES = [(300, 200), (70001,)]


@torch_only
@pytest.mark.parametrize("name", [ADAMAX, ADADELTA, NADAM, RADAM, OADAM, ADABELIEF, ADOPT, ADEMAMIX, SF_ADAMW, SF_SGD, LION, *CAUTIOUS,
                                  PRODIGY, "ClipNorm>WeightDecay>ADAM", "ClipValue>(WeightDecay>Nesterov)", "ClipGlobalNorm>RMSProp",
                                  "ExpDecay>Momentum"])
def test_fast_path_matches_formula_on_large_tensors(name):
    _compare_fast_and_generic(name, LARGE_SHAPES, 6)


# Over 32768 elements on average, AdaMax, ADADelta, OADAM and AdaBelief run block by block on CPU
# (`buffers.in_blocks`, `buffers.flat_blocks`: ≤ 2^18 elements a block): a tensor of several blocks with a partial last one, one of exactly one
# block, and runs of smaller tensors sharing a block (the last two and the first three).
BLOCK_SHAPES = [(5,), (3, 7), (100000,), (700, 800), (1 << 18,), (200000,), (70000,)]


@torch_only
@pytest.mark.parametrize("name", [ADAMAX, ADADELTA, OADAM, ADABELIEF, ADOPT, ADEMAMIX, SF_ADAMW, SF_SGD, LION, *CAUTIOUS, PRODIGY, PRODIGY_B1_0])
def test_fast_path_matches_formula_in_cache_blocks(name):
    _compare_fast_and_generic(name, BLOCK_SHAPES, 4)


# Sizes shared by several variables (12 five times, 7 twice), not side by side: in a packed buffer
# they lie together, and ClipNorm and ClipGlobalNorm take one op per size over a copy of the
# gradients there (`_backends.torch.transforms._packed_for`); the packed slot steps pair buffers laid out alike.
GROUPED_SHAPES = [(3, 4), (7,), (12,), (5,), (4, 3), (2, 6), (7,), (6, 2)]
PACKED = [ADAMAX, ADADELTA, NADAM, RADAM, OADAM, ADABELIEF, LION, *CAUTIOUS]  # their fast paths run slot-only steps on packed buffers
PACKED_CLIPS = ["ClipNorm>WeightDecay>ADAM", "ClipNorm(3)>ClipValue>Momentum", "ClipValue>ClipNorm(3)>ADAM", "ClipGlobalNorm>RMSProp"]


@torch_only
@pytest.mark.parametrize("name", PACKED + PACKED_CLIPS)
def test_fast_path_matches_formula_on_sizes_shared_by_several_variables(name, monkeypatch):
    from keras_optx._backends.torch import transforms

    packed_for = transforms._packed_for
    packed = []
    monkeypatch.setattr(transforms, "_packed_for", lambda *args, **kwargs: packed.append(packed_for(*args, **kwargs)) or packed[-1])
    _compare_fast_and_generic(name, GROUPED_SHAPES, 8)
    if name in PACKED_CLIPS:
        assert packed and all(p is not None for p in packed), "the clip did not run on the packed buffer"


def _compare_fast_and_generic(name, shapes, steps, make=None):
    """Run `name`'s case (or `make`) with its kernel and with its formula side by side; returns
    the kernel's optimizer and variables."""
    make = make or FAST[name]
    rng = np.random.default_rng(1)
    fast, calls = _counting(make())
    slow = _generic(make())
    xs_fast, xs_slow = _variables(rng, shapes=shapes), _variables(np.random.default_rng(1), shapes=shapes)
    for step in range(steps):
        grads = [rng.normal(size=s).astype("float32") for s in shapes]
        if name in VARYING_RATE:
            rate = 0.01 * (1 + step % 5)
            fast.learning_rate = rate
            slow.learning_rate = rate
        given = [keras.ops.convert_to_tensor(g) for g in grads]
        fast.apply(given, xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        for g, want in zip(given, grads):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(g), want, err_msg=f"{name}: a gradient was written")
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6, err_msg=f"{name} step {step + 1}")
        slots_fast, slots_slow = _slots(fast), _slots(slow)
        assert len(slots_fast) == len(slots_slow)
        for a, b in zip(slots_fast.values(), slots_slow.values()):
            # Absolute tolerance on the scale of the terms summed (unit-scale gradients, so ≥ 0.1):
            # an EMA that cancels to near zero keeps their rounding, not its own relative precision.
            # (The scale of the finite entries: a hyperparameter vector may hold inf, Prodigy's growth_rate.)
            scale = np.abs(b[np.isfinite(b)]).max(initial=0.1)
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6 * scale, err_msg=f"{name} slots, step {step + 1}")
    assert calls == [True] * steps, "the fast path did not run"
    return fast, xs_fast


@torch_only
@pytest.mark.parametrize("epsilon", [0.0, 1e-13])
def test_adadelta_kernel_declines_an_epsilon_its_scaled_buffer_cannot_take(epsilon):
    # ADADelta's kernel holds (d+ϵ)/((a+ϵ)·ϵ), up to d/ϵ²: for ϵ < 5.4e-12 it declines (before
    # writing anything) and the formula runs, with the same result.
    rng = np.random.default_rng(18)
    fast, calls = _counting(ox.ADADelta(0.9, epsilon))
    slow = _generic(ox.ADADelta(0.9, epsilon))
    xs_fast, xs_slow = _variables(np.random.default_rng(19)), _variables(np.random.default_rng(19))
    for _ in range(3):
        grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
    for a, b in zip(xs_fast, xs_slow):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    assert calls == [False] * 3


@torch_only
@pytest.mark.parametrize("shapes", [[(3, 4), (7,), (5,)], [(40000,), (300, 200), (70001,)]], ids=["small", "large"])
@pytest.mark.parametrize("name", [ADADELTA, NADAM, ADAMAX, SF_ADAMW, SF_SGD, *CAUTIOUS, PRODIGY])
def test_fast_path_matches_formula_over_float32_and_float64_variables(name, shapes):
    # One list, two dtypes: no packed buffer, and each tensor's temporaries in its own dtype.
    rng = np.random.default_rng(22)
    dtypes = ["float32", "float64", "float32"]
    fast, calls = _counting(FAST[name]())
    slow = _generic(FAST[name]())
    xs_fast, xs_slow = ([keras.Variable(np.random.default_rng(23).normal(size=s), dtype=d) for s, d in zip(shapes, dtypes)]
                        for _ in range(2))
    for _ in range(4):
        grads = [rng.normal(size=s).astype(d) for s, d in zip(shapes, dtypes)]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
    for a, b in zip([*xs_fast, *_slots(fast).values()], [*xs_slow, *_slots(slow).values()]):
        assert a.dtype == b.dtype
        # float64 all the way: nothing rounded to float32 on the way; but Prodigy's factors (d) are its float32
        # state, from sums over every variable that the kernel adds in another order: float32 rounding.
        tight = a.dtype == "float64" and name != PRODIGY
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b),
                                   rtol=1e-12 if tight else 2e-5, atol=1e-13 if tight else 2e-6)
    assert calls == [True] * 4


@torch_only
@pytest.mark.parametrize("beta1, runs", [(0.0, True), (0.3, True), (0.2, False), (0.01, False)])
def test_nadam_kernel_declines_a_beta1_whose_first_moment_it_would_round_coarsely(beta1, runs):
    # NADAM's kernel (torch's fused Adam) recovers m from β₁'·m + (1−β₁')·g, magnifying its rounding
    # by β₁/β₁' (about 1/β₁): it runs up to 4 (β₁ ≥ 0.25 once t is large; β₁ = 0 is exact), else it
    # declines before writing anything and the formula runs. Either way, the formula's trajectory.
    rng = np.random.default_rng(20)
    fast, calls = _counting(ox.NADAM(0.01, (beta1, 0.99)))
    slow = _generic(ox.NADAM(0.01, (beta1, 0.99)))
    xs_fast, xs_slow = _variables(np.random.default_rng(21)), _variables(np.random.default_rng(21))
    for _ in range(6):
        grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
    for a, b in zip([*xs_fast, *_slots(fast).values()], [*xs_slow, *_slots(slow).values()]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6)
    assert calls[1:] == [runs] * 5  # at t = 1 the bias corrections move β₁' (β₁ = 0.2 still runs there)


# Schedule-free: the builds without a decay term (λ = 0 at build; SGD's d is then g, no buffer), the
# rate 0 throughout (W = 0: c = 0/0 is 0) and a callable ϵ (its value this step, a number), each on
# small, large and several-block tensors, against the formula (η_max and W included: `_slots`).
SF_BUILDS = {
    "ScheduleFreeAdamW()": lambda: ox.ScheduleFreeAdamW(),
    "ScheduleFreeAdamW(0.01,eps=callable,r=0.5,p=0.5)": lambda: ox.ScheduleFreeAdamW(0.01, epsilon=lambda: 1e-6, r=0.5, weight_lr_power=0.5),
    "ScheduleFreeAdamW(0.0,warmup=2)": lambda: ox.ScheduleFreeAdamW(0.0, warmup_steps=2),
    "ScheduleFreeSGD(0.01)": lambda: ox.ScheduleFreeSGD(0.01),
    "ScheduleFreeSGD(0.01,warmup=3,r=2)": lambda: ox.ScheduleFreeSGD(0.01, 0.7, warmup_steps=3, r=2.0),
    "ScheduleFreeSGD(0.0,wd=0.1)": lambda: ox.ScheduleFreeSGD(0.0, weight_decay=0.1),
}
SF_SHAPES = {"small": SHAPES, "large": LARGE_SHAPES, "blocks": BLOCK_SHAPES}


@torch_only
@pytest.mark.parametrize("shapes", sorted(SF_SHAPES))
@pytest.mark.parametrize("name", sorted(SF_BUILDS))
def test_schedule_free_kernels_match_the_formula_in_every_build(name, shapes):
    opt, _ = _compare_fast_and_generic(name, SF_SHAPES[shapes], 6, SF_BUILDS[name])
    if "(0.0," in name:  # rate 0: η_max 0, W = 0, nothing moves (c = 0)
        assert [float(keras.ops.convert_to_numpy(v)) for v in (opt._lr_max, opt._weight_sum)] == [0.0, 0.0]


@torch_only
@pytest.mark.parametrize("name", [SF_ADAMW, SF_SGD])
def test_schedule_free_kernels_write_the_rate_maximum_and_weight_sum(name):
    # η_max = max over steps of ηₜ = η·min(t/warm-up, 1); W = Σ tʳ·η_maxᵖ: the kernel's scalar writes.
    opt, calls = _counting(FAST[name]())
    xs = _variables(np.random.default_rng(30))
    rng = np.random.default_rng(31)
    lr, warmup, r, p = opt.learning_rate, opt.warmup_steps, opt.r, opt.weight_lr_power
    lr_max, weight_sum = -1.0, 0.0
    for t in range(1, 8):
        opt.apply([keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES], xs)
        lr_max = max(lr_max, float(lr) * min(t / warmup, 1.0))
        weight_sum += t**r * lr_max**p
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(opt._lr_max)), lr_max, rtol=1e-6)
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(opt._weight_sum)), weight_sum, rtol=1e-6)
    assert calls == [True] * 7


@torch_only
@pytest.mark.parametrize("name", [SF_ADAMW, SF_SGD])
def test_schedule_free_eval_and_train_after_kernel_steps_give_the_formulas_x_and_y(name):
    rng = np.random.default_rng(32)
    fast, calls = _counting(FAST[name]())
    slow = _generic(FAST[name]())
    xs_fast, xs_slow = _variables(np.random.default_rng(33)), _variables(np.random.default_rng(33))

    def same(what):
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6, err_msg=what)

    for turn in range(2):  # steps, eval (x), train (y), and steps again from there
        for _ in range(4):
            grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
            fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
            slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        same(f"y, turn {turn}")
        fast.eval()
        slow.eval()
        assert not fast.training
        same(f"x, turn {turn}")
        before = [keras.ops.convert_to_numpy(x).copy() for x in xs_fast]
        with pytest.raises(RuntimeError, match="eval mode"):
            fast.apply([keras.ops.convert_to_tensor(np.ones(s, "float32")) for s in SHAPES], xs_fast)
        for x, b in zip(xs_fast, before):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), b)
        fast.train()
        slow.train()
        same(f"y after train(), turn {turn}")
    assert calls == [True] * 8


_SCHEDULE = keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)


# On torch a scheduled hyperparameter (ϵ, λ, r, p) reaches the step as this step's value, a number:
# the kernels run on it. Where one is not a number (here: its value made a tensor) or some variables
# are excluded from the decay, they decline before writing anything and the formula runs. An
# exclusion without a decay term (λ = 0 at build) changes nothing: the kernel runs.
SF_SCHEDULED = {
    "AdamW eps=schedule": lambda: ox.ScheduleFreeAdamW(0.01, epsilon=keras.optimizers.schedules.ExponentialDecay(1e-6, 2, 0.5)),
    "AdamW wd=schedule": lambda: ox.ScheduleFreeAdamW(0.01, weight_decay=_SCHEDULE),
    "AdamW r=schedule": lambda: ox.ScheduleFreeAdamW(0.01, r=_SCHEDULE),
    "AdamW p=schedule": lambda: ox.ScheduleFreeAdamW(0.01, weight_lr_power=_SCHEDULE),
    "SGD wd=schedule": lambda: ox.ScheduleFreeSGD(0.01, weight_decay=_SCHEDULE),
    "SGD r=schedule": lambda: ox.ScheduleFreeSGD(0.01, r=_SCHEDULE),
    "SGD p=schedule": lambda: ox.ScheduleFreeSGD(0.01, weight_lr_power=_SCHEDULE),
}
SF_EXCLUDED = {
    "AdamW wd, excluded": (lambda: ox.ScheduleFreeAdamW(0.01, weight_decay=0.1), False),
    "AdamW no decay, excluded": (lambda: ox.ScheduleFreeAdamW(0.01), True),
    "SGD wd, excluded": (lambda: ox.ScheduleFreeSGD(0.01, weight_decay=0.1), False),
    "SGD no decay, excluded": (lambda: ox.ScheduleFreeSGD(0.01), True),
}


def _kernel_against_formula(make, runs, setup=None, steps=4):
    """`make()` with its kernel counted against `make()` running its formula, `steps` steps side by side: equal
    variables and slots, and the kernel answered `runs` (True: it ran; False: it declined) at each step."""
    rng = np.random.default_rng(34)
    xs_fast, xs_slow = _variables(np.random.default_rng(35)), _variables(np.random.default_rng(35))
    fast, calls = _counting(make())
    slow = _generic(make())
    if setup:
        setup(fast, xs_fast)
        setup(slow, xs_slow)
    for _ in range(steps):
        grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
    for a, b in zip([*xs_fast, *_slots(fast).values()], [*xs_slow, *_slots(slow).values()]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6)
    assert calls == [runs] * steps


@torch_only
@pytest.mark.parametrize("value", ["number", "tensor"])
@pytest.mark.parametrize("name", sorted(SF_SCHEDULED))
def test_schedule_free_kernels_take_a_scheduled_value_and_decline_a_tensor(name, value, monkeypatch):
    if value == "tensor":
        from keras_optx import _hyper

        evaluate = _hyper._evaluate
        monkeypatch.setattr(_hyper, "_evaluate", lambda v, root: keras.ops.convert_to_tensor(evaluate(v, root), "float32"))
    _kernel_against_formula(SF_SCHEDULED[name], value == "number")


@torch_only
@pytest.mark.parametrize("name", sorted(SF_EXCLUDED))
def test_schedule_free_kernels_decline_variables_excluded_from_the_decay(name):
    make, runs = SF_EXCLUDED[name]
    _kernel_against_formula(make, runs, lambda opt, xs: opt.exclude_from_weight_decay(var_list=[xs[1], xs[3]]))


@torch_only
def test_schedule_free_wrapper_has_no_kernel_of_its_own():
    # The generic ScheduleFree(base) runs its formula (a kernel is registered for the exact named classes).
    from keras_optx._backends.torch import kernel_of

    assert kernel_of(ox.ScheduleFree(ox.Descent(0.1))) is None
    assert kernel_of(ox.ScheduleFreeSGD()) is not None and kernel_of(ox.ScheduleFreeAdamW()) is not None


# Besides its slots, an optimizer keeps at most one parameter-sized scratch buffer on torch (what
# benchmarks/bench_memory.py reports): over small tensors (packed), large ones (one block: fewer
# parameters than `buffers.BLOCK`) and several blocks; chains (one buffer for the chain and its
# last member's kernel) included.
KEPT_SHAPES = {"small": SHAPES, "large": LARGE_SHAPES, "blocks": [(300000,), (7, 9)]}


@torch_only
@pytest.mark.parametrize("shapes", sorted(KEPT_SHAPES))
def test_kept_scratch_is_at_most_one_parameter_sized_buffer(shapes):
    from keras_optx._backends.torch.buffers import kept_bytes

    shapes = KEPT_SHAPES[shapes]
    rng = np.random.default_rng(17)
    parameter_bytes = 4 * sum(int(np.prod(s)) for s in shapes)
    for name in sorted(FAST):
        opt, calls = _counting(FAST[name]())
        xs = _variables(rng, shapes=shapes)
        for _ in range(2):
            opt.apply([keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in shapes], xs)
        assert calls == [True, True], f"{name}: the fast path did not run"
        assert kept_bytes(opt, xs) <= parameter_bytes, (name, kept_bytes(opt, xs) / parameter_bytes)


# Chains whose last member's kernel writes a buffer: the chain's (which may hold g), nested chains
# included; ClipNorm(1e3) hands the caller's gradients through, so the member writes the chain's
# buffer from them (ADADelta over small tensors copies them in); NADAM's kernel keeps no buffer.
# Each against its formula.
SHARED_BUFFER = {
    "ClipNorm>AdaMax": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.AdaMax(0.002)),
    "ClipNorm(1e3)>AdaMax": lambda: ox.Optimiser(ox.ClipNorm(1e3), ox.AdaMax(0.002)),
    "ClipNorm>OADAM": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.OADAM(0.01)),
    "ClipValue>AdaBelief": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.AdaBelief(0.002)),
    "ClipValue>(ClipNorm>RMSProp)": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.Optimiser(ox.ClipNorm(1.0), ox.RMSProp(0.002))),
    "ClipValue>(WeightDecay>AdaMax)": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.Optimiser(ox.WeightDecay(1e-2), ox.AdaMax(0.002))),
    "ClipValue>ADADelta": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.ADADelta(0.89)),
    "ClipNorm(1e3)>ADADelta": lambda: ox.Optimiser(ox.ClipNorm(1e3), ox.ADADelta(0.89)),
    "ClipNorm>(WeightDecay>ADADelta)": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Optimiser(ox.WeightDecay(1e-2), ox.ADADelta(0.89))),
    "ClipNorm>NADAM": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.NADAM(0.002, (0.89, 0.995))),
    "ClipValue>NADAM": lambda: ox.Optimiser(ox.ClipValue(0.5), ox.NADAM(0.002, (0.89, 0.995))),
    "ClipNorm>AdEMAMix": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 1e-6)),
    "ClipNorm>ADOPT": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.ADOPT(0.01, (0.8, 0.99), 1e-3)),  # declines: the formula
    # Lion's and Cautious's kernels decline where g is in the chain's buffer, and run where it is not.
    "ClipNorm>Lion": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Lion(0.003, (0.8, 0.95))),
    "ClipNorm(1e3)>Lion": lambda: ox.Optimiser(ox.ClipNorm(1e3), ox.Lion(0.003, (0.8, 0.95))),
    "ClipNorm>Cautious(Lion)": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Cautious(ox.Lion(0.003, (0.8, 0.95)))),
    "ClipNorm(1e3)>Cautious(ADOPT)": lambda: ox.Optimiser(ox.ClipNorm(1e3), ox.Cautious(ox.ADOPT(0.01, (0.8, 0.99), 1e-3))),
    "ClipNorm>Prodigy": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.Prodigy(0.5, (0.8, 0.99), d0=1e-3, weight_decay=0.01)),
}


@torch_only
@pytest.mark.parametrize("shapes", sorted(KEPT_SHAPES))
@pytest.mark.parametrize("name", sorted(SHARED_BUFFER))
def test_chain_and_its_last_member_keep_one_buffer(name, shapes):
    from keras_optx._backends.torch.buffers import kept_bytes

    opt, xs = _compare_fast_and_generic(name, KEPT_SHAPES[shapes], 3, SHARED_BUFFER[name])
    parameter_bytes = 4 * sum(int(np.prod(s)) for s in KEPT_SHAPES[shapes])
    assert kept_bytes(opt, xs) <= parameter_bytes, kept_bytes(opt, xs) / parameter_bytes


_DECAYING = keras.optimizers.schedules.ExponentialDecay


@torch_only
@pytest.mark.parametrize("make, runs", [
    (lambda: ox.Cautious(ox.Optimiser(ox.ClipNorm(1.0), ox.Momentum(0.02, 0.8))), False),  # a chain: no direction
    # Scheduled hyperparameters: on torch the step reads each one's value as a number, and the kernel runs with it.
    (lambda: ox.Cautious(ox.Lion(0.003, (_DECAYING(0.9, 10, 0.9), 0.95))), True),
    (lambda: ox.Cautious(ox.ADOPT(0.01, (0.8, _DECAYING(0.99, 10, 0.99)), 1e-3)), True),
    (lambda: ox.Cautious(ox.AdEMAMix(0.01, (0.8, 0.99, 0.995), ox.AdEMAMixAlphaWarmup(2.0, 5), 1e-6)), True),
], ids=["chain", "Lion(schedule)", "ADOPT(schedule)", "AdEMAMix(warm-up)"])
def test_cautious_kernel_runs_with_a_direction_of_the_wrapped_rule_else_declines(make, runs):
    _kernel_against_formula(make, runs, steps=3)


# Ties and NaNs: zero gradients (Δ·g = 0: φ = 0, though Lion's Δ = ±η there once m ≠ 0), a NaN gradient
# (Lion: torch's sign(NaN) = 0 on the CPU; ADOPT: a NaN Δ, which stays NaN through the mask), and with
# ϵ = 0 AdEMAMix's 0/0 where g has always been 0 (a NaN Δ where φ = 0). Small tensors and one split
# over cache blocks.
@torch_only
@pytest.mark.parametrize("make", [
    lambda: ox.Cautious(ox.Lion(0.003, (0.8, 0.95))),
    lambda: ox.Cautious(ox.ADOPT(0.01, (0.8, 0.99), 1e-3)),
    lambda: ox.Cautious(ox.AdEMAMix(0.01, (0.8, 0.99, 0.995), 2.0, 0.0)),
], ids=["Lion", "ADOPT", "AdEMAMix(eps=0)"])
def test_cautious_kernel_takes_ties_and_nans_as_the_formula(make):
    shapes = [(3, 4), (9,), (300001,)]
    rng = np.random.default_rng(26)
    fast, calls = _counting(make())
    slow = _generic(make())
    xs_fast, xs_slow = _variables(np.random.default_rng(27), shapes=shapes), _variables(np.random.default_rng(27), shapes=shapes)
    for step in range(5):
        grads = [rng.normal(size=s).astype("float32") for s in shapes]
        for g in grads:
            g.reshape(-1)[:3] = 0.0  # always 0
            g.reshape(-1)[3 + step] = 0.0  # 0 at this step only
            if step == 2:
                g.reshape(-1)[-1] = np.nan
        before = [keras.ops.convert_to_numpy(x).copy() for x in xs_fast]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        for a, b, x0, g in zip(xs_fast, xs_slow, before, grads):
            a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f"step {step + 1}")  # NaNs where the formula's
            ties = (g == 0) & np.isfinite(x0) & np.isfinite(b)
            np.testing.assert_array_equal(a[ties], x0[ties])  # φ = 0: not moved
    assert calls == [True] * 5


@torch_only
def test_subclass_that_redefines_the_formula_runs_its_own_formula():
    # A kernel is registered for its exact class: a subclass with a new `delta` runs that formula.
    class HalfADAM(ox.ADAM):
        def delta(self, ops, g, x, s, t, lr):
            step, slots = super().delta(ops, g, x, s, t, lr)
            return 0.5 * step, slots

    class DoubleDecay(ox.WeightDecay):
        def delta(self, ops, g, x, s, t, lr):
            return g + 2 * self.wd * x, {}

    def moved(make):
        xs = _variables(np.random.default_rng(4))
        before = [keras.ops.convert_to_numpy(x).copy() for x in xs]
        grads = [keras.ops.convert_to_tensor(np.random.default_rng(5).normal(size=s).astype("float32")) for s in SHAPES]
        make().apply(grads, xs)
        return [b - keras.ops.convert_to_numpy(x) for b, x in zip(before, xs)]

    for half, full in zip(moved(lambda: HalfADAM(0.01)), moved(lambda: ox.ADAM(0.01))):
        np.testing.assert_allclose(half, 0.5 * full, rtol=1e-5, atol=3e-7)  # x − x′ rounds at x's ulp
    for ours, expected in zip(moved(lambda: ox.Optimiser(DoubleDecay(0.1), ox.Descent(0.1))),
                              moved(lambda: ox.Optimiser(ox.WeightDecay(0.2), ox.Descent(0.1)))):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=3e-7)


@torch_only
@pytest.mark.parametrize("name", [ADAM, ADAMAX, "ClipNorm>WeightDecay>ADAM", SF_ADAMW, SF_SGD, PRODIGY])
def test_stateless_apply_on_torch_matches_apply(name):
    # Inside Keras's StatelessScope the variables' values are the caller's tensors: the fast
    # paths must read those (not the variables' own), and leave the variables alone.
    import torch

    rng = np.random.default_rng(6)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
    eager, xs_eager = FAST[name](), _variables(np.random.default_rng(7))
    eager.apply(grads, xs_eager)
    stateless, xs = FAST[name](), _variables(np.random.default_rng(7))
    stateless.build(xs)
    before = [keras.ops.convert_to_numpy(x).copy() for x in xs]
    new_xs, new_slots = stateless.stateless_apply(
        [torch.clone(v.value) for v in stateless.variables], grads, [torch.clone(x.value) for x in xs]
    )
    for new, want in zip(new_xs, xs_eager):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(new), keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-7)
    for new, want in zip(new_slots, eager.variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(new), keras.ops.convert_to_numpy(want), rtol=1e-6, atol=1e-7)
    for x, b in zip(xs, before):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), b)


@torch_only
def test_direct_tensor_reads_fall_back_to_value(monkeypatch):
    # Where Keras's torch Variable internals cannot be imported, `.value` is read instead.
    from keras_optx._backends.torch import buffers

    rng = np.random.default_rng(8)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
    direct, xs_direct = ox.ADAM(0.01), _variables(np.random.default_rng(9))
    direct.apply(grads, xs_direct)
    monkeypatch.setattr(buffers, "_TORCH_VALUE", None)
    fallback, xs_fallback = ox.ADAM(0.01), _variables(np.random.default_rng(9))
    fallback.apply(grads, xs_fallback)
    for a, b in zip(xs_direct, xs_fallback):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@torch_only
def test_fast_path_leaves_gradients_alone():
    rng = np.random.default_rng(2)
    for name, make in FAST.items():
        opt = make()
        grads = [keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
        before = [keras.ops.convert_to_numpy(g).copy() for g in grads]
        opt.apply(grads, _variables(rng))
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(g), b, err_msg=name)


@torch_only
def test_fast_path_skipped_for_float16_and_used_by_chains():
    rng = np.random.default_rng(3)
    half, calls = _counting(ox.ADAM(0.01))
    xs = _variables(rng, "float16")
    half.apply([keras.ops.convert_to_tensor(rng.normal(size=s).astype("float16")) for s in SHAPES], xs)
    assert calls == [], "float16 variables must take the generic (float32 state) path"

    member, calls = _counting(ox.ADAM(0.01))
    chain = ox.Optimiser(ox.ClipNorm(1.0), member)
    chain.apply([keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES], _variables(rng))
    assert calls == [True], "a chain hands its transformed gradient to its last member's kernel"


@torch_only
def test_gradients_the_kernels_cannot_take_run_the_formula():
    # A transposed view (not contiguous) or a float64 gradient for a float32 variable: the step
    # runs the formula, with the same result; the next plain step takes the kernel again.
    rng = np.random.default_rng(15)
    fast, calls = _counting(ox.ADAM(0.01))
    slow = _generic(ox.ADAM(0.01))
    xs_fast, xs_slow = _variables(np.random.default_rng(16)), _variables(np.random.default_rng(16))
    unusual = {
        "transposed": lambda g: keras.ops.convert_to_tensor(np.ascontiguousarray(g.T)).T,
        "float64": lambda g: keras.ops.convert_to_tensor(g.astype("float64")),
        "plain": keras.ops.convert_to_tensor,
    }
    for kind, convert in unusual.items():
        grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
        given = [convert(grads[0])] + [keras.ops.convert_to_tensor(g) for g in grads[1:]]
        assert kind == "plain" or not (given[0].is_contiguous() and given[0].dtype == xs_fast[0].value.dtype)
        fast.apply(given, xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7, err_msg=kind)
    assert calls == [True], "only the plain step may take the kernel"


@torch_only
@pytest.mark.parametrize("first", [True, False], ids=["first member", "after ClipValue"])
def test_clip_norm_scales_only_the_gradients_over_its_threshold(first):
    # On CPU a gradient within the threshold is its own Δ (no copy): norms 0.5 and 2 under
    # ClipNorm(1) here, then (swapped) 2 and 0.5, so each variable is clipped on one step.
    clip = [ox.ClipNorm(1.0)] if first else [ox.ClipValue(10.0), ox.ClipNorm(1.0)]
    fast, calls = _counting(ox.Optimiser(*clip, ox.WeightDecay(1e-2), ox.Momentum(0.1, 0.8)))
    slow = _generic(ox.Optimiser(*[type(m).from_config(m.get_config()) for m in clip], ox.WeightDecay(1e-2), ox.Momentum(0.1, 0.8)))
    rng = np.random.default_rng(4)
    xs_fast, xs_slow = _variables(rng, shapes=[(3,), (4,)]), _variables(np.random.default_rng(4), shapes=[(3,), (4,)])
    small, large = np.array([0.3, 0.0, 0.4], "float32"), np.array([0.0, 1.2, 0.0, 1.6], "float32")
    for grads in ([small, large], [small * 4, large / 4]):
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7)
    assert calls == [True, True]


@torch_only
def test_clip_global_norm_passes_gradients_within_its_threshold_through():
    # Over large tensors on CPU, gradients of a global norm within the threshold are handed on
    # uncopied: steps at 0.1×, 10× and again 0.1× the threshold, against the formula.
    fast, calls = _counting(ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.ADAM(0.01)))
    slow = _generic(ox.Optimiser(ox.ClipGlobalNorm(1.0), ox.ADAM(0.01)))
    rng = np.random.default_rng(5)
    xs_fast, xs_slow = _variables(rng, shapes=LARGE_SHAPES), _variables(np.random.default_rng(5), shapes=LARGE_SHAPES)
    for norm in (0.1, 10.0, 0.1):
        grads = [rng.normal(size=s) for s in LARGE_SHAPES]
        total = np.sqrt(sum((g**2).sum() for g in grads))
        grads = [(g * (norm / total)).astype("float32") for g in grads]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6, atol=1e-7, err_msg=f"global norm {norm}")
    assert calls == [True] * 3


def test_cached_lookups_follow_the_variable_list():
    """`apply` caches per-list lookups (shapes, known variables, slot lists) for the last list of
    variables it saw, matched by identity: a subset, another order, None gradients, an unknown
    variable or a wrong shape must not reuse them."""
    rng = np.random.default_rng(4)
    eta, rho = 0.05, 0.8
    opt, calls = _counting(ox.Momentum(eta, rho))
    xs = _variables(rng)
    want = [keras.ops.convert_to_numpy(x).copy() for x in xs]
    velocity = [np.zeros_like(w) for w in want]
    n = len(xs)
    # (variable order, which of them get None) per step; every list is a new list object.
    plan = [(range(n), ()), (range(n), ()), (reversed(range(n)), ()), ([1, 3], ()), (range(n), (0, 2)), (range(n), ()), ([3, 1], ())]
    for order, missing in plan:
        order = list(order)
        grads = {i: rng.normal(size=SHAPES[i]).astype("float32") for i in order}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns about the None gradients
            opt.apply([None if i in missing else keras.ops.convert_to_tensor(grads[i]) for i in order], [xs[i] for i in order])
        for i in order:
            if i not in missing:
                velocity[i] = rho * velocity[i] - eta * grads[i]
                want[i] = want[i] + velocity[i]
        for i, x in enumerate(xs):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(x), want[i], rtol=1e-5, atol=1e-6, err_msg=f"order {order}, missing {missing}")
    if BACKEND == "torch":
        assert calls == [True] * len(plan), "the fast path did not run"
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply([keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES], _variables(rng))
    wrong = [keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
    wrong[1] = keras.ops.convert_to_tensor(rng.normal(size=(7, 1)).astype("float32"))
    with pytest.raises(ValueError, match="Gradient 1 has shape"):
        opt.apply(wrong, xs)


def _fit(optimizer, jit_compile):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.normal(size=(64, 1)).astype("float32")
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
    return history.history["loss"], [keras.ops.convert_to_numpy(w) for w in model.weights]


JIT_CASES = {
    "ADAM": lambda: ox.ADAM(0.01),
    "RMSProp": lambda: ox.RMSProp(0.01),
    "Nesterov": lambda: ox.Nesterov(0.01),
    "chain": lambda: ox.Optimiser(ox.ClipNorm(1.0), ox.WeightDecay(1e-4), ox.ADAM(0.01)),
    "Lookahead": lambda: ox.Lookahead(ox.ADAM(0.01), 3),  # 12 updates: 4 synchronisations
}
ON_TORCH_TOO = ("chain", "Lookahead")


@pytest.mark.parametrize("name", [
    n if n in ON_TORCH_TOO else pytest.param(n, marks=pytest.mark.skipif(
        BACKEND == "torch", reason="torch.compile costs ~9 s per model on CPU: the chain case covers a fused rule and "
        "transforms, the Lookahead case a wrapper"))
    for n in sorted(JIT_CASES)])
def test_jit_compile_fit_matches_eager(name):
    """jax: XLA; tensorflow: tf.function(jit_compile); torch: torch.compile of the train step (the
    optimizer step itself runs eagerly, outside dynamo)."""
    loss_jit, weights_jit = _fit(JIT_CASES[name](), jit_compile=True)
    loss_eager, weights_eager = _fit(JIT_CASES[name](), jit_compile=False)
    assert np.all(np.isfinite(loss_jit)) and loss_jit[-1] < loss_jit[0]
    np.testing.assert_allclose(loss_jit, loss_eager, rtol=1e-4)
    for a, b in zip(weights_jit, weights_eager):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@torch_only
@pytest.mark.parametrize("name", PACKED)
def test_packed_slot_steps_follow_the_variable_list(name):
    """Slot-only steps run once on a slot's packed buffer only when the step updates every variable,
    in build order: a subset, another order or a None gradient must leave the other slots alone."""
    rng = np.random.default_rng(10)
    fast, calls = _counting(FAST[name]())
    slow = _generic(FAST[name]())
    xs_fast, xs_slow = _variables(np.random.default_rng(11)), _variables(np.random.default_rng(11))
    n = len(SHAPES)
    plan = [(range(n), ()), ([1, 3], ()), (reversed(range(n)), ()), (range(n), (0, 2)), (range(n), ())]
    for order, missing in plan:
        order = list(order)
        grads = {i: keras.ops.convert_to_tensor(rng.normal(size=SHAPES[i]).astype("float32")) for i in order}
        for opt, xs in ((fast, xs_fast), (slow, xs_slow)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Keras warns about the None gradients
                opt.apply([None if i in missing else grads[i] for i in order], [xs[i] for i in order])
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6, err_msg=f"{order}, missing {missing}")
        for a, b in zip(_slots(fast).values(), _slots(slow).values()):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6, err_msg=f"slots after {order}, missing {missing}")
    assert calls == [True] * len(plan), "the fast path did not run"


@torch_only
def test_slots_are_packed_and_loading_writes_into_the_packs():
    """On torch each slot's variables are views of one buffer (what makes the slot-only steps one op);
    loading saved optimizer variables writes into those views, so the next fast step uses them."""
    from keras_optx._backends.torch import buffers

    rng = np.random.default_rng(12)
    grads = [[keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES] for _ in range(4)]
    trained, xs_trained = ox.AdaMax(0.01), _variables(np.random.default_rng(13))
    for g in grads[:3]:
        trained.apply(g, xs_trained)
    store = {}
    trained.save_own_variables(store)

    restored, xs_restored = ox.AdaMax(0.01), _variables(np.random.default_rng(13))
    restored.build(xs_restored)
    for name, slot in restored._slot_variables.items():
        (whole,) = buffers.whole([v.value for v in slot])
        assert len(whole) == 1 and whole[0].numel() == sum(int(np.prod(s)) for s in SHAPES), f"slot {name} is not packed"
    restored.load_own_variables(store)
    for x, y in zip(xs_restored, xs_trained):
        x.assign(y)
    trained.apply(grads[3], xs_trained)
    restored.apply(grads[3], xs_restored)
    for a, b in zip(xs_restored, xs_trained):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    for a, b in zip(_slots(restored).values(), _slots(trained).values()):
        np.testing.assert_array_equal(a, b)


@torch_only
def test_mixed_precision_variables_are_not_packed_and_still_fast():
    # float32 and float64 variables cannot share a buffer: the fast path runs per tensor.
    shapes = [(3, 4), (5,)]
    rng = np.random.default_rng(14)
    fast, calls = _counting(ox.AdaMax(0.01))
    slow = _generic(ox.AdaMax(0.01))
    make = lambda: [keras.Variable(np.ones(shapes[0], "float32")), keras.Variable(np.ones(shapes[1]), dtype="float64")]
    xs_fast, xs_slow = make(), make()
    for _ in range(3):
        grads = [rng.normal(size=shapes[0]).astype("float32"), rng.normal(size=shapes[1])]
        fast.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_fast)
        slow.apply([keras.ops.convert_to_tensor(g) for g in grads], xs_slow)
    for a, b in zip(xs_fast, xs_slow):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=1e-6)
    assert calls == [True] * 3


# Prodigy's kernel: its scalar state (d, d_max, d_numerator, k) is written by the kernel, outside the slots.
# On a quadratic ½‖x − c‖² (g = x − c, a steady direction) d grows from d₀ (the fast-path rows' random
# gradients barely move it), so the comparison below holds d's estimate itself, relatively.
PRODIGY_STATE = ("d", "d_max", "d_numerator", "k")


def _prodigy_side_by_side(make, steps, shapes=SHAPES, rates=None, prepare=None, names=None):
    """`make()` with its kernel (counted) and with its formula, given the same gradients (g = x − c at the
    formula's x: near the minimum a gradient taken at each one's own x would magnify their float32
    differences) of variables named by turns from `names`; returns (kernel's optimizer, formula's,
    kernel's variables, formula's, the kernel's answers)."""
    rng = np.random.default_rng(30)
    targets = [rng.normal(size=s).astype("float32") for s in shapes]
    fast, calls = _counting(make())
    slow = _generic(make())
    names = names or ["variable"]
    xs_fast, xs_slow = ([keras.Variable(np.random.default_rng(31 + i).normal(size=s).astype("float32"), name=names[i % len(names)])
                         for i, s in enumerate(shapes)] for _ in range(2))
    for opt, xs in ((fast, xs_fast), (slow, xs_slow)):
        if prepare is not None:
            prepare(opt, xs)
    for step in range(steps):
        grads = [keras.ops.convert_to_numpy(x) - c for x, c in zip(xs_slow, targets)]
        for opt, xs in ((fast, xs_fast), (slow, xs_slow)):
            if rates is not None:
                opt.learning_rate = rates[step]
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], xs)
        for a, b in zip(xs_fast, xs_slow):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6, err_msg=f"step {step + 1}")
    return fast, slow, xs_fast, xs_slow, calls


def _prodigy_state(rule):
    return {name: float(keras.ops.convert_to_numpy(rule._scalars[name])) for name in PRODIGY_STATE}


PRODIGY_KERNEL_RULES = {
    "non-default": lambda: FAST[PRODIGY](),
    "β₁=0": lambda: FAST[PRODIGY_B1_0](),
    "defaults, growth 2": lambda: ox.Prodigy(d0=1e-4, growth_rate=2.0),
}


@torch_only
@pytest.mark.parametrize("rates", [None, "varying"])
@pytest.mark.parametrize("name", sorted(PRODIGY_KERNEL_RULES))
def test_prodigy_kernel_writes_the_formulas_d_and_its_state(name, rates):
    # d, d_max, d_numerator and k after 25 kernel steps are the formula's, to float32 rounding (summed in
    # another order), d having grown well past d₀; with η changing every step too (a schedule's values).
    steps = 25
    rates = None if rates is None else [0.2 * (1 + step % 5) for step in range(steps)]
    fast, slow, _, _, calls = _prodigy_side_by_side(PRODIGY_KERNEL_RULES[name], steps, rates=rates)
    assert calls == [True] * steps
    ours, formula = _prodigy_state(fast), _prodigy_state(slow)
    assert ours["d"] > 5 * float(fast.d0), ours  # the estimate moved: this compares d̂'s arithmetic
    assert ours["k"] == formula["k"] == steps
    for key in PRODIGY_STATE:
        np.testing.assert_allclose(ours[key], formula[key], rtol=1e-5, err_msg=key)


@torch_only
@pytest.mark.parametrize("shapes", [SHAPES, BLOCK_SHAPES], ids=["small", "blocks"])
def test_prodigy_kernel_in_a_chain_and_in_a_partition(shapes):
    # In a chain the last member's kernel runs (the chain's buffer may hold g: Σ g·(x₀ − x) is taken
    # first); in a Partition each member's sums run over its own group's variables, as its formula's.
    steps = 6 if shapes is BLOCK_SHAPES else 20
    # growth_rate = 1.2: d grows ~40x in 20 steps; unbounded (3000x here), the steps grow as large as x and its
    # float32 roundings as well, beyond this test's tolerance on x (the kernel's d is still the formula's).
    make = lambda: ox.Prodigy(d0=1e-4, growth_rate=1.2, weight_decay=0.01)
    member, member_calls = _counting(make())
    made = iter([ox.Optimiser(ox.ClipNorm(1.0), member), ox.Optimiser(ox.ClipNorm(1.0), make())])
    _, slow, _, _, _ = _prodigy_side_by_side(lambda: next(made), steps, shapes=shapes)
    assert member_calls == [True] * steps, "the chain's last member's kernel did not run"
    assert _prodigy_state(member)["d"] > 2 * 1e-4
    np.testing.assert_allclose(list(_prodigy_state(member).values()), list(_prodigy_state(slow._members[-1]).values()), rtol=1e-5)

    (first, first_calls), (second, second_calls) = _counting(ox.Prodigy(d0=1e-4)), _counting(ox.Prodigy(d0=1e-3))
    made = iter([ox.Partition({"kernel": first, ".*": second}), ox.Partition({"kernel": ox.Prodigy(d0=1e-4), ".*": ox.Prodigy(d0=1e-3)})])
    fast, slow, _, _, _ = _prodigy_side_by_side(lambda: next(made), steps, shapes=shapes, names=["kernel", "bias"])
    assert first_calls == second_calls == [True] * steps
    for ours, formula in zip(fast.rules, slow.rules):
        np.testing.assert_allclose(list(_prodigy_state(ours).values()), list(_prodigy_state(formula).values()), rtol=1e-5)


# Where Prodigy's kernel declines (before writing anything), the formula runs: η = 0 (prodigyopt then leaves
# the moments alone; here for two steps, then η = 1 and the kernel), variables excluded from a nonzero decay.
# Excluded with no decay, the kernel runs; a schedule's value (β₃ here) reaches it as a number each step.
PRODIGY_DECLINES = {
    "β₃ a schedule": (lambda: ox.Prodigy(d0=1e-4, beta3=keras.optimizers.schedules.ExponentialDecay(0.98, 2, 0.9)),
                      None, None, [True] * 4),
    "η = 0, then 1": (lambda: ox.Prodigy(0.0, d0=1e-4), None, [0.0, 0.0, 1.0, 1.0], [False, False, True, True]),
    "excluded from the decay": (lambda: ox.Prodigy(d0=1e-4, weight_decay=0.1),
                                lambda opt, xs: opt.exclude_from_weight_decay(var_list=[xs[1]]), None, [False] * 4),
    "excluded, no decay": (lambda: ox.Prodigy(d0=1e-4), lambda opt, xs: opt.exclude_from_weight_decay(var_list=[xs[1]]),
                           None, [True] * 4),
}


@torch_only
@pytest.mark.parametrize("name", sorted(PRODIGY_DECLINES))
def test_prodigy_kernel_declines_what_it_does_not_cover(name):
    make, prepare, rates, answers = PRODIGY_DECLINES[name]
    fast, slow, _, _, calls = _prodigy_side_by_side(make, len(answers), rates=rates, prepare=prepare)
    assert calls == answers
    np.testing.assert_allclose(list(_prodigy_state(fast).values()), list(_prodigy_state(slow).values()), rtol=1e-6)


@torch_only
@pytest.mark.parametrize("shapes", [SHAPES, BLOCK_SHAPES], ids=["small", "blocks"])
def test_prodigy_kernel_makes_no_progress_on_zero_gradients(shapes):
    # Σ|s| = 0 (no gradient yet): the kernel runs, nothing moves and d, d_max, d_numerator and k stay, as in
    # the formula (and prodigyopt); x₀ is the variables at the first update all the same.
    fast, calls = _counting(ox.Prodigy(d0=1e-4))
    slow = _generic(ox.Prodigy(d0=1e-4))
    xs_fast, xs_slow = _variables(np.random.default_rng(32), shapes=shapes), _variables(np.random.default_rng(32), shapes=shapes)
    start = [keras.ops.convert_to_numpy(x).copy() for x in xs_fast]
    rng = np.random.default_rng(33)
    for step in range(4):
        grads = [np.zeros(s, "float32") if step < 2 else rng.normal(size=s).astype("float32") for s in shapes]
        for opt, xs in ((fast, xs_fast), (slow, xs_slow)):
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], xs)
        if step < 2:
            for x, x0 in zip(xs_fast, start):
                np.testing.assert_array_equal(keras.ops.convert_to_numpy(x), x0)
            assert _prodigy_state(fast) == {"d": np.float32(1e-4), "d_max": np.float32(1e-4), "d_numerator": 0.0, "k": 0.0}
    assert calls == [True] * 4
    for a, b in zip([*xs_fast, *_slots(fast).values()], [*xs_slow, *_slots(slow).values()]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6)
    assert _prodigy_state(fast)["k"] == 2.0


@torch_only
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_prodigy_kernel_follows_the_formula_on_a_non_finite_gradient(bad):
    # A NaN gradient makes Σ|s| NaN (no progress: d stays, x ← x − 0·Δ, NaN where Δ is); an inf one makes d NaN.
    # The kernel's NaNs are where the formula's are, its state the formula's, and numpy says nothing.
    fast, calls = _counting(ox.Prodigy(d0=1e-4))
    slow = _generic(ox.Prodigy(d0=1e-4))
    xs_fast, xs_slow = _variables(np.random.default_rng(34)), _variables(np.random.default_rng(34))
    rng = np.random.default_rng(35)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(3):
            grads = [rng.normal(size=s).astype("float32") for s in SHAPES]
            grads[1][0] = bad if step == 1 else grads[1][0]
            for opt, xs in ((fast, xs_fast), (slow, xs_slow)):
                opt.apply([keras.ops.convert_to_tensor(g) for g in grads], xs)
    assert calls == [True] * 3
    for a, b in zip(xs_fast, xs_slow):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), rtol=2e-5, atol=2e-6)  # NaN where NaN
    assert any(np.isnan(keras.ops.convert_to_numpy(x)).any() for x in xs_fast)
    np.testing.assert_array_equal(list(_prodigy_state(fast).values()), list(_prodigy_state(slow).values()))
