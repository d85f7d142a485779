"""keras_optx.torch param groups (`param_groups=[{"params": …, "lr": …}, …]`) against torch.optim's groups.

The configurations are tests/cases.py's `COMPAT_GROUPS`. Each case runs a few steps of random
gradients on named variables and compares every step with torch.optim (float64) given the same
groups; the variable no group matches uses the constructor's values. torch is installed in every
backend's test environment; it is only the reference here (tests/_torch_optim.py).
"""

import re

import keras
import numpy as np
import pytest
from _torch_optim import torch_optim_trajectory
from cases import COMPAT_GROUPS, GROUP_PATHS, TORCH_CLASSES
from conftest import BACKEND
from test_conformance import MODES, compiled_apply

from keras_optx.torch import SGD, Adam, AdamW

STEPS = 6
NAMES = list(GROUP_PATHS)
SHAPES = [(3, 2), (2,), (2, 2)]
LR_DROP = (3, 0.002)  # at step 3, `opt.learning_rate = 0.002`, as LearningRateScheduler does


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    x0 = [rng.normal(size=s).astype("float32") for s in SHAPES]
    grads = [[rng.normal(size=s).astype("float32") for s in SHAPES] for _ in range(STEPS)]
    return x0, grads


def _keras_groups(groups, variables):
    return [dict(g, params=g["params"] if isinstance(g["params"], str) else [variables[i] for i in g["params"]]) for g in groups]


def _torch_trajectory(name, kwargs, groups, x0, grads, clip=None, lr_drop=LR_DROP, change=None):
    """torch.optim with the same groups: first match wins, the rest in a group of the defaults.
    At step lr_drop[0] `opt.learning_rate = …`: Keras's rate is the default group's, shared by
    groups without their own. `clip`: torch's `clip_grad_norm_(params, clip)` first. `change(step,
    opt.param_groups)` before each step."""

    def torch_groups(params):
        taken, out = set(), []
        for g in groups:
            match = (lambda i, p=g["params"]: re.search(p, NAMES[i])) if isinstance(g["params"], str) else (lambda i, p=g["params"]: i in p)
            members = [i for i in range(len(params)) if i not in taken and match(i)]
            taken |= set(members)
            out.append(dict({k: v for k, v in g.items() if k != "params"}, params=[params[i] for i in members]))
        out.append({"params": [params[i] for i in range(len(params)) if i not in taken]})
        assert out[-1]["params"], "each case leaves a variable to the defaults"
        return out

    own_rate = {i for i, spec in enumerate(groups) if "lr" in spec}
    return torch_optim_trajectory(name, kwargs, x0, grads, torch_groups, lr_drop, own_rate, clip, change)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", COMPAT_GROUPS)
def test_groups_match_torch_optim_step_by_step(case, mode):
    name, kwargs, groups = COMPAT_GROUPS[case]
    x0, grads = _problem()
    variables = [keras.Variable(x, name=n) for x, n in zip(x0, NAMES)]
    opt = TORCH_CLASSES[name](param_groups=_keras_groups(groups, variables), **kwargs)
    step = compiled_apply(opt, variables) if mode == "compiled" else (lambda gs: opt.apply(gs, variables))
    reference = _torch_trajectory(name, kwargs, groups, x0, grads)
    for t, gs in enumerate(grads):
        if t == LR_DROP[0]:
            opt.learning_rate = LR_DROP[1]
        step([keras.ops.convert_to_tensor(g) for g in gs])
        for i, (v, r) in enumerate(zip(variables, reference[t])):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(v.value), r, rtol=1e-5, atol=1e-6, err_msg=f"{case} step {t + 1} {NAMES[i]}")
    # Not trivial: without the groups the trajectory differs.
    plain = _torch_trajectory(name, kwargs, [], x0, grads)
    assert max(np.abs(a - b).max() for a, b in zip(plain[-1], reference[-1])) > 1e-3


@pytest.mark.skipif(BACKEND != "torch", reason="fused kernels exist on the torch backend only")
def test_torch_kernels_run_per_group(monkeypatch):
    from keras_optx._backends.torch import registry

    calls = []
    original = registry._KERNELS[AdamW]

    def counting(rule, xs, *args, **kwargs):
        calls.append(len(xs))
        return original(rule, xs, *args, **kwargs)

    monkeypatch.setitem(registry._KERNELS, AdamW, counting)
    x0, grads = _problem()
    variables = [keras.Variable(x, name=n) for x, n in zip(x0, NAMES)]
    opt = AdamW(0.01, param_groups=[{"params": "bias", "weight_decay": 0.0}])
    opt.apply(grads[0], variables)
    assert sorted(calls) == [1, 2]  # the bias group, then the defaults (kernel, head_kernel)


def test_unknown_key_and_bad_values_refused():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['betas'\].*'momentum'"):
        SGD(0.1, param_groups=[{"params": ".*", "betas": (0.9, 0.99)}])
    with pytest.raises(ValueError, match="needs a \"params\""):
        Adam(param_groups=[{"lr": 0.1}])
    with pytest.raises(ValueError, match="lr"):
        Adam(param_groups=[{"params": "bias", "lr": -1.0}])
    with pytest.raises(ValueError, match="betas"):
        AdamW(param_groups=[{"params": "bias", "betas": (1.2, 0.9)}])
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, param_groups=[{"params": "bias", "nesterov": True}])
    with pytest.raises(ValueError, match="regular expression"):
        SGD(0.1, param_groups=[{"params": "("}])
    with pytest.raises(TypeError, match="param_groups"):
        SGD(0.1, param_groups={"params": "bias"})
    with pytest.raises(TypeError, match="params"):
        SGD(0.1, param_groups=[{"params": [1.0]}])


def test_fit_callbacks_steer_default_rate_and_save_load_resumes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh", name="body"), keras.layers.Dense(1, name="head")])
    opt = AdamW(0.01, weight_decay=0.1, param_groups=[{"params": "bias", "weight_decay": 0.0}, {"params": "head/", "lr": 0.05}])
    model.compile(optimizer=opt, loss="mse")
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 0.5**epoch)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[halve])
    rates = [float(keras.ops.convert_to_numpy(r.learning_rate)) for r in opt._partition.rules]
    np.testing.assert_allclose(rates, [0.005, 0.05, 0.005])  # bias group and defaults follow; the head keeps its own

    path = tmp_path / "groups.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.param_groups == opt.param_groups
    for m in (model, loaded):
        m.train_on_batch(x[:16], y[:16])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(b, a)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(b), keras.ops.convert_to_numpy(a))


def test_hyperparameter_set_on_optimizer_reaches_groups_without_their_own():
    opt = Adam(0.01, betas=(0.9, 0.999), param_groups=[{"params": "bias", "betas": (0.5, 0.9)}, {"params": "head", "eps": 1e-3}])
    opt.betas = (0.8, 0.99)
    opt.adjust(eps=1e-6)
    bias, head, default = opt._partition.rules
    assert (bias.betas, head.betas, default.betas) == ((0.5, 0.9), (0.8, 0.99), (0.8, 0.99))
    assert (bias.eps, head.eps, default.eps) == (1e-6, 1e-3, 1e-6)
    with pytest.raises(ValueError, match="betas"):
        opt.betas = (1.5, 0.9)
    assert default.betas == (0.8, 0.99)  # nothing written


def _variables(x0):
    return [keras.Variable(x, name=n) for x, n in zip(x0, NAMES)]


def _follow(opt, variables, grads, reference, mode, change, what):
    """Run `opt` on `grads` (`change(t, opt)` before step t) and compare every step with `reference`;
    returns how many times the step's Python ran (per trace when compiled)."""
    import keras_optx._base as base

    traces, original = [], base.Rule._update_step

    def counted(self, *args):
        traces.append(1)
        return original(self, *args)

    base.Rule._update_step = counted
    try:
        step = compiled_apply(opt, variables) if mode == "compiled" else (lambda gs: opt.apply(gs, variables))
        for t, gs in enumerate(grads):
            change(t, opt)
            step([keras.ops.convert_to_tensor(g) for g in gs])
            if t == 0:
                first = len(traces)
            for i, (v, r) in enumerate(zip(variables, reference[t])):
                np.testing.assert_allclose(keras.ops.convert_to_numpy(v.value), r, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{what} step {t + 1} {NAMES[i]}")
    finally:
        base.Rule._update_step = original
    if mode == "compiled":  # a value assigned between compiled steps: no retrace
        assert len(traces) == first, f"retraced: {len(traces)} traces, {first} after the first step"


WEIGHT_DECAY = {  # class, constructor kwargs, groups that set their own weight_decay (which an assignment leaves alone)
    "SGD": ("SGD", dict(lr=0.1, momentum=0.9, weight_decay=1e-2), [{"params": "bias", "weight_decay": 0.0}]),
    "Adam": ("Adam", dict(lr=0.01, weight_decay=1e-3), [{"params": "head", "weight_decay": 0.5}]),
    "AdamW": ("AdamW", dict(lr=0.01, weight_decay=0.1), [{"params": "bias", "weight_decay": 0.0}]),
}
WD_SET = {2: 0.3, 4: 0.0}  # before step t (0-based): the optimizer's weight_decay becomes this


def _set_weight_decay(values, groups):
    """torch.optim's side: `group["weight_decay"] = values(t)` before step t, in the groups without their own."""

    def change(t, torch_groups):
        value = values(t)
        if value is not None:
            for group, spec in zip(torch_groups, groups + [{}]):
                if "weight_decay" not in spec:
                    group["weight_decay"] = value

    return change


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "groups"])
@pytest.mark.parametrize("case", WEIGHT_DECAY)
def test_weight_decay_assigned_mid_run_matches_torch_optim(case, grouped, mode):
    """`opt.weight_decay = λ` and `opt.adjust(weight_decay=λ)` between steps act at the next step, as
    `group["weight_decay"] = λ` does in torch.optim; with groups, only in the groups without their own."""
    name, kwargs, groups = WEIGHT_DECAY[case]
    groups = groups if grouped else []
    x0, grads = _problem()
    variables = _variables(x0)
    opt = TORCH_CLASSES[name](param_groups=_keras_groups(groups, variables) if grouped else None, **kwargs)
    reference = _torch_trajectory(name, kwargs, groups, x0, grads, lr_drop=None, change=_set_weight_decay(WD_SET.get, groups))

    def change(t, opt):
        if t == 2:
            opt.weight_decay = WD_SET[t]
        elif t in WD_SET:
            opt.adjust(weight_decay=WD_SET[t])

    _follow(opt, variables, grads, reference, mode, change, case)
    assert opt.weight_decay == 0.0
    if grouped:
        assert opt._partition.rules[0].weight_decay == groups[0]["weight_decay"]  # its own, untouched
    unchanged = _torch_trajectory(name, kwargs, groups, x0, grads, lr_drop=None)
    assert max(np.abs(a - b).max() for a, b in zip(unchanged[-1], reference[-1])) > 1e-4  # the change mattered


@pytest.mark.parametrize("grouped", [False, True], ids=["alone", "groups"])
def test_weight_decay_zero_at_build_cannot_become_nonzero(grouped):
    """A `weight_decay` of 0 at build makes steps without a decay term (as torch's momentum 0 keeps no
    buffer): a non-zero value later is refused by name, before anything is changed."""
    x0, grads = _problem()
    variables = _variables(x0)
    groups = [{"params": "head", "weight_decay": 0.5}] if grouped else []
    opt = Adam(0.01, param_groups=_keras_groups(groups, variables) if grouped else None)
    opt.apply(grads[0], variables)
    for assign in (lambda: setattr(opt, "weight_decay", 0.3), lambda: opt.adjust(weight_decay=0.3)):
        with pytest.raises(ValueError, match="`weight_decay` was 0 when the optimizer was built"):
            assign()
    assert opt.weight_decay == 0.0
    if grouped:
        assert [rule.weight_decay for rule in opt._partition.rules] == [0.5, 0.0]
    opt.weight_decay = 0.0  # 0 stays assignable
    opt.apply(grads[1], variables)


def _wd_formula(step):  # ExponentialDecay(0.2, 2, 0.5, staircase=True)
    return 0.2 * 0.5 ** (step // 2)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", WEIGHT_DECAY)
def test_weight_decay_schedule_matches_torch_optim(case, mode):
    """weight_decay a schedule (called with the 0-based update count) in the default group; torch.optim
    sets each step's value in the groups without their own."""
    name, kwargs, groups = WEIGHT_DECAY[case]
    x0, grads = _problem()
    variables = _variables(x0)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5, staircase=True)
    opt = TORCH_CLASSES[name](param_groups=_keras_groups(groups, variables), **dict(kwargs, weight_decay=schedule))
    reference = _torch_trajectory(name, dict(kwargs, weight_decay=_wd_formula(0)), groups, x0, grads, lr_drop=None,
                                  change=_set_weight_decay(_wd_formula, groups))
    _follow(opt, variables, grads, reference, mode, lambda t, opt: None, case)


@pytest.mark.parametrize("mode", MODES)
def test_grouped_optimizer_in_a_chain_matches_torch_with_clip_grad_norm(mode):
    """`Optimiser(ClipGlobalNorm(c), AdamW(..., param_groups=…))` = torch's clip_grad_norm_(params, c)
    then AdamW with the same groups; the chain's `learning_rate` steers the default group."""
    name, kwargs, groups = COMPAT_GROUPS["AdamW"]
    x0, grads = _problem()
    variables = _variables(x0)
    from keras_optx import ClipGlobalNorm, Optimiser

    chain = Optimiser(ClipGlobalNorm(1.0), TORCH_CLASSES[name](param_groups=_keras_groups(groups, variables), **kwargs))
    reference = _torch_trajectory(name, kwargs, groups, x0, grads, clip=1.0)

    def change(t, opt):
        if t == LR_DROP[0]:
            opt.learning_rate = LR_DROP[1]

    _follow(chain, variables, grads, reference, mode, change, "chain")
    unclipped = _torch_trajectory(name, kwargs, groups, x0, grads)
    assert max(np.abs(a - b).max() for a, b in zip(unclipped[-1], reference[-1])) > 1e-3  # the clip acted


def test_weight_decay_assigned_and_scheduled_is_saved(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = (x @ rng.normal(size=(4, 1))).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, activation="tanh", name="body"), keras.layers.Dense(1, name="head")])
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 2, 0.5)
    opt = SGD(0.05, momentum=0.9, weight_decay=0.01, param_groups=[{"params": "head/", "weight_decay": schedule}])
    model.compile(optimizer=opt, loss="mse")
    model.train_on_batch(x[:16], y[:16])
    opt.weight_decay = 0.05
    path = tmp_path / "wd.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.get_config() == opt.get_config()
    assert loaded.optimizer.weight_decay == 0.05 and loaded.optimizer._partition.rules[-1].weight_decay == 0.05
    head = loaded.optimizer._partition.rules[0].weight_decay
    assert isinstance(head, keras.optimizers.schedules.ExponentialDecay) and head.get_config() == schedule.get_config()
    for m in (model, loaded):
        m.train_on_batch(x[16:], y[16:])
    for a, b in zip(model.get_weights() + [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables],
                    loaded.get_weights() + [keras.ops.convert_to_numpy(v) for v in loaded.optimizer.variables]):
        np.testing.assert_array_equal(b, a)


def test_weight_decay_refusals_and_keras_meaning():
    from keras_optx import ClipNorm, Optimiser

    opt = AdamW(0.01, weight_decay=0.1, param_groups=[{"params": "bias", "weight_decay": 0.0}])
    with pytest.raises(ValueError, match=r"`weight_decay` must be a finite number ≥ 0"):
        opt.weight_decay = -1.0
    with pytest.raises(TypeError, match="`weight_decay` must be a real number"):
        opt.weight_decay = None
    with pytest.raises(ValueError, match="weight_decay"):
        opt.adjust(weight_decay=float("inf"))
    assert opt.weight_decay == 0.1 and [r.weight_decay for r in opt._partition.rules] == [0.0, 0.1]  # nothing written
    assert opt.torch_weight_decay == 0.1  # the earlier name reads the same value
    # torch's λ is the rule's own hyperparameter, not Keras's keyword: a chain takes the rule.
    chain = Optimiser(ClipNorm(1.0), AdamW(0.01, weight_decay=0.1))
    assert chain[1].weight_decay == 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        Adam(param_groups=[{"params": "bias", "weight_decay": -1.0}])
